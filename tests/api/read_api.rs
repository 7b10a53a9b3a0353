//! The Strava-compatible read API: list semantics, exact JSON round trips,
//! athlete isolation, validation, auth, ETags, stats, rate limiting and CORS.

use chrono::Datelike;
use reqwest::header;
use serde_json::{json, value::RawValue, Value};
use strava_sync::store::activities::{self, ActivityStats, Totals, RECENT_SECS};

use crate::helpers::{fixture, fixture_activities, TestApp};

const LIST: &str = "/api/v3/athlete/activities";
/// Ids of `fixtures/activities.json`, newest first; the two at 12:00 on
/// 2024-06-03 tie on start time and go by id.
const FIXTURE_ORDER: [u64; 9] = [
    17179869203,
    17179869202,
    17179869201,
    17179869199,
    17179869195,
    17179869190,
    17179869185,
    17179869180,
    9007199254740993,
];
/// 2024-06-03T06:30:00Z, the start of the fixture "Morning Ride".
const MORNING_RIDE_START: i64 = 1717396200;

/// An app with athlete A (the fixtures) and athlete B (one ride); returns
/// the app and both tokens.
async fn seeded() -> (TestApp, String, String) {
    seeded_with(&[]).await
}

async fn seeded_with(overrides: &[(&str, &str)]) -> (TestApp, String, String) {
    let app = TestApp::spawn_with(overrides).await;
    let (a, token_a) = app.seed_athlete("athlete.json").await;
    let (b, token_b) = app.seed_athlete("athlete_other.json").await;
    app.seed_summaries(a, fixture_activities("activities.json"))
        .await;
    app.seed_summaries(b, fixture_activities("activities_other.json"))
        .await;
    (app, token_a, token_b)
}

/// Fixture summary `index` of `activities.json` as a new activity: fresh id
/// and start time, every other field kept.
fn copy_of(index: usize, id: i64, start: i64) -> Value {
    let mut record: Value =
        serde_json::from_str(fixture_activities("activities.json")[index].get()).unwrap();
    let start = chrono::DateTime::from_timestamp(start, 0).unwrap();
    record["id"] = json!(id);
    record["start_date"] = json!(start.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    record
}

fn raw(record: &Value) -> Box<RawValue> {
    RawValue::from_string(record.to_string()).unwrap()
}

/// `n` copies of the fixture Morning Ride, one a minute back from `newest`,
/// with ids counting up from 20,000,000,000 (newest first).
fn generated(n: i64, newest: i64) -> Vec<Box<RawValue>> {
    (0..n)
        .map(|i| raw(&copy_of(2, 20_000_000_000 + i, newest - i * 60)))
        .collect()
}

/// The ids the list gives for `query`.
async fn ids(app: &TestApp, token: &str, query: &str) -> Vec<u64> {
    let res = app.list_activities(token, query).await;
    assert_eq!(res.status(), 200, "{query}");
    let body: Vec<Value> = res.json().await.unwrap();
    body.iter().map(|a| a["id"].as_u64().unwrap()).collect()
}

/// Asserts a fault: status, and the field it names.
async fn assert_fault(res: reqwest::Response, status: u16, field: &str) {
    assert_eq!(res.status(), status, "{}", res.url());
    let url = res.url().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], field, "{url}: {body}");
    assert!(body["message"].is_string(), "{url}: {body}");
}

#[tokio::test]
async fn list_serves_every_field_exactly_as_stored() {
    let (app, token, _) = seeded().await;
    let res = app.list_activities(&token, "per_page=200").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "application/json"
    );
    let text = res.text().await.unwrap();

    // Every stored record appears byte for byte: unknown fields, 64-bit ids
    // past 2^53 and integers written as floats are untouched.
    let stored = fixture_activities("activities.json");
    for raw in &stored {
        assert!(text.contains(raw.get()), "missing verbatim: {}", raw.get());
    }
    for literal in [
        "\"id\": 9007199254740993",
        "\"max_heartrate\": 162.0",
        "\"utc_offset\": -14400.0",
        "\"elapsed_time\": 3300.0",
        "\"nested\": [1, 2.50, \"x\", null]",
    ] {
        assert!(text.contains(literal), "{literal}");
    }

    // And parsed, the page is the fixture in newest-first order.
    let page: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut expected: Vec<Value> = serde_json::from_str(&fixture("activities.json")).unwrap();
    expected.sort_by_key(|a| {
        let position = FIXTURE_ORDER.iter().position(|id| a["id"] == json!(*id));
        position.expect("every fixture id is listed in FIXTURE_ORDER")
    });
    assert_eq!(page, expected);
    assert_eq!(
        page[6]["visibility"], "only_me",
        "private activities are kept"
    );
}

