//! `strava-sync demo`: the whole system on one machine with no Strava account.
//! The built-in simulator plays Strava with seeded athletes; the real service
//! points at it, connects every athlete through the real OAuth flow, creates
//! the push subscription, and then receives live webhook events (creates,
//! renames, deletes) every few seconds until Ctrl-C. Browser pages on this
//! machine may call it (CORS), and a rerun on the same `--database` keeps
//! the tokens it printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::simulator::{ActivityUpdate, NewActivity, Push, SimConfig, SimHandle, Simulator};
use crate::startup::Application;
use crate::store::api_tokens::random_token;
use crate::webhook::subscription::{self, Action};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Port for the service on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port for the Strava simulator on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub sim_port: u16,
    /// Keep the data in this SQLite file instead of a temporary one.
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// Seeded athletes, all connected at start.
    #[arg(long, default_value_t = 3)]
    pub athletes: usize,
    /// Activities of history per athlete.
    #[arg(long, default_value_t = 300)]
    pub activities: usize,
    /// Seconds between live events.
    #[arg(long, default_value_t = 5)]
    pub interval_secs: u64,
    /// Seed for the generated data and the event sequence.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Settings the operator's environment may give the demo: the origins of a
/// frontend, where connecting ends, where its events go, and the log format.
const FROM_ENVIRONMENT: [&str; 5] = [
    "CORS_ALLOWED_ORIGINS",
    "APP_REDIRECT_URL",
    "APP_WEBHOOK_URL",
    "APP_WEBHOOK_SECRET",
    "LOG_FORMAT",
];

/// Browser pages served from this machine, on any port, unless
/// `CORS_ALLOWED_ORIGINS` says otherwise.
const LOCAL_ORIGINS: &str = "http://localhost:*,http://127.0.0.1:*";

/// What a rerun on the same database must find again: the key its Strava
/// tokens are sealed with, the admin token, and the API tokens it printed,
/// so that they keep working. Kept next to the database, readable by its
/// owner only, so the database alone still holds no usable secret.
#[derive(Serialize, Deserialize)]
struct DemoSecrets {
    token_encryption_key: String,
    admin_token: String,
    /// The API token printed for each athlete.
    api_tokens: BTreeMap<u64, String>,
}

impl DemoSecrets {
    /// `demo.db` keeps them in `demo.db.secrets.json`.
    fn path(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".secrets.json");
        PathBuf::from(name)
    }

    /// Those of an earlier run on this database, or new ones.
    fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} does not hold the demo's secrets", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                token_encryption_key: random_token(),
                admin_token: random_token(),
                api_tokens: BTreeMap::new(),
            }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig {
        port: args.sim_port,
        seed: args.seed,
        athletes: args.athletes,
        activities_per_athlete: args.activities,
        ..SimConfig::default()
    })
    .await?;

    let port = match args.port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        p => p,
    };
    let temp = tempfile::tempdir()?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| temp.path().join("demo.db"));
    let secrets_path = DemoSecrets::path(&database);
    let mut secrets = DemoSecrets::load_or_create(&secrets_path)?;
    // Saved before anything is sealed with the key.
    secrets.save(&secrets_path)?;
    let settings = demo_settings(&sim, port, &database, &secrets)?;

    let app = Application::build(settings.clone())
        .await
        .with_context(|| {
            format!(
                "the demo keeps the keys to {} in {}",
                database.display(),
                secrets_path.display()
            )
        })?;
    let store = app.services().store.clone();
    // The service itself stops on Ctrl-C (its listener is in place long
    // before the banner); the demo ends when it has. A listener of the
    // demo's own, set up later, could miss a Ctrl-C sent right after the
    // banner and keep the demo running with the service gone.
    let mut server = tokio::spawn(app.run());

    subscription::run(&settings, Action::Create).await?;
    let http = connecting_client()?;
    let mut athletes = Vec::new();
    for athlete_id in sim.athlete_ids() {
        sim.next_login(athlete_id)?;
        let issued = connect(&http, &settings.public_url).await?;
        // Connecting again issued a new token, and the one an earlier run
        // printed still works: that one stays, wherever it was pasted.
        let kept = match secrets.api_tokens.get(&athlete_id) {
            Some(earlier)
                if store.athlete_for_token(earlier.clone()).await? == Some(athlete_id as i64) =>
            {
                earlier.clone()
            }
            _ => issued,
        };
        secrets.api_tokens.insert(athlete_id, kept.clone());
        athletes.push((athlete_id, kept));
    }
    secrets.save(&secrets_path)?;
    print_banner(&settings, &sim, &secrets.admin_token, &athletes);

    let mut events = EventMaker::new(args.seed);
    let mut ticks = tokio::time::interval(Duration::from_secs(args.interval_secs.max(1)));
    ticks.tick().await;
    let stopped = loop {
        tokio::select! {
            stopped = &mut server => break stopped,
            _ = ticks.tick() => match events.next(&sim) {
                Ok(line) => println!("  {line}"),
                Err(e) => println!("  (event skipped: {e})"),
            },
        }
    };
    println!("stopping");
    sim.stop().await;
    stopped??;
    Ok(())
}

/// Follows the OAuth flow's redirects up to our callback, but not where the
/// callback sends the browser (`APP_REDIRECT_URL`): nothing may listen there.
fn connecting_client() -> anyhow::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let from_callback = attempt
            .previous()
            .last()
            .is_some_and(|url| url.path() == "/auth/strava/callback");
        if from_callback {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    Ok(reqwest::Client::builder().redirect(policy).build()?)
}

