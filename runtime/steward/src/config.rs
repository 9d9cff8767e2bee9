//! `steward.toml`: the operator's configuration, parsed once at start and
//! handed down. Every key has a default; `STEWARD_*` variables override
//! `listen`, `database`, `database_schema` and `data_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::workflow::model::RetryPolicy;

pub use steward_engine::settings::{
    Limits, PluginSettings, Secrets, describe_toml_error, line_col,
};

/// The whole configuration file. Its `Debug` (below) hides secret values.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    /// Unset: a SQLite database in `data_dir` (see [`Config::database`]).
    pub database: Option<String>,
    /// PostgreSQL only: the schema to keep Steward's tables in.
    pub database_schema: Option<String>,
    /// SQLite only: `full` (default, survives power loss) or `normal`.
    pub sqlite_synchronous: String,
    /// Where the embedded database and the compiled-component cache live.
    pub data_dir: PathBuf,
    /// Folders of `*.yaml` workflows loaded at start.
    pub workflows: Vec<PathBuf>,
    /// Per-plugin grants, limits, and extra plugins (`path = "x.wasm"`).
    pub plugins: BTreeMap<String, PluginSettings>,
    pub secrets: BTreeMap<String, SecretSource>,
    pub calendars: BTreeMap<String, toml::Value>,
    pub groups: BTreeMap<String, Vec<String>>,
    /// Values for `env.NAME` in workflow expressions.
    pub env: BTreeMap<String, toml::Value>,
    /// Signed webhooks: `POST /v1/hooks/NAME` starts `workflow`.
    pub hooks: BTreeMap<String, HookSettings>,
    /// Defaults for every plugin call; `[plugins.NAME]` may override them.
    pub limits: Limits,
    pub engine: EngineSettings,
    pub worker: WorkerSettings,
    pub api: ApiSettings,
    pub scheduler: SchedulerSettings,
    pub retention: RetentionSettings,
    /// What a workflow step gets when it does not say (`[defaults] retry`).
    pub defaults: DefaultsSettings,
    /// Single sign-on: JWTs from an identity provider, and what its groups
    /// grant.
    pub auth: AuthSettings,
    /// `STEWARD_ADMIN_TOKEN`: an admin API token that lives only in the
    /// environment (never read from the file).
    #[serde(skip)]
    pub admin_token: Option<String>,
}

/// How this process claims and drives runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// How long a claim on a run lasts without renewal: after a crash, other
    /// processes take the run over once it ends.
    pub lease_ms: u64,
    /// Runs driven at once by this process.
    pub capacity: usize,
    /// On SIGTERM, how long plugin calls in flight may take to finish
    /// before their runs are handed back (and the calls re-run elsewhere
    /// under the same idempotency key).
    pub shutdown_grace_ms: u64,
    /// `steward worker` serves `/healthz` and `/metrics` here when set.
    pub listen: Option<String>,
    /// How often to look for due runs (timers, takeovers) when nothing
    /// wakes the worker; on PostgreSQL new runs, decisions and cancels from
    /// other processes wake it at once (LISTEN/NOTIFY).
    pub poll_ms: u64,
    /// What this process's worker offers (`--tags`): workflows with `tags`
    /// run only on workers that have them all.
    pub tags: Vec<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            lease_ms: 15_000,
            capacity: 256,
            shutdown_grace_ms: 10_000,
            listen: None,
            poll_ms: 200,
            tags: Vec::new(),
        }
    }
}

/// How cron schedules fire.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// A fire noticed more than this after its time (the server was down or
    /// paused) is late: the schedule's `catch_up` decides whether it runs.
    pub grace_ms: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { grace_ms: 10_000 }
    }
}

/// How long finished runs are kept.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Finished runs (with their history and approvals) older than this are
    /// deleted by the executing processes, every few minutes. Unset (the
    /// default): kept forever, since what an audit needs is the operator's
    /// call, not ours.
    #[serde(deserialize_with = "positive_duration")]
    pub runs: Option<std::time::Duration>,
}

/// A humantime duration such as `90d`; zero is refused (it would delete
/// every run the moment it finishes).
fn positive_duration<'de, D>(d: D) -> Result<Option<std::time::Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    match humantime::parse_duration(&text) {
        Ok(duration) if duration.is_zero() => Err(serde::de::Error::custom(
            "a retention of zero would delete every run as it finishes: use a duration such as 90d",
        )),
        Ok(duration) => Ok(Some(duration)),
        Err(e) => Err(serde::de::Error::custom(format!(
            "{text:?} is not a duration such as 90d or 12h: {e}"
        ))),
    }
}

