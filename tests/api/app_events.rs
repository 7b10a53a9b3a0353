//! What the application is told: every change to what an athlete can read,
//! as signed events posted to `APP_WEBHOOK_URL` (at least once, in order per
//! athlete, retried, then failed and replayable) and as the change feed, in
//! JSON or live as Server-Sent Events.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use strava_sync::simulator::{NewActivity, SimConfig};

use crate::helpers::{eventually, WAIT};
use crate::receiver::{Answer, Receiver, SECRET};
use crate::sim_app::SimApp;

const SUBSCRIPTION: i64 = 4242;

fn config() -> SimConfig {
    SimConfig {
        athletes: 2,
        activities_per_athlete: 3,
        ..SimConfig::default()
    }
}

/// A service posting its events to `receiver` (if any), jobs run by hand.
async fn start(receiver: Option<&Receiver>) -> SimApp {
    let hook = receiver.map(|r| {
        [
            ("APP_WEBHOOK_URL", r.url.as_str()),
            ("APP_WEBHOOK_SECRET", SECRET),
        ]
    });
    let app =
        SimApp::start_with_jobs_by_hand(config(), hook.as_ref().map_or(&[], |h| &h[..])).await;
    app.state()
        .store
        .set_subscription_id(SUBSCRIPTION)
        .await
        .unwrap();
    app
}

/// Uploads an activity on the simulated Strava, announcing nothing.
fn upload(app: &SimApp, athlete: u64) -> u64 {
    app.sim
        .create_activity(athlete, NewActivity::default(), None)
        .unwrap()["id"]
        .as_u64()
        .unwrap()
}

/// Waits for the service's first delivery attempt, whatever it was answered.
async fn first_attempt(receiver: &Receiver) {
    eventually("a first delivery attempt", WAIT, || async {
        !receiver.received().is_empty()
    })
    .await;
}

/// Posts a Strava webhook event to the service, as Strava would.
async fn strava_event(app: &SimApp, aspect: &str, id: u64, owner: u64, updates: Value) {
    let secret = app.state().store.path_secret().await.unwrap();
    let event = json!({
        "aspect_type": aspect, "event_time": app.state().clock.epoch(), "object_id": id,
        "object_type": "activity", "owner_id": owner, "subscription_id": SUBSCRIPTION,
        "updates": updates,
    });
    let res = app.post_webhook(&secret, event.to_string()).await;
    assert_eq!(res.status(), 200);
}

/// Connects an athlete and stores their history; returns their token.
async fn connect(app: &SimApp, athlete: u64) -> String {
    let token = app.connect(athlete).await;
    app.run_jobs_until_idle().await;
    token
}

/// The types of the events the receiver accepted, in arrival order.
fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the receiver accepted `n` events; returns them.
async fn accepted(receiver: &Receiver, n: usize) -> Vec<Value> {
    eventually(&format!("{n} events accepted"), WAIT, || async {
        let got = receiver.accepted();
        (got.len() >= n).then_some(got)
    })
    .await
}

/// `/admin/deliveries` once nothing waits: a receiver has an event a moment
/// before the service records that it was delivered.
async fn all_recorded(app: &SimApp) -> Value {
    eventually("every delivery is recorded", WAIT, || async {
        let report: Value = app.admin_deliveries().await.json().await.unwrap();
        (report["counts"]["pending"] == 0).then_some(report)
    })
    .await
}

