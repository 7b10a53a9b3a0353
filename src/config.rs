//! Settings: built-in defaults, then an optional `strava-sync.toml`, then the
//! environment (which wins). Every key is named as in SPEC.md, in the file too.
//!
//! Loading is a pure function of its sources so it can be tested without
//! touching the process environment; all problems are reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::model::Purpose;
use ipnet::IpNet;

/// The file read when present in the working directory.
pub const CONFIG_FILE: &str = "strava-sync.toml";

/// A secret value whose `Debug` never shows it, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// An origin whose pages may call the read API (`CORS_ALLOWED_ORIGINS`):
/// one exactly, or a scheme and host on any port (`http://localhost:*`),
/// for development servers whose port changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigin {
    Exact(String),
    /// `scheme://host`, with or without a port.
    AnyPort(String),
}

impl AllowedOrigin {
    /// Whether a browser's `Origin` header names this origin.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            AllowedOrigin::Exact(exact) => origin == exact,
            AllowedOrigin::AnyPort(host) => {
                origin.strip_prefix(host.as_str()).is_some_and(|rest| {
                    rest.is_empty()
                        || rest.strip_prefix(':').is_some_and(|port| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
                })
            }
        }
    }
}

/// As written in `CORS_ALLOWED_ORIGINS`.
impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedOrigin::Exact(origin) => f.write_str(origin),
            AllowedOrigin::AnyPort(host) => write!(f, "{host}:*"),
        }
    }
}

/// Whether `scheme://host[:port]` names a port (an IPv6 host's colons are
/// inside its brackets).
fn names_port(origin: &str) -> bool {
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    after_host.contains(':')
}

/// A 256-bit key for Strava tokens at rest; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

/// Where strava-sync posts its own events, and the key that signs them
/// (`APP_WEBHOOK_SECRET` after `whsec_`, base64-decoded, as the Standard
/// Webhooks convention has it); `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AppWebhook {
    pub url: String,
    key: Vec<u8>,
}

impl AppWebhook {
    pub fn new(url: impl Into<String>, key: Vec<u8>) -> Self {
        Self {
            url: url.into(),
            key,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for AppWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppWebhook {{ url: {:?}, key: [redacted] }}", self.url)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (`DATABASE_PATH`, or `DATABASE_URL=sqlite://PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`DATABASE_URL`), which may hold a password.
    Postgres(String),
}

impl Database {
    /// The setting that chose it, for messages.
    pub fn setting(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "DATABASE_PATH",
            Database::Postgres(_) => "DATABASE_URL",
        }
    }

    /// The setting and the value that choose it (password included), for
    /// starting a `strava-sync` process on it.
    pub fn env(&self) -> (&'static str, String) {
        let value = match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => url.clone(),
        };
        (self.setting(), value)
    }
}

/// The file, or the URL without its password.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({self})")
    }
}

/// `scheme://user:password@host/...` as `scheme://user:***@host/...`, also
/// without the scheme (a malformed URL is quoted back too). A `password=`
/// query parameter is masked as well; the user information ends at the last
/// `@`, as a password may hold one unencoded.
fn without_password(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let mut shown = match rest.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}{name}:***@{host}")
        }
        _ => format!("{scheme}{rest}"),
    };
    if let Some(query) = query {
        let masked: Vec<&str> = query
            .split('&')
            .map(|pair| {
                if pair.starts_with("password=") {
                    "password=***"
                } else {
                    pair
                }
            })
            .collect();
        shown = format!("{shown}?{}", masked.join("&"));
    }
    shown
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: Database,
    pub host: String,
    pub port: u16,
    /// External base URL without a trailing slash.
    pub public_url: String,
    pub strava_client_id: Option<String>,
    pub strava_client_secret: Option<Secret>,
    pub strava_webhook_verify_token: Option<Secret>,
    /// Encrypts Strava's tokens at rest.
    pub token_encryption_key: Option<TokenKey>,
    /// The key being rotated out: still opens tokens sealed with it.
    pub token_encryption_key_previous: Option<TokenKey>,
    pub strava_api_url: String,
    pub strava_oauth_url: String,
    pub strava_scopes: String,
    pub strava_rate_limit_15min: u32,
    pub strava_rate_limit_daily: u32,
    pub sync_schedule: String,
    pub manual_refresh_cooldown_secs: u64,
    pub admin_token: Option<Secret>,
    pub app_redirect_url: Option<String>,
    /// Unset: no events are sent to the application.
    pub app_webhook: Option<AppWebhook>,
    pub cors_allowed_origins: Vec<AllowedOrigin>,
    /// Requests per second per API token; 0 turns rate limiting off.
    pub api_rate_limit: u32,
    /// Each background purpose's guaranteed share of the day, in percent.
    pub budget_shares: BTreeMap<Purpose, u32>,
    /// Athlete tiers and their weights, in the order given.
    pub tiers: Vec<(String, u32)>,
    /// The tier of athletes no operator has placed.
    pub default_tier: String,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per minute per client address to connect (`/auth/strava`
    /// and its callback); 0 turns the limit off.
    pub connect_rate_limit: u32,
    /// Requests per second per client address to the webhook callback; 0
    /// turns the limit off.
    pub webhook_rate_limit: u32,
    pub log_format: LogFormat,
    /// Defaults worth a word at start (a `PUBLIC_URL` Strava cannot reach).
    pub warnings: Vec<String>,
}