/// `[auth]`: who besides Steward's own tokens may call the API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Unset: only Steward's tokens authenticate.
    pub oidc: Option<OidcSettings>,
    /// `[auth.roles.IDP-GROUP]`: what membership of an identity-provider
    /// group grants a JWT's subject.
    pub roles: BTreeMap<String, RoleSettings>,
}

/// `[auth.oidc]`: the identity provider whose JWTs are bearer tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// Must equal the token's `iss`, e.g. `https://sso.example.com/realms/acme`.
    pub issuer: String,
    /// Must be among the token's `aud`, so a token minted for another
    /// application is refused.
    pub audience: String,
    /// Unset: `{issuer}/.well-known/jwks.json`. Public keys only, so it
    /// holds nothing secret.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The claim decisions are recorded as; Keycloak's readable one is
    /// `preferred_username`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Tolerated difference between our clock and the provider's when
    /// checking `exp` and `nbf`.
    #[serde(default = "default_clock_skew", with = "humantime_text")]
    pub clock_skew: std::time::Duration,
}

impl OidcSettings {
    pub fn jwks_url(&self) -> String {
        self.jwks_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/jwks.json",
                self.issuer.trim_end_matches('/')
            )
        })
    }
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_clock_skew() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

/// `[defaults]`: what workflow steps get when they do not say.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsSettings {
    pub retry: RetrySettings,
    /// The most elements a `for_each` may loop over: a loop's list and
    /// results are kept in its run's history.
    #[serde(deserialize_with = "loop_limit")]
    pub for_each_max_items: usize,
    /// How deep sub-workflows may nest (a run's child is at depth 1).
    #[serde(deserialize_with = "depth_limit")]
    pub max_workflow_depth: u32,
}

impl Default for DefaultsSettings {
    fn default() -> Self {
        DefaultsSettings {
            retry: RetrySettings::default(),
            for_each_max_items: crate::workflow::model::FOR_EACH_MAX_ITEMS,
            max_workflow_depth: crate::workflow::model::MAX_WORKFLOW_DEPTH,
        }
    }
}

/// `max_workflow_depth`: from 1 to 64.
fn depth_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    if (1..=64).contains(&n) {
        Ok(n as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_workflow_depth = {n}: expected from 1 to 64"
        )))
    }
}

/// `for_each_max_items`: from 1 to a million.
fn loop_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    if (1..=1_000_000).contains(&n) {
        Ok(n as usize)
    } else {
        Err(serde::de::Error::custom(format!(
            "for_each_max_items = {n}: expected from 1 to 1000000"
        )))
    }
}

/// `[defaults] retry`: the retry policy of steps that set no `retry:`,
/// written like a step's (`max_attempts`, `backoff`, `max_backoff`,
/// `backoff_jitter`). Retries happen only for errors the plugin marks
/// retryable (a refused connection, a timeout, 408, 429, 5xx).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    #[serde(deserialize_with = "attempts")]
    pub max_attempts: u32,
    #[serde(with = "humantime_text")]
    pub backoff: std::time::Duration,
    #[serde(with = "humantime_text")]
    pub max_backoff: std::time::Duration,
    pub backoff_jitter: bool,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let policy = RetryPolicy::UNSET_DEFAULT;
        RetrySettings {
            max_attempts: policy.max_attempts,
            backoff: policy.backoff,
            max_backoff: policy.max_backoff,
            backoff_jitter: policy.jitter,
        }
    }
}

impl RetrySettings {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
            jitter: self.backoff_jitter,
        }
    }
}

/// 1 to 100 attempts, as in a workflow's `retry:`.
fn attempts<'de, D>(d: D) -> Result<u32, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let n = i64::deserialize(d)?;
    if (1..=100).contains(&n) {
        Ok(n as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "max_attempts = {n}: expected an integer from 1 to 100 (1 means no retries)"
        )))
    }
}

/// Durations written as humantime text (`60s`, `2m`).
mod humantime_text {
    use serde::Deserialize;

    pub fn deserialize<'de, D>(d: D) -> Result<std::time::Duration, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as 60s or 2m: {e}"))
        })
    }
}

/// `[auth.roles.NAME]`: the scopes and approver groups an identity-provider
/// group stands for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSettings {
    pub scopes: Vec<String>,
    /// Names of approver groups (`cab` for `group:cab`) its members belong to.
    pub approver_groups: Vec<String>,
}

