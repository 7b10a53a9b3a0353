//! The read API under concurrent load, as a frontend fleet would drive it.
//!
//! Seeds one athlete with 10,000 activities into a fresh database through the
//! store, starts the real `strava-sync serve` binary on loopback (JSON logs,
//! every request logged, to a null sink; no rate limit), and drives each
//! scenario with 32 concurrent keep-alive clients for 10 seconds. Prints
//! requests/s, p50/p99 latency and the server's peak resident memory (VmHWM).
//!
//! Then memory: the server's resident set after webhook bursts, through a
//! minute of idle, and over a soak of steady reads and webhook events
//! (`SOAK_SECS`, 60 by default; 600 for the full soak).
//!
//! Run: `cargo bench --bench read_api`; with `BENCH_DATABASE_URL=postgres://...`
//! the same on PostgreSQL. The load generator shares the machine with the
//! server, so figures are a floor for what the server alone can do.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::StreamExt;
use serde_json::{json, value::RawValue, Value};
use strava_sync::config::Database;
use strava_sync::store::{activities, api_tokens, athletes, subscription};

const ACTIVITIES: i64 = 10_000;
const PAGE: i64 = 200;
const CLIENTS: usize = 32;
const DURATION: Duration = Duration::from_secs(10);
/// Bounds a scenario's request count whatever the machine's speed.
const MAX_REQUESTS: usize = 1_000_000;
const FIRST_ID: i64 = 17_179_869_184;
/// 2020-01-01T00:00:00Z; activity k starts k hours later.
const FIRST_START: i64 = 1_577_836_800;
const SPORTS: [&str; 5] = ["Ride", "Run", "Swim", "VirtualRide", "Walk"];
/// Webhook bursts: how many, of how many events, from how many senders.
const BURSTS: usize = 3;
const BURST_EVENTS: usize = 5_000;
const SENDERS: usize = 64;
/// Idle after the bursts, sampled every `SAMPLE`.
const IDLE: Duration = Duration::from_secs(60);
const SAMPLE: Duration = Duration::from_secs(10);
/// Soak rates: list requests and webhook events per second.
const SOAK_READS: u64 = 100;
const SOAK_EVENTS: u64 = 100;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = common::database(dir.path(), "read_api");
    println!("database: {db}, load average {}", common::load_average());
    let started = Instant::now();
    let (token, athlete, secret) = seed(&db)?;
    println!(
        "seeded {ACTIVITIES} activities in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let database = db.env();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_strava-sync"))
            .arg("serve")
            .env_clear()
            .env(database.0, &database.1)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("STRAVA_CLIENT_ID", "1")
            .env("STRAVA_CLIENT_SECRET", "bench")
            .env("STRAVA_WEBHOOK_VERIFY_TOKEN", "bench")
            .env("TOKEN_ENCRYPTION_KEY", "00".repeat(32))
            .env("API_RATE_LIMIT", "0")
            .env("WEBHOOK_RATE_LIMIT", "0")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting strava-sync serve")?,
    );
    let base = format!("http://127.0.0.1:{port}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        wait_ready(&client, &base).await?;
        println!(
            "server pid {}, {CLIENTS} clients, {} s per scenario",
            server.0.id(),
            DURATION.as_secs()
        );
        for (name, query, first_k) in [
            ("first page", "per_page=30", ACTIVITIES - 1),
            (
                "deep page (page=300)",
                "page=300&per_page=30",
                ACTIVITIES - 1 - 299 * 30,
            ),
        ] {
            let url = format!("{base}/api/v3/athlete/activities?{query}");
            check_page(&client, &url, &token, FIRST_ID + first_k).await?;
            let result = load(&client, &url, &token).await;
            result.print(name, &server.peak_rss_kib()?);
        }
        memory(&server, &client, &base, &token, athlete, &secret).await
    })
}