/// What a command needs beyond the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Talking to Strava: client id and secret.
    StravaApp,
    /// Receiving webhooks: the verify token.
    Webhooks,
    /// Keeping Strava's tokens: the key they are encrypted with.
    TokenKey,
}

/// Every problem found while loading, reported together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Every key the service reads, with its default (None: no default).
const KEYS: &[(&str, Option<&str>)] = &[
    ("DATABASE_PATH", Some("strava-sync.db")),
    ("DATABASE_URL", None),
    ("HOST", Some("127.0.0.1")),
    ("PORT", Some("8080")),
    ("PUBLIC_URL", Some("http://localhost:8080")),
    ("STRAVA_CLIENT_ID", None),
    ("STRAVA_CLIENT_SECRET", None),
    ("STRAVA_WEBHOOK_VERIFY_TOKEN", None),
    ("TOKEN_ENCRYPTION_KEY", None),
    ("TOKEN_ENCRYPTION_KEY_PREVIOUS", None),
    ("STRAVA_API_URL", Some("https://www.strava.com/api/v3")),
    ("STRAVA_OAUTH_URL", Some("https://www.strava.com/oauth")),
    ("STRAVA_SCOPES", Some("read,activity:read_all")),
    ("STRAVA_RATE_LIMIT_15MIN", Some("100")),
    ("STRAVA_RATE_LIMIT_DAILY", Some("1000")),
    ("SYNC_SCHEDULE", Some("0 0 4 * * *")),
    ("MANUAL_REFRESH_COOLDOWN_SECS", Some("300")),
    ("ADMIN_TOKEN", None),
    ("APP_REDIRECT_URL", None),
    ("APP_WEBHOOK_URL", None),
    ("APP_WEBHOOK_SECRET", None),
    ("CORS_ALLOWED_ORIGINS", None),
    ("API_RATE_LIMIT", Some("20")),
    (
        "BUDGET_SHARES",
        Some("webhook=55,gap_fill=15,backfill=15,reconcile=10,enrichment=5"),
    ),
    ("TIERS", Some("standard=1")),
    ("DEFAULT_TIER", None),
    ("TRUSTED_PROXIES", None),
    ("CONNECT_RATE_LIMIT", Some("30")),
    ("WEBHOOK_RATE_LIMIT", Some("100")),
    ("LOG_FORMAT", Some("pretty")),
];