/// Bounds on what the API accepts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Request bodies past this many bytes are refused with 413.
    pub max_body_bytes: usize,
    /// JSON bodies nesting deeper than this are refused with 400.
    pub max_json_depth: usize,
    /// Plugin uploads (`PUT /v1/plugins/{name}`) may be this large.
    pub max_plugin_bytes: usize,
    /// Requests whose headers (names, values, and 4 bytes each for `: `
    /// and CRLF) exceed this are refused with 431. 16 KiB, as in Node.js:
    /// a bearer token and the usual headers take well under 2 KiB, while a
    /// reverse proxy's forwarding headers and cookies still fit.
    pub max_header_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_plugin_bytes: 64 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database: None,
            database_schema: None,
            sqlite_synchronous: "full".into(),
            data_dir: "steward-data".into(),
            workflows: vec!["examples/workflows".into()],
            plugins: BTreeMap::new(),
            secrets: BTreeMap::new(),
            calendars: BTreeMap::new(),
            groups: BTreeMap::new(),
            env: BTreeMap::new(),
            hooks: BTreeMap::new(),
            limits: Limits::default(),
            engine: EngineSettings::default(),
            worker: WorkerSettings::default(),
            api: ApiSettings::default(),
            scheduler: SchedulerSettings::default(),
            retention: RetentionSettings::default(),
            defaults: DefaultsSettings::default(),
            auth: AuthSettings::default(),
            admin_token: None,
        }
    }
}

/// One webhook: which workflow it starts, or which signal it delivers (with
/// the key taken from the body), and the secret its deliveries are signed
/// with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    /// The workflow a delivery starts, with the body as input.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The signal a delivery sends instead, with the body as payload.
    #[serde(default)]
    pub signal: Option<String>,
    /// With `signal`: an expression over `body` giving the delivery's key
    /// (`"${{ body.number }}"`), so it resumes the runs waiting with it.
    #[serde(default)]
    pub key: Option<String>,
    pub secret: SecretSource,
    /// The secret being rotated out: deliveries signed with either are
    /// accepted until it is removed.
    pub previous_secret: Option<SecretSource>,
    /// How far `t` may be from now, in seconds (default 300).
    #[serde(default = "default_hook_tolerance")]
    pub tolerance_s: u64,
}

fn default_hook_tolerance() -> u64 {
    300
}

/// Where a secret's value comes from. Values are resolved at start and never
/// logged; `Debug` shows where a secret comes from, not an inline value.
#[derive(Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table: { env = \"NAME\" }, { file = \"PATH\" } or { value = \"...\" }"
)]
pub struct SecretSource {
    pub env: Option<String>,
    pub value: Option<String>,
    pub file: Option<PathBuf>,
}

