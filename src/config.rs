//! Settings: built-in defaults, then an optional `strava-sync.toml`, then the
//! environment (which wins). Every key is named as in SPEC.md, in the file too.
//!
//! Loading is a pure function of its sources so it can be tested without
//! touching the process environment; all problems are reported at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::model::Purpose;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_path: PathBuf,
    pub host: String,
    pub port: u16,
    /// External base URL without a trailing slash.
    pub public_url: String,
    pub strava_client_id: Option<String>,
    pub strava_client_secret: Option<Secret>,
    pub strava_webhook_verify_token: Option<Secret>,
    pub strava_api_url: String,
    pub strava_oauth_url: String,
    pub strava_scopes: String,
    pub strava_rate_limit_15min: u32,
    pub strava_rate_limit_daily: u32,
    pub sync_schedule: String,
    pub manual_refresh_cooldown_secs: u64,
    pub admin_token: Option<Secret>,
    pub app_redirect_url: Option<String>,
    pub cors_allowed_origins: Vec<String>,
    /// Requests per second per API token; 0 turns rate limiting off.
    pub api_rate_limit: u32,
    /// Each background purpose's guaranteed share of the day, in percent.
    pub budget_shares: BTreeMap<Purpose, u32>,
    /// Athlete tiers and their weights, in the order given.
    pub tiers: Vec<(String, u32)>,
    /// The tier of athletes no operator has placed.
    pub default_tier: String,
    pub log_format: LogFormat,
}

/// What a command needs beyond the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Talking to Strava: client id and secret.
    StravaApp,
    /// Receiving webhooks: the verify token.
    Webhooks,
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
    ("HOST", Some("127.0.0.1")),
    ("PORT", Some("8080")),
    ("PUBLIC_URL", Some("http://localhost:8080")),
    ("STRAVA_CLIENT_ID", None),
    ("STRAVA_CLIENT_SECRET", None),
    ("STRAVA_WEBHOOK_VERIFY_TOKEN", None),
    ("STRAVA_API_URL", Some("https://www.strava.com/api/v3")),
    ("STRAVA_OAUTH_URL", Some("https://www.strava.com/oauth")),
    ("STRAVA_SCOPES", Some("read,activity:read_all")),
    ("STRAVA_RATE_LIMIT_15MIN", Some("100")),
    ("STRAVA_RATE_LIMIT_DAILY", Some("1000")),
    ("SYNC_SCHEDULE", Some("0 0 4 * * *")),
    ("MANUAL_REFRESH_COOLDOWN_SECS", Some("300")),
    ("ADMIN_TOKEN", None),
    ("APP_REDIRECT_URL", None),
    ("CORS_ALLOWED_ORIGINS", None),
    ("API_RATE_LIMIT", Some("20")),
    (
        "BUDGET_SHARES",
        Some("webhook=55,gap_fill=15,backfill=15,reconcile=10,enrichment=5"),
    ),
    ("TIERS", Some("standard=1")),
    ("DEFAULT_TIER", None),
    ("LOG_FORMAT", Some("pretty")),
];

impl Settings {
    /// Loads from `strava-sync.toml` (if present) and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = match std::fs::read_to_string(CONFIG_FILE) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![format!("{CONFIG_FILE}: {e}")],
                })
            }
        };
        Self::from_sources(file.as_deref(), |key| std::env::var(key).ok())
    }

    /// Builds settings from the file's text and an environment lookup.
    pub fn from_sources(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut values: BTreeMap<&str, String> = KEYS
            .iter()
            .filter_map(|(k, d)| d.map(|d| (*k, d.to_string())))
            .collect();

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
                        values.insert(known, text);
                    }
                }
                Err(e) => problems.push(format!("{CONFIG_FILE}: {}", e.message())),
            }
        }
        for (key, _) in KEYS {
            if let Some(value) = env(key) {
                values.insert(key, value);
            }
        }

        let mut p = Parser {
            values: &values,
            problems: &mut problems,
        };
        let tiers = p.tiers("TIERS");
        let settings = Settings {
            database_path: PathBuf::from(p.text("DATABASE_PATH")),
            host: p.text("HOST"),
            port: p.number("PORT"),
            public_url: p.url("PUBLIC_URL").trim_end_matches('/').to_string(),
            strava_client_id: p.optional("STRAVA_CLIENT_ID"),
            strava_client_secret: p.optional("STRAVA_CLIENT_SECRET").map(Secret),
            strava_webhook_verify_token: p.optional("STRAVA_WEBHOOK_VERIFY_TOKEN").map(Secret),
            strava_api_url: p.url("STRAVA_API_URL").trim_end_matches('/').to_string(),
            strava_oauth_url: p.url("STRAVA_OAUTH_URL").trim_end_matches('/').to_string(),
            strava_scopes: p.text("STRAVA_SCOPES"),
            strava_rate_limit_15min: p.positive("STRAVA_RATE_LIMIT_15MIN"),
            strava_rate_limit_daily: p.positive("STRAVA_RATE_LIMIT_DAILY"),
            sync_schedule: p.schedule("SYNC_SCHEDULE"),
            manual_refresh_cooldown_secs: p.number("MANUAL_REFRESH_COOLDOWN_SECS"),
            admin_token: p.optional("ADMIN_TOKEN").map(Secret),
            app_redirect_url: p.optional("APP_REDIRECT_URL"),
            cors_allowed_origins: p
                .optional("CORS_ALLOWED_ORIGINS")
                .map(|s| {
                    s.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            api_rate_limit: p.number("API_RATE_LIMIT"),
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
        };
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks that what a command needs is set, naming every missing key.
    pub fn require(&self, needs: &[Requirement]) -> Result<(), ConfigError> {
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
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: missing })
        }
    }

    /// The address to bind, as `host:port`.
    pub fn listen_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
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

    fn number<T: std::str::FromStr + Default>(&mut self, key: &str) -> T {
        let raw = self.text(key);
        raw.trim().parse().unwrap_or_else(|_| {
            self.problems.push(format!(
                "{key} must be a non-negative whole number, not `{raw}`"
            ));
            T::default()
        })
    }

    fn positive(&mut self, key: &str) -> u32 {
        let n: u32 = self.number(key);
        if n == 0 && self.values.get(key).is_some_and(|v| v.trim() == "0") {
            self.problems.push(format!("{key} must be at least 1"));
        }
        n
    }

    fn url(&mut self, key: &str) -> String {
        let raw = self.text(key);
        if !(raw.starts_with("http://") || raw.starts_with("https://")) {
            self.problems.push(format!(
                "{key} must be an http:// or https:// URL, not `{raw}`"
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

    fn schedule(&mut self, key: &str) -> String {
        let raw = self.text(key);
        if raw.split_whitespace().count() != 6 {
            self.problems.push(format!(
                "{key} must be a six-field cron expression (sec min hour day month weekday), not `{raw}`"
            ));
        }
        raw
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.database_path, PathBuf::from("strava-sync.db"));
        assert_eq!(s.listen_address(), "127.0.0.1:8080");
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
            "LOG_FORMAT",
            "SYNC_SCHEDULE",
        ] {
            assert!(text.contains(key), "{key} not named in: {text}");
        }
        assert_eq!(err.problems.len(), 6);
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
            vec!["https://a.example", "https://b.example"]
        );
    }
}
