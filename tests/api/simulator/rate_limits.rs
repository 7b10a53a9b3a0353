//! Rate limits as Strava counts them: headers (wire casing), windows on the
//! simulator clock, 429 with rejected calls counted, other clients' usage.

use std::time::Duration;

use serde_json::Value;
use strava_sync::simulator::{Limits, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()[name].to_str().unwrap().to_string()
}

/// Seconds until the next quarter hour on the simulator clock, plus one.
fn to_next_quarter(sim: &SimHandle) -> Duration {
    let now = sim.now().timestamp();
    Duration::from_secs((900 - now.rem_euclid(900)) as u64 + 1)
}

/// Moves the clock just past a quarter hour at least two hours before UTC
/// midnight, so a test's windows do not straddle a day by accident.
fn fresh_quarter(sim: &SimHandle) {
    let of_day = sim.now().timestamp().rem_euclid(86_400);
    if of_day > 22 * 3600 {
        sim.advance(Duration::from_secs((86_400 - of_day) as u64));
    }
    sim.advance(to_next_quarter(sim));
}

#[tokio::test]
async fn headers_have_stravas_wire_casing_and_values() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", sim.port()))
        .await
        .unwrap();
    let request = format!(
        "GET /api/v3/athlete HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        c.access_token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let head = raw.split("\r\n\r\n").next().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for line in [
        "X-Ratelimit-Limit: 200,2000",
        "X-Ratelimit-Usage: 1,1",
        "X-Readratelimit-Limit: 100,1000",
        "X-Readratelimit-Usage: 1,1",
    ] {
        assert!(
            head.lines().any(|l| l == line),
            "missing `{line}` in\n{head}"
        );
    }
}

#[tokio::test]
async fn usage_counts_per_window_and_resets_at_the_quarter_and_the_day() {
    let sim = start(SimConfig::default()).await;
    // The token must outlive the jump to the next UTC day.
    sim.update_settings(|s| s.access_token_lifetime_secs = 3 * 86_400);
    let c = connect(&sim, "read,activity:read").await;
    fresh_quarter(&sim);
    for expected in ["1,1", "2,2"] {
        let res = api_get(&sim, &c.access_token, "/athlete").await;
        assert_eq!(header(&res, "x-readratelimit-usage"), expected);
    }
    // Half a minute before the quarter ends: a margin of real time for a
    // slow machine (the simulator's clock runs on while the test does).
    sim.advance(to_next_quarter(&sim) - Duration::from_secs(31));
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(
        header(&res, "x-ratelimit-usage"),
        "3,3",
        "still the same quarter"
    );
    sim.advance(to_next_quarter(&sim));
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(
        header(&res, "x-ratelimit-usage"),
        "1,4",
        "a new quarter, the same day"
    );

    let usage = sim.usage();
    assert_eq!(usage.fifteen_min.started_at.timestamp() % 900, 0);
    assert_eq!(usage.daily.started_at.timestamp() % 86_400, 0);
    let to_midnight = usage.daily.resets_at - sim.now();
    sim.advance(to_midnight.to_std().unwrap() + Duration::from_secs(1));
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(header(&res, "x-ratelimit-usage"), "1,1", "a new UTC day");
}

#[tokio::test]
async fn past_the_limit_answers_429_and_rejected_calls_still_count() {
    let sim = start(SimConfig::default()).await;
    sim.update_settings(|s| s.limits = Limits::read_and_overall(3, 10));
    let c = connect(&sim, "read,activity:read").await;
    fresh_quarter(&sim);
    for _ in 0..3 {
        assert_eq!(
            api_get(&sim, &c.access_token, "/athlete").await.status(),
            200
        );
    }
    for expected in ["4,4", "5,5"] {
        let res = api_get(&sim, &c.access_token, "/athlete/activities").await;
        assert_eq!(res.status(), 429);
        assert!(res.headers().get("retry-after").is_none());
        assert_eq!(header(&res, "x-ratelimit-usage"), expected);
        assert_eq!(header(&res, "x-ratelimit-limit"), "3,10");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["message"], "Rate Limit Exceeded");
        assert_eq!(fault_of(&body), ("Application", "rate limit", "exceeded"));
    }
    assert_eq!(sim.calls().by_status[&429], 2);
    sim.advance(to_next_quarter(&sim));
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-usage"), "1,6");
}

#[tokio::test]
async fn the_daily_limit_binds_across_quarters() {
    let sim = start(SimConfig::default()).await;
    sim.update_settings(|s| s.limits = Limits::read_and_overall(100, 2));
    let c = connect(&sim, "read,activity:read").await;
    fresh_quarter(&sim);
    api_get(&sim, &c.access_token, "/athlete").await;
    sim.advance(Duration::from_secs(900));
    api_get(&sim, &c.access_token, "/athlete").await;
    sim.advance(Duration::from_secs(900));
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "x-readratelimit-usage"), "1,3");
}

#[tokio::test]
async fn other_clients_of_the_app_add_to_the_usage() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    fresh_quarter(&sim);
    sim.add_other_client_calls(99);
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-readratelimit-usage"), "100,100");
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(res.status(), 429, "the read limit of 100 is shared");
    assert_eq!(sim.usage().fifteen_min.by_other_clients, 99);

    let other: Value = client()
        .post(format!("{}/other-usage", sim.control_url()))
        .json(&serde_json::json!({"calls": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["fifteen_min"]["used"], 106);
    sim.advance(to_next_quarter(&sim));
    assert_eq!(sim.usage().fifteen_min.used, 0);
    assert_eq!(sim.usage().daily.used, 106);
}

#[tokio::test]
async fn oauth_and_unauthenticated_calls_carry_no_headers_and_do_not_count() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    let res = api_get(&sim, "forged", "/athlete").await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("x-ratelimit-usage").is_none());
    let res = api_get(&sim, &c.access_token, "/athlete").await;
    assert_eq!(header(&res, "x-ratelimit-usage"), "1,1");
}
