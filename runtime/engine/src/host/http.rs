//! Outbound HTTP for plugins: only granted origins, never link-local or
//! metadata addresses unless the operator names them exactly, redirects
//! followed only within the same origin, bodies capped.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::HostState;
use crate::bindings::HostError;
use crate::bindings::steward::plugin::http::{Host, Request, Response};
use crate::grants::{Grants, Origin, is_sensitive_address};

/// Redirect hops followed within one origin.
const MAX_REDIRECTS: usize = 5;
/// Largest response body a plugin receives.
const MAX_RESPONSE_BYTES: usize = 10 << 20;

/// A per-plugin HTTP agent whose resolver enforces the address rules, so a
/// DNS name that resolves to a metadata address is refused as well.
pub struct HttpClient {
    agent: ureq::Agent,
}

const REFUSED: &str = "refused by steward";

impl HttpClient {
    pub fn new(grants: &Grants) -> HttpClient {
        let grants = grants.clone();
        let resolver = move |netloc: &str| -> io::Result<Vec<SocketAddr>> {
            let all: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| {
                    !is_sensitive_address(a.ip()) || grants.grants_exact_address(a.ip(), a.port())
                })
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                let ips: BTreeSet<IpAddr> = all.iter().map(|a| a.ip()).collect();
                let ips: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{REFUSED}: {netloc} is a link-local or cloud metadata address ({}); \
                         the operator must grant it by exact address in allowed_hosts",
                        ips.join(", ")
                    ),
                ));
            }
            Ok(allowed)
        };
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .resolver(resolver)
            .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpClient { agent }
    }
}

impl Host for HostState {
    fn send(&mut self, request: Request) -> Result<Response, HostError> {
        let Some(client) = self.plugin.http.as_ref() else {
            return Err(HostError::denied(format!(
                "outbound HTTP is not granted to plugin {}: list origins in its manifest's allowed_hosts",
                self.plugin.name
            )));
        };
        let agent = client.agent.clone();
        let body_len = request.body.as_ref().map_or(0, Vec::len);
        let header_len: usize = request.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.charge(request.url.len() + body_len + header_len, "the request")?;

        // Errors name the origin only: a URL's path and query may be a
        // credential (chat webhook URLs are), and errors are kept in the
        // run's history, shown by the API and logged.
        let mut url = url::Url::parse(&request.url)
            .map_err(|e| HostError::invalid(format!("the url does not parse: {e}")))?;
        let first_origin = Origin::of(&url).map_err(HostError::invalid)?;
        self.plugin
            .grants
            .check_origin(&first_origin)
            .map_err(|e| HostError::denied(format!("HTTP to {e}")))?;

        let mut method = request.method.clone();
        let mut body = request.body.clone();
        for _hop in 0..=MAX_REDIRECTS {
            let timeout = self.request_timeout(request.timeout_ms)?;
            let response = send_once(
                &agent,
                &method,
                &url,
                &request.headers,
                body.as_deref(),
                timeout,
            )?;
            let status = response.status();
            let location = response.header("location").map(str::to_string);
            if let (true, Some(location)) = ((300..400).contains(&status), location) {
                let next = url.join(&location).map_err(|e| {
                    HostError::failed(format!("{first_origin} redirected to a bad location: {e}"))
                })?;
                // Another origin is never followed: the plugin sees the 3xx.
                if Origin::of(&next).ok().as_ref() == Some(&first_origin) {
                    if matches!(status, 301..=303) && method != "HEAD" {
                        method = "GET".to_string();
                        body = None;
                    }
                    url = next;
                    continue;
                }
            }
            return self.read_response(response);
        }
        Err(HostError::failed(format!(
            "more than {MAX_REDIRECTS} redirects from {first_origin}"
        )))
    }
}

impl HostState {
    /// The request's own timeout, bounded by what is left of the step.
    fn request_timeout(&self, requested_ms: Option<u32>) -> Result<Duration, HostError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostError::limit("the step's time limit is reached"));
        }
        Ok(requested_ms.map_or(left, |ms| left.min(Duration::from_millis(ms.into()))))
    }

    fn read_response(&mut self, response: ureq::Response) -> Result<Response, HostError> {
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                response
                    .header(&name)
                    .map(|v| (name.clone(), v.to_string()))
            })
            .collect();
        let cap = MAX_RESPONSE_BYTES.min(self.io_remaining());
        let mut body = Vec::new();
        response
            .into_reader()
            .take(cap as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| HostError::failed(format!("reading the response: {e}")))?;
        if body.len() > cap {
            return Err(HostError::limit(format!(
                "the response body exceeds {cap} bytes"
            )));
        }
        let header_len: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.charge(body.len() + header_len, "the response")?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn send_once(
    agent: &ureq::Agent,
    method: &str,
    url: &url::Url,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<ureq::Response, HostError> {
    let mut req = agent.request_url(method, url).timeout(timeout);
    for (name, value) in headers {
        if name.is_empty() || name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(HostError::invalid(format!("header {name:?} is malformed")));
        }
        req = req.set(name, value);
    }
    let result = match body {
        Some(bytes) => req.send_bytes(bytes),
        None => req.call(),
    };
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
        Err(ureq::Error::Transport(transport)) => Err(transport_error(method, url, &transport)),
    }
}

fn transport_error(method: &str, url: &url::Url, transport: &ureq::Transport) -> HostError {
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(transport);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::PermissionDenied
            && io.to_string().contains(REFUSED)
        {
            return HostError::denied(io.to_string());
        }
        source = err.source();
    }
    // Not `transport.to_string()`: ureq's text starts with the whole URL.
    let mut text = transport.kind().to_string();
    if let Some(message) = transport.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(transport) {
        text.push_str(&format!(": {source}"));
    }
    if text.contains(REFUSED) {
        return HostError::denied(text);
    }
    HostError::failed(format!("{method} {}: {text}", origin_of(url)))
}

/// `scheme://host:port` of `url`: what an error may say about where a
/// call went.
fn origin_of(url: &url::Url) -> String {
    Origin::of(url).map_or_else(|_| "the url".to_string(), |origin| origin.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_name_the_origin_only() {
        // A port that was free a moment ago: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = url::Url::parse(&format!(
            "http://127.0.0.1:{port}/hooks/T0SECRET/B0?token=s3cr3t"
        ))
        .unwrap();
        let agent = ureq::AgentBuilder::new().build();
        let Err(ureq::Error::Transport(transport)) = agent.request_url("GET", &url).call() else {
            panic!("nothing listens on port {port}");
        };
        let text = transport_error("GET", &url, &transport).message;
        assert!(
            text.contains(&format!("GET http://127.0.0.1:{port}:")),
            "{text}"
        );
        assert!(
            !text.contains("SECRET") && !text.contains("s3cr3t"),
            "{text}"
        );
    }
}