#[tokio::test]
async fn pages_follow_strava_semantics() {
    let app = TestApp::spawn().await;
    let (athlete, token) = app.seed_athlete("athlete.json").await;
    app.seed_summaries(athlete, generated(205, 1_750_000_000))
        .await;
    let newest_first: Vec<u64> = (0..205).map(|i| 20_000_000_000 + i).collect();

    for (query, expected) in [
        ("", 0..30),
        ("per_page=1", 0..1),
        ("page=3&per_page=1", 2..3),
        ("per_page=200", 0..200),
        ("page=2&per_page=200", 200..205),
        ("page=7&per_page=30", 180..205),
        ("page=3&per_page=200", 205..205),
        ("page=8", 205..205),
        ("page=9223372036854775807&per_page=200", 205..205),
    ] {
        assert_eq!(
            ids(&app, &token, query).await,
            newest_first[expected],
            "{query}"
        );
    }
    let past_the_end = app.list_activities(&token, "page=8").await;
    assert_eq!(past_the_end.text().await.unwrap(), "[]");
}

#[tokio::test]
async fn before_and_after_are_exclusive_bounds() {
    let (app, token, _) = seeded().await;
    let at = MORNING_RIDE_START;
    let all = &FIXTURE_ORDER[..];
    for (query, expected) in [
        // An activity starting exactly at a bound is outside it.
        (format!("after={at}"), &all[..2]),
        (format!("before={at}"), &all[3..]),
        (format!("before={}&after={}", at + 1, at - 1), &all[2..3]),
        (format!("before={at}&after={at}"), &all[..0]),
        // Pages apply within the bounds; tied start times page by id.
        (format!("after={at}&per_page=1"), &all[..1]),
        (format!("after={at}&per_page=1&page=2"), &all[1..2]),
        // Epoch seconds before 1970 are still epoch seconds.
        ("before=-1".to_string(), &all[..0]),
        ("after=-1".to_string(), all),
    ] {
        assert_eq!(ids(&app, &token, &query).await, expected, "{query}");
    }
}

#[tokio::test]
async fn an_activity_is_its_detail_once_fetched_else_its_summary() {
    let (app, token, _) = seeded().await;
    let id = 17179869201_u64;
    let summary = fixture_activities("activities.json")[2].get().to_string();
    assert_eq!(
        app.get_activity(&token, id).await.text().await.unwrap(),
        summary
    );

    let detail = fixture("activity_detail.json").trim_end().to_string();
    let raw = RawValue::from_string(detail.clone()).unwrap();
    app.seed_detail(134815, raw).await;
    let res = app.get_activity(&token, id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        detail,
        "the detail, byte for byte"
    );
    // The list keeps serving summaries.
    let list = app.list_activities(&token, "").await.text().await.unwrap();
    assert!(list.contains(&summary) && !list.contains("segment_efforts"));

    let huge = 9007199254740993_u64;
    let body: Value = app.get_activity(&token, huge).await.json().await.unwrap();
    assert_eq!(body["id"], json!(9007199254740993_u64));
}

#[tokio::test]
async fn the_athlete_is_their_profile_as_received() {
    let (app, token_a, token_b) = seeded().await;
    let res = app.get_athlete(&token_a).await;
    assert_eq!(res.status(), 200);
    let expected: Value = serde_json::from_str(&fixture("athlete.json")).unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), expected);
    let other: Value = app.get_athlete(&token_b).await.json().await.unwrap();
    assert_eq!(other["id"], 8806470);
}

