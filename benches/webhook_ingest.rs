//! Webhook ingest under a burst: 10,000 events posted over loopback to the
//! real release binary with bounded concurrency. Reports sustained ingest
//! (events acknowledged per second), p50/p99/max acknowledgement latency, and
//! how long the worker then takes to apply the whole inbox.
//!
//! Run: `cargo bench --bench webhook_ingest`
//! (optional: `EVENTS=10000 CONCURRENCY=64 cargo bench --bench webhook_ingest`)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use strava_sync::store::{activities, athletes, subscription, Store};

const ADMIN_TOKEN: &str = "bench-admin-token";
const ATHLETE: i64 = 134_815;
const FIRST_ID: i64 = 17_179_869_185;
const STORED: i64 = 2_000;

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

/// A realistic mix: mostly renames, some creates and deletes, and one in
/// ten a redelivery of an earlier event (Strava's retries).
fn events(n: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(n);
    for i in 0..n {
        let at = 1_700_000_000 + i as i64;
        let event = |aspect: &str, id: i64, updates: Value| {
            json!({"aspect_type": aspect, "event_time": at, "object_id": id,
                   "object_type": "activity", "owner_id": ATHLETE,
                   "subscription_id": 120475, "updates": updates})
        };
        let stored = FIRST_ID + (i as i64 % STORED);
        out.push(match i % 10 {
            0 if i > 0 => out[i / 2].clone(),
            1 | 2 => event("create", FIRST_ID + STORED + i as i64, json!({})),
            3 => event("delete", stored, json!({})),
            _ => event("update", stored, json!({"title": format!("renamed {i}")})),
        });
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let n = env_or("EVENTS", 10_000);
    let concurrency = env_or("CONCURRENCY", 64);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let store = Store::open(&db).unwrap();
    let secret = store
        .write(|tx| {
            athletes::upsert(tx, &json!({"id": ATHLETE}), "read,activity:read_all", 0)?;
            let page: Vec<Box<serde_json::value::RawValue>> = (0..STORED)
                .map(|i| serde_json::value::RawValue::from_string(summary(FIRST_ID + i)).unwrap())
                .collect();
            activities::upsert_summaries(tx, ATHLETE, &page, 0)?;
            subscription::path_secret(tx)
        })
        .await
        .unwrap();
    drop(store);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("DATABASE_PATH", &db)
        .env("PORT", port.to_string())
        .env("STRAVA_API_URL", "http://127.0.0.1:9")
        .env("STRAVA_CLIENT_ID", "1234")
        .env("STRAVA_CLIENT_SECRET", "bench-client-secret")
        .env("STRAVA_WEBHOOK_VERIFY_TOKEN", "bench-verify-token")
        .env("TOKEN_ENCRYPTION_KEY", "00".repeat(32))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        // One sender's burst is what is measured, not the per-address limit.
        .env("WEBHOOK_RATE_LIMIT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the service binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "service did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = format!("{base}/webhook/{secret}");
    let events = events(n);
    let burst = Instant::now();
    let results: Vec<(bool, Duration)> = futures_util::stream::iter(&events)
        .map(|event| {
            let (client, url) = (&client, &url);
            async move {
                let sent = Instant::now();
                let ok = client
                    .post(url)
                    .json(event)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                (ok, sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let burst_time = burst.elapsed();

    // Then the worker applies what was acknowledged.
    loop {
        let overview: Value = client
            .get(format!("{base}/admin/webhooks"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if overview["counts"]["pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = burst.elapsed();
    let _ = child.kill();
    let _ = child.wait();

    let acked = results.iter().filter(|(ok, _)| *ok).count();
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    println!("webhook ingest: {n} events, concurrency {concurrency}, release binary over loopback");
    println!("  acknowledged     {acked}/{n}");
    println!(
        "  sustained ingest {:.0} events/s acknowledged ({:.2} s)",
        acked as f64 / burst_time.as_secs_f64(),
        burst_time.as_secs_f64()
    );
    println!(
        "  ack latency      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  inbox applied    {:.2} s after the burst began",
        drained.as_secs_f64()
    );
}
