//! The activities API: paging, ordering, scope filtering, detail, shapes.

use std::time::Duration;

use serde_json::Value;
use strava_sync::simulator::{NewActivity, SimConfig};

use super::*;

async fn list(sim: &SimHandle, token: &str, query: &str) -> Vec<Value> {
    let res = api_get(sim, token, &format!("/athlete/activities?{query}")).await;
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.unwrap()
}

fn ids(page: &[Value]) -> Vec<u64> {
    page.iter().map(|a| a["id"].as_u64().unwrap()).collect()
}

fn starts(page: &[Value]) -> Vec<String> {
    page.iter()
        .map(|a| a["start_date"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pages_walk_the_whole_history_newest_first_with_at_most_200() {
    let sim = start(SimConfig {
        athletes: 1,
        activities_per_athlete: 3000,
        ..SimConfig::default()
    })
    .await;
    let c = connect(&sim, "read,activity:read_all").await;
    let truth = sim.activities(c.athlete_id).unwrap();
    assert_eq!(truth.len(), 3000);

    assert_eq!(list(&sim, &c.access_token, "").await.len(), 30);
    let mut all = Vec::new();
    for page in 1.. {
        let got = list(&sim, &c.access_token, &format!("per_page=500&page={page}")).await;
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 200);
        all.extend(got);
    }
    assert_eq!(ids(&all), ids(&truth));
    let mut sorted = starts(&all);
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(starts(&all), sorted, "newest first");
    let first = truth.last().unwrap()["start_date"]
        .as_str()
        .unwrap()
        .to_string();
    let last = truth[0]["start_date"].as_str().unwrap().to_string();
    assert!(
        first[..4].parse::<u32>().unwrap() + 5 < last[..4].parse::<u32>().unwrap(),
        "years of history: {first}..{last}"
    );
}

#[tokio::test]
async fn after_alone_lists_oldest_first_and_bounds_are_exclusive() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read_all").await;
    let truth = sim.activities(c.athlete_id).unwrap();
    let epoch = |a: &Value| {
        chrono::DateTime::parse_from_rfc3339(a["start_date"].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    let pivot = epoch(&truth[50]);

    let after = list(
        &sim,
        &c.access_token,
        &format!("after={pivot}&per_page=200"),
    )
    .await;
    let expected: Vec<u64> = truth[..50]
        .iter()
        .rev()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids(&after),
        expected,
        "only after: oldest first, the pivot excluded"
    );

    let before = list(&sim, &c.access_token, &format!("before={pivot}&per_page=5")).await;
    assert_eq!(ids(&before), ids(&truth[51..56]), "before: newest first");

    let low = epoch(&truth[60]);
    let both = list(
        &sim,
        &c.access_token,
        &format!("after={low}&before={pivot}"),
    )
    .await;
    assert_eq!(ids(&both), ids(&truth[51..60]), "both: newest first");
}

#[tokio::test]
async fn only_me_activities_need_activity_read_all() {
    let sim = start(SimConfig {
        athletes: 1,
        ..SimConfig::default()
    })
    .await;
    let athlete = sim.athlete_ids()[0];
    let truth = sim.activities(athlete).unwrap();
    let private: Vec<u64> = truth
        .iter()
        .filter(|a| a["private"] == true)
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert!(
        !private.is_empty(),
        "the seed yields some Only You activities"
    );
    assert!(truth
        .iter()
        .filter(|a| a["private"] == true)
        .all(|a| a["visibility"] == "only_me"));

    let limited = connect(&sim, "read,activity:read").await;
    let page = list(&sim, &limited.access_token, "per_page=200").await;
    assert_eq!(page.len(), truth.len() - private.len());
    assert!(ids(&page).iter().all(|id| !private.contains(id)));
    let hidden = api_get(
        &sim,
        &limited.access_token,
        &format!("/activities/{}", private[0]),
    )
    .await;
    assert_eq!(hidden.status(), 404);

    sim.next_login(athlete).unwrap();
    let full = connect(&sim, "read,activity:read_all").await;
    assert_eq!(
        list(&sim, &full.access_token, "per_page=200").await.len(),
        truth.len()
    );
}

#[tokio::test]
async fn listing_without_an_activity_scope_is_a_missing_scope_fault() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read").await;
    let res = api_get(&sim, &c.access_token, "/athlete/activities").await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        fault_of(&body),
        ("AccessToken", "activity:read_permission", "missing")
    );
    assert_eq!(
        api_get(&sim, &c.access_token, "/athlete").await.status(),
        200
    );
}