/// The changes the feed answers after `since`, and its next cursor.
async fn feed(app: &SimApp, token: &str, since: i64) -> (Vec<Value>, i64) {
    let res = app.changes(token, &format!("since={since}")).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    (
        body["changes"].as_array().unwrap().clone(),
        body["next_cursor"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn created_renamed_and_deleted_activities_reach_the_app_signed_and_in_order() {
    let receiver = Receiver::start().await;
    let app = start(Some(&receiver)).await;
    let athlete = app.sim.athlete_ids()[0];
    connect(&app, athlete).await;
    let history = accepted(&receiver, 4).await;
    assert_eq!(
        types(&history),
        [
            "athlete.connected",
            "activity.created",
            "activity.created",
            "activity.created"
        ]
    );

    let new = upload(&app, athlete);
    strava_event(&app, "create", new, athlete, json!({})).await;
    eventually("the create is applied", WAIT, || async {
        app.run_jobs_until_idle().await;
        receiver.accepted().len() == 5
    })
    .await;
    strava_event(
        &app,
        "update",
        new,
        athlete,
        json!({"title": "Evening Spin"}),
    )
    .await;
    accepted(&receiver, 6).await;
    strava_event(&app, "delete", new, athlete, json!({})).await;
    let events = accepted(&receiver, 7).await;

    assert_eq!(
        types(&events[4..]),
        ["activity.created", "activity.updated", "activity.deleted"]
    );
    let (created, renamed, deleted) = (&events[4], &events[5], &events[6]);
    for event in [created, renamed, deleted] {
        assert_eq!(event["athlete_id"], athlete);
        assert_eq!(event["activity_id"], new);
    }
    assert_eq!(created["data"]["id"], new);
    assert_eq!(renamed["data"]["name"], "Evening Spin");
    assert!(deleted.get("data").is_none());
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    for r in receiver.received() {
        assert!(r.signed(), "signed with the secret: {r:?}");
        assert_eq!(
            r.id,
            r.json()["id"].to_string(),
            "webhook-id is the event id"
        );
        assert!(r.timestamp.parse::<i64>().is_ok());
    }
    // A forged signature does not pass the same check.
    let mut forged = receiver.received()[0].clone();
    forged.body = forged
        .body
        .replace("athlete.connected", "athlete.deauthorized");
    assert!(!forged.signed());

    // Each event is what /openapi.json's `webhooks` promises a receiver.
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let promised = &doc["webhooks"]["app-event"]["post"];
    let mut schema = promised["requestBody"]["content"]["application/json"]["schema"].clone();
    schema["components"] = doc["components"].clone();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    for event in &events {
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {event}");
    }
    let headers: Vec<&str> = promised["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
}

#[tokio::test]
async fn a_receiver_answering_500_gets_the_event_again_and_later_events_wait_their_turn() {
    let receiver = Receiver::start().await;
    receiver.script(&[Answer::Status(500)]);
    let app = start(Some(&receiver)).await;
    let athlete = app.sim.athlete_ids()[0];
    connect(&app, athlete).await;

    first_attempt(&receiver).await;
    // The retry is due within seconds of the service's clock.
    app.advance(10);
    let events = accepted(&receiver, 4).await;

    let attempts = receiver.received();
    assert_eq!(attempts[0].answer, Answer::Status(500));
    assert_eq!(
        attempts[1].id, attempts[0].id,
        "the refused event comes again"
    );
    assert_eq!(events[0]["type"], "athlete.connected");
    let ids: Vec<&str> = attempts.iter().map(|r| r.id.as_str()).collect();
    let mut delivered_order = ids.clone();
    delivered_order.dedup();
    assert!(
        delivered_order
            .windows(2)
            .all(|w| w[0].parse::<i64>().unwrap() < w[1].parse::<i64>().unwrap()),
        "no later event overtook the retried one: {ids:?}"
    );
    let report = all_recorded(&app).await;
    assert_eq!(report["enabled"], true);
    assert_eq!(report["counts"], json!({"pending": 0, "failed": 0}));
    // The recorder is the process's, shared by the tests running beside
    // this one: at least this test's attempts are counted.
    let metrics = app.metrics().await.text().await.unwrap();
    let counted = |outcome: &str| -> f64 {
        let line = format!("app_event_deliveries_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0.0, |n| n.parse().unwrap())
    };
    assert!(
        counted("retry") >= 1.0 && counted("delivered") >= 4.0,
        "{metrics}"
    );
    assert!(metrics.contains("app_events_oldest_undelivered_seconds"));
}

#[tokio::test]
async fn a_hanging_receiver_delays_neither_the_webhook_ack_nor_sync_jobs() {
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Hang);
    let app = start(Some(&receiver)).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect(&app, athlete).await;
    first_attempt(&receiver).await;

    let new = upload(&app, athlete);
    let sent = Instant::now();
    strava_event(&app, "create", new, athlete, json!({})).await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "acknowledged within Strava's two seconds: {:?}",
        sent.elapsed()
    );
    eventually("the announced activity is fetched", WAIT, || async {
        app.run_jobs_until_idle().await;
        app.get_activity(&token, new).await.status() == 200
    })
    .await;
    assert!(
        receiver.accepted().is_empty(),
        "the receiver is still hanging"
    );
}

#[tokio::test]
async fn after_a_day_of_failures_an_event_waits_in_the_failed_list_until_replayed() {
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Status(503));
    let app = start(Some(&receiver)).await;
    let athlete = app.sim.athlete_ids()[0];
    connect(&app, athlete).await;
    first_attempt(&receiver).await;
    // Past the day of retries, the head of the line fails at its next
    // attempt, and so does every later event that is already a day old.
    app.advance(25 * 3600);
    let report = eventually("every event failed", WAIT, || async {
        let report: Value = app.admin_deliveries().await.json().await.unwrap();
        (report["counts"]["failed"] == 4).then_some(report)
    })
    .await;
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 4);
    assert!(failed[0]["last_error"].as_str().unwrap().contains("503"));
    assert_eq!(report["counts"]["pending"], 0);
    let page = app
        .get_as(&app.admin_token, "/admin/status")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"<strong id="failed-deliveries">4</strong>"#),
        "the status page shows the failed deliveries"
    );
    assert!(page.contains("the receiver answered 503"));

    receiver.otherwise(Answer::Status(200));
    let replay: Value = app.admin_deliveries_replay().await.json().await.unwrap();
    assert_eq!(replay["replayed"], 4);
    let events = accepted(&receiver, 4).await;
    assert_eq!(events[0]["type"], "athlete.connected");
    let report = all_recorded(&app).await;
    assert_eq!(report["counts"], json!({"pending": 0, "failed": 0}));
}