#[tokio::test]
async fn another_athletes_records_are_not_found() {
    let (app, token_a, token_b) = seeded().await;
    for path in [
        "/api/v3/activities/17179869300", // B's ride
        "/api/v3/activities/1",           // nobody's
        "/api/v3/activities/-5",
        "/api/v3/athletes/8806470/stats", // B's stats
        "/api/v3/athletes/1/stats",
    ] {
        let res = app.get_as(&token_a, path).await;
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["message"], "Record Not Found", "{path}");
    }
    assert_eq!(
        app.get_activity(&token_b, 17179869201_u64).await.status(),
        404
    );
    assert_eq!(ids(&app, &token_b, "").await, [17179869300]);
    assert_eq!(app.get_stats(&token_b, 8806470).await.status(), 200);
}

#[tokio::test]
async fn malformed_list_parameters_are_refused_naming_them() {
    let (app, token, _) = seeded().await;
    for (query, field) in [
        ("per_page=0", "per_page"),
        ("per_page=201", "per_page"),
        ("per_page=abc", "per_page"),
        ("per_page=-1", "per_page"),
        ("per_page=", "per_page"),
        ("per_page=30.0", "per_page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=99999999999999999999", "page"),
        ("before=abc", "before"),
        ("before=2024-06-01", "before"),
        ("after=1.5", "after"),
        ("after=", "after"),
        ("after=1e9", "after"),
        ("page=1&page=2", "page"),
        ("per_page=30&per_page=30", "per_page"),
        ("before=1;DROP%20TABLE%20activities", "before"),
        ("page=1'%20OR%20'1'='1", "page"),
        ("per_page=%00", "per_page"),
    ] {
        let res = app.list_activities(&token, query).await;
        assert_fault(res, 400, field).await;
    }
    // Nothing was lost, and unknown parameters are ignored as Strava does.
    assert_eq!(
        ids(&app, &token, "per_page=200&foo=bar&_=1").await,
        FIXTURE_ORDER
    );
}

#[tokio::test]
async fn malformed_ids_are_refused() {
    let (app, token, _) = seeded().await;
    for path in [
        "/api/v3/activities/abc",
        "/api/v3/activities/99999999999999999999",
        "/api/v3/activities/1.0",
        "/api/v3/activities/1%20OR%201=1",
        "/api/v3/activities/'%3B%20DROP%20TABLE%20activities%3B--",
        "/api/v3/athletes/me/stats",
        "/api/v3/athletes/134815.0/stats",
    ] {
        assert_fault(app.get_as(&token, path).await, 400, "id").await;
    }
    assert_eq!(ids(&app, &token, "per_page=200").await.len(), 9);
}

#[tokio::test]
async fn reads_need_a_valid_token() {
    let (app, token, _) = seeded().await;
    let paths = [
        "/api/v3/athlete",
        LIST,
        "/api/v3/activities/17179869201",
        "/api/v3/athletes/134815/stats",
    ];
    for path in paths {
        assert_fault(app.get(path).await, 401, "access_token").await;
        assert_fault(app.get_as("not-a-token", path).await, 401, "access_token").await;
        // The real token with its last digit changed (never to itself).
        let last = if token.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &token[..token.len() - 1]);
        assert_fault(app.get_as(&forged, path).await, 401, "access_token").await;
        let basic = app
            .client
            .get(app.url(path))
            .header(header::AUTHORIZATION, format!("Basic {token}"))
            .send()
            .await
            .unwrap();
        assert_fault(basic, 401, "access_token").await;
        // Auth is checked before parameters, so a stranger learns nothing.
        assert_eq!(app.get(&format!("{path}?page=0")).await.status(), 401);
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let (app, token, _) = seeded().await;
    let res = app
        .client
        .get(app.url(LIST))
        .bearer_auth(&token)
        .body(vec![b'x'; 17 * 1024])
        .send()
        .await
        .unwrap();
    assert_fault(res, 413, "body").await;
}

