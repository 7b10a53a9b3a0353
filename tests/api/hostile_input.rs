//! Hostile input across every guarded route at once: forged, malformed and
//! oversized credentials, and bodies declared larger than any route accepts.
//! Each route's own module tests its parameters; this one makes sure no
//! route was left out of the shared guards.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, ADMIN_TOKEN};

/// Routes behind an athlete's API token.
const ATHLETE_ROUTES: [(&str, &str); 8] = [
    ("GET", "/api/v3/athlete"),
    ("GET", "/api/v3/athlete/activities"),
    ("GET", "/api/v3/activities/17179869201"),
    ("GET", "/api/v3/athletes/134815/stats"),
    ("GET", "/api/sync"),
    ("POST", "/api/sync"),
    ("GET", "/api/sync/jobs/1"),
    ("POST", "/auth/disconnect"),
];

/// Routes behind the admin token.
const ADMIN_ROUTES: [(&str, &str); 9] = [
    ("GET", "/admin/budget"),
    ("GET", "/admin/status"),
    ("GET", "/admin/athletes"),
    ("GET", "/admin/webhooks"),
    ("GET", "/metrics"),
    ("POST", "/admin/pause"),
    ("POST", "/admin/resume"),
    ("POST", "/admin/sync/run"),
    ("POST", "/admin/webhooks/replay"),
];

/// Authorization values that must never authenticate anyone.
fn hostile_credentials(real: &str) -> Vec<HeaderValue> {
    let texts = [
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Bearer \t ".to_string(),
        format!("Basic {real}"),
        format!("Bearer{real}"),
        format!("Bearer {}", "a".repeat(8 * 1024)),
        format!("Bearer {real}{real}"),
        "Bearer ' OR '1'='1".to_string(),
        "Bearer %00".to_string(),
    ];
    let mut values: Vec<HeaderValue> = texts
        .iter()
        .map(|t| HeaderValue::from_str(t).unwrap())
        .collect();
    // Bytes that are not UTF-8 (obs-text is allowed on the wire).
    values.push(HeaderValue::from_bytes(b"Bearer \xff\xfe\x80").unwrap());
    values
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    authorization: Option<HeaderValue>,
) -> reqwest::Response {
    let mut req = app.client.request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        app.url(path),
    );
    if let Some(value) = authorization {
        req = req.header(AUTHORIZATION, value);
    }
    req.send().await.unwrap()
}

/// Whether background work is paused, as the operator sees it.
async fn paused(app: &TestApp) -> bool {
    let budget: Value = app.admin_budget().await.json().await.unwrap();
    budget["paused"] == true
}

/// A 401 naming the credential that was missing or wrong.
async fn assert_unauthorized(res: reqwest::Response, field: &str, what: &str) {
    assert_eq!(res.status(), 401, "{what}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Authorization Error", "{what}: {body}");
    assert_eq!(body["errors"][0]["field"], field, "{what}: {body}");
}

