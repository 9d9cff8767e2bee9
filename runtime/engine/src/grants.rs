//! What a plugin may actually do: the intersection of what its manifest asks
//! for and what the operator allows in `steward.toml`. Everything else is
//! denied at call time with an error naming the missing grant.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::manifest::Manifest;
use crate::settings::PluginSettings;

/// An origin pattern: `*`, or `scheme://host[:port]` where the host may be
/// `*` or `*.domain` and the port may be `*`. A missing port means the
/// scheme's default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    raw: String,
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    Subdomains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Default,
    Exact(u16),
}

/// The parts of a URL a grant is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin of an absolute `http`/`https` URL.
    pub fn of(url: &url::Url) -> Result<Origin, String> {
        let scheme = url.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "scheme {scheme:?} is not supported: use http or https"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("the URL has no host".to_string()),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Origin { scheme, host, port })
    }

    /// The host as an IP address, when it is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "{}://[{ip}]:{}", self.scheme, self.port),
            _ => write!(f, "{}://{}:{}", self.scheme, self.host, self.port),
        }
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

impl OriginPattern {
    /// Parses a pattern from a manifest or `steward.toml`.
    pub fn parse(raw: &str) -> Result<OriginPattern, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(OriginPattern {
                raw: raw.to_string(),
                scheme: None,
                host: HostPattern::Any,
                port: PortPattern::Any,
            });
        }
        let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
            format!("{raw:?}: expected scheme://host[:port], e.g. https://api.example.com")
        })?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{raw:?}: scheme must be http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("{raw:?}: an origin has no path"));
        }
        let (host, port) = split_host_port(rest);
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => {
                PortPattern::Exact(p.parse().map_err(|_| format!("{raw:?}: bad port {p:?}"))?)
            }
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            HostPattern::Subdomains(domain.to_string())
        } else if host.is_empty() {
            return Err(format!("{raw:?}: the host is empty"));
        } else {
            HostPattern::Exact(host)
        };
        Ok(OriginPattern {
            raw: raw.to_string(),
            scheme: Some(scheme.to_string()),
            host,
            port,
        })
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == origin.scheme);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => normalise_host(h) == normalise_host(&origin.host),
            HostPattern::Subdomains(d) => origin.host.ends_with(&format!(".{d}")),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Default => origin.port == default_port(&origin.scheme),
            PortPattern::Exact(p) => p == origin.port,
        };
        scheme_ok && host_ok && port_ok
    }

    /// True when this pattern names `ip` literally, the only way to reach a
    /// link-local or metadata address.
    pub fn names_exactly(&self, ip: IpAddr, port: u16) -> bool {
        let host_ok =
            matches!(&self.host, HostPattern::Exact(h) if h.parse::<IpAddr>().ok() == Some(ip));
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => self
                .scheme
                .as_deref()
                .is_some_and(|s| default_port(s) == port),
        };
        host_ok && port_ok
    }
}

fn normalise_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_string(),
    }
}

