//! Push subscriptions (the validation handshake and its deadline, one per
//! application) and webhook delivery (retries, lost, twice, string ids).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use strava_sync::simulator::{ActivityUpdate, NewActivity, Push, SimConfig};

use super::*;
use crate::helpers::{eventually, WAIT};

const VERIFY_TOKEN: &str = "let-me-in";

/// How the test callback behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Delay before answering the validation GET.
    handshake_delay: Duration,
    /// Echo a different challenge.
    wrong_echo: bool,
    /// Answer 500 to this many event POSTs before answering 200.
    failing_posts: usize,
}

/// A webhook receiver standing in for the service.
struct Callback {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    _server: actix_web::dev::ServerHandle,
}

impl Callback {
    async fn start(behaviour: Behaviour) -> Self {
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let posts = Arc::new(Mutex::new(0usize));
        let (seen, b) = (received.clone(), behaviour);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            let (seen, posts, b) = (seen.clone(), posts.clone(), b.clone());
            let b2 = b.clone();
            App::new()
                .route(
                    "/hook",
                    web::get().to(move |req: HttpRequest| {
                        let b = b2.clone();
                        async move {
                            tokio::time::sleep(b.handshake_delay).await;
                            let q = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string()).unwrap();
                            if q.get("hub.verify_token").map(String::as_str) != Some(VERIFY_TOKEN) || q.get("hub.mode").map(String::as_str) != Some("subscribe") {
                                return HttpResponse::Forbidden().finish();
                            }
                            let challenge = if b.wrong_echo { "nope".to_string() } else { q["hub.challenge"].clone() };
                            HttpResponse::Ok().json(json!({"hub.challenge": challenge}))
                        }
                    }),
                )
                .route(
                    "/hook",
                    web::post().to(move |body: web::Json<Value>| {
                        let (seen, posts, b) = (seen.clone(), posts.clone(), b.clone());
                        async move {
                            seen.lock().unwrap().push(body.into_inner());
                            let mut n = posts.lock().unwrap();
                            *n += 1;
                            if *n <= b.failing_posts {
                                HttpResponse::InternalServerError().finish()
                            } else {
                                HttpResponse::Ok().finish()
                            }
                        }
                    }),
                )
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .disable_signals()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Callback {
            url: format!("http://127.0.0.1:{port}/hook"),
            received,
            _server: handle,
        }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

async fn subscribe(sim: &SimHandle, callback: &str, verify_token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/push_subscriptions", sim.api_url()))
        .form(&[
            ("client_id", "1234"),
            ("client_secret", sim.client_secret()),
            ("callback_url", callback),
            ("verify_token", verify_token),
        ])
        .send()
        .await
        .unwrap()
}

/// A simulator with a subscription to a fresh callback, retries 50 ms apart.
async fn subscribed(behaviour: Behaviour) -> (SimHandle, Callback, u64) {
    let sim = start(SimConfig::default()).await;
    sim.update_settings(|s| s.webhook_retry_ms = 50);
    let callback = Callback::start(behaviour).await;
    let res = subscribe(&sim, &callback.url, VERIFY_TOKEN).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (sim, callback, body["id"].as_u64().unwrap())
}

#[tokio::test]
async fn create_view_and_delete_a_subscription() {
    let sim = start(SimConfig::default()).await;
    let callback = Callback::start(Behaviour::default()).await;
    let res = subscribe(&sim, &callback.url, VERIFY_TOKEN).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["resource_state"], 2);
    assert_eq!(created["application_id"], 1234);
    assert_eq!(created["callback_url"], callback.url.as_str());
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    let again = subscribe(&sim, &callback.url, VERIFY_TOKEN).await;
    assert_eq!(again.status(), 400, "one subscription per application");
    let body: Value = again.json().await.unwrap();
    assert_eq!(fault_of(&body), ("PushSubscription", "", "already exists"));