#[tokio::test]
async fn the_feed_answers_exactly_the_changes_after_a_cursor_and_only_the_tokens_athletes() {
    let app = start(None).await;
    let [a, b] = app.sim.athlete_ids()[..] else {
        panic!("two athletes")
    };
    let (token_a, token_b) = (connect(&app, a).await, connect(&app, b).await);

    let (all, next) = feed(&app, &token_a, 0).await;
    assert_eq!(all.len(), 4, "connected and three created: {all:?}");
    assert!(all.iter().all(|c| c["athlete_id"] == a));
    let cursor = all[1]["id"].as_i64().unwrap();
    let (after, _) = feed(&app, &token_a, cursor).await;
    assert_eq!(after, all[2..].to_vec());
    let (nothing, same) = feed(&app, &token_a, next).await;
    assert!(nothing.is_empty());
    assert_eq!(same, next);

    let renamed = all[3]["activity_id"].as_u64().unwrap();
    strava_event(&app, "update", renamed, a, json!({"title": "Renamed"})).await;
    let (changes, _) = eventually("the rename is in A's feed", WAIT, || async {
        let (changes, next) = feed(&app, &token_a, next).await;
        (!changes.is_empty()).then_some((changes, next))
    })
    .await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["type"], "activity.updated");
    assert_eq!(changes[0]["data"]["name"], "Renamed");

    let (theirs, _) = feed(&app, &token_b, 0).await;
    assert_eq!(theirs.len(), 4);
    assert!(theirs.iter().all(|c| c["athlete_id"] == b), "{theirs:?}");
    let (after_a, _) = feed(&app, &token_b, next).await;
    assert!(after_a.is_empty(), "A's rename is not in B's feed");
}

/// Reads the stream until `n` events arrived; returns their ids and data.
async fn read_events<B: AsRef<[u8]>>(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
    buffer: &mut String,
    n: usize,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let data = field("data: ");
                if !data.is_empty() {
                    out.push((field("id: "), serde_json::from_str(&data).unwrap()));
                }
            }
            if out.len() >= n {
                break;
            }
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            buffer.push_str(std::str::from_utf8(chunk.as_ref()).unwrap());
        }
    })
    .await
    .expect("the events arrive");
    out
}

