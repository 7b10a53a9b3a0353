//! Crash safety of the webhook inbox: the real binary receives a concurrent
//! burst, is killed with SIGKILL mid-burst, and restarts on the same
//! database. Every event it answered 200 before dying must be applied after
//! the restart without being sent again; the rest are then redelivered, as
//! Strava retries unacknowledged events, and applied too. Once with a sender
//! in the test (exact control of what was acknowledged), once with the
//! simulator delivering and retrying as Strava does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use strava_sync::model::job::Fetch;
use strava_sync::simulator::{ActivityUpdate, NewActivity, Push, SimConfig, Simulator};
use strava_sync::store::{subscription, Store};

use crate::helpers::{eventually, open_store, test_database, WAIT};
use crate::process::{free_port, Server};
use crate::webhook_subscription::{cli, seed_from};
use crate::webhooks::{activity_event, seed_activities, seed_athlete};

const ATHLETE: i64 = 134_815;
const FIRST_ID: i64 = 17_179_869_185;
const T0: i64 = 1_700_000_000;

/// Posts every event with bounded concurrency, calling `acked` after each
/// 200; returns which were acknowledged.
async fn deliver(url: &str, events: &[Value], acked: impl Fn() + Sync) -> Vec<bool> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    futures_util::stream::iter(events)
        .map(|event| {
            let client = &client;
            let acked = &acked;
            async move {
                let ok = client
                    .post(url)
                    .json(event)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    acked();
                }
                ok
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// What the database holds that events change: each stored activity's
/// summary, and the activities queued for a fetch.
struct Effects {
    summaries: BTreeMap<i64, String>,
    queued_fetches: BTreeSet<i64>,
}

impl Effects {
    async fn read(store: &Store) -> Self {
        store
            .read(|c| {
                let summaries = c
                    .query_map(
                        "SELECT id, summary_json FROM activities",
                        strava_sync::params![],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .into_iter()
                    .collect();
                let mut queued_fetches = BTreeSet::new();
                let payloads: Vec<Option<String>> = c.query_map(
                    "SELECT payload_json FROM jobs WHERE kind = 'webhook_fetch'",
                    strava_sync::params![],
                    |r| r.get(0),
                )?;
                for json in payloads {
                    queued_fetches.extend(
                        serde_json::from_str::<Fetch>(json.as_deref().unwrap_or("{}"))?
                            .activity_ids,
                    );
                }
                Ok(Effects {
                    summaries,
                    queued_fetches,
                })
            })
            .await
            .unwrap()
    }

    /// Whether the effect of an event is in the database.
    fn applied(&self, event: &Value) -> bool {
        let id = event["object_id"].as_i64().unwrap();
        let row = self.summaries.get(&id);
        match event["aspect_type"].as_str().unwrap() {
            "update" => row.is_some_and(|json| {
                serde_json::from_str::<Value>(json).unwrap()["name"] == event["updates"]["title"]
            }),
            "delete" => row.is_none(),
            // The fetch itself is the job runner's: a queued fetch counts.
            _ => self.queued_fetches.contains(&id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    const STORED: i64 = 400;
    const KILL_AFTER_ACKS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "crash.db");
    let store = open_store(&db).await;
    seed_athlete(&store, ATHLETE).await;
    seed_activities(&store, ATHLETE, (0..STORED).map(|i| FIRST_ID + i).collect()).await;
    let secret = store.write(paused_secret).await.unwrap();

    // Renames of 300 stored activities, deletes of 100, creates of 100 new
    // ones, interleaved.
    let events: Vec<Value> = (0..STORED + 100)
        .map(|i| {
            let id = FIRST_ID + i;
            let at = T0 + i;
            match i {
                i if i < 300 => {
                    activity_event("update", id, at, json!({"title": format!("renamed {i}")}))
                }
                i if i < STORED => activity_event("delete", id, at, json!({})),
                _ => activity_event("create", id, at, json!({})),
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|i| (i % 5, *i));
    let events: Vec<Value> = order.into_iter().map(|i| events[i].clone()).collect();

    let server = Server::start_on_a_free_port(&db, &[]).await;
    let url = server.api.url(&format!("/webhook/{secret}"));
    let acks = AtomicUsize::new(0);
    let first = deliver(&url, &events, || {
        if acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
            server.kill();
        }
    })
    .await;
    drop(server);
    let acknowledged: Vec<&Value> = events
        .iter()
        .zip(&first)
        .filter(|(_, ok)| **ok)
        .map(|(e, _)| e)
        .collect();
    assert!(
        acknowledged.len() >= KILL_AFTER_ACKS,
        "{}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < events.len(),
        "the kill came after the burst"
    );

    // Restart on the same database; nothing is resent yet.
    let server = Server::start_on_a_free_port(&db, &[]).await;
    server.drained().await;
    let effects = Effects::read(&store).await;
    let lost: Vec<String> = acknowledged
        .iter()
        .filter(|e| !effects.applied(e))
        .map(|e| format!("{} {}", e["aspect_type"], e["object_id"]))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events not applied, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(3)]
    );

    // Strava retries what was not acknowledged; everything ends up applied once.
    let url = server.api.url(&format!("/webhook/{secret}"));
    let unacked: Vec<Value> = events
        .iter()
        .zip(&first)
        .filter(|(_, ok)| !**ok)
        .map(|(e, _)| e.clone())
        .collect();
    assert!(deliver(&url, &unacked, || {}).await.iter().all(|ok| *ok));
    server.drained().await;
    let effects = Effects::read(&store).await;
    assert!(events.iter().all(|e| effects.applied(e)));
    let rows: i64 = store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM webhook_events",
                strava_sync::params![],
                |r| r.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(rows, events.len() as i64, "each event is in the inbox once");
}

/// Pauses background Strava work (so fetch jobs stay queued for checking and
/// nothing is fetched) and returns the callback path secret.
fn paused_secret(
    tx: &dyn strava_sync::store::sql::Connection,
) -> strava_sync::store::DbResult<String> {
    strava_sync::store::budget::set_paused(tx, true)?;
    subscription::path_secret(tx)
}

/// `(aspect_type, object_id)`: one event per activity in these bursts.
fn key(event: &Value) -> (String, i64) {
    (
        event["aspect_type"].as_str().unwrap().to_string(),
        event["object_id"].as_i64().unwrap(),
    )
}

/// The bodies the simulator has had a 200 for.
fn delivered(sim: &Simulator) -> Vec<Value> {
    sim.deliveries()
        .into_iter()
        .filter(|d| serde_json::to_value(d).unwrap()["outcome"] == "delivered")
        .map(|d| d.event)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_simulator_redelivering_every_acknowledged_event_is_applied() {
    const KILL_AFTER_DELIVERIES: usize = 100;
    let sim = Simulator::start(SimConfig {
        athletes: 1,
        activities_per_athlete: 300,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // Strava retries minutes apart; seconds keep the test short while
    // leaving the restart well inside the three attempts.
    sim.update_settings(|s| {
        s.webhook_retry_ms = 2000;
        s.subscription_id_as_string_probability = 0.5;
    });
    let dir = tempfile::tempdir().unwrap();
    let db = test_database(&dir, "sim-crash.db");
    let store = open_store(&db).await;
    let (athlete, list) = seed_from(&sim, &store).await;
    store.write(paused_secret).await.unwrap();
    let port = free_port();
    let server = Server::start(&db, port, &[("STRAVA_API_URL", sim.api_url())]).await;

    cli("create", &db, &sim, &server.api.address).await;
    let calls_before = sim.calls().total;

    // Renames of 200 activities, deletes of 100, 50 creates, pushed one by
    // one; the service dies once 100 have been acknowledged.
    let mut killed = false;
    let emitted = list.len() + 50;
    for i in 0..emitted {
        let push = Some(Push::default());
        match list.get(i).map(|a| a["id"].as_u64().unwrap()) {
            Some(id) if i < 200 => {
                let name = Some(format!("renamed {i}"));
                let update = ActivityUpdate {
                    name,
                    ..ActivityUpdate::default()
                };
                sim.update_activity(id, update, push).unwrap();
            }
            Some(id) => sim.delete_activity(id, push).unwrap(),
            None => {
                sim.create_activity(athlete, NewActivity::default(), push)
                    .unwrap();
            }
        }
        if !killed && delivered(&sim).len() >= KILL_AFTER_DELIVERIES {
            server.kill();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(killed, "the burst ended before the kill");
    let acknowledged = delivered(&sim);
    assert!(
        acknowledged.len() < emitted,
        "the kill came after the burst"
    );

    // Restart on the same port, inside the simulator's retry window.
    drop(server);
    let server = Server::start(&db, port, &[("STRAVA_API_URL", sim.api_url())]).await;
    server.drained().await;
    let effects = Effects::read(&store).await;
    let lost = acknowledged.iter().filter(|e| !effects.applied(e)).count();
    assert_eq!(
        lost,
        0,
        "of {} acknowledged before the kill",
        acknowledged.len()
    );

    // The simulator redelivers the rest; every event ends acknowledged and applied.
    eventually("the simulator to redeliver", WAIT, || async {
        let keys: BTreeSet<(String, i64)> = delivered(&sim).iter().map(key).collect();
        if keys.len() == emitted {
            return Ok(());
        }
        Err(format!("{} of {emitted} delivered", keys.len()))
    })
    .await;
    server.drained().await;
    let effects = Effects::read(&store).await;
    assert!(delivered(&sim).iter().all(|e| effects.applied(e)));
    // Renames and deletes cost no call; creates are left to the job runner.
    assert_eq!(sim.calls().total, calls_before);
}
