//! `GET /admin/status`: who may open it (the admin token as bearer or as
//! Basic password), hostile credentials, escaping of athletes' own words,
//! and the page as headless Chromium renders it after real Strava calls.

use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{json, Value};
use strava_sync::model::Purpose;
use strava_sync::store::athletes;
use strava_sync::store::inbox::{self, AspectType, Event, ObjectType};

use crate::budget::{limited, settled};
use crate::helpers::{eventually, now, TestApp, ADMIN_TOKEN, WAIT};

const PAGE: &str = "/admin/status";
const CHALLENGE: &str = r#"Basic realm="strava-sync admin""#;

/// Debian's package; CI (`.ci/run`) installs it.
const CHROMIUM: &str = "chromium";
/// Starting Chromium on a loaded 2-core machine takes seconds.
const CHROMIUM_PATIENCE: Duration = Duration::from_secs(120);

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

async fn page_with(app: &TestApp, authorization: Option<HeaderValue>) -> reqwest::Response {
    let mut req = app.client.get(app.url(PAGE));
    if let Some(value) = authorization {
        req = req.header(AUTHORIZATION, value);
    }
    req.send().await.unwrap()
}

/// A refusal that makes a browser ask for the admin token, in the fault
/// shape every other refusal has.
async fn assert_challenged(res: reqwest::Response, what: &str) {
    assert_eq!(res.status(), 401, "{what}");
    assert_eq!(res.headers()[WWW_AUTHENTICATE], CHALLENGE, "{what}");
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["message"], "Authorization Error", "{what}: {fault}");
    assert!(fault["errors"][0]["code"].is_string(), "{what}: {fault}");
}