    let view = |secret: &'static str| {
        client()
            .get(format!("{}/push_subscriptions", sim.api_url()))
            .query(&[("client_id", "1234"), ("client_secret", secret)])
            .send()
    };
    let list: Vec<Value> = view("test-client-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, vec![created.clone()]);
    assert_eq!(view("wrong").await.unwrap().status(), 400);

    let id = created["id"].as_u64().unwrap();
    let delete = |id: String| {
        client()
            .delete(format!("{}/push_subscriptions/{id}", sim.api_url()))
            .query(&[
                ("client_id", "1234"),
                ("client_secret", "test-client-secret"),
            ])
            .send()
    };
    assert_eq!(delete("999".into()).await.unwrap().status(), 404);
    assert_eq!(delete(id.to_string()).await.unwrap().status(), 204);
    let list: Vec<Value> = view("test-client-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.is_empty());
}

#[tokio::test]
async fn a_wrong_verify_token_or_echo_fails_the_handshake() {
    let sim = start(SimConfig::default()).await;
    let callback = Callback::start(Behaviour::default()).await;
    let res = subscribe(&sim, &callback.url, "wrong-token").await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        fault_of(&body),
        (
            "PushSubscription",
            "callback url",
            "GET to callback URL does not return 200"
        )
    );

    let echo = Callback::start(Behaviour {
        wrong_echo: true,
        ..Behaviour::default()
    })
    .await;
    assert_eq!(subscribe(&sim, &echo.url, VERIFY_TOKEN).await.status(), 400);
    assert!(sim.subscription().is_none());
}

#[tokio::test]
async fn a_callback_slower_than_two_seconds_fails_the_handshake() {
    let sim = start(SimConfig::default()).await;
    let slow = Callback::start(Behaviour {
        handshake_delay: Duration::from_millis(2500),
        ..Behaviour::default()
    })
    .await;
    let res = subscribe(&sim, &slow.url, VERIFY_TOKEN).await;
    assert_eq!(res.status(), 400);
    assert!(sim.subscription().is_none());
}

#[tokio::test]
async fn subscription_creation_rejects_bad_input() {
    let sim = start(SimConfig::default()).await;
    for form in [
        vec![
            ("client_id", "1"),
            ("client_secret", "test-client-secret"),
            ("callback_url", "http://x/"),
            ("verify_token", "t"),
        ],
        vec![
            ("client_id", "1234"),
            ("client_secret", "test-client-secret"),
            ("callback_url", "ftp://x/"),
            ("verify_token", "t"),
        ],
        vec![
            ("client_id", "1234"),
            ("client_secret", "test-client-secret"),
            ("callback_url", "http://x/"),
        ],
    ] {
        let res = client()
            .post(format!("{}/push_subscriptions", sim.api_url()))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{form:?}");
    }
    let unreachable = subscribe(&sim, "http://127.0.0.1:9/hook", VERIFY_TOKEN).await;
    assert_eq!(unreachable.status(), 400);
}

#[tokio::test]
async fn events_are_posted_in_stravas_shape() {
    let (sim, callback, subscription_id) = subscribed(Behaviour::default()).await;
    let athlete = sim.athlete_ids()[0];
    let created = sim
        .create_activity(athlete, NewActivity::default(), Some(Push::default()))
        .unwrap();
    let id = created["id"].as_u64().unwrap();
    let rename = ActivityUpdate {
        name: Some("Messy".into()),
        ..ActivityUpdate::default()
    };
    sim.update_activity(id, rename, Some(Push::default()))
        .unwrap();
    sim.delete_activity(id, Some(Push::default())).unwrap();
    sim.deauthorize(athlete, Some(Push::default())).unwrap();
    eventually("four events", WAIT, || async {
        callback.received().len() == 4
    })
    .await;

    let mut events = callback.received();
    events.sort_by_key(|e| {
        (
            e["object_type"] != "activity",
            ["create", "update", "delete"]
                .iter()
                .position(|a| e["aspect_type"] == *a),
        )
    });
    let expected = [
        ("activity", id, "create", json!({})),
        ("activity", id, "update", json!({"title": "Messy"})),
        ("activity", id, "delete", json!({})),
        ("athlete", athlete, "update", json!({"authorized": "false"})),
    ];
    for (event, (object_type, object_id, aspect, updates)) in events.iter().zip(expected) {
        assert_eq!(event["object_type"], object_type);
        assert_eq!(event["object_id"], object_id);
        assert_eq!(event["aspect_type"], aspect);
        assert_eq!(event["updates"], updates);
        assert_eq!(event["owner_id"], athlete);
        assert_eq!(event["subscription_id"], subscription_id);
        assert!(event["event_time"].as_i64().unwrap() > 1_700_000_000);
    }
}