#[tokio::test]
async fn no_or_bad_token_is_401() {
    let sim = start(SimConfig::default()).await;
    let none = client()
        .get(format!("{}/athlete", sim.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["message"], "Authorization Error");
    assert_eq!(
        api_get(&sim, "forged", "/athlete/activities")
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read").await;
    for query in [
        "before=yesterday",
        "after=1.5",
        "page=-1",
        "per_page=lots",
        "page=99999999999999999999999",
    ] {
        let res = api_get(
            &sim,
            &c.access_token,
            &format!("/athlete/activities?{query}"),
        )
        .await;
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["message"], "Bad Request");
    }
}

#[tokio::test]
async fn summaries_and_details_carry_stravas_types_and_extra_fields() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read_all").await;
    let page = list(&sim, &c.access_token, "per_page=200").await;
    for a in &page {
        assert_eq!(a["resource_state"], 2);
        assert!(a["id"].as_u64().unwrap() > 1 << 34);
        assert!(a["distance"].is_f64() && a["average_speed"].is_f64());
        assert!(a["moving_time"].is_u64() && a["elapsed_time"].is_u64());
        assert!(a["utc_offset"].is_f64(), "utc_offset is sent as a float");
        assert!(a["sport_type"].is_string() && a["type"].is_string());
        assert!(a.get("location_country").is_some() && a.get("pr_count").is_some());
        assert_eq!(a["athlete"]["id"], c.athlete_id);
    }
    let with_hr = page.iter().find(|a| a["has_heartrate"] == true).unwrap();
    assert!(
        with_hr["max_heartrate"].is_f64(),
        "max_heartrate is sent as a float"
    );
    let sports: std::collections::BTreeSet<&str> = page
        .iter()
        .map(|a| a["sport_type"].as_str().unwrap())
        .collect();
    assert!(sports.len() >= 5, "{sports:?}");

    let id = page[0]["id"].as_u64().unwrap();
    let res = api_get(
        &sim,
        &c.access_token,
        &format!("/activities/{id}?include_all_efforts=false"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let detail: Value = res.json().await.unwrap();
    assert_eq!(detail["resource_state"], 3);
    assert_eq!(detail["name"], page[0]["name"]);
    assert!(detail["map"].get("polyline").is_some());

    let me: Value = api_get(&sim, &c.access_token, "/athlete")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], c.athlete_id);
    assert_eq!(me["resource_state"], 3);
}

#[tokio::test]
async fn another_athletes_activity_is_404() {
    let sim = start(SimConfig::default()).await;
    let c = connect(&sim, "read,activity:read_all").await;
    let other = sim
        .athlete_ids()
        .into_iter()
        .find(|id| *id != c.athlete_id)
        .unwrap();
    let theirs = sim.activities(other).unwrap()[0]["id"].as_u64().unwrap();
    for path in [
        format!("/activities/{theirs}"),
        "/activities/12".into(),
        "/activities/abc".into(),
        "/activities/push_subscriptions".into(),
    ] {
        let res = api_get(&sim, &c.access_token, &path).await;
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(fault_of(&body), ("Activity", "id", "invalid"));
    }
}

#[tokio::test]
async fn a_fresh_activity_answers_404_until_the_window_passes() {
    let sim = start(SimConfig::default()).await;
    sim.update_settings(|s| s.detail_not_found_secs = 30);
    let c = connect(&sim, "read,activity:read_all").await;
    let created = sim
        .create_activity(c.athlete_id, NewActivity::default(), None)
        .unwrap();
    let id = created["id"].as_u64().unwrap();
    let listed = list(&sim, &c.access_token, "per_page=1").await;
    assert_eq!(ids(&listed), vec![id], "the list shows it at once");
    let path = format!("/activities/{id}");
    assert_eq!(api_get(&sim, &c.access_token, &path).await.status(), 404);
    sim.advance(Duration::from_secs(31));
    assert_eq!(api_get(&sim, &c.access_token, &path).await.status(), 200);
}

#[tokio::test]
async fn the_same_seed_generates_the_same_histories() {
    let a = start(SimConfig::default()).await;
    let b = start(SimConfig::default()).await;
    let c = start(SimConfig {
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(a.athlete_ids(), b.athlete_ids());
    let names = |sim: &SimHandle| -> Vec<Value> {
        sim.activities(sim.athlete_ids()[0])
            .unwrap()
            .iter()
            .map(|x| x["name"].clone())
            .collect()
    };
    assert_eq!(names(&a), names(&b));
    assert_ne!(a.athlete_ids(), c.athlete_ids());
}