fn split_host_port(rest: &str) -> (&str, Option<&str>) {
    if let Some(end) = rest.find(']') {
        let (host, tail) = rest.split_at(end + 1);
        return (host, tail.strip_prefix(':'));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The capabilities one plugin effectively holds.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    requested_hosts: Vec<OriginPattern>,
    allowed_hosts: Vec<OriginPattern>,
    secrets: BTreeSet<String>,
    pub key_value: bool,
}

impl Grants {
    /// What was granted, for operators: allowed origins, secret names, and
    /// whether the key-value store is available.
    pub fn summary(&self) -> (Vec<String>, Vec<String>, bool) {
        (
            self.allowed_hosts.iter().map(|h| h.to_string()).collect(),
            self.secrets.iter().cloned().collect(),
            self.key_value,
        )
    }

    /// Intersects the manifest with the operator's settings; the returned
    /// warnings name every request the operator did not grant.
    pub fn resolve(
        manifest: &Manifest,
        operator: &PluginSettings,
        defined_secrets: &BTreeSet<String>,
    ) -> Result<(Grants, Vec<String>), String> {
        let name = &manifest.name;
        let parse_all = |patterns: &[String], whose: &str| -> Result<Vec<OriginPattern>, String> {
            patterns
                .iter()
                .map(|p| OriginPattern::parse(p).map_err(|e| format!("{whose} allowed_hosts: {e}")))
                .collect()
        };
        let requested_hosts = parse_all(&manifest.allowed_hosts, &format!("plugin {name}"))?;
        let allowed_hosts = parse_all(&operator.allowed_hosts, &format!("[plugins.{name}]"))?;
        let mut warnings = Vec::new();
        if !requested_hosts.is_empty() && allowed_hosts.is_empty() {
            warnings.push(format!(
                "plugin {name} asks for outbound HTTP ({}) but steward.toml grants it no host: \
                 add allowed_hosts under [plugins.{name}]; until then its requests are denied",
                join(&manifest.allowed_hosts)
            ));
        }
        let mut secrets = BTreeSet::new();
        // `*` asks for whatever the operator grants: for general-purpose
        // plugins (http-request) whose secrets are the workflow author's.
        let requested_secrets = if manifest.secrets.iter().any(|s| s == "*") {
            &operator.secrets
        } else {
            &manifest.secrets
        };
        for secret in requested_secrets {
            if !operator.secrets.contains(secret) {
                warnings.push(format!(
                    "plugin {name} asks for secret {secret} but steward.toml does not grant it: \
                     add it to secrets under [plugins.{name}]; until then reading it is denied"
                ));
            } else if !defined_secrets.contains(secret) {
                warnings.push(format!(
                    "plugin {name} is granted secret {secret} but [secrets] does not define it"
                ));
            } else {
                secrets.insert(secret.clone());
            }
        }
        let key_value = manifest.key_value && operator.key_value.unwrap_or(true);
        if manifest.key_value && !key_value {
            warnings.push(format!(
                "plugin {name} asks for its key-value store, which steward.toml denies"
            ));
        }
        Ok((
            Grants {
                requested_hosts,
                allowed_hosts,
                secrets,
                key_value,
            },
            warnings,
        ))
    }

    /// Checks an origin against both the manifest and the operator.
    pub fn check_origin(&self, origin: &Origin) -> Result<(), String> {
        if !self.requested_hosts.iter().any(|p| p.matches(origin)) {
            return Err(format!(
                "{origin} is not in the plugin manifest's allowed_hosts ({})",
                join(&self.requested_hosts)
            ));
        }
        if !self.allowed_hosts.iter().any(|p| p.matches(origin)) {
            return Err(format!(
                "{origin} is not granted to this plugin: the operator allows {}",
                if self.allowed_hosts.is_empty() {
                    "no host".to_string()
                } else {
                    join(&self.allowed_hosts)
                }
            ));
        }
        Ok(())
    }

    /// Link-local and metadata addresses are reachable only when the
    /// operator names them exactly.
    pub fn grants_exact_address(&self, ip: IpAddr, port: u16) -> bool {
        self.allowed_hosts.iter().any(|p| p.names_exactly(ip, port))
    }

    pub fn has_secret(&self, name: &str) -> bool {
        self.secrets.contains(name)
    }

    /// Whether a call can change anything outside itself: an origin it
    /// may call or a key-value store it may write. Secrets, settings and
    /// logs only flow in, or into the step's own result.
    pub fn reaches_outside(&self) -> bool {
        !self.allowed_hosts.is_empty() || self.key_value
    }

    pub fn wants_http(&self) -> bool {
        !self.requested_hosts.is_empty()
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Addresses cloud metadata services and link-local peers live on: SSRF
/// targets that no plugin reaches by accident.
pub fn is_sensitive_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            // IPv4 embedded in IPv6 reaches the same host through a
            // translator: mapped, compatible, NAT64 (64:ff9b::/96), 6to4.
            let s = v6.segments();
            let embedded = if let Some(v4) = v6.to_ipv4() {
                Some(v4)
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2002 {
                Some(std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ))
            } else {
                None
            };
            if embedded.is_some_and(|v4| is_sensitive_address(IpAddr::V4(v4))) {
                return true;
            }
            // Cloud metadata services on IPv6: AWS, GCP, OCI.
            let metadata = ["fd00:ec2::254", "fd20:ce::254", "fd00:c1::a9fe:a9fe"];
            (s[0] & 0xffc0) == 0xfe80
                || metadata
                    .iter()
                    .any(|m| m.parse::<std::net::Ipv6Addr>().ok() == Some(v6))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::of(&url::Url::parse(url).unwrap()).unwrap()
    }

    fn check(pattern: &str, url: &str) -> bool {
        OriginPattern::parse(pattern).unwrap().matches(&origin(url))
    }

    #[test]
    fn patterns_match_as_documented() {
        let cases = [
            ("*", "https://anything.example:8443/x", true),
            (
                "https://api.example.com",
                "https://api.example.com/v1",
                true,
            ),
            (
                "https://api.example.com",
                "http://api.example.com/v1",
                false,
            ),
            (
                "https://api.example.com",
                "https://api.example.com:8443/",
                false,
            ),
            ("http://127.0.0.1:*", "http://127.0.0.1:39001/hook", true),
            ("http://127.0.0.1:*", "http://127.0.0.2:39001/hook", false),
            ("https://*.example.com", "https://a.b.example.com/", true),
            ("https://*.example.com", "https://example.com/", false),
            ("https://*.example.com", "https://evilexample.com/", false),
            ("http://[::1]:8080", "http://[::1]:8080/", true),
        ];
        for (pattern, url, expected) in cases {
            assert_eq!(check(pattern, url), expected, "{pattern} vs {url}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(
            OriginPattern::parse("api.example.com")
                .unwrap_err()
                .contains("scheme://")
        );
        assert!(
            OriginPattern::parse("ftp://x")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(
            OriginPattern::parse("http://x:abc")
                .unwrap_err()
                .contains("bad port")
        );
    }

    #[test]
    fn metadata_addresses_are_sensitive() {
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.1.1",
            "100.100.100.200",
            "64:ff9b::a9fe:a9fe",
            "::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "fd20:ce::254",
        ] {
            assert!(is_sensitive_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "::1", "93.184.216.34"] {
            assert!(!is_sensitive_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn an_exact_address_grant_covers_its_port_only() {
        let manifest = Manifest {
            allowed_hosts: vec!["*".into()],
            ..Manifest::bare("p")
        };
        let operator = PluginSettings {
            allowed_hosts: vec!["*".into(), "http://169.254.169.254".into()],
            ..Default::default()
        };
        let (grants, _) = Grants::resolve(&manifest, &operator, &BTreeSet::new()).unwrap();
        let ip: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(grants.grants_exact_address(ip, 80));
        assert!(!grants.grants_exact_address(ip, 8080));
    }

    #[test]
    fn grants_are_an_intersection() {
        let manifest = Manifest {
            allowed_hosts: vec!["https://*.example.com".into()],
            secrets: vec!["A".into(), "B".into()],
            ..Manifest::bare("p")
        };
        let operator = PluginSettings {
            allowed_hosts: vec!["https://iam.example.com".into(), "https://other.org".into()],
            secrets: vec!["A".into()],
            ..Default::default()
        };
        let defined: BTreeSet<String> = ["A".to_string()].into();
        let (grants, warnings) = Grants::resolve(&manifest, &operator, &defined).unwrap();
        assert!(
            grants
                .check_origin(&origin("https://iam.example.com/"))
                .is_ok()
        );
        assert!(grants.check_origin(&origin("https://other.org/")).is_err());
        assert!(
            grants
                .check_origin(&origin("https://mail.example.com/"))
                .is_err()
        );
        assert!(grants.has_secret("A") && !grants.has_secret("B"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("secret B"));
    }

    #[test]
    fn a_wildcard_secret_request_takes_what_the_operator_grants() {
        let manifest = Manifest {
            secrets: vec!["*".into()],
            ..Manifest::bare("p")
        };
        let operator = PluginSettings {
            secrets: vec!["REPORT_TOKEN".into()],
            ..Default::default()
        };
        let defined: BTreeSet<String> = ["REPORT_TOKEN".to_string(), "OTHER".to_string()].into();
        let (grants, warnings) = Grants::resolve(&manifest, &operator, &defined).unwrap();
        assert!(grants.has_secret("REPORT_TOKEN"));
        assert!(!grants.has_secret("OTHER") && !grants.has_secret("*"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