#[tokio::test]
async fn the_admin_token_opens_the_page_as_bearer_token_or_basic_password() {
    let app = TestApp::spawn().await;
    let bearer = app.get_as(ADMIN_TOKEN, PAGE).await;
    assert_eq!(bearer.status(), 200);
    assert_eq!(bearer.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(bearer.headers()["cache-control"], "no-store");
    let csp = bearer.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(bearer.text().await.unwrap().contains("<svg"));

    for user in ["admin", "", "anyone at all"] {
        let value = HeaderValue::from_str(&basic(user, ADMIN_TOKEN)).unwrap();
        let res = page_with(&app, Some(value)).await;
        assert_eq!(res.status(), 200, "user {user:?}");
    }
    // Every admin route takes it, the JSON ones too.
    let res = app
        .client
        .get(app.url("/admin/budget"))
        .header(AUTHORIZATION, basic("ops", ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // But not a route that changes something: a browser would send saved
    // Basic credentials with another site's form post too.
    for route in [
        "/admin/pause",
        "/admin/sync/run",
        "/admin/deliveries/replay",
    ] {
        let res = app
            .client
            .post(app.url(route))
            .header(AUTHORIZATION, basic("ops", ADMIN_TOKEN))
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{route}");
    }
    let budget: Value = app.admin_budget().await.json().await.unwrap();
    assert_eq!(budget["paused"], false, "nothing was paused: {budget}");

    assert_challenged(page_with(&app, None).await, "no credentials").await;
    let wrong = HeaderValue::from_str(&basic("admin", "not-the-token")).unwrap();
    assert_challenged(page_with(&app, Some(wrong)).await, "a wrong password").await;
    // The token as user name, with no password, is not the token.
    let swapped = HeaderValue::from_str(&basic(ADMIN_TOKEN, "")).unwrap();
    assert_challenged(page_with(&app, Some(swapped)).await, "token as user").await;
    assert_challenged(app.get_as("wrong", PAGE).await, "a wrong bearer").await;
}

#[tokio::test]
async fn the_page_is_absent_without_an_admin_token() {
    let app = TestApp::spawn_with(&[("ADMIN_TOKEN", "")]).await;
    let value = HeaderValue::from_str(&basic("admin", ADMIN_TOKEN)).unwrap();
    let res = page_with(&app, Some(value)).await;
    assert_eq!(res.status(), 404);
    assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["message"], "Record Not Found");
}

#[tokio::test]
async fn hostile_authorization_headers_get_a_clean_refusal() {
    let app = TestApp::spawn().await;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let texts = [
        "Basic".to_string(),
        "Basic ".to_string(),
        "Basic ====".to_string(),
        "Basic !!not base64!!".to_string(),
        format!("Basic {}", encode(ADMIN_TOKEN.as_bytes())),
        format!("Basic {}", encode(b"admin:\xff\xfe")),
        format!(
            "Basic {}",
            encode(format!("admin:{ADMIN_TOKEN}\0").as_bytes())
        ),
        format!("Basic  {}", encode(b"::::")),
        format!(
            "Basic {}",
            encode(format!("a:{}", "x".repeat(700)).as_bytes())
        ),
        format!("Basic {}", "A".repeat(8 * 1024)),
        format!("Basic {}", "A".repeat(30 * 1024)),
        format!("Digest username=\"admin\", response=\"{ADMIN_TOKEN}\""),
        format!("{} {ADMIN_TOKEN}", "x".repeat(4096)),
    ];
    let mut values: Vec<HeaderValue> = texts
        .iter()
        .map(|t| HeaderValue::from_str(t).unwrap())
        .collect();
    values.push(HeaderValue::from_bytes(b"Basic \xff\xfe\x80").unwrap());
    for value in values {
        let what: String = format!("{value:?}").chars().take(80).collect();
        assert_challenged(page_with(&app, Some(value)).await, &what).await;
    }
    // A head larger than the server reads (128 KiB) is refused by actix
    // before any code of ours runs.
    let huge = HeaderValue::from_str(&format!("Basic {}", "A".repeat(256 * 1024))).unwrap();
    // (On a client of its own: the server closes that connection.)
    let alone = reqwest::Client::new();
    match alone
        .get(app.url(PAGE))
        .header(AUTHORIZATION, huge)
        .send()
        .await
    {
        Ok(res) => assert_eq!(res.status(), 431),
        // Or the connection is closed on it while it is being sent.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    assert_eq!(app.get_as(ADMIN_TOKEN, PAGE).await.status(), 200);
}

#[tokio::test]
async fn athletes_own_words_are_shown_as_text() {
    let app = TestApp::spawn().await;
    let name = r#"<script>alert("name")</script>"#;
    let title = "<img src=x onerror=alert(1)>";
    let error = "applying failed: </td><b>bold</b>";
    let at = now();
    app.store
        .write(move |tx| {
            let profile = json!({"id": 77, "firstname": name, "lastname": "& Co"});
            athletes::upsert(tx, &profile, "read,activity:read_all", at)?;
            let event = Event {
                object_type: ObjectType::Activity,
                object_id: 5,
                aspect_type: AspectType::Update,
                owner_id: 77,
                event_time: at,
                updates: [("title".to_string(), title.to_string())].into(),
            };
            inbox::insert(tx, &event, at)?;
            let id = tx.query_row(
                "SELECT MAX(id) FROM webhook_events",
                strava_sync::params![],
                |r| r.get(0),
            )?;
            inbox::record_failure(tx, id, error, None)
        })
        .await
        .unwrap();
    let html = app.get_as(ADMIN_TOKEN, PAGE).await.text().await.unwrap();
    for raw in [name, title, error, "& Co"] {
        assert!(!html.contains(raw), "{raw} is on the page unescaped");
    }
    for escaped in [
        "&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt; &amp; Co",
        "&lt;img src=x onerror=alert(1)&gt;",
        "applying failed: &lt;/td&gt;&lt;b&gt;bold&lt;/b&gt;",
    ] {
        assert!(html.contains(escaped), "{escaped} is not on the page");
    }
}

/// The page as headless Chromium renders it: its DOM once loaded, the admin
/// token given as Basic password in the URL, as a browser user would.
async fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg("--disable-dev-shm-usage")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHROMIUM_PATIENCE, run)
        .await
        .expect("chromium renders the page in time")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{CHROMIUM}` ({e}): this test needs Debian's chromium package \
                 (`apt-get install chromium`), which .ci/run installs"
            )
        });
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The number in the element after `marker` that follows `after`.
fn number_after(dom: &str, after: &str, marker: &str) -> Option<i64> {
    let from = &dom[dom.find(after)?..];
    let value = &from[from.find(marker)? + marker.len()..];
    value[value.find('>')? + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn chromium_shows_the_budget_and_a_chart_of_the_calls_made() {
    let app = limited(1500, 10).await;
    let athlete = app.sim.athlete_ids()[0];
    app.connect(athlete).await;
    eventually("backfill waits for the next window", WAIT, || settled(&app)).await;
    let budget = app.budget().await;

    let url = app
        .url(PAGE)
        .replacen("://", &format!("://admin:{ADMIN_TOKEN}@"), 1);
    let dom = rendered(&url).await;

    for window in budget["windows"].as_array().unwrap() {
        let row = format!("data-window=\"{}\"", window["window"].as_str().unwrap());
        for field in ["used", "limit"] {
            let shown = number_after(&dom, &row, &format!("data-field=\"{field}\""));
            assert_eq!(shown, window[field].as_i64(), "{row} {field}");
        }
    }
    assert_eq!(budget["windows"][0]["used"], 8, "calls were made");
    let svg = &dom[dom.find("<svg").expect("a chart")..dom.find("</svg>").unwrap()];
    assert!(svg.contains("class=\"bar\""), "bars: {svg}");
    // Every call of the day is in the chart's last hour, and the legend
    // totals them by purpose.
    for purpose in Purpose::ALL {
        let calls = budget["calls_today_by_purpose"][purpose.as_str()].as_i64();
        let legend = format!("<li data-purpose=\"{}\">", purpose.as_str());
        let shown = number_after(&dom, &legend, "class=\"muted\"");
        assert_eq!(shown, calls, "{purpose:?}");
        let drawn = svg.contains(&format!("data-purpose=\"{}\"", purpose.as_str()));
        assert_eq!(drawn, calls > Some(0), "{purpose:?} in the chart");
    }
    // Held back until the next window, and the page says why.
    assert!(dom.contains("Held back now"), "{dom}");
}