/// A subscription whose callback fails the first `failing_posts` events,
/// and one create event pushed to it.
async fn one_event_to(failing_posts: usize) -> (SimHandle, Callback) {
    let (sim, callback, _) = subscribed(Behaviour {
        failing_posts,
        ..Behaviour::default()
    })
    .await;
    let athlete = sim.athlete_ids()[0];
    sim.create_activity(athlete, NewActivity::default(), Some(Push::default()))
        .unwrap();
    (sim, callback)
}

#[tokio::test]
async fn a_failing_callback_gets_three_attempts_in_all() {
    let (sim, callback) = one_event_to(usize::MAX).await;
    sim.deliveries_settled().await;
    assert_eq!(sim.deliveries().len(), 3);
    assert_eq!(callback.received().len(), 3, "no fourth attempt");
    let attempts: Vec<u32> = sim.deliveries().iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_eq!(
        callback.received()[0],
        callback.received()[2],
        "the same event each time"
    );
}

#[tokio::test]
async fn a_retry_after_a_failure_delivers_once() {
    let (sim, callback) = one_event_to(1).await;
    eventually("the retry", WAIT, || async {
        callback.received().len() == 2
    })
    .await;
    eventually("the log", WAIT, || async { sim.deliveries().len() == 2 }).await;
    let outcomes: Vec<Value> = sim
        .deliveries()
        .iter()
        .map(|d| serde_json::to_value(d.outcome).unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec![json!({"rejected": {"status": 500}}), json!("delivered")]
    );
}

#[tokio::test]
async fn lost_twice_delayed_and_string_ids_per_event() {
    let (sim, callback, subscription_id) = subscribed(Behaviour::default()).await;
    let athlete = sim.athlete_ids()[0];
    let lost = Push {
        lost: true,
        ..Push::default()
    };
    sim.create_activity(athlete, NewActivity::default(), Some(lost))
        .unwrap();
    let twice = Push {
        twice: true,
        delay_ms: 100,
        subscription_id_as_string: Some(true),
        ..Push::default()
    };
    let created = sim
        .create_activity(athlete, NewActivity::default(), Some(twice))
        .unwrap();
    eventually("the duplicate", WAIT, || async {
        callback.received().len() == 2
    })
    .await;
    for event in callback.received() {
        assert_eq!(event["object_id"], created["id"]);
        assert_eq!(event["subscription_id"], subscription_id.to_string());
    }
    let lost_records = sim
        .deliveries()
        .iter()
        .filter(|d| serde_json::to_value(d.outcome).unwrap() == "lost")
        .count();
    assert_eq!(lost_records, 1);

    sim.update_settings(|s| s.subscription_id_as_string_probability = 1.0);
    sim.create_activity(athlete, NewActivity::default(), Some(Push::default()))
        .unwrap();
    eventually("the third event", WAIT, || async {
        callback.received().len() == 3
    })
    .await;
    assert!(callback.received()[2]["subscription_id"].is_string());
}

#[tokio::test]
async fn without_read_all_privacy_switches_arrive_as_delete_and_create() {
    let (sim, callback, _) = subscribed(Behaviour::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    let id = sim
        .activities(c.athlete_id)
        .unwrap()
        .iter()
        .find(|a| a["private"] == false)
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let hide = ActivityUpdate {
        private: Some(true),
        ..ActivityUpdate::default()
    };
    sim.update_activity(id, hide, Some(Push::default()))
        .unwrap();
    eventually("the delete", WAIT, || async {
        callback.received().len() == 1
    })
    .await;
    let show = ActivityUpdate {
        private: Some(false),
        ..ActivityUpdate::default()
    };
    sim.update_activity(id, show, Some(Push::default()))
        .unwrap();
    eventually("the create", WAIT, || async {
        callback.received().len() == 2
    })
    .await;
    let aspects: Vec<Value> = callback
        .received()
        .iter()
        .map(|e| e["aspect_type"].clone())
        .collect();
    assert_eq!(aspects, vec![json!("delete"), json!("create")]);
}

#[tokio::test]
async fn events_without_a_subscription_are_recorded_undeliverable() {
    let sim = start(SimConfig::default()).await;
    sim.create_activity(
        sim.athlete_ids()[0],
        NewActivity::default(),
        Some(Push::default()),
    )
    .unwrap();
    eventually("the record", WAIT, || async { sim.deliveries().len() == 1 }).await;
    assert_eq!(
        serde_json::to_value(sim.deliveries()[0].outcome).unwrap(),
        "no_subscription"
    );
}
