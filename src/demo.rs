//! `strava-sync demo`: the whole system on one machine with no Strava account.
//! The built-in simulator plays Strava with seeded athletes; the real service
//! points at it, connects every athlete through the real OAuth flow, creates
//! the push subscription, and then receives live webhook events (creates,
//! renames, deletes) every few seconds until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

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

/// What the callback answers when it connects an athlete.
#[derive(Deserialize)]
struct Connected {
    token: String,
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
    let settings = demo_settings(&sim, port, &database)?;
    let admin_token = settings
        .admin_token
        .as_ref()
        .map(|t| t.expose().to_string())
        .unwrap_or_default();

    let app = Application::build(settings.clone()).await?;
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run());

    subscription::run(&settings, Action::Create).await?;
    let http = reqwest::Client::new();
    let mut athletes = Vec::new();
    for athlete_id in sim.athlete_ids() {
        sim.next_login(athlete_id)?;
        let connected: Connected = http
            .get(format!("{}/auth/strava", settings.public_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        athletes.push((athlete_id, connected.token));
    }
    print_banner(&settings.public_url, &sim, &admin_token, &athletes);

    let mut events = EventMaker::new(args.seed);
    let mut ticks = tokio::time::interval(Duration::from_secs(args.interval_secs.max(1)));
    ticks.tick().await;
    let stop = crate::startup::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => match events.next(&sim) {
                Ok(line) => println!("  {line}"),
                Err(e) => println!("  (event skipped: {e})"),
            },
        }
    }
    println!("stopping");
    shutdown.shutdown();
    server.await??;
    sim.stop().await;
    Ok(())
}

/// The service's settings, pointed at the simulator; the operator's
/// environment can still set logging.
fn demo_settings(
    sim: &SimHandle,
    port: u16,
    database: &std::path::Path,
) -> anyhow::Result<Settings> {
    let mut values = vec![
        ("DATABASE_PATH", database.display().to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("STRAVA_WEBHOOK_VERIFY_TOKEN", random_token()),
        ("TOKEN_ENCRYPTION_KEY", random_token()),
        ("ADMIN_TOKEN", random_token()),
        ("MANUAL_REFRESH_COOLDOWN_SECS", "30".to_string()),
        // Every athlete connects from this machine at once.
        ("CONNECT_RATE_LIMIT", "0".to_string()),
    ];
    values.extend(sim.service_env());
    Ok(Settings::from_sources(None, |key| {
        values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(key).ok().filter(|_| key == "LOG_FORMAT"))
    })?)
}

fn print_banner(base: &str, sim: &SimHandle, admin_token: &str, athletes: &[(u64, String)]) {
    println!("strava-sync demo is running (Ctrl-C stops it)");
    println!("  read API:    {base}/api/v3");
    println!(
        "  simulator:   {} (control: {})",
        sim.base_url(),
        sim.control_url()
    );
    println!("  admin token: {admin_token}");
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