#[tokio::test]
async fn no_guarded_route_accepts_a_missing_malformed_or_forged_token() {
    let app = TestApp::spawn().await;
    let (_, token) = app.seed_athlete("athlete.json").await;
    for (method, path) in ATHLETE_ROUTES {
        assert_unauthorized(send(&app, method, path, None).await, "access_token", path).await;
        for value in hostile_credentials(&token) {
            let what = format!("{method} {path} with {value:?}");
            let res = send(&app, method, path, Some(value)).await;
            assert_unauthorized(res, "access_token", &what).await;
        }
    }
    for (method, path) in ADMIN_ROUTES {
        assert_unauthorized(send(&app, method, path, None).await, "admin_token", path).await;
        // An athlete's token is no admin token either.
        let mut values = hostile_credentials(ADMIN_TOKEN);
        values.push(HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        for value in values {
            let what = format!("{method} {path} with {value:?}");
            let res = send(&app, method, path, Some(value)).await;
            assert_unauthorized(res, "admin_token", &what).await;
        }
    }
    // Nothing any of them asked for happened.
    assert!(!paused(&app).await);
    assert_eq!(app.get_athlete(&token).await.status(), 200);
}

#[tokio::test]
async fn every_post_route_refuses_a_body_declared_too_large_and_does_nothing() {
    let app = TestApp::spawn().await;
    let (_, token) = app.seed_athlete("athlete.json").await;
    let routes = [
        ("/api/sync", token.as_str()),
        ("/auth/disconnect", token.as_str()),
        ("/admin/pause", ADMIN_TOKEN),
        ("/admin/resume", ADMIN_TOKEN),
        ("/admin/sync/run", ADMIN_TOKEN),
        ("/admin/webhooks/replay", ADMIN_TOKEN),
        ("/webhook/not-the-secret", ADMIN_TOKEN),
    ];
    for (path, bearer) in routes {
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(bearer)
            .header(CONTENT_LENGTH, (16 * 1024 + 1).to_string())
            .body(vec![b'{'; 16 * 1024 + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 413, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "too_large", "{path}: {body}");
    }
    // The athlete is still connected and nothing was queued or paused.
    assert_eq!(app.get_athlete(&token).await.status(), 200);
    let jobs: i64 = app
        .store
        .read(|c| {
            c.query_row("SELECT COUNT(*) FROM jobs", strava_sync::params![], |r| {
                r.get(0)
            })
        })
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    assert!(!paused(&app).await);
}

/// Sends `head` on a fresh connection and reads until the server closes it;
/// returns what it answered and how long the connection stayed open.
async fn until_closed(app: &TestApp, head: String) -> (String, Duration) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer));
    read.await
        .unwrap_or_else(|_| panic!("still open after 30 s: {head}"))
        .unwrap();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_body_declared_and_never_sent_is_answered_and_the_connection_closed() {
    let app = TestApp::spawn().await;
    let (athlete, token) = app.seed_athlete("athlete.json").await;
    let secret = app.store.path_secret().await.unwrap();
    let routes = [
        (format!("/webhook/{secret}"), String::new()),
        ("/webhook/not-the-secret".into(), String::new()),
        (
            "/api/sync".into(),
            format!("Authorization: Bearer {token}\r\n"),
        ),
        (
            "/admin/pause".into(),
            format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
        ),
        (
            format!("/admin/athletes/{athlete}"),
            format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
        ),
    ];
    let stalled = routes.iter().map(|(path, auth)| {
        let method = if path.starts_with("/admin/athletes/") {
            "PATCH"
        } else {
            "POST"
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"aspect"
        );
        until_closed(&app, head)
    });
    for ((path, _), (answer, open)) in routes
        .iter()
        .zip(futures_util::future::join_all(stalled).await)
    {
        assert!(open < Duration::from_secs(15), "{path} held for {open:?}");
        // The routes that read a body say it timed out; the others answer
        // without reading it.
        if *path == format!("/webhook/{secret}") || path.starts_with("/admin/athletes/") {
            assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
            assert!(answer.contains(r#""code":"timeout""#), "{path}: {answer}");
        }
    }
    assert_eq!(app.readyz().await.status(), 200);
}

/// HTTP too malformed for actix to hand to any code of ours is refused with
/// its bare status and the connection closed (the framework answers it
/// before the middleware that puts faults in Strava's shape runs), and the
/// service keeps serving.
#[tokio::test]
async fn malformed_http_is_refused_and_the_connection_closed() {
    let app = TestApp::spawn().await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        ("GARBAGE\r\n\r\n".to_string(), "400"),
        (
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\
             Content-Length: 2\r\n\r\nab"
                .to_string(),
            "400",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            "431",
        ),
    ];
    for (head, status) in cases {
        let (answer, open) = until_closed(&app, head.clone()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {answer}"
        );
        assert!(open < Duration::from_secs(5), "{head:?} held for {open:?}");
    }
    assert_eq!(app.readyz().await.status(), 200);
}

/// Asserts a refusal in Strava's fault shape, with the status given.
async fn assert_fault(res: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(res.status(), status, "{what}");
    let body = res.text().await.unwrap();
    let fault: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not a fault: {body}"));
    assert!(fault["message"].is_string(), "{what}: {fault}");
    assert!(fault["errors"][0]["code"].is_string(), "{what}: {fault}");
    fault
}

#[tokio::test]
async fn what_cors_refuses_is_answered_in_the_fault_shape() {
    let app = TestApp::spawn_with(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]).await;
    let (_, token) = app.seed_athlete("athlete.json").await;
    let preflight = |origin: &str, method: &str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/v3/athlete"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .send()
    };
    let res = preflight("https://app.example", "GET").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    let res = preflight("https://evil.example", "GET").await.unwrap();
    let fault = assert_fault(res, 400, "unlisted origin").await;
    assert!(
        fault["message"].as_str().unwrap().contains("Origin"),
        "{fault}"
    );
    let res = preflight("https://app.example", "DELETE").await.unwrap();
    assert_fault(res, 400, "a method not allowed").await;
    // A read from an unlisted origin is served without CORS headers, so a
    // browser keeps it from the page.
    let res = app
        .client
        .get(app.url("/api/v3/athlete"))
        .bearer_auth(&token)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