impl Settings {
    /// Reads `strava-sync.toml` (if present) and the process environment:
    /// the settings, defaults standing in for wrong values, and every
    /// malformed value and everything `needs` lacks, so the caller can add
    /// what only the machine can check and report all of it at once.
    pub fn read(needs: &[Requirement]) -> (Self, Vec<String>) {
        let (file, unreadable) = match std::fs::read_to_string(CONFIG_FILE) {
            Ok(text) => (Some(text), None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => (None, Some(format!("{CONFIG_FILE}: {e}"))),
        };
        let (settings, mut problems) =
            Self::parse(file.as_deref(), |key| std::env::var(key).ok(), needs);
        problems.extend(unreadable);
        (settings, problems)
    }

    /// Builds settings from the file's text and an environment lookup.
    pub fn from_sources(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_sources_for(file, env, &[])
    }

    /// [`Settings::from_sources`], also naming what `needs` lacks.
    pub fn from_sources_for(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        needs: &[Requirement],
    ) -> Result<Self, ConfigError> {
        let (settings, problems) = Self::parse(file, env, needs);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The settings, defaults standing in for wrong values, and every problem.
    fn parse(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        needs: &[Requirement],
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        // What the file or the environment set; the rest are defaults.
        let mut given: BTreeMap<&str, String> = BTreeMap::new();

        if let Some(text) = file {
            match text.parse::<toml::Table>() {
                Ok(table) => {
                    for (key, value) in table {
                        let upper = key.to_ascii_uppercase();
                        let Some((known, _)) = KEYS.iter().find(|(k, _)| *k == upper) else {
                            problems.push(format!("{CONFIG_FILE}: unknown key `{key}`"));
                            continue;
                        };
                        let text = match value {
                            toml::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        given.insert(known, text);
                    }
                }
                Err(e) => problems.push(format!("{CONFIG_FILE}: {}", e.message())),
            }
        }
        for (key, _) in KEYS {
            if let Some(value) = env(key) {
                given.insert(key, value);
            }
        }
        let public_url_defaulted = !given.contains_key("PUBLIC_URL");
        let mut values: BTreeMap<&str, String> = KEYS
            .iter()
            .filter_map(|(k, d)| d.map(|d| (*k, d.to_string())))
            .collect();
        values.extend(given);

        let mut p = Parser {
            values: &values,
            problems: &mut problems,
        };
        let tiers = p.tiers("TIERS");
        let mut settings = Settings {
            database: p.database(),
            host: p.text("HOST"),
            port: p.number("PORT", u16::MAX),
            public_url: p.url("PUBLIC_URL").trim_end_matches('/').to_string(),
            strava_client_id: p.optional("STRAVA_CLIENT_ID"),
            strava_client_secret: p.optional("STRAVA_CLIENT_SECRET").map(Secret),
            strava_webhook_verify_token: p.optional("STRAVA_WEBHOOK_VERIFY_TOKEN").map(Secret),
            token_encryption_key: p.key("TOKEN_ENCRYPTION_KEY"),
            token_encryption_key_previous: p.key("TOKEN_ENCRYPTION_KEY_PREVIOUS"),
            strava_api_url: p.url("STRAVA_API_URL").trim_end_matches('/').to_string(),
            strava_oauth_url: p.url("STRAVA_OAUTH_URL").trim_end_matches('/').to_string(),
            strava_scopes: p.text("STRAVA_SCOPES"),
            strava_rate_limit_15min: p.positive("STRAVA_RATE_LIMIT_15MIN"),
            strava_rate_limit_daily: p.positive("STRAVA_RATE_LIMIT_DAILY"),
            sync_schedule: p.schedule("SYNC_SCHEDULE"),
            manual_refresh_cooldown_secs: p.number("MANUAL_REFRESH_COOLDOWN_SECS", u64::MAX),
            admin_token: p.optional("ADMIN_TOKEN").map(Secret),
            app_redirect_url: p.redirect("APP_REDIRECT_URL"),
            app_webhook: p.app_webhook(),
            cors_allowed_origins: p.origins("CORS_ALLOWED_ORIGINS"),
            api_rate_limit: p.number("API_RATE_LIMIT", u32::MAX),
            trusted_proxies: p.networks("TRUSTED_PROXIES"),
            connect_rate_limit: p.number("CONNECT_RATE_LIMIT", u32::MAX),
            webhook_rate_limit: p.number("WEBHOOK_RATE_LIMIT", u32::MAX),
            budget_shares: p.shares("BUDGET_SHARES"),
            tiers: tiers.clone(),
            default_tier: match p.optional("DEFAULT_TIER") {
                None => tiers
                    .first()
                    .map(|(name, _)| name.clone())
                    .unwrap_or_default(),
                Some(name) if tiers.iter().any(|(t, _)| *t == name) => name,
                Some(name) => {
                    p.problems
                        .push(format!("DEFAULT_TIER `{name}` is not one of TIERS"));
                    name
                }
            },
            log_format: match p.text("LOG_FORMAT").to_ascii_lowercase().as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    problems.push(format!(
                        "LOG_FORMAT must be `pretty` or `json`, not `{other}`"
                    ));
                    LogFormat::Pretty
                }
            },
            warnings: Vec::new(),
        };
        if public_url_defaulted {
            settings.warnings.push(format!(
                "PUBLIC_URL is not set: Strava will send athletes back to {} and the webhook \
                 callback is registered there; set it to this service's external URL",
                settings.public_url
            ));
        }
        problems.extend(settings.missing(needs));
        (settings, problems)
    }

    /// Checks that what a command needs is set, naming every missing key.
    pub fn require(&self, needs: &[Requirement]) -> Result<(), ConfigError> {
        let problems = self.missing(needs);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// One problem per setting `needs` lacks.
    fn missing(&self, needs: &[Requirement]) -> Vec<String> {
        let mut missing = Vec::new();
        for need in needs {
            match need {
                Requirement::StravaApp => {
                    if self.strava_client_id.is_none() {
                        missing.push("STRAVA_CLIENT_ID is required but not set".to_string());
                    }
                    if self.strava_client_secret.is_none() {
                        missing.push("STRAVA_CLIENT_SECRET is required but not set".to_string());
                    }
                }
                Requirement::Webhooks => {
                    if self.strava_webhook_verify_token.is_none() {
                        missing.push(
                            "STRAVA_WEBHOOK_VERIFY_TOKEN is required but not set".to_string(),
                        );
                    }
                }
                Requirement::TokenKey => {
                    if self.token_encryption_key.is_none() {
                        missing.push(
                            "TOKEN_ENCRYPTION_KEY is required but not set (32 random bytes, \
                             hex or base64: `openssl rand -hex 32`)"
                                .to_string(),
                        );
                    }
                }
            }
        }
        missing
    }
}

struct Parser<'a> {
    values: &'a BTreeMap<&'static str, String>,
    problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn text(&mut self, key: &str) -> String {
        self.values.get(key).cloned().unwrap_or_default()
    }

    /// An unset or empty value is absent.
    fn optional(&mut self, key: &str) -> Option<String> {
        self.values
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A whole number from 0 to `max`, the largest `T` holds.
    fn number<T: TryFrom<u64> + Into<u64> + Default>(&mut self, key: &str, max: T) -> T {
        let raw = self.text(key);
        let parsed = raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| T::try_from(n).ok());
        parsed.unwrap_or_else(|| {
            self.problems.push(format!(
                "{key} must be a whole number from 0 to {}, not `{raw}`",
                max.into()
            ));
            T::default()
        })
    }

    fn positive(&mut self, key: &str) -> u32 {
        let reported = self.problems.len();
        let n: u32 = self.number(key, u32::MAX);
        // A zero however written (`00`, `+0`), unless it was not a number.
        if n == 0 && self.problems.len() == reported {
            self.problems.push(format!("{key} must be at least 1"));
        }
        n
    }

    /// 32 bytes written as 64 hex digits or in base64 (standard or URL-safe,
    /// padded or not).
    fn key(&mut self, key: &str) -> Option<TokenKey> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        use base64::Engine;
        let raw = self.optional(key)?;
        let hex = || -> Option<Vec<u8>> {
            let digits = raw.as_bytes();
            (digits.len() == 64).then_some(())?;
            digits
                .chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
                .collect()
        };
        let bytes = hex().or_else(|| {
            [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(&raw).ok())
        });
        match bytes.map(<[u8; 32]>::try_from) {
            Some(Ok(bytes)) => Some(TokenKey(bytes)),
            _ => {
                self.problems.push(format!(
                    "{key} must be 32 bytes written as 64 hex digits or in base64 \
                     (`openssl rand -hex 32` makes one)"
                ));
                None
            }
        }
    }

