//! The webhook path end to end: the real release binary on loopback takes
//! bursts of events from 16 and 64 concurrent senders (acknowledged
//! events/s, p50/p99 acknowledgement latency), then a steady paced stream
//! (p50/p99 at 1,000 events/s); then the worker's drain rate is measured
//! in-process on a backlog committed through the same group commit (whose
//! rate without HTTP is printed too).
//!
//! Run: `cargo bench --bench webhook_ingest`
//! (optional: `EVENTS=10000 PACED_SECS=5 BACKLOG=20000`; with
//! `BENCH_DATABASE_URL=postgres://...` the same on PostgreSQL)

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use strava_sync::config::Database;
use strava_sync::model::event::{AspectType, Event, ObjectType};
use strava_sync::store::{activities, athletes, subscription, Store};
use strava_sync::webhook::worker;

const ATHLETE: i64 = 134_815;
const FIRST_ID: i64 = 17_179_869_185;
const STORED: i64 = 2_000;
const SUBSCRIPTION: i64 = 120_475;
const T0: i64 = 1_700_000_000;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(id: i64) -> String {
    format!(
        r#"{{"resource_state":2,"athlete":{{"id":{ATHLETE},"resource_state":1}},"name":"Morning Ride","distance":28099.30,"moving_time":4207,"elapsed_time":4410,"total_elevation_gain":516.0,"type":"Ride","sport_type":"Ride","id":{id},"start_date":"2024-05-01T07:00:00Z","utc_offset":-14400.0,"private":false,"visibility":"everyone"}}"#
    )
}

/// A realistic mix starting at event number `from`: mostly renames, some
/// creates and deletes, and one in ten a redelivery of an earlier event
/// (Strava's retries).
fn events(from: usize, n: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(n);
    for k in 0..n {
        let i = from + k;
        let at = T0 + i as i64;
        let event = |aspect: &str, id: i64, updates: Value| {
            json!({"aspect_type": aspect, "event_time": at, "object_id": id,
                   "object_type": "activity", "owner_id": ATHLETE,
                   "subscription_id": SUBSCRIPTION, "updates": updates})
        };
        let stored = FIRST_ID + (i as i64 % STORED);
        out.push(match i % 10 {
            0 if k > 0 => out[k / 2].clone(),
            1 | 2 => event("create", FIRST_ID + STORED + i as i64, json!({})),
            3 => event("delete", stored, json!({})),
            _ => event("update", stored, json!({"title": format!("renamed {i}")})),
        });
    }
    out
}