/// Engine tuning; the defaults suit a 2-core machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Plugin calls running at once (and pooled instance slots).
    pub max_concurrent_calls: u32,
    /// Granularity of CPU deadlines.
    pub epoch_tick_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_concurrent_calls: 32,
            epoch_tick_ms: 10,
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("{path}:{message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (when given) and applies `STEWARD_*` overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
                    path: path.display().to_string(),
                    reason,
                })?;
                Config::parse(&text, &path.display().to_string())?
            }
            None => Config::default(),
        };
        config.apply_env(|key| std::env::var(key).ok());
        Ok(config)
    }

    /// The database URL: `database` when set, else `steward.db` in
    /// `data_dir`, so moving the data folder moves everything the server
    /// keeps (the database, the admin token, the component cache).
    pub fn database(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/steward.db", self.data_dir.display()),
        }
    }

    /// Parses configuration text; errors read `FILE:LINE:COL: message`.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: describe_toml_error(text, &e),
        })?;
        config
            .check_limits()
            .map_err(|message| ConfigError::Parse {
                path: path.to_string(),
                message: format!(" {message}"),
            })?;
        Ok(config)
    }

    /// A limit of 0 would fail every call (or the engine's start, with
    /// wasmtime's words): refused here, naming the key.
    fn check_limits(&self) -> Result<(), String> {
        let zero = |table: &str, key: &str, value: Option<u64>| match value {
            Some(0) => Err(format!(
                "{table} {key} = 0: a plugin call needs some; raise it or leave it out for the default"
            )),
            _ => Ok(()),
        };
        let l = &self.limits;
        zero("[limits]", "memory_mib", Some(l.memory_mib))?;
        zero("[limits]", "cpu_ms", Some(l.cpu_ms))?;
        zero("[limits]", "timeout_ms", Some(l.timeout_ms))?;
        zero("[limits]", "io_mib", Some(l.io_mib))?;
        zero("[limits]", "error_bytes", Some(l.error_bytes))?;
        for (name, p) in &self.plugins {
            let table = format!("[plugins.{name}]");
            zero(&table, "memory_mib", p.memory_mib)?;
            zero(&table, "cpu_ms", p.cpu_ms)?;
            zero(&table, "timeout_ms", p.timeout_ms)?;
        }
        Ok(())
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("STEWARD_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("STEWARD_DATABASE") {
            self.database = Some(v);
        }
        if let Some(v) = get("STEWARD_ADMIN_TOKEN").filter(|v| !v.is_empty()) {
            self.admin_token = Some(v);
        }
        if let Some(v) = get("STEWARD_DATABASE_SCHEMA") {
            self.database_schema = Some(v);
        }
        if let Some(v) = get("STEWARD_DATA_DIR") {
            self.data_dir = v.into();
        }
    }

    /// Resolves every `[secrets]` entry now, so a missing variable fails the
    /// start instead of a run at 3 a.m.
    pub fn resolve_secrets(&self) -> Result<Secrets, ConfigError> {
        let mut values = BTreeMap::new();
        for (name, source) in &self.secrets {
            values.insert(name.clone(), source.resolve(&format!("[secrets] {name}"))?);
        }
        Ok(Secrets::from(values))
    }

    /// Settings for `plugin`, empty when the operator wrote none.
    pub fn plugin(&self, plugin: &str) -> PluginSettings {
        self.plugins.get(plugin).cloned().unwrap_or_default()
    }

    /// The limits of `plugin`: the defaults with its overrides applied.
    pub fn limits_for(&self, plugin: &str) -> Limits {
        let mut limits = self.limits;
        if let Some(p) = self.plugins.get(plugin) {
            limits.memory_mib = p.memory_mib.unwrap_or(limits.memory_mib);
            limits.cpu_ms = p.cpu_ms.unwrap_or(limits.cpu_ms);
            limits.timeout_ms = p.timeout_ms.unwrap_or(limits.timeout_ms);
        }
        limits
    }

    /// Parses every `[calendars.NAME]`, so a broken calendar stops the
    /// start instead of an SLA clock.
    pub fn calendars(&self) -> Result<BTreeMap<String, crate::calendar::Calendar>, ConfigError> {
        self.calendars
            .iter()
            .map(|(name, value)| {
                crate::calendar::Calendar::parse(name, value)
                    .map(|c| (name.clone(), c))
                    .map_err(ConfigError::Invalid)
            })
            .collect()
    }

    /// `[env]` as JSON, for expressions.
    pub fn env_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.env).unwrap_or(serde_json::Value::Null)
    }
}

impl SecretSource {
    /// The value now; `what` names the setting in errors.
    pub fn resolve(&self, what: &str) -> Result<String, ConfigError> {
        match (&self.env, &self.value, &self.file) {
            (Some(var), None, None) => std::env::var(var).map_err(|_| {
                ConfigError::Invalid(format!(
                    "{what}: environment variable {var} is not set: export it or remove the setting"
                ))
            }),
            (None, Some(value), None) => Ok(value.clone()),
            (None, None, Some(file)) => std::fs::read_to_string(file)
                .map(|s| s.trim_end().to_string())
                .map_err(|e| {
                    ConfigError::Invalid(format!("{what}: cannot read {}: {e}", file.display()))
                }),
            _ => Err(ConfigError::Invalid(format!(
                "{what}: give exactly one of env, value or file"
            ))),
        }
    }
}

/// What `Debug` prints in place of a secret value.
const REDACTED: &str = "<redacted>";

/// `Debug` of the whole configuration, as it may end up in a log or a
/// panic message: the admin token, inline secret values (`[secrets]`,
/// `[hooks.NAME]`), the database URL's password and the values of plugin
/// settings are hidden. Destructured, so a new field cannot be added
/// without deciding here whether it is secret.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            listen,
            database,
            database_schema,
            sqlite_synchronous,
            data_dir,
            workflows,
            plugins,
            secrets,
            calendars,
            groups,
            env,
            hooks,
            limits,
            engine,
            worker,
            api,
            scheduler,
            retention,
            defaults,
            auth,
            admin_token,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("database", &database.as_deref().map(redact_url))
            .field("database_schema", database_schema)
            .field("sqlite_synchronous", sqlite_synchronous)
            .field("data_dir", data_dir)
            .field("workflows", workflows)
            .field("plugins", plugins)
            .field("secrets", secrets)
            .field("calendars", calendars)
            .field("groups", groups)
            .field("env", env)
            .field("hooks", hooks)
            .field("limits", limits)
            .field("engine", engine)
            .field("worker", worker)
            .field("api", api)
            .field("scheduler", scheduler)
            .field("retention", retention)
            .field("defaults", defaults)
            .field("auth", auth)
            .field("admin_token", &admin_token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("env", &self.env)
            .field("value", &self.value.as_ref().map(|_| REDACTED))
            .field("file", &self.file)
            .finish()
    }
}