/// Connects the athlete the simulator logs in next, as a browser would, and
/// returns their API token: from the callback's JSON, or from the fragment
/// of its redirect to `APP_REDIRECT_URL`.
async fn connect(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Connected {
        token: String,
    }
    let res = http
        .get(format!("{base}/auth/strava"))
        .send()
        .await?
        .error_for_status()?;
    if !res.status().is_redirection() {
        return Ok(res.json::<Connected>().await?.token);
    }
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the callback redirected nowhere")?;
    let token = reqwest::Url::parse(location)?
        .fragment()
        .and_then(|f| f.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .map(str::to_string);
    token.context("the callback's redirect carries no token")
}

/// The service's settings, pointed at the simulator; the operator's
/// environment may set [`FROM_ENVIRONMENT`].
fn demo_settings(
    sim: &SimHandle,
    port: u16,
    database: &Path,
    secrets: &DemoSecrets,
) -> anyhow::Result<Settings> {
    let mut values = vec![
        ("DATABASE_PATH", database.display().to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("STRAVA_WEBHOOK_VERIFY_TOKEN", random_token()),
        ("TOKEN_ENCRYPTION_KEY", secrets.token_encryption_key.clone()),
        ("ADMIN_TOKEN", secrets.admin_token.clone()),
        ("MANUAL_REFRESH_COOLDOWN_SECS", "30".to_string()),
        // Every athlete connects from this machine at once.
        ("CONNECT_RATE_LIMIT", "0".to_string()),
        ("CORS_ALLOWED_ORIGINS", LOCAL_ORIGINS.to_string()),
    ];
    values.extend(sim.service_env());
    Ok(Settings::from_sources(None, |key| {
        let given = FROM_ENVIRONMENT
            .contains(&key)
            .then(|| std::env::var(key).ok())
            .flatten();
        given.or_else(|| {
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        })
    })?)
}

fn print_banner(
    settings: &Settings,
    sim: &SimHandle,
    admin_token: &str,
    athletes: &[(u64, String)],
) {
    let base = &settings.public_url;
    println!("strava-sync demo is running (Ctrl-C stops it)");
    println!("  read API:    {base}/api/v3");
    println!(
        "  simulator:   {} (control: {})",
        sim.base_url(),
        sim.control_url()
    );
    println!("  admin token: {admin_token}");
    println!("  status page: {base}/admin/status (in a browser: any user name, the admin token as password)");
    let origins: Vec<String> = settings
        .cors_allowed_origins
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "  browsers:    pages from {} may call the read API",
        origins.join(", ")
    );
    match &settings.app_redirect_url {
        Some(url) => println!("  connect:     {base}/auth/strava (ends at {url}#token=...)"),
        None => println!("  connect:     {base}/auth/strava (answers the token as JSON)"),
    }
    match &settings.app_webhook {
        Some(hook) => println!("  events:      posted, signed, to {}", hook.url),
        None => println!(
            "  events:      set APP_WEBHOOK_URL and APP_WEBHOOK_SECRET to have them posted"
        ),
    }
    println!("athletes:");
    for (id, token) in athletes {
        println!("  athlete {id} token {token}");
    }
    if let Some((_, token)) = athletes.first() {
        println!("try:");
        println!(
            "  curl -H 'Authorization: Bearer {token}' '{base}/api/v3/athlete/activities?per_page=5'"
        );
        println!("  curl -H 'Authorization: Bearer {token}' {base}/api/v3/athlete");
        println!("  curl -H 'Authorization: Bearer {token}' {base}/api/sync");
        println!(
            "  curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer {token}' {base}/api/v3/athlete/changes"
        );
        println!("  curl -H 'Authorization: Bearer {admin_token}' {base}/admin/budget");
    }
    println!("live events:");
}

/// Produces the live Strava activity: mostly renames and new uploads, some
/// deletions, always on recent activities so a frontend sees them.
struct EventMaker {
    rng: StdRng,
    renames: u64,
}

impl EventMaker {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            renames: 0,
        }
    }

    fn next(&mut self, sim: &SimHandle) -> anyhow::Result<String> {
        let ids = sim.athlete_ids();
        let athlete_id = ids[self.rng.random_range(0..ids.len())];
        let recent = recent_activity_ids(sim, athlete_id)?;
        let roll = self.rng.random_range(0..10);
        if roll < 4 || recent.is_empty() {
            let created =
                sim.create_activity(athlete_id, NewActivity::default(), Some(Push::default()))?;
            Ok(format!(
                "created activity {} for athlete {athlete_id}: {}",
                created["id"], created["name"]
            ))
        } else if roll < 8 {
            self.renames += 1;
            let id = recent[self.rng.random_range(0..recent.len())];
            let name = format!("Renamed in the demo #{}", self.renames);
            sim.update_activity(
                id,
                ActivityUpdate {
                    name: Some(name.clone()),
                    ..ActivityUpdate::default()
                },
                Some(Push::default()),
            )?;
            Ok(format!(
                "renamed activity {id} of athlete {athlete_id} to \"{name}\""
            ))
        } else {
            let id = recent[self.rng.random_range(0..recent.len())];
            sim.delete_activity(id, Some(Push::default()))?;
            Ok(format!("deleted activity {id} of athlete {athlete_id}"))
        }
    }
}

/// The athlete's ten newest activities on the simulator.
fn recent_activity_ids(sim: &SimHandle, athlete_id: u64) -> anyhow::Result<Vec<u64>> {
    let mut all: Vec<(String, u64)> = sim
        .activities(athlete_id)?
        .iter()
        .filter_map(|a| Some((a["start_date"].as_str()?.to_string(), a["id"].as_u64()?)))
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    Ok(all.into_iter().take(10).map(|(_, id)| id).collect())
}