/// `path` of the connect routes as the client at `forwarded_for` (through
/// a proxy).
async fn connect_from(app: &TestApp, path: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(client) = forwarded_for {
        req = req.header("X-Forwarded-For", client);
    }
    req.send().await.unwrap()
}

async fn pending_states(app: &TestApp) -> i64 {
    app.store
        .read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM oauth_states",
                strava_sync::params![],
                |r| r.get(0),
            )
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn connecting_is_limited_per_client_address_behind_a_trusted_proxy() {
    let app = TestApp::spawn_with(&[
        ("CONNECT_RATE_LIMIT", "5"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    // The client wrote the first address; the proxy appended the real one.
    let client = Some("203.0.113.7, 198.51.100.1");
    for _ in 0..4 {
        let res = connect_from(&app, "/auth/strava", client).await;
        assert_eq!(res.status(), 302);
    }
    let callback = "/auth/strava/callback?state=forged&code=x";
    let res = connect_from(&app, callback, Some("198.51.100.1")).await;
    assert_eq!(
        res.status(),
        400,
        "the callback counts against the limit too"
    );
    let res = connect_from(&app, "/auth/strava", Some("198.51.100.1")).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_fault(res, 429, "the client's sixth request").await;
    assert_eq!(
        pending_states(&app).await,
        4,
        "the refused one stored nothing"
    );

    let res = connect_from(&app, "/auth/strava", Some("198.51.100.2")).await;
    assert_eq!(res.status(), 302, "another client");
    let res = connect_from(&app, "/auth/strava", None).await;
    assert_eq!(res.status(), 302, "the proxy itself");
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_not_believed() {
    let app = TestApp::spawn_with(&[("CONNECT_RATE_LIMIT", "3")]).await;
    for n in 1..=3 {
        let forged = format!("198.51.100.{n}");
        let res = connect_from(&app, "/auth/strava", Some(&forged)).await;
        assert_eq!(res.status(), 302);
    }
    let res = connect_from(&app, "/auth/strava", Some("198.51.100.4")).await;
    assert_fault(res, 429, "a fourth address made up by the same peer").await;
    assert_eq!(pending_states(&app).await, 3);
}

#[tokio::test]
async fn the_webhook_callback_is_limited_per_client_address() {
    let app = TestApp::spawn_with(&[("WEBHOOK_RATE_LIMIT", "1")]).await;
    // One per second, bursts of five: probing for the path counts too.
    for _ in 0..5 {
        let res = app.post_webhook("not-the-secret", "{}").await;
        assert_eq!(res.status(), 404);
    }
    let res = app.post_webhook("not-the-secret", "{}").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_fault(res, 429, "the sixth request in a second").await;
}

/// Random input to every parser of outside input, against the running app:
/// list and feed queries, webhook bodies, handshake and OAuth callback
/// queries, `Authorization` headers, `Last-Event-ID`, path ids. Every
/// request is answered (a worker that panicked would drop the connection),
/// never with a 5xx, every refusal in Strava's fault shape, and the app
/// stays ready.
#[test]
fn random_input_to_every_parser_is_answered_never_dropped() {
    use proptest::prelude::*;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, token, secret) = runtime.block_on(async {
        // No per-client limits: the refusals under test are the parsers'.
        let app = TestApp::spawn_with(&[
            ("API_RATE_LIMIT", "0"),
            ("CONNECT_RATE_LIMIT", "0"),
            ("WEBHOOK_RATE_LIMIT", "0"),
        ])
        .await;
        let (_, token) = app.seed_athlete("athlete.json").await;
        let secret = app.store.path_secret().await.unwrap();
        (app, token, secret)
    });
    let value = || prop_oneof!["-?[0-9]{0,22}", "[ -\"$-~]{0,10}"];
    let query = |keys: &'static [&'static str]| {
        prop::collection::vec((prop::sample::select(keys), value()), 0..5).prop_map(|pairs| {
            let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.join("&")
        })
    };
    let body = prop_oneof![
        "[ -~]{0,200}",
        (0i64..3, -5i64..20_000_000_000, "[a-z]{0,8}").prop_map(|(kind, n, word)| {
            let aspect = ["create", "update", "delete"][kind as usize];
            format!(
                r#"{{"aspect_type":"{aspect}","event_time":{n},"object_id":{n},"object_type":"activity","owner_id":134815,"subscription_id":"{n}","updates":{{"title":"{word}"}}}}"#
            )
        }),
    ];
    let authorization = prop_oneof![
        "(Bearer|bearer|Basic) [ -~]{0,40}",
        "Basic [A-Za-z0-9+/=]{0,60}",
        "[ -~]{0,40}",
    ];
    let inputs = (
        query(&["page", "per_page", "before", "after", "x"]),
        body,
        (
            query(&["since", "limit", "access_token"]),
            prop::option::of("[ -~]{0,24}"),
        ),
        query(&["hub.mode", "hub.challenge", "hub.verify_token"]),
        query(&["code", "state", "scope", "error"]),
        authorization,
        prop_oneof!["-?[0-9]{1,22}", "[A-Za-z0-9_.~-]{1,24}"],
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(128));
    runner
        .run(
            &inputs,
            |(list, body, (feed, last_event_id), handshake, callback, authorization, id)| {
                runtime.block_on(async {
                    let answers = [
                        (
                            app.list_activities(&token, &list).await,
                            format!("list {list}"),
                        ),
                        (
                            app.post_webhook(&secret, body.clone()).await,
                            format!("event {body}"),
                        ),
                        (
                            app.changes_stream(&token, &feed, last_event_id.as_deref())
                                .await,
                            format!("feed {feed} after {last_event_id:?}"),
                        ),
                        (
                            app.webhook_handshake(&secret, &handshake).await,
                            format!("handshake {handshake}"),
                        ),
                        (
                            app.get(&format!("/auth/strava/callback?{callback}")).await,
                            format!("callback {callback}"),
                        ),
                        (
                            app.client
                                .get(app.url("/api/v3/athlete"))
                                .header("authorization", &authorization)
                                .send()
                                .await
                                .unwrap(),
                            format!("authorization {authorization}"),
                        ),
                        (
                            app.get_activity(&token, &id).await,
                            format!("activity {id}"),
                        ),
                    ];
                    for (res, what) in answers {
                        let status = res.status();
                        prop_assert!(!status.is_server_error(), "{what}: {status}");
                        if status.is_client_error() {
                            let fault: Value = res.json().await.unwrap_or_default();
                            prop_assert!(fault["message"].is_string(), "{what}: {fault}");
                            prop_assert!(fault["errors"][0]["code"].is_string(), "{what}: {fault}");
                        }
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    runtime.block_on(async { assert_eq!(app.readyz().await.status(), 200) });
}