    /// Comma-separated addresses (`10.0.0.7`) or ranges (`10.0.0.0/8`).
    fn networks(&mut self, key: &str) -> Vec<IpNet> {
        let raw = self.optional(key).unwrap_or_default();
        let mut out = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.parse::<IpNet>() {
                Ok(net) => out.push(net),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(addr) => out.push(IpNet::from(addr)),
                    Err(_) => self.problems.push(format!(
                        "{key} must list IP addresses or CIDR ranges, not `{item}`"
                    )),
                },
            }
        }
        out
    }

    fn url(&mut self, key: &str) -> String {
        let raw = self.text(key);
        let web = reqwest::Url::parse(&raw)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !web {
            self.problems.push(format!(
                "{key} must be an http:// or https:// URL, not `{}`",
                without_password(&raw)
            ));
        }
        raw
    }

    /// `name=number` pairs separated by commas, each name once.
    fn pairs(&mut self, key: &str) -> Vec<(String, u32)> {
        let raw = self.text(key);
        let mut out: Vec<(String, u32)> = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parsed = item.split_once('=').and_then(|(name, n)| {
                let name = name.trim();
                let valid = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                Some((name.to_string(), n.trim().parse::<u32>().ok()?)).filter(|_| valid)
            });
            match parsed {
                Some((name, _)) if out.iter().any(|(n, _)| *n == name) => {
                    self.problems.push(format!("{key} names `{name}` twice"));
                }
                Some(pair) => out.push(pair),
                None => self.problems.push(format!(
                    "{key} must be `name=number` pairs separated by commas, not `{item}`"
                )),
            }
        }
        out
    }

    /// `DATABASE_URL` when set (PostgreSQL, or `sqlite://PATH`), else the
    /// SQLite file at `DATABASE_PATH`.
    fn database(&mut self) -> Database {
        let Some(url) = self.optional("DATABASE_URL") else {
            return Database::Sqlite(PathBuf::from(self.text("DATABASE_PATH")));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Database::Postgres(url);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            // A file, not SQLite's in-memory database (nothing would
            // survive, and each pooled connection would have its own) nor
            // URL options, which would only become part of the file name.
            .filter(|p| !p.is_empty() && !p.contains(":memory:") && !p.contains('?'));
        match path {
            Some(path) => Database::Sqlite(PathBuf::from(path)),
            None => {
                self.problems
                    .push("DATABASE_URL must be postgres://... or sqlite://PATH".to_string());
                Database::Sqlite(PathBuf::from(self.text("DATABASE_PATH")))
            }
        }
    }

    /// `APP_WEBHOOK_URL` and `APP_WEBHOOK_SECRET`, set together or not at
    /// all; the secret is `whsec_` and at least 16 bytes in base64.
    fn app_webhook(&mut self) -> Option<AppWebhook> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let (url, secret) = match (
            self.optional("APP_WEBHOOK_URL"),
            self.optional("APP_WEBHOOK_SECRET"),
        ) {
            (None, None) => return None,
            (Some(_), None) | (None, Some(_)) => {
                self.problems.push(
                    "APP_WEBHOOK_URL and APP_WEBHOOK_SECRET must be set together".to_string(),
                );
                return None;
            }
            (Some(_), Some(secret)) => (self.url("APP_WEBHOOK_URL"), secret),
        };
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|key| key.len() >= 16);
        if key.is_none() {
            self.problems.push(
                "APP_WEBHOOK_SECRET must be `whsec_` followed by at least 16 random bytes in \
                 base64 (`echo whsec_$(openssl rand -base64 32)` makes one)"
                    .to_string(),
            );
        }
        Some(AppWebhook::new(url, key?))
    }

    /// Any absolute URL (an app may take the browser back by its own scheme).
    fn redirect(&mut self, key: &str) -> Option<String> {
        let raw = self.optional(key)?;
        if reqwest::Url::parse(&raw).is_err() {
            self.problems.push(format!(
                "{key} must be an absolute URL, not `{}`",
                without_password(&raw)
            ));
        }
        Some(raw)
    }

    /// Comma-separated origins, `scheme://host[:port]` each, as browsers send
    /// them (a trailing slash is dropped), or `scheme://host:*` for any port;
    /// nothing else can match a browser's `Origin`.
    fn origins(&mut self, key: &str) -> Vec<AllowedOrigin> {
        let raw = self.optional(key).unwrap_or_default();
        let mut out = Vec::new();
        for origin in raw.split(',').map(|o| o.trim().trim_end_matches('/')) {
            if origin.is_empty() {
                continue;
            }
            let (host, allowed) = match origin.strip_suffix(":*") {
                Some(host) => (host, AllowedOrigin::AnyPort(host.to_string())),
                None => (origin, AllowedOrigin::Exact(origin.to_string())),
            };
            let valid = reqwest::Url::parse(host).is_ok_and(|u| {
                u.has_host() && u.path() == "/" && u.query().is_none() && u.fragment().is_none()
            }) && host.parse::<actix_web::http::Uri>().is_ok()
                && !(matches!(allowed, AllowedOrigin::AnyPort(_)) && names_port(host));
            if valid {
                out.push(allowed);
            } else {
                self.problems.push(format!(
                    "{key} must list origins like `https://app.example`, not `{origin}`"
                ));
            }
        }
        out
    }

    /// `BUDGET_SHARES`: background purposes and their percentages, at most
    /// 100 in all; purposes not named get none guaranteed.
    fn shares(&mut self, key: &str) -> BTreeMap<Purpose, u32> {
        let mut shares = BTreeMap::new();
        for (name, percent) in self.pairs(key) {
            match Purpose::parse(&name).filter(|p| Purpose::BACKGROUND.contains(p)) {
                Some(purpose) => {
                    shares.insert(purpose, percent);
                }
                None => self.problems.push(format!(
                    "{key}: `{name}` is not one of webhook, gap_fill, backfill, reconcile, enrichment"
                )),
            }
        }
        if shares.values().sum::<u32>() > 100 {
            self.problems
                .push(format!("{key} must add up to at most 100 percent"));
        }
        shares
    }

    /// `TIERS`: at least one tier, each weighing at least 1.
    fn tiers(&mut self, key: &str) -> Vec<(String, u32)> {
        let tiers = self.pairs(key);
        if tiers.is_empty() {
            self.problems
                .push(format!("{key} must name at least one tier"));
        }
        if tiers.iter().any(|(_, weight)| *weight == 0) {
            self.problems
                .push(format!("{key}: every tier must weigh at least 1"));
        }
        tiers
    }

    /// A cron expression as the scheduler reads it (seconds required, day
    /// of month and weekday both apply), parsed here so a bad one stops the
    /// start before anything runs.
    fn schedule(&mut self, key: &str) -> String {
        let raw = self.text(key);
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&raw);
        if raw.split_whitespace().count() != 6 || parsed.is_err() {
            let why = parsed.err().map(|e| format!(" ({e})")).unwrap_or_default();
            self.problems.push(format!(
                "{key} must be a six-field cron expression (sec min hour day month weekday), \
                 not `{raw}`{why}"
            ));
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::from_sources(None, env(&[])).unwrap();
        assert_eq!(
            s.database,
            Database::Sqlite(PathBuf::from("strava-sync.db"))
        );
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8080));
        assert_eq!(s.public_url, "http://localhost:8080");
        assert_eq!(s.strava_api_url, "https://www.strava.com/api/v3");
        assert_eq!(s.strava_scopes, "read,activity:read_all");
        assert_eq!(
            (s.strava_rate_limit_15min, s.strava_rate_limit_daily),
            (100, 1000)
        );
        assert_eq!(s.sync_schedule, "0 0 4 * * *");
        assert_eq!(s.manual_refresh_cooldown_secs, 300);
        assert_eq!(s.api_rate_limit, 20);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert!(s.admin_token.is_none() && s.cors_allowed_origins.is_empty());
    }

    #[test]
    fn environment_wins_over_file() {
        let file = "PORT = 9000\nhost = \"0.0.0.0\"\nADMIN_TOKEN = \"from-file\"";
        let s = Settings::from_sources(Some(file), env(&[("PORT", "9100")])).unwrap();
        assert_eq!(s.port, 9100);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.admin_token.unwrap().expose(), "from-file");
    }

    #[test]
    fn every_malformed_value_is_named_at_once() {
        let err = Settings::from_sources(
            Some("nonsense = 1"),
            env(&[
                ("PORT", "eighty"),
                ("STRAVA_API_URL", "ftp://x"),
                ("STRAVA_RATE_LIMIT_15MIN", "0"),
                ("STRAVA_RATE_LIMIT_DAILY", "+00"),
                ("LOG_FORMAT", "xml"),
                ("SYNC_SCHEDULE", "0 4 * * *"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "nonsense",
            "PORT",
            "STRAVA_API_URL",
            "STRAVA_RATE_LIMIT_15MIN",
            "STRAVA_RATE_LIMIT_DAILY",
            "LOG_FORMAT",
            "SYNC_SCHEDULE",
        ] {
            assert!(text.contains(key), "{key} not named in: {text}");
        }
        assert_eq!(err.problems.len(), 7);
    }

    #[test]
    fn a_refused_url_is_quoted_without_its_password() {
        let err = Settings::from_sources(
            None,
            env(&[
                ("APP_WEBHOOK_URL", "ftp://app:hunter2-pw@example.com/hook"),
                (
                    "APP_WEBHOOK_SECRET",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ),
                ("APP_REDIRECT_URL", "no scheme:s3cret-pw@x"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ftp://app:***@example.com/hook"), "{err}");
        assert!(
            !err.contains("hunter2-pw") && !err.contains("s3cret-pw"),
            "{err}"
        );
    }

    #[test]
    fn missing_requirements_are_named() {
        let s = Settings::from_sources(None, env(&[("STRAVA_CLIENT_ID", "1")])).unwrap();
        let err = s
            .require(&[Requirement::StravaApp, Requirement::Webhooks])
            .unwrap_err();
        assert_eq!(err.problems.len(), 2);
        assert!(err.to_string().contains("STRAVA_CLIENT_SECRET"));
        assert!(err.to_string().contains("STRAVA_WEBHOOK_VERIFY_TOKEN"));
    }

    #[test]
    fn a_schedule_the_scheduler_would_refuse_is_refused_at_load() {
        for bad in ["61 0 4 * * *", "0 0 25 * * *", "0 0 4 * * Funday"] {
            let err = Settings::from_sources(None, env(&[("SYNC_SCHEDULE", bad)])).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{bad}: {err}");
            assert!(err.problems[0].starts_with("SYNC_SCHEDULE"), "{err}");
        }
        let s = Settings::from_sources(None, env(&[("SYNC_SCHEDULE", "0 30 */6 * * Mon-Fri")]));
        assert!(s.is_ok());
    }

    #[test]
    fn a_number_out_of_range_names_the_range() {
        let err = Settings::from_sources(None, env(&[("PORT", "70000")])).unwrap_err();
        assert_eq!(
            err.problems,
            ["PORT must be a whole number from 0 to 65535, not `70000`"]
        );
    }

    #[test]
    fn malformed_and_missing_settings_are_reported_together() {
        let needs = [Requirement::StravaApp, Requirement::Webhooks];
        let err = Settings::from_sources_for(None, env(&[("PORT", "abc")]), &needs).unwrap_err();
        let text = err.to_string();
        for key in [
            "PORT",
            "STRAVA_CLIENT_ID",
            "STRAVA_CLIENT_SECRET",
            "STRAVA_WEBHOOK_VERIFY_TOKEN",
        ] {
            assert!(text.contains(key), "{key} not named in: {text}");
        }
        assert_eq!(err.problems.len(), 4);
    }

    #[test]
    fn a_defaulted_public_url_is_warned_about() {
        let s = Settings::from_sources(None, env(&[])).unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].starts_with("PUBLIC_URL"), "{:?}", s.warnings);
        let from_env = env(&[("PUBLIC_URL", "https://sync.example")]);
        assert!(Settings::from_sources(None, from_env)
            .unwrap()
            .warnings
            .is_empty());
        let file = "public_url = \"https://sync.example\"";
        let from_file = Settings::from_sources(Some(file), env(&[])).unwrap();
        assert!(from_file.warnings.is_empty());
    }

    #[test]
    fn urls_and_origins_are_checked_at_load() {
        let err = Settings::from_sources(
            None,
            env(&[
                ("PUBLIC_URL", "http://"),
                ("APP_REDIRECT_URL", "not a url"),
                (
                    "CORS_ALLOWED_ORIGINS",
                    "https://a.example, *, https://b.example/path",
                ),
            ]),
        )
        .unwrap_err();
        let named: Vec<&str> = err
            .problems
            .iter()
            .map(|p| p.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            named,
            [
                "PUBLIC_URL",
                "APP_REDIRECT_URL",
                "CORS_ALLOWED_ORIGINS",
                "CORS_ALLOWED_ORIGINS"
            ]
        );
        let s = Settings::from_sources(None, env(&[("APP_REDIRECT_URL", "myapp://connected")]));
        assert!(s.is_ok(), "an app's own scheme");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let s = Settings::from_sources(
            None,
            env(&[("TRUSTED_PROXIES", "10.0.0.7, 192.168.0.0/16,::1,")]),
        )
        .unwrap();
        let listed: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(listed, ["10.0.0.7/32", "192.168.0.0/16", "::1/128"]);
        let err = Settings::from_sources(None, env(&[("TRUSTED_PROXIES", "10.0.0.7,proxy")]))
            .unwrap_err();
        assert_eq!(
            err.problems,
            ["TRUSTED_PROXIES must list IP addresses or CIDR ranges, not `proxy`"]
        );
    }

    #[test]
    fn token_keys_are_32_bytes_in_hex_or_base64() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let base64 = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=";
        for (given, previous) in [(hex, base64), (base64, hex)] {
            let s = Settings::from_sources(
                None,
                env(&[
                    ("TOKEN_ENCRYPTION_KEY", given),
                    ("TOKEN_ENCRYPTION_KEY_PREVIOUS", previous),
                ]),
            )
            .unwrap();
            assert_eq!(s.token_encryption_key, s.token_encryption_key_previous);
            assert_eq!(s.token_encryption_key.unwrap().expose()[15], 0xff);
        }
        for bad in ["0011", "not a key", &hex[..62], &format!("{hex}00")] {
            let err =
                Settings::from_sources(None, env(&[("TOKEN_ENCRYPTION_KEY", bad)])).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{bad}");
            assert!(
                err.problems[0].starts_with("TOKEN_ENCRYPTION_KEY "),
                "{err}"
            );
            assert!(!err.to_string().contains(bad), "the value is a secret");
        }
        let s = Settings::from_sources(None, env(&[("TOKEN_ENCRYPTION_KEY", hex)])).unwrap();
        assert!(!format!("{s:?}").contains("112233"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_sources(None, env(&[("STRAVA_CLIENT_SECRET", "hunter2")])).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn cors_origins_are_split_and_trimmed() {
        let s = Settings::from_sources(
            None,
            env(&[(
                "CORS_ALLOWED_ORIGINS",
                "https://a.example/, https://b.example ,",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.cors_allowed_origins,
            vec![
                AllowedOrigin::Exact("https://a.example".into()),
                AllowedOrigin::Exact("https://b.example".into())
            ]
        );
    }

    #[test]
    fn the_app_webhook_needs_both_settings_and_a_standard_webhooks_secret() {
        let load = |pairs: &[(&str, &str)]| Settings::from_sources(None, env(pairs));
        let url = ("APP_WEBHOOK_URL", "https://app.example/hooks");
        let s = load(&[
            url,
            (
                "APP_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ])
        .unwrap();
        let hook = s.app_webhook.unwrap();
        assert_eq!(hook.url, "https://app.example/hooks");
        assert_eq!(hook.key().len(), 24);
        assert!(!format!("{hook:?}").contains("MfKQ"));
        for bad in [
            vec![url],
            vec![(
                "APP_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )],
            vec![
                url,
                ("APP_WEBHOOK_SECRET", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ],
            vec![url, ("APP_WEBHOOK_SECRET", "whsec_not base64!")],
            vec![url, ("APP_WEBHOOK_SECRET", "whsec_c2hvcnQ=")],
            vec![
                ("APP_WEBHOOK_URL", "ftp://app.example"),
                (
                    "APP_WEBHOOK_SECRET",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                ),
            ],
        ] {
            let err = load(&bad).unwrap_err();
            assert!(
                err.problems.iter().any(|p| p.contains("APP_WEBHOOK")),
                "{bad:?}: {err}"
            );
        }
        assert!(load(&[]).unwrap().app_webhook.is_none());
    }

    #[test]
    fn database_url_names_a_sqlite_file_or_a_postgresql_database() {
        let load = |url: &str| Settings::from_sources(None, env(&[("DATABASE_URL", url)]));
        let sqlite = |path: &str| Database::Sqlite(PathBuf::from(path));
        assert_eq!(
            load("sqlite:///var/lib/s.db").unwrap().database,
            sqlite("/var/lib/s.db")
        );
        assert_eq!(
            load("sqlite://data/s.db").unwrap().database,
            sqlite("data/s.db")
        );
        assert_eq!(load("sqlite:s.db").unwrap().database, sqlite("s.db"));
        let postgres = load("postgres://u:secret@db/strava").unwrap().database;
        assert_eq!(
            postgres,
            Database::Postgres("postgres://u:secret@db/strava".into())
        );
        assert_eq!(postgres.to_string(), "postgres://u:***@db/strava");
        let shown = |url: &str| load(url).unwrap().database.to_string();
        assert_eq!(shown("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
        assert_eq!(
            shown("postgres://db/x?user=u&password=hunter2&sslmode=require"),
            "postgres://db/x?user=u&password=***&sslmode=require"
        );
        assert!(!format!("{postgres:?}").contains("secret"));
        assert_eq!(
            load("postgresql://db/strava").unwrap().database.to_string(),
            "postgresql://db/strava"
        );
        for wrong in [
            "mysql://db/x",
            "sqlite://",
            "s.db",
            "sqlite::memory:",
            "sqlite://s.db?mode=rwc",
        ] {
            assert!(load(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_cors_origin_may_allow_any_port() {
        let origins = |value: &str| {
            Settings::from_sources(None, env(&[("CORS_ALLOWED_ORIGINS", value)]))
                .map(|s| s.cors_allowed_origins)
        };
        let any = origins("http://localhost:*").unwrap();
        assert_eq!(any, vec![AllowedOrigin::AnyPort("http://localhost".into())]);
        for origin in [
            "http://localhost",
            "http://localhost:3000",
            "http://localhost:1",
        ] {
            assert!(any[0].matches(origin), "{origin}");
        }
        for origin in [
            "https://localhost:3000",
            "http://localhost.evil.example",
            "http://localhost:3000.evil.example",
            "http://localhost:",
            "http://localhostx:3000",
        ] {
            assert!(!any[0].matches(origin), "{origin}");
        }
        for wrong in ["http://localhost:80:*", "localhost:*", "http://a/b:*"] {
            assert!(origins(wrong).is_err(), "{wrong}");
        }
    }

    /// A value as an operator may write one, right or wrong.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            any::<i64>().prop_map(|n| n.to_string()),
            "[0-9]{1,25}",
            "[+]?0{1,3}",
            "[0-9a-fA-F]{62,66}",
            "[A-Za-z0-9+/_-]{42,45}={0,2}",
            "(http|https|ftp)://[a-z.]{1,12}(:[0-9]{1,6})?/?",
            "([0-9*/,-]{1,5} ){4,6}[A-Za-z*]{0,4}",
            "([0-9a-f:.]{2,20}(/[0-9]{1,3})?,?){0,3}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_configuration_loads_or_names_each_problem(
            values in prop::collection::vec(prop::option::of(value()), KEYS.len()),
            file in prop::option::of("\\PC{0,60}"),
        ) {
            let given: BTreeMap<&str, String> = KEYS
                .iter()
                .zip(values)
                .filter_map(|((key, _), value)| Some((*key, value?)))
                .collect();
            let needs = [Requirement::StravaApp, Requirement::Webhooks, Requirement::TokenKey];
            let loaded = Settings::from_sources_for(file.as_deref(), |k| given.get(k).cloned(), &needs);
            let err = match loaded {
                Ok(settings) => {
                    // What loads is usable: no zero budget to divide by.
                    prop_assert!(settings.strava_rate_limit_15min >= 1, "{given:?}");
                    prop_assert!(settings.strava_rate_limit_daily >= 1, "{given:?}");
                    return Ok(());
                }
                Err(err) => err,
            };
            for problem in &err.problems {
                let named = KEYS.iter().any(|(key, _)| problem.starts_with(key))
                    || problem.starts_with(CONFIG_FILE);
                prop_assert!(named, "{problem}");
                for key in ["TOKEN_ENCRYPTION_KEY", "TOKEN_ENCRYPTION_KEY_PREVIOUS"] {
                    // A problem may quote another setting's value, which can
                    // happen to contain the generated secret.
                    let quoted_elsewhere = |secret: &str| {
                        given.iter().any(|(k, v)| k != &key && v.contains(secret))
                    };
                    if let Some(secret) = given
                        .get(key)
                        .map(|s| s.trim())
                        .filter(|s| s.len() >= 8 && !quoted_elsewhere(s))
                    {
                        prop_assert!(!problem.contains(secret), "{problem}");
                    }
                }
            }
        }
    }
}