#[tokio::test]
async fn a_matching_etag_answers_304() {
    let (app, token, _) = seeded().await;
    let first = app.list_activities(&token, "").await;
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    assert_eq!(first.headers()[header::CACHE_CONTROL], "private, no-cache");
    let vary = first.headers()[header::VARY].to_str().unwrap();
    assert!(vary.starts_with("Authorization"), "{vary}");
    let body = first.text().await.unwrap();

    let conditional = |tag: String, path: &'static str| {
        app.client
            .get(app.url(path))
            .bearer_auth(&token)
            .header(header::IF_NONE_MATCH, tag)
            .send()
    };
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"stale\", {etag}"),
        "*".to_string(),
    ] {
        let res = conditional(tag.clone(), LIST).await.unwrap();
        assert_eq!(res.status(), 304, "{tag}");
        assert_eq!(res.headers()[header::ETAG], etag.as_str());
        assert!(res.text().await.unwrap().is_empty());
    }
    let stale = conditional("\"stale\"".to_string(), LIST).await.unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.text().await.unwrap(), body);

    // A new activity changes the page, so the old tag no longer matches.
    app.seed_summaries(134815, generated(1, 1_750_000_000))
        .await;
    let changed = conditional(etag.clone(), LIST).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()[header::ETAG], etag.as_str());

    // Every read carries one.
    for path in [
        "/api/v3/athlete",
        "/api/v3/activities/17179869201",
        "/api/v3/athletes/134815/stats",
    ] {
        let res = app.get_as(&token, path).await;
        let tag = res.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(
            conditional(tag, path).await.unwrap().status(),
            304,
            "{path}"
        );
    }
}

fn assert_totals(stats: &Value, key: &str, expected: Totals) {
    let t = &stats[key];
    let close = |field: &str, want: f64| {
        let got = t[field].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{key}.{field}: {got} != {want}");
    };
    assert_eq!(t["count"], expected.count, "{key}.count");
    close("distance", expected.distance);
    assert_eq!(t["moving_time"], expected.moving_time, "{key}.moving_time");
    assert_eq!(
        t["elapsed_time"], expected.elapsed_time,
        "{key}.elapsed_time"
    );
    close("elevation_gain", expected.elevation_gain);
    assert_eq!(
        t["achievement_count"], expected.achievement_count,
        "{key}.achievement_count"
    );
}

fn totals(count: i64, distance: f64, moving: i64, elapsed: i64, elev: f64, ach: i64) -> Totals {
    Totals {
        count,
        distance,
        moving_time: moving,
        elapsed_time: elapsed,
        elevation_gain: elev,
        achievement_count: ach,
    }
}