#[tokio::test]
async fn a_browser_sees_a_rename_live_and_resumes_from_the_last_event_id() {
    let app = start(None).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect(&app, athlete).await;

    // A page of one: the stream reads on by itself, not at the next change.
    let res = app.changes_stream(&token, "limit=1", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let mut buffer = String::new();
    let history = read_events(&mut stream, &mut buffer, 4).await;
    assert_eq!(history[0].1["type"], "athlete.connected");

    let renamed = history[3].1["activity_id"].as_u64().unwrap();
    strava_event(&app, "update", renamed, athlete, json!({"title": "Live"})).await;
    let live = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(live[0].1["type"], "activity.updated");
    assert_eq!(live[0].1["data"]["name"], "Live");
    assert_eq!(live[0].0, live[0].1["id"].to_string());
    drop(stream);

    // A reconnecting EventSource sends the last id it saw.
    let res = app
        .changes_stream(&token, "", Some(history[2].0.as_str()))
        .await;
    let mut stream = res.bytes_stream();
    let mut buffer = String::new();
    let resumed = read_events(&mut stream, &mut buffer, 2).await;
    assert_eq!(resumed[0].0, history[3].0);
    assert_eq!(resumed[1].0, live[0].0);
    drop(stream);

    // A browser's EventSource sends no Authorization header: the token
    // comes as Strava also takes it, in `access_token`.
    let from_browser = |token: &str| {
        app.client
            .get(app.url(&format!("/api/v3/athlete/changes?access_token={token}")))
            .header("accept", "text/event-stream")
            .send()
    };
    let res = from_browser(&token).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut buffer = String::new();
    assert_eq!(
        read_events(&mut stream, &mut buffer, 5).await[4].0,
        live[0].0
    );
    assert_eq!(from_browser("forged").await.unwrap().status(), 401);
}

#[tokio::test]
async fn bad_cursors_limits_and_floods_of_streams_get_faults() {
    let app = start(None).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect(&app, athlete).await;

    for query in [
        "since=-1",
        "since=abc",
        "since=1&since=2",
        "since=99999999999999999999",
        "limit=0",
        "limit=1001",
        "limit=-5",
    ] {
        let res = app.changes(&token, query).await;
        assert_eq!(res.status(), 400, "{query}");
        let fault: Value = res.json().await.unwrap();
        assert!(
            fault["message"].is_string() && fault["errors"][0]["code"] == "invalid",
            "{query}: {fault}"
        );
    }
    for last_event_id in ["x", "-3", &"9".repeat(4000)] {
        let res = app.changes_stream(&token, "", Some(last_event_id)).await;
        assert!(
            matches!(res.status().as_u16(), 400 | 431),
            "{last_event_id:.10}: {}",
            res.status()
        );
    }
    assert_eq!(app.changes("not-a-token", "").await.status(), 401);
    assert_eq!(app.get("/api/v3/athlete/changes").await.status(), 401);

    // Streams a client left open (a closed tab) cannot lock the athlete
    // out: one more than allowed ends the oldest.
    let mut open = Vec::new();
    for _ in 0..strava_sync::http::changes::STREAMS_PER_ATHLETE {
        let res = app.changes_stream(&token, "", None).await;
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    let res = app.changes_stream(&token, "", None).await;
    assert_eq!(res.status(), 200);
    let oldest = open.remove(0);
    let ended = tokio::time::timeout(WAIT, oldest.text()).await;
    assert!(ended.is_ok(), "the oldest stream ended");
    drop(open);

    // The token works on the feed alone in a query, where EventSource needs it.
    let res = app
        .get(&format!("/api/v3/athlete?access_token={token}"))
        .await;
    assert_eq!(res.status(), 401);
    // A cursor ahead of the log (another database's) is not answered as
    // if nothing happened since.
    assert_eq!(app.changes(&token, "since=999999999").await.status(), 410);

    // Past the feed's retention, an old cursor is refused, not silently
    // answered with a gap.
    let (changes, next) = feed(&app, &token, 0).await;
    let first = changes[0]["id"].as_i64().unwrap();
    let later = app.state().clock.epoch() + 8 * 24 * 3600;
    app.state()
        .store
        .prune_changes(later, later, 1000)
        .await
        .unwrap();
    let res = app.changes(&token, &format!("since={first}")).await;
    assert_eq!(res.status(), 410);
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["errors"][0]["code"], "expired");
    assert_eq!(feed(&app, &token, next).await.0, Vec::<Value>::new());
}

#[tokio::test]
async fn a_deauthorization_is_told_and_takes_the_athletes_earlier_changes_with_it() {
    let receiver = Receiver::start().await;
    receiver.otherwise(Answer::Hang);
    let app = start(Some(&receiver)).await;
    let athlete = app.sim.athlete_ids()[0];
    let token = connect(&app, athlete).await;
    let (before, _) = feed(&app, &token, 0).await;
    assert_eq!(before.len(), 4);
    let live = app.changes_stream(&token, "", None).await;
    assert_eq!(live.status(), 200);

    assert_eq!(app.disconnect(&token).await.status(), 200);
    // The revoked token's open stream ends with it.
    let ended = tokio::time::timeout(WAIT, live.text()).await;
    assert!(ended.is_ok(), "the stream of a revoked token ends");
    let report: Value = app.admin_deliveries().await.json().await.unwrap();
    let total: i64 = report["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(total, 1, "only the deauthorization is left: {report}");
    // The hanging attempt times out, then the line moves on.
    receiver.otherwise(Answer::Status(204));
    let told = eventually(
        "the deauthorization is delivered",
        Duration::from_secs(30),
        || async {
            receiver
                .accepted()
                .into_iter()
                .find(|e| e["type"] == "athlete.deauthorized")
        },
    )
    .await;
    assert_eq!(told["athlete_id"], athlete);
    assert!(told.get("data").is_none());
}