/// A database URL fit for messages: the password, in the authority or as
/// a `password` query parameter (both of which sqlx reads), replaced by
/// `***`; a URL that does not parse is not shown at all.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<a database URL that does not parse>".to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k.contains("password")) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.contains("password") {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::parse("", "steward.toml").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database(), "sqlite://steward-data/steward.db");
        assert_eq!(c.limits.memory_mib, 64);
    }

    #[test]
    fn the_spec_example_parses() {
        let text = r#"
listen = "127.0.0.1:8080"
database = "sqlite://steward-data/steward.db"
workflows = ["examples/workflows"]

[plugins.http-request]
allowed_hosts = ["https://iam.example.com", "http://127.0.0.1:*"]

[plugins.notify.channels]
it-managers = "https://chat.example.com/hooks/abc"

[secrets]
SNOW_TOKEN = { env = "SNOW_TOKEN" }

[calendars.office-hours]
timezone = "Europe/Berlin"
hours = { mon-fri = "08:00-18:00" }
holidays = ["2026-12-24", "2026-12-25"]

[groups]
it-managers = ["dana", "eli"]

[env]
iam_url = "https://iam.example.com"

[hooks.servicenow]
workflow = "access-request"
secret = { env = "SNOW_HOOK_SECRET" }
"#;
        let c = Config::parse(text, "steward.toml").unwrap();
        assert_eq!(c.plugin("http-request").allowed_hosts.len(), 2);
        assert!(c.plugin("notify").extra.contains_key("channels"));
        assert_eq!(c.env_json()["iam_url"], "https://iam.example.com");
    }

    #[test]
    fn retention_is_off_unless_set_and_takes_a_duration() {
        assert_eq!(Config::parse("", "s.toml").unwrap().retention.runs, None);
        let c = Config::parse("[retention]\nruns = \"90d\"\n", "s.toml").unwrap();
        assert_eq!(
            c.retention.runs,
            Some(std::time::Duration::from_secs(90 * 86_400))
        );
        let err = Config::parse("[retention]\nruns = \"soon\"\n", "s.toml").unwrap_err();
        assert!(err.to_string().starts_with("s.toml:2:"), "{err}");
        assert!(
            err.to_string().contains("not a duration such as 90d"),
            "{err}"
        );
        let err = Config::parse("[retention]\nruns = \"0s\"\n", "s.toml").unwrap_err();
        assert!(err.to_string().contains("retention of zero"), "{err}");
    }

    #[test]
    fn malformed_file_names_file_and_line() {
        let err = Config::parse("listen = \"x\"\n[plugins\n", "conf/steward.toml").unwrap_err();
        assert!(err.to_string().starts_with("conf/steward.toml:2:"), "{err}");
        let err = Config::parse("listen = \"x\"\nlisten_port = 3\n", "steward.toml").unwrap_err();
        assert!(err.to_string().starts_with("steward.toml:2:1:"), "{err}");
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn environment_overrides_keys() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "STEWARD_DATABASE").then(|| "postgres://x/y".to_string()));
        assert_eq!(c.database(), "postgres://x/y");
    }

    #[test]
    fn zero_limits_and_string_secrets_are_refused_naming_the_key() {
        let err = Config::parse("[limits]\nmemory_mib = 0\n", "s.toml").unwrap_err();
        assert!(err.to_string().contains("[limits] memory_mib = 0"), "{err}");
        let err = Config::parse("[plugins.notify]\ntimeout_ms = 0\n", "s.toml").unwrap_err();
        assert!(
            err.to_string().contains("[plugins.notify] timeout_ms = 0"),
            "{err}"
        );
        let err = Config::parse(
            "[hooks.x]\nworkflow = \"w\"\nsecret = \"0123456789abcdef0123\"\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(err.to_string().contains("{ env = \"NAME\" }"), "{err}");
        // As the CLI prints it: the error and its causes.
        let err = Config::load(Some(Path::new("/nonexistent/steward.toml"))).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
    }

    #[test]
    fn misspelt_grants_are_told_apart_from_plugin_settings() {
        let c = Config::parse(
            "[plugins.notify]\nallowed-hosts = [\"https://x\"]\nallowedHost = []\ntimeout = 5\n\
             channels = { ops = \"https://chat\" }\nallowed_hosts = []\n",
            "steward.toml",
        )
        .unwrap();
        let mut typos = c.plugin("notify").likely_typos();
        typos.sort();
        assert_eq!(
            typos,
            [
                ("allowed-hosts".to_string(), "allowed_hosts"),
                ("allowedHost".to_string(), "allowed_hosts"),
                ("timeout".to_string(), "timeout_ms"),
            ]
        );
    }

    #[test]
    fn the_default_database_lives_in_the_data_dir() {
        let c = Config::parse("data_dir = \"/var/lib/steward\"\n", "steward.toml").unwrap();
        assert_eq!(c.database(), "sqlite:///var/lib/steward/steward.db");
        let mut c = Config::default();
        c.apply_env(|k| (k == "STEWARD_DATA_DIR").then(|| "elsewhere".to_string()));
        assert_eq!(c.database(), "sqlite://elsewhere/steward.db");
        // An explicit database stays where it is said to be.
        let c = Config::parse(
            "data_dir = \"/var/lib/steward\"\ndatabase = \"sqlite://db/s.db\"\n",
            "steward.toml",
        )
        .unwrap();
        assert_eq!(c.database(), "sqlite://db/s.db");
    }

    #[test]
    fn single_sign_on_has_defaults_and_roles() {
        let config = Config::parse(
            "[auth.oidc]\nissuer = \"https://sso.example.com/realms/acme/\"\naudience = \"steward\"\n\n\
             [auth.roles.cab-members]\nscopes = [\"approvals:decide\"]\napprover_groups = [\"cab\"]\n",
            "steward.toml",
        )
        .unwrap();
        let oidc = config.auth.oidc.unwrap();
        assert_eq!(
            oidc.jwks_url(),
            "https://sso.example.com/realms/acme/.well-known/jwks.json"
        );
        assert_eq!(
            (oidc.subject_claim.as_str(), oidc.groups_claim.as_str()),
            ("sub", "groups")
        );
        assert_eq!(oidc.clock_skew, std::time::Duration::from_secs(60));
        assert_eq!(config.auth.roles["cab-members"].approver_groups, ["cab"]);
        let e = Config::parse(
            "[auth.oidc]\nissuer = \"i\"\naudience = \"a\"\nclock_skew = \"soon\"\n",
            "steward.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
        assert!(Config::parse("[auth.oidc]\nissuer = \"i\"\n", "steward.toml").is_err());
    }

    #[test]
    fn debug_output_holds_no_secret_value() {
        let text = r#"
database = "postgres://steward:db-pass-0001@db.example.com:5432/steward?sslmode=require&password=db-pass-0002"

[secrets]
SNOW_TOKEN = { value = "secret-value-0003" }
FROM_ENV = { env = "SNOW_TOKEN_VAR" }

[hooks.servicenow]
workflow = "access-request"
secret = { value = "hook-secret-0004" }
previous_secret = { value = "hook-secret-0005" }

[plugins.notify.channels]
it-managers = "https://chat.example.com/hooks/T0SECRET-0006"
"#;
        let mut c = Config::parse(text, "steward.toml").unwrap();
        c.apply_env(|k| (k == "STEWARD_ADMIN_TOKEN").then(|| "admin-token-0007".to_string()));
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            for secret in [
                "db-pass-0001",
                "db-pass-0002",
                "secret-value-0003",
                "hook-secret-0004",
                "hook-secret-0005",
                "T0SECRET-0006",
                "admin-token-0007",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            // What is not secret still shows, to be of use when debugging.
            for visible in [
                "db.example.com",
                "steward:***@",
                "sslmode=require",
                "SNOW_TOKEN_VAR",
                "access-request",
                "channels",
                "<redacted>",
            ] {
                assert!(shown.contains(visible), "{visible} not in {shown}");
            }
        }
        assert_eq!(
            redact_url("sqlite://steward-data/steward.db"),
            "sqlite://steward-data/steward.db"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Config::parse("[secrets]\nTOKEN = { value = \"hunter2\" }\n", "s.toml").unwrap();
        let secrets = c.resolve_secrets().unwrap();
        assert_eq!(secrets.get("TOKEN"), Some("hunter2"));
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