/// Resident memory after webhook bursts, through a minute of idle, and over
/// a soak of steady reads and events.
async fn memory(
    server: &Server,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    athlete: i64,
    secret: &str,
) -> anyhow::Result<()> {
    let hook = format!("{base}/webhook/{secret}");
    let list = format!("{base}/api/v3/athlete/activities?per_page=30");
    let mut next_event = 0;
    let mut event = || {
        next_event += 1;
        json!({"aspect_type": "update", "event_time": FIRST_START + next_event,
               "object_id": FIRST_ID + next_event % ACTIVITIES, "object_type": "activity",
               "owner_id": athlete, "subscription_id": 1,
               "updates": {"title": format!("renamed {next_event}")}})
    };
    for _ in 0..BURSTS {
        let events: Vec<Value> = (0..BURST_EVENTS).map(|_| event()).collect();
        futures_util::stream::iter(&events)
            .map(|e| client.post(&hook).json(e).send())
            .buffer_unordered(SENDERS)
            .for_each(|_| async {})
            .await;
    }
    println!(
        "after {BURSTS} webhook bursts of {BURST_EVENTS}: {}",
        server.peak_rss_kib()?
    );
    let idle_from = Instant::now();
    while idle_from.elapsed() < IDLE {
        tokio::time::sleep(SAMPLE).await;
        println!(
            "  idle {:>2} s: {}",
            idle_from.elapsed().as_secs(),
            server.peak_rss_kib()?
        );
    }

    let soak = Duration::from_secs(
        std::env::var("SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    println!(
        "soak: {SOAK_READS} list requests/s and {SOAK_EVENTS} webhook events/s for {} s",
        soak.as_secs()
    );
    let soak_from = Instant::now();
    let mut reads = tokio::time::interval(Duration::from_secs(1) / SOAK_READS as u32);
    let mut events = tokio::time::interval(Duration::from_secs(1) / SOAK_EVENTS as u32);
    let mut sample = tokio::time::interval(SAMPLE);
    let mut failures = 0usize;
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    while soak_from.elapsed() < soak {
        tokio::select! {
            _ = reads.tick() => inflight.push(client.get(&list).bearer_auth(token).send()),
            _ = events.tick() => inflight.push(client.post(&hook).json(&event()).send()),
            _ = sample.tick() => println!(
                "  soak {:>3} s: {}",
                soak_from.elapsed().as_secs(),
                server.peak_rss_kib()?
            ),
            Some(res) = inflight.next() => {
                if !res.is_ok_and(|r| r.status().is_success()) {
                    failures += 1;
                }
            }
        }
    }
    println!("soak done, {failures} failures: {}", server.peak_rss_kib()?);
    Ok(())
}

/// One athlete, an API token, and `ACTIVITIES` summaries stored a page per
/// transaction, as the sync paths store them. Returns the token, the
/// athlete and the webhook path secret.
fn seed(db: &Database) -> anyhow::Result<(String, i64, String)> {
    let store = common::open(db);
    let profile: Value = serde_json::from_str(include_str!("../fixtures/athlete.json"))?;
    let athlete = profile["id"].as_i64().context("fixture athlete id")?;
    let token = store.write_blocking(|tx| {
        athletes::upsert(tx, &profile, "read,activity:read_all", 0)?;
        api_tokens::issue(tx, athlete, 0)
    })?;
    let fixtures: Vec<Value> = serde_json::from_str(include_str!("../fixtures/activities.json"))?;
    let template = fixtures
        .into_iter()
        .find(|a| a["name"] == "Morning Ride")
        .context("fixture Morning Ride")?;
    for page_start in (0..ACTIVITIES).step_by(PAGE as usize) {
        let page = (page_start..(page_start + PAGE).min(ACTIVITIES))
            .map(|k| {
                let mut a = template.clone();
                let sport = SPORTS[k as usize % SPORTS.len()];
                let start = chrono::DateTime::from_timestamp(FIRST_START + k * 3600, 0)
                    .context("start time")?;
                a["id"] = json!(FIRST_ID + k);
                a["type"] = json!(sport);
                a["sport_type"] = json!(sport);
                a["name"] = json!(format!("{sport} #{k}"));
                a["start_date"] = json!(start.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                Ok(RawValue::from_string(a.to_string())?)
            })
            .collect::<anyhow::Result<Vec<Box<RawValue>>>>()?;
        store.write_blocking(|tx| activities::upsert_summaries(tx, athlete, &page, 0))?;
    }
    let secret = store.write_blocking(|tx| subscription::path_secret(tx))?;
    common::analyze(&store, db);
    Ok((token, athlete, secret))
}

/// Kills the server when the bench ends, however it ends.
struct Server(Child);

impl Server {
    /// Peak and current resident memory, from /proc.
    fn peak_rss_kib(&self) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l[name.len()..].trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        Ok(format!(
            "peak RSS (VmHWM) {}, now (VmRSS) {}",
            field("VmHWM:"),
            field("VmRSS:")
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
            if res.status().is_success() {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page is what the scenario claims to measure: 30 records, the expected
/// one first.
async fn check_page(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    first_id: i64,
) -> anyhow::Result<()> {
    let page: Vec<Value> = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(page.len() == 30, "{url}: {} records", page.len());
    ensure!(
        page[0]["id"] == json!(first_id),
        "{url}: starts at {}",
        page[0]["id"]
    );
    Ok(())
}

#[derive(Default)]
struct LoadResult {
    latencies: Vec<Duration>,
    failures: usize,
    bytes: usize,
    elapsed: Duration,
}

impl LoadResult {
    fn print(mut self, name: &str, memory: &str) {
        self.latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
            self.latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        let n = self.latencies.len();
        println!(
            "{name}: {n} requests in {:.1} s = {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms, {} failures, {:.0} KiB/response; {memory}",
            self.elapsed.as_secs_f64(),
            n as f64 / self.elapsed.as_secs_f64(),
            at(0.50),
            at(0.99),
            at(1.0),
            self.failures,
            self.bytes as f64 / n.max(1) as f64 / 1024.0,
        );
    }
}

/// `CLIENTS` concurrent loops over one keep-alive pool until the time or the
/// request budget runs out.
async fn load(client: &reqwest::Client, url: &str, token: &str) -> LoadResult {
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + DURATION;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, token, sent) = (
                client.clone(),
                url.to_string(),
                token.to_string(),
                sent.clone(),
            );
            tokio::spawn(async move {
                let mut out = LoadResult::default();
                while Instant::now() < deadline
                    && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                {
                    let t = Instant::now();
                    let res = client.get(&url).bearer_auth(&token).send().await;
                    match res {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(body) => {
                                out.latencies.push(t.elapsed());
                                out.bytes += body.len();
                            }
                            Err(_) => out.failures += 1,
                        },
                        _ => out.failures += 1,
                    }
                }
                out
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for worker in workers {
        let part = worker.await.expect("load worker");
        total.latencies.extend(part.latencies);
        total.failures += part.failures;
        total.bytes += part.bytes;
    }
    total.elapsed = started.elapsed();
    total
}