#[tokio::test]
async fn stats_equal_the_hand_computed_totals() {
    let (app, token, _) = seeded().await;
    // A copy of Lunch Run inside both "recent" and "year to date" of the
    // real clock, also when the service's clock has passed into a new year
    // by the time it answers: no earlier than the start of the year a minute
    // from now.
    let now = chrono::Utc::now();
    let soon = now + chrono::Duration::minutes(1);
    let year_start = chrono::NaiveDate::from_ymd_opt(soon.year(), 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let start = (now.timestamp() - 2 * 86400).max(year_start);
    app.seed_summaries(134815, vec![raw(&copy_of(0, 30_000_000_000, start))])
        .await;

    let res = app.get_stats(&token, 134815).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let stats: Value = serde_json::from_str(&text).unwrap();

    // Rides: Morning Ride, the Zwift ride (virtual) and the gravel ride.
    assert_totals(
        &stats,
        "all_ride_totals",
        totals(
            3,
            42195.3 + 30500.8 + 65000.0,
            5400 + 3600 + 9000,
            6012 + 3600 + 10000,
            512.4 + 380.0 + 1201.7,
            3 + 1 + 5,
        ),
    );
    // Runs: Lunch Run, Trail run, the private Hill repeats, and the recent copy
    // of Lunch Run. The walk and the weight training count nowhere.
    assert_totals(
        &stats,
        "all_run_totals",
        totals(
            4,
            10012.5 + 15000.2 + 8000.0 + 10012.5,
            2950 + 5000 + 2400 + 2950,
            3100 + 5600 + 2900 + 3100,
            45.0 + 650.0 + 210.5 + 45.0,
            2 + 2 + 4 + 2,
        ),
    );
    // The pool swim, whose elapsed_time is written 3300.0.
    assert_totals(
        &stats,
        "all_swim_totals",
        totals(1, 2000.0, 2700, 3300, 0.0, 0),
    );
    let lunch_run = totals(1, 10012.5, 2950, 3100, 45.0, 2);
    assert_totals(&stats, "recent_run_totals", lunch_run);
    assert_totals(&stats, "ytd_run_totals", lunch_run);
    for empty in [
        "recent_ride_totals",
        "ytd_ride_totals",
        "recent_swim_totals",
        "ytd_swim_totals",
    ] {
        assert_totals(&stats, empty, Totals::default());
    }
    assert_eq!(stats["biggest_ride_distance"], json!(65000.0));
    assert_eq!(stats["biggest_climb_elevation_gain"], json!(1201.7));
    // Floats stay floats on the wire.
    assert!(text.contains("\"distance\":0.0"), "{text}");
}

#[tokio::test]
async fn stats_periods_start_where_strava_starts_them() {
    let app = TestApp::spawn().await;
    let (athlete, _) = app.seed_athlete("athlete.json").await;
    // 2025-03-10T12:00:00Z: recent reaches back to 2025-02-10T12:00:00Z and
    // the year starts at 2025-01-01T00:00:00Z.
    let now = 1741608000;
    let recent_start = now - RECENT_SECS;
    let year_start = 1735689600;
    let stats_now = || app.store.read(move |c| activities::stats(c, athlete, now));
    let none = stats_now().await.unwrap();
    assert_eq!(none, ActivityStats::default());
    assert_eq!(none.biggest_ride_distance, None, "no ride, no biggest ride");

    let starts = [recent_start, recent_start - 1, year_start, year_start - 1];
    let page = starts
        .iter()
        .zip(0..)
        .map(|(&start, i)| {
            let mut ride = copy_of(2, 40_000_000_000 + i64::from(i), start);
            ride["distance"] = json!(1000.0 * 10f64.powi(i));
            raw(&ride)
        })
        .collect();
    app.seed_summaries(athlete, page).await;
    let stats = stats_now().await.unwrap();
    assert_eq!(stats.recent_ride_totals.count, 1);
    assert_eq!(stats.recent_ride_totals.distance, 1000.0);
    assert_eq!(stats.ytd_ride_totals.count, 3);
    assert_eq!(
        stats.ytd_ride_totals.distance,
        1000.0 + 10_000.0 + 100_000.0
    );
    assert_eq!(stats.all_ride_totals.count, 4);
    assert_eq!(stats.biggest_ride_distance, Some(1_000_000.0));
    assert_eq!(stats.all_run_totals, Totals::default());
}

#[tokio::test]
async fn each_token_is_rate_limited_on_its_own() {
    let (app, token_a, token_b) = seeded_with(&[("API_RATE_LIMIT", "1")]).await;
    // A burst of five is allowed at once; after it only one a second is, so
    // one of the next requests must be refused unless each took a second
    // (a generous bound for a loaded machine).
    for _ in 0..5 {
        assert_eq!(app.get_athlete(&token_a).await.status(), 200);
    }
    let mut refused = None;
    for _ in 0..50 {
        let res = app.get_athlete(&token_a).await;
        if res.status() == 429 {
            refused = Some(res);
            break;
        }
    }
    let refused = refused.expect("the burst is limited");
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_fault(refused, 429, "rate limit").await;
    // Another athlete's token has its own allowance.
    assert_eq!(app.get_athlete(&token_b).await.status(), 200);
}

#[tokio::test]
async fn cors_admits_only_configured_origins() {
    let allowed = "https://app.example";
    let (app, token, _) = seeded_with(&[("CORS_ALLOWED_ORIGINS", allowed)]).await;
    let from = |origin: &'static str| {
        app.client
            .get(app.url(LIST))
            .bearer_auth(&token)
            .header(header::ORIGIN, origin)
            .send()
    };
    let ok = from(allowed).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], allowed);
    let exposed = ok.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("etag"), "{exposed}");

    let other = from("https://evil.example").await.unwrap();
    assert!(other
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());

    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(LIST))
        .header(header::ORIGIN, allowed)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, if-none-match",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        allowed
    );
}