/// The same mix as the store takes it.
fn as_event(v: &Value) -> Event {
    Event {
        object_type: serde_json::from_value::<ObjectType>(v["object_type"].clone()).unwrap(),
        object_id: v["object_id"].as_i64().unwrap(),
        aspect_type: serde_json::from_value::<AspectType>(v["aspect_type"].clone()).unwrap(),
        owner_id: ATHLETE,
        event_time: v["event_time"].as_i64().unwrap(),
        updates: serde_json::from_value(v["updates"].clone()).unwrap(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64()
        * 1e3
}

/// A fresh database with one athlete, `STORED` activities and our
/// subscription id. Returns the store and the callback path secret.
async fn seed(db: &Database) -> (Store, String) {
    let store = common::open(db);
    let secret = store
        .write(|tx| {
            athletes::upsert(tx, &json!({"id": ATHLETE}), "read,activity:read_all", 0)?;
            let page: Vec<Box<serde_json::value::RawValue>> = (0..STORED)
                .map(|i| serde_json::value::RawValue::from_string(summary(FIRST_ID + i)).unwrap())
                .collect();
            activities::upsert_summaries(tx, ATHLETE, &page, 0)?;
            subscription::set_id(tx, SUBSCRIPTION)?;
            subscription::path_secret(tx)
        })
        .await
        .unwrap();
    common::analyze(&store, db);
    (store, secret)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_server(
    dir: &std::path::Path,
    db: &Database,
    client: &reqwest::Client,
) -> (Server, String) {
    let (key, database) = db.env();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_strava-sync"))
            .arg("serve")
            .current_dir(dir)
            .env_clear()
            .env(key, database)
            .env("PORT", port.to_string())
            .env("STRAVA_API_URL", "http://127.0.0.1:9")
            .env("STRAVA_CLIENT_ID", "1234")
            .env("STRAVA_CLIENT_SECRET", "bench-client-secret")
            .env("STRAVA_WEBHOOK_VERIFY_TOKEN", "bench-verify-token")
            .env("TOKEN_ENCRYPTION_KEY", "00".repeat(32))
            // The senders' bursts are what is measured, not the per-address limit.
            .env("WEBHOOK_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the service binary starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "service did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, base)
}

/// One POST; its latency, or None unless it was answered 200.
async fn post(client: &reqwest::Client, url: &str, event: &Value) -> Option<Duration> {
    let sent = Instant::now();
    let res = client.post(url).json(event).send().await.ok()?;
    (res.status() == 200).then(|| sent.elapsed())
}

/// A table row: acknowledged count, events/s, p50, p99.
fn row(name: &str, n: usize, latencies: &mut [Duration], took: Duration) {
    latencies.sort();
    let acked = latencies.len();
    println!(
        "| {name:<22} | {acked:>6}/{n:<6} | {:>9.0} | {:>7.2} | {:>7.2} |",
        acked as f64 / took.as_secs_f64(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
    );
}

#[tokio::main]
async fn main() {
    let n = env_or("EVENTS", 10_000);
    let paced_secs = env_or("PACED_SECS", 5);
    let backlog = env_or("BACKLOG", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let db = common::database(dir.path(), "ingest");
    let (store, secret) = seed(&db).await;
    drop(store);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let (server, base) = start_server(dir.path(), &db, &client).await;
    let url = format!("{base}/webhook/{secret}");

    println!(
        "webhook ingest, release binary over loopback ({n} events per burst) on {db}, load \
         average {}",
        common::load_average()
    );
    println!("| scenario               | acknowledged  |  events/s | p50 ms  | p99 ms  |");
    println!("|------------------------|---------------|-----------|---------|---------|");
    let mut next = 0;
    for senders in [16, 64] {
        let batch = events(next, n);
        next += n;
        let started = Instant::now();
        let mut latencies: Vec<Duration> = futures_util::stream::iter(&batch)
            .map(|event| post(&client, &url, event))
            .buffer_unordered(senders)
            .filter_map(|d| async move { d })
            .collect()
            .await;
        row(
            &format!("burst, {senders} senders"),
            n,
            &mut latencies,
            started.elapsed(),
        );
    }

    // A steady stream: one event a millisecond, each on its own task, so a
    // slow answer does not delay the next send.
    let paced = events(next, paced_secs * 1000);
    let client = Arc::new(client);
    let url = Arc::new(url);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut sends = Vec::with_capacity(paced.len());
    for event in paced {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        sends.push(tokio::spawn(
            async move { post(&client, &url, &event).await },
        ));
    }
    let mut latencies = Vec::with_capacity(sends.len());
    for send in sends {
        latencies.extend(send.await.unwrap());
    }
    row(
        "paced 1,000/s",
        paced_secs * 1000,
        &mut latencies,
        started.elapsed(),
    );
    drop(server);

    // The worker's drain rate, in-process: a backlog committed through the
    // group commit, then applied by `worker::drain`.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = seed(&common::database(dir.path(), "drain")).await;
    let pending: Vec<Event> = events(0, backlog).iter().map(as_event).collect();
    let started = Instant::now();
    futures_util::stream::iter(pending)
        .map(|event| store.receive_event(event, SUBSCRIPTION, T0))
        .buffer_unordered(256)
        .for_each(|r| async move {
            r.unwrap();
        })
        .await;
    // What the storage side takes alone, without HTTP sharing the cores.
    println!(
        "group commit in-process: {backlog} events from 256 tasks = {:.0} events/s",
        backlog as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let applied = worker::drain(&store, T0 + backlog as i64).await.unwrap();
    let took = started.elapsed();
    println!(
        "worker drain: {applied} events applied in {:.2} s = {:.0} events/s",
        took.as_secs_f64(),
        applied as f64 / took.as_secs_f64()
    );
}
