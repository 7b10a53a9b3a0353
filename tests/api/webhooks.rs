//! Strava webhooks: the handshake, event intake (validation, dedup, the
//! subscription check), applying each kind of event, ordering, the
//! deauthorization purge, failures and replay, and what it all costs.
//!
//! Events are applied by calling the worker's `drain` directly, so a test
//! decides when application happens (the app's own worker may also run; an
//! event is applied once either way).

use serde_json::{json, Value};
use strava_sync::model::job::{Fetch, Task};
use strava_sync::store::sql::Dialect;
use strava_sync::store::{activities, api_tokens, athletes, inbox, jobs, Store};
use strava_sync::webhook::worker;

use crate::helpers::{now, TestApp};

const ATHLETE: i64 = 134_815;
/// Past 2^34, as real activity ids are now.
const ACTIVITY: i64 = 17_179_869_185;
const T0: i64 = 1_700_000_000;

/// A test app with its webhook path secret and callback URL.
struct Hook {
    app: TestApp,
    secret: String,
    callback: String,
}

impl Hook {
    async fn spawn() -> Self {
        let app = TestApp::spawn().await;
        let secret = app.store.path_secret().await.unwrap();
        let callback = app.url(&format!("/webhook/{secret}"));
        pause_background_work(&app).await;
        Hook {
            app,
            secret,
            callback,
        }
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.app.post_webhook(&self.secret, body).await
    }

    async fn send(&self, event: &Value) -> Value {
        let res = self.post(event.to_string()).await;
        assert_eq!(res.status(), 200, "{event}");
        res.json().await.unwrap()
    }

    async fn rename(&self, id: i64, time: i64, title: &str) -> Value {
        self.send(&activity_event(
            "update",
            id,
            time,
            json!({ "title": title }),
        ))
        .await
    }

    /// Applies everything due now.
    async fn drain(&self) {
        worker::drain(&self.app.store, now()).await.unwrap();
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        self.app
            .store
            .read(move |c| c.query_row(&sql, strava_sync::params![], |r| r.get(0)))
            .await
            .unwrap()
    }

    async fn scalar<T: strava_sync::store::sql::FromSql + Send + 'static>(
        &self,
        sql: &'static str,
    ) -> T {
        scalar(&self.app.store, sql).await
    }

    /// The status of every inbox event, in arrival order.
    async fn inbox(&self) -> Vec<String> {
        self.app
            .store
            .read(|c| {
                let mut stmt = c.prepare_cached("SELECT status FROM webhook_events ORDER BY id")?;
                let rows = stmt.query_map(strava_sync::params![], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()
            })
            .await
            .unwrap()
    }

    async fn summary(&self, id: i64) -> Option<String> {
        self.app
            .store
            .read(move |c| {
                use strava_sync::store::sql::OptionalExtension;
                c.query_row(
                    "SELECT summary_json FROM activities WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .unwrap()
    }

    async fn fetch_jobs(&self) -> Vec<(i64, Fetch)> {
        self.app
            .store
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT athlete_id, payload_json FROM jobs WHERE kind = 'webhook_fetch'
                     ORDER BY id",
                )?;
                let rows = stmt.query_map(strava_sync::params![], |r| {
                    Ok((r.get::<i64>(0)?, r.get::<Option<String>>(1)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (athlete, json) = row?;
                    out.push((
                        athlete,
                        serde_json::from_str(json.as_deref().unwrap_or("{}"))?,
                    ));
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    /// Runs SQL against the app's database (seeding, injecting failures).
    async fn exec(&self, sql: impl Into<String>) {
        let sql = sql.into();
        self.app
            .store
            .write(move |tx| tx.execute_batch(&sql))
            .await
            .unwrap();
    }

    /// Makes the database refuse updates of activities (those named `name`,
    /// or all), as a
    /// stand-in for any failure while applying an event.
    async fn refuse_updates(&self, name: Option<&'static str>) {
        self.app
            .store
            .write(move |tx| {
                let dialect = tx.dialect();
                let when = match name {
                    Some(name) => format!(
                        "{} = '{name}'",
                        dialect.json_text("NEW.summary_json", "name")
                    ),
                    None => "1 = 1".into(),
                };
                tx.execute_batch(&match dialect {
                    Dialect::Sqlite => format!(
                        "CREATE TRIGGER refuse BEFORE UPDATE ON activities WHEN {when}
                         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
                    ),
                    Dialect::Postgres => format!(
                        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql
                             AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                         CREATE TRIGGER refuse BEFORE UPDATE ON activities
                             FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION refuse();"
                    ),
                })
            })
            .await
            .unwrap();
    }

    /// Lets updates through again.
    async fn allow_updates(&self) {
        self.app
            .store
            .write(|tx| {
                tx.execute_batch(match tx.dialect() {
                    Dialect::Sqlite => "DROP TRIGGER refuse",
                    Dialect::Postgres => "DROP TRIGGER refuse ON activities",
                })
            })
            .await
            .unwrap();
    }

    /// Commits several events in one transaction, as if they had arrived
    /// together, so the worker sees them all at once.
    async fn deliver_together(&self, events: Vec<Value>) {
        let events: Vec<inbox::Event> = events.iter().map(to_event).collect();
        self.app
            .store
            .write(move |tx| {
                for event in &events {
                    assert!(inbox::insert(tx, event, now())?);
                }
                Ok(())
            })
            .await
            .unwrap();
    }
}

/// Stops the job runner from claiming background jobs, so the fetch jobs
/// creates queue stay in the queue to be looked at.
pub async fn pause_background_work(app: &TestApp) {
    let res = app.admin_pause().await;
    assert_eq!(res.status(), 200);
}

pub async fn scalar<T: strava_sync::store::sql::FromSql + Send + 'static>(
    store: &Store,
    sql: &'static str,
) -> T {
    store
        .read(move |c| c.query_row(sql, strava_sync::params![], |r| r.get(0)))
        .await
        .unwrap()
}

pub fn event(object: &str, aspect: &str, id: i64, owner: i64, time: i64, updates: Value) -> Value {
    json!({
        "aspect_type": aspect,
        "event_time": time,
        "object_id": id,
        "object_type": object,
        "owner_id": owner,
        "subscription_id": 120475,
        "updates": updates,
    })
}

fn to_event(v: &Value) -> inbox::Event {
    let text = |k: &str| Value::String(v[k].as_str().unwrap().to_string());
    inbox::Event {
        object_type: serde_json::from_value(text("object_type")).unwrap(),
        object_id: v["object_id"].as_i64().unwrap(),
        aspect_type: serde_json::from_value(text("aspect_type")).unwrap(),
        owner_id: v["owner_id"].as_i64().unwrap(),
        event_time: v["event_time"].as_i64().unwrap(),
        updates: serde_json::from_value(v["updates"].clone()).unwrap(),
    }
}

pub fn activity_event(aspect: &str, id: i64, time: i64, updates: Value) -> Value {
    event("activity", aspect, id, ATHLETE, time, updates)
}

/// A SummaryActivity with the quirks that must survive edits: a 64-bit id,
/// an integer sent as a float, a float with a trailing zero.
pub fn summary(id: i64, athlete: i64) -> String {
    format!(
        r#"{{"resource_state":2,"athlete":{{"id":{athlete},"resource_state":1}},"name":"Morning Ride","distance":28099.30,"moving_time":4207,"elapsed_time":4410,"total_elevation_gain":516.0,"type":"Ride","sport_type":"MountainBikeRide","id":{id},"start_date":"2024-05-01T07:00:00Z","utc_offset":-14400.0,"private":false,"visibility":"everyone","upload_id":9223372036854775807}}"#
    )
}

pub async fn seed_athlete(store: &Store, athlete: i64) {
    store
        .write(move |tx| athletes::upsert(tx, &json!({"id": athlete}), "read,activity:read_all", 0))
        .await
        .unwrap();
}

pub async fn seed_activities(store: &Store, athlete: i64, ids: Vec<i64>) {
    store
        .write(move |tx| {
            let page: Vec<Box<serde_json::value::RawValue>> = ids
                .iter()
                .map(|id| serde_json::value::RawValue::from_string(summary(*id, athlete)).unwrap())
                .collect();
            activities::upsert_summaries(tx, athlete, &page, 0)?;
            Ok(())
        })
        .await
        .unwrap();
}

async fn seeded() -> Hook {
    let hook = Hook::spawn().await;
    seed_athlete(&hook.app.store, ATHLETE).await;
    seed_activities(&hook.app.store, ATHLETE, vec![ACTIVITY]).await;
    hook
}

fn handshake_query(token: &str) -> String {
    format!("hub.mode=subscribe&hub.challenge=15f7d1a91c1f40f8a748fd134752feb3&hub.verify_token={token}")
}

#[tokio::test]
async fn handshake_echoes_the_challenge_for_our_verify_token() {
    let hook = Hook::spawn().await;
    let res = hook
        .app
        .webhook_handshake(&hook.secret, &handshake_query("test-verify-token"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"hub.challenge": "15f7d1a91c1f40f8a748fd134752feb3"})
    );
}

#[tokio::test]
async fn handshake_refuses_bad_tokens_and_incomplete_queries() {
    let hook = Hook::spawn().await;
    let get = |secret: &str, query: String| {
        let (app, secret) = (&hook.app, secret.to_string());
        async move {
            let res = app.webhook_handshake(&secret, &query).await;
            res.status().as_u16()
        }
    };
    let secret = &hook.secret;
    assert_eq!(get(secret, handshake_query("wrong")).await, 403);
    assert_eq!(get(secret, handshake_query("")).await, 403);
    assert_eq!(get(secret, String::new()).await, 400);
    assert_eq!(
        get(secret, "hub.mode=subscribe&hub.challenge=x".into()).await,
        400
    );
    assert_eq!(
        get(
            secret,
            "hub.mode=unsubscribe&hub.challenge=x&hub.verify_token=test-verify-token".into()
        )
        .await,
        400
    );
    // The right token at the wrong path reveals nothing.
    assert_eq!(get("nope", handshake_query("test-verify-token")).await, 404);
}

#[tokio::test]
async fn events_at_any_other_webhook_path_answer_404_and_store_nothing() {
    let hook = seeded().await;
    let body = activity_event("update", ACTIVITY, T0, json!({"title": "x"})).to_string();
    let secret = &hook.secret;
    for path in [
        "/webhook".to_string(),
        "/webhook/".to_string(),
        "/webhook/guess".to_string(),
        format!("/webhook/{}", &secret[..secret.len() - 1]),
        format!("/webhook/{secret}x"),
        format!("/webhook/{secret}/more"),
        format!("/webhooks/{secret}"),
    ] {
        let res = hook
            .app
            .client
            .post(hook.app.url(&path))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let res = hook
            .app
            .client
            .request(method.clone(), &hook.callback)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{method}");
    }
    assert_eq!(hook.count("webhook_events").await, 0);
}

#[tokio::test]
async fn an_update_is_applied_from_the_event_without_any_call() {
    let hook = seeded().await;
    hook.exec("UPDATE activities SET detail_json = summary_json")
        .await;
    let updates = json!({"title": "Messy", "type": "Run", "private": "true"});
    assert_eq!(
        hook.send(&activity_event("update", ACTIVITY, T0, updates))
            .await["status"],
        "accepted"
    );
    hook.drain().await;

    let (summary, detail, needs_refresh, last_event): (String, String, i64, i64) = hook
        .app
        .store
        .read(|c| {
            c.query_row(
                "SELECT summary_json, detail_json, needs_refresh, last_event_time
                 FROM activities WHERE id = ?1",
                [ACTIVITY],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
        .await
        .unwrap();
    for text in [&summary, &detail] {
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["name"], "Messy");
        assert_eq!(v["type"], "Run");
        assert_eq!(v["sport_type"], "Run");
        assert_eq!(v["private"], true);
        assert_eq!(v["visibility"], "only_me");
        // Everything else keeps Strava's own text.
        assert!(text.contains("\"utc_offset\":-14400.0"), "{text}");
        assert!(text.contains("\"distance\":28099.30"), "{text}");
        assert!(text.contains(&format!("\"id\":{ACTIVITY}")), "{text}");
        assert!(text.contains("\"upload_id\":9223372036854775807"), "{text}");
    }
    assert_eq!((needs_refresh, last_event), (1, T0));
    // The typed columns follow the JSON.
    assert_eq!(
        hook.scalar::<String>("SELECT sport_type FROM activities")
            .await,
        "Run"
    );
    assert_eq!(hook.inbox().await, ["done"]);

    hook.send(&activity_event(
        "update",
        ACTIVITY,
        T0 + 1,
        json!({"private": "false"}),
    ))
    .await;
    hook.drain().await;
    let v: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
    assert_eq!(
        (v["private"].clone(), v["visibility"].clone()),
        (json!(false), json!("everyone"))
    );
    assert_eq!(v["name"], "Messy");

    // Cost: no Strava call and no job for updates.
    assert_eq!(hook.count("strava_calls").await, 0);
    assert_eq!(hook.count("jobs").await, 0);
    assert!(
        hook.scalar::<Option<i64>>("SELECT last_webhook_at FROM sync_state")
            .await
            .is_some(),
        "last_webhook_at is recorded"
    );
}

#[tokio::test]
async fn creates_share_one_fetch_job_and_duplicates_apply_once() {
    let hook = seeded().await;
    let new_ids = [ACTIVITY + 1, ACTIVITY + 2, ACTIVITY + 3];
    for (i, id) in new_ids.iter().enumerate() {
        hook.send(&activity_event("create", *id, T0 + i as i64, json!({})))
            .await;
    }
    // Strava's retry of the first create, with the subscription id as a string.
    let mut retry = activity_event("create", new_ids[0], T0, json!({}));
    retry["subscription_id"] = json!("120475");
    assert_eq!(hook.send(&retry).await["status"], "duplicate");
    // A create of an activity already stored costs nothing.
    hook.send(&activity_event("create", ACTIVITY, T0, json!({})))
        .await;
    hook.drain().await;

    assert_eq!(
        hook.fetch_jobs().await,
        [(
            ATHLETE,
            Fetch {
                activity_ids: new_ids.to_vec(),
            }
        )]
    );
    let job_purpose: i64 = hook.scalar("SELECT priority FROM jobs").await;
    assert_eq!(job_purpose, Task::fetch(vec![ACTIVITY]).purpose().rank());
    assert_eq!(hook.count("webhook_events").await, 4);
    assert_eq!(hook.inbox().await, ["done"; 4]);
    // A second delivery of a create whose fetch is still queued adds nothing.
    hook.send(&activity_event("create", new_ids[1], T0 + 50, json!({})))
        .await;
    hook.drain().await;
    assert_eq!(hook.fetch_jobs().await[0].1.activity_ids, new_ids.to_vec());
    assert_eq!(hook.count("strava_calls").await, 0);
}

#[tokio::test]
async fn a_delete_removes_the_activity_and_a_late_create_cannot_resurrect_it() {
    let hook = seeded().await;
    let pending = ACTIVITY + 9;
    hook.send(&activity_event("create", pending, T0, json!({})))
        .await;
    hook.drain().await;
    assert_eq!(hook.fetch_jobs().await.len(), 1);

    hook.send(&activity_event("delete", ACTIVITY, T0 + 100, json!({})))
        .await;
    hook.send(&activity_event("delete", pending, T0 + 100, json!({})))
        .await;
    hook.drain().await;
    assert_eq!(hook.summary(ACTIVITY).await, None);
    assert_eq!(hook.count("activity_tombstones").await, 2);
    // The queued fetch lost its only id, so the job is gone: a delete costs nothing.
    assert!(hook.fetch_jobs().await.is_empty());

    // A create older than the delete arrives late: ignored, nothing queued.
    hook.send(&activity_event("create", ACTIVITY, T0 + 50, json!({})))
        .await;
    // An update older than the delete too.
    hook.rename(ACTIVITY, T0 + 60, "ghost").await;
    hook.drain().await;
    assert_eq!(hook.summary(ACTIVITY).await, None);
    assert!(hook.fetch_jobs().await.is_empty());
    let inbox = hook.inbox().await;
    assert_eq!(inbox[3..], ["ignored", "ignored"]);

    // A newer create (privacy switched back, seen without read_all) brings it back.
    hook.send(&activity_event("create", ACTIVITY, T0 + 200, json!({})))
        .await;
    hook.drain().await;
    assert_eq!(hook.fetch_jobs().await[0].1.activity_ids, [ACTIVITY]);
    assert_eq!(hook.count("activity_tombstones").await, 1);
    assert_eq!(hook.count("strava_calls").await, 0);
}

#[tokio::test]
async fn a_delete_older_than_an_applied_create_is_stale() {
    let hook = seeded().await;
    hook.send(&activity_event("create", ACTIVITY, T0 + 200, json!({})))
        .await;
    hook.drain().await;
    hook.send(&activity_event("delete", ACTIVITY, T0 + 100, json!({})))
        .await;
    hook.drain().await;
    assert!(hook.summary(ACTIVITY).await.is_some());
    assert_eq!(hook.inbox().await[1], "ignored");
}

#[tokio::test]
async fn events_of_one_activity_apply_in_event_time_order() {
    let hook = seeded().await;
    // Delivered newest first, applied oldest first: the newest title wins.
    hook.deliver_together(vec![
        activity_event("update", ACTIVITY, T0 + 20, json!({"title": "second"})),
        activity_event("update", ACTIVITY, T0 + 10, json!({"title": "first"})),
    ])
    .await;
    hook.drain().await;
    let name =
        |s: Option<String>| serde_json::from_str::<Value>(&s.unwrap()).unwrap()["name"].clone();
    assert_eq!(name(hook.summary(ACTIVITY).await), "second");
    assert_eq!(hook.inbox().await, ["done", "done"]);
    // One arriving after a newer one was applied is stale.
    hook.rename(ACTIVITY, T0 + 15, "late").await;
    hook.drain().await;
    assert_eq!(name(hook.summary(ACTIVITY).await), "second");
    assert_eq!(hook.inbox().await[2], "ignored");

    // A delete delivered before the update it follows: the update applies
    // first, then the delete, and nothing is left.
    let other = ACTIVITY + 1;
    seed_activities(&hook.app.store, ATHLETE, vec![other]).await;
    hook.deliver_together(vec![
        activity_event("delete", other, T0 + 40, json!({})),
        activity_event("update", other, T0 + 30, json!({"title": "x"})),
    ])
    .await;
    hook.drain().await;
    assert_eq!(hook.summary(other).await, None);
    let inbox = hook.inbox().await;
    assert_eq!(inbox[3], "done");
    assert_eq!(inbox[4], "done");
}

#[tokio::test]
async fn deauthorization_purges_everything_held_for_the_athlete() {
    let hook = seeded().await;
    let other = ATHLETE + 1;
    seed_athlete(&hook.app.store, other).await;
    seed_activities(&hook.app.store, other, vec![ACTIVITY + 5]).await;
    hook.app
        .store
        .write(|tx| {
            for athlete in [ATHLETE, ATHLETE + 1] {
                tx.execute(
                    "INSERT INTO strava_tokens (athlete_id, access_token, refresh_token,
                         expires_at, updated_at) VALUES (?1, 'a', 'r', 0, 0)",
                    [athlete],
                )?;
                api_tokens::issue(tx, athlete, 0)?;
                jobs::enqueue(tx, athlete, Task::Backfill, 0, 0)?;
                tx.execute(
                    "INSERT INTO strava_calls (at, endpoint, athlete_id, purpose, status)
                     VALUES (0, 'GET /athlete', ?1, 'interactive', 200)",
                    [athlete],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    hook.send(&activity_event("create", ACTIVITY + 7, T0, json!({})))
        .await;
    hook.send(&event(
        "athlete",
        "update",
        ATHLETE,
        ATHLETE,
        T0 + 1,
        json!({"authorized": "false"}),
    ))
    .await;
    hook.drain().await;

    for (table, column) in [
        ("athletes", "id"),
        ("strava_tokens", "athlete_id"),
        ("api_tokens", "athlete_id"),
        ("activities", "athlete_id"),
        ("jobs", "athlete_id"),
        ("sync_state", "athlete_id"),
        ("webhook_events", "owner_id"),
        ("strava_calls", "athlete_id"),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1");
        let (gone, kept): (i64, i64) = hook
            .app
            .store
            .read(move |c| {
                let count = |a: i64| c.query_row(&sql, [a], |r| r.get::<i64>(0));
                Ok((count(ATHLETE)?, count(ATHLETE + 1)?))
            })
            .await
            .unwrap();
        assert_eq!(gone, 0, "{table} still holds the athlete");
        if table != "webhook_events" {
            assert!(kept > 0, "{table} lost the other athlete");
        }
    }
    let calls: i64 = hook.count("strava_calls").await;
    assert_eq!(calls, 2, "the calls still count in the ledger");
    // Later events for the purged athlete are acknowledged, not kept.
    assert_eq!(
        hook.rename(ACTIVITY, T0 + 5, "x").await["status"],
        "ignored"
    );
    assert!(hook.inbox().await.is_empty());
}

#[tokio::test]
async fn events_for_unknown_athletes_are_acknowledged_and_not_kept() {
    let hook = Hook::spawn().await;
    for event in [
        event("activity", "create", ACTIVITY, 99, T0, json!({})),
        event(
            "activity",
            "update",
            ACTIVITY,
            99,
            T0,
            json!({"title": "x"}),
        ),
        event(
            "athlete",
            "update",
            99,
            99,
            T0,
            json!({"authorized": "false"}),
        ),
    ] {
        assert_eq!(hook.send(&event).await["status"], "ignored");
    }
    assert!(hook.inbox().await.is_empty(), "nothing stored for nobody");
    hook.drain().await;
    assert_eq!(hook.count("jobs").await, 0);
    assert_eq!(hook.count("activities").await, 0);
}

#[tokio::test]
async fn malformed_incomplete_and_mistyped_events_are_refused() {
    let hook = seeded().await;
    let good = activity_event("update", ACTIVITY, T0, json!({"title": "x"}));
    let mut cases: Vec<(String, String)> = vec![
        ("empty body".into(), String::new()),
        ("not JSON".into(), "{\"aspect_type\": \"create\",".into()),
        ("an array".into(), "[]".into()),
    ];
    for field in [
        "aspect_type",
        "event_time",
        "object_id",
        "object_type",
        "owner_id",
        "subscription_id",
    ] {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(field);
        cases.push((format!("missing {field}"), v.to_string()));
    }
    for (field, value) in [
        ("object_id", json!("17179869185")),
        ("object_id", json!(-1)),
        ("object_id", json!(0)),
        ("object_id", json!(1.5)),
        ("object_id", json!(18446744073709551616u128 as f64)),
        ("owner_id", json!(null)),
        ("event_time", json!("yesterday")),
        ("object_type", json!("club")),
        ("aspect_type", json!("rename")),
        ("updates", json!({"title": 7})),
        ("updates", json!(["title"])),
        ("subscription_id", json!("abc")),
        ("subscription_id", json!(true)),
    ] {
        let mut v = good.clone();
        v[field] = value.clone();
        cases.push((format!("{field} = {value}"), v.to_string()));
    }
    for (what, body) in cases {
        let res = hook.post(body).await;
        assert_eq!(res.status(), 400, "{what}");
        let fault: Value = res.json().await.unwrap();
        assert!(
            fault["message"].is_string() && fault["errors"][0]["resource"] == "Event",
            "{what}: {fault}"
        );
    }
    assert_eq!(hook.count("webhook_events").await, 0);
}

#[tokio::test]
async fn an_event_naming_another_athlete_touches_nothing_of_this_ones() {
    let hook = seeded().await;
    const OTHER: i64 = 999;
    seed_athlete(&hook.app.store, OTHER).await;
    // The athlete's next upload, not stored yet (its create was lost).
    let upcoming = ACTIVITY + 1;
    for id in [ACTIVITY, upcoming] {
        hook.send(&event("activity", "delete", id, OTHER, T0 + 1, json!({})))
            .await;
    }
    let forged = json!({"title": "Forged"});
    hook.send(&event(
        "activity",
        "update",
        ACTIVITY,
        OTHER,
        T0 + 2,
        forged,
    ))
    .await;
    hook.drain().await;

    let name = |json: Option<String>| {
        serde_json::from_str::<Value>(&json.unwrap()).unwrap()["name"].clone()
    };
    assert_eq!(name(hook.summary(ACTIVITY).await), "Morning Ride");
    hook.rename(ACTIVITY, T0 + 3, "Genuine").await;
    hook.drain().await;
    assert_eq!(name(hook.summary(ACTIVITY).await), "Genuine");
    let listed =
        vec![serde_json::value::RawValue::from_string(summary(upcoming, ATHLETE)).unwrap()];
    let stored = hook
        .app
        .store
        .store_listing(ATHLETE, listed, now())
        .await
        .unwrap();
    assert_eq!(stored.new, 1, "the athlete's listing stores their upload");
}

#[tokio::test]
async fn an_event_from_the_future_is_refused_and_cannot_hide_later_changes() {
    let hook = seeded().await;
    let ahead = now() + 24 * 3600;
    let forged = activity_event("update", ACTIVITY, ahead, json!({"title": "Forged"}));
    let res = hook.post(forged.to_string()).await;
    assert_eq!(res.status(), 400);
    let fault: Value = res.json().await.unwrap();
    assert_eq!(fault["errors"][0]["field"], "event_time", "{fault}");
    assert_eq!(hook.count("webhook_events").await, 0);

    // Strava's clock a little ahead of ours is no reason to refuse.
    hook.rename(ACTIVITY, now() + 60, "Genuine").await;
    hook.drain().await;
    let summary: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
    assert_eq!(summary["name"], "Genuine");
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_or_without_a_length() {
    let hook = seeded().await;
    let huge = activity_event(
        "update",
        ACTIVITY,
        T0,
        json!({"title": "x".repeat(17 * 1024)}),
    )
    .to_string();
    assert_eq!(hook.post(huge.clone()).await.status(), 413);
    // Chunked: no Content-Length for the middleware to check up front.
    let (status, body) = post_chunked(&hook.callback, &huge, 1024).await;
    assert_eq!(status, 413);
    assert!(body.contains("Payload Too Large"), "{body}");
    assert_eq!(hook.count("webhook_events").await, 0);

    // Just under the limit, chunked, is fine.
    let title = "y".repeat(15 * 1024);
    let body = activity_event("update", ACTIVITY, T0, json!({ "title": title })).to_string();
    assert_eq!(post_chunked(&hook.callback, &body, 700).await.0, 200);
    assert_eq!(hook.count("webhook_events").await, 1);
}

/// Posts `body` with `Transfer-Encoding: chunked` over a raw connection (the
/// test client has no streaming bodies); returns the status and the body.
async fn post_chunked(url: &str, body: &str, chunk: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(chunk) {
        request.extend(format!("{:x}\r\n", piece.len()).bytes());
        request.extend(piece);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    // The server may answer 413 and close before reading everything.
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

#[tokio::test]
async fn only_our_subscription_is_accepted_once_known() {
    let hook = seeded().await;
    // None stored yet: the path secret is the only guard, any id passes.
    let mut foreign = activity_event("update", ACTIVITY, T0, json!({"title": "a"}));
    foreign["subscription_id"] = json!(999);
    assert_eq!(hook.post(foreign.to_string()).await.status(), 200);

    hook.app.store.set_subscription_id(120475).await.unwrap();
    foreign["event_time"] = json!(T0 + 1);
    let res = hook.post(foreign.to_string()).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["errors"][0]["field"],
        "subscription_id"
    );
    let mut as_string = activity_event("update", ACTIVITY, T0 + 2, json!({"title": "b"}));
    as_string["subscription_id"] = json!(" 120475");
    assert_eq!(hook.post(as_string.to_string()).await.status(), 200);
    assert_eq!(hook.count("webhook_events").await, 2);
}

#[tokio::test]
async fn hostile_strings_are_stored_and_applied_verbatim() {
    let hook = seeded().await;
    let hostile = [
        "'); DROP TABLE activities; --",
        "\" , \"private\": true, \"x\": \"",
        "<script>alert(1)</script>",
        "nul\u{0}byte",
        "emoji 🚴‍♀️ and RTL \u{202e}gnp.exe",
        "$.name",
    ];
    for (i, title) in hostile.iter().enumerate() {
        hook.send(&activity_event(
            "update",
            ACTIVITY,
            T0 + i as i64,
            json!({ "title": title, "type": title, "weird key ')": "v" }),
        ))
        .await;
        hook.drain().await;
        let v: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
        assert_eq!(v["name"], *title);
        assert_eq!(v["type"], *title);
        assert_eq!(v["private"], false, "{title}");
    }
    assert_eq!(hook.count("activities").await, 1);
}

#[tokio::test]
async fn failing_events_retry_with_backoff_then_wait_for_a_replay() {
    let hook = seeded().await;
    // Make applying the update fail inside the database.
    hook.refuse_updates(None).await;
    hook.rename(ACTIVITY, T0, "x").await;
    let start = now();
    let mut clock = start;
    for _ in 0..worker::MAX_ATTEMPTS {
        worker::drain(&hook.app.store, clock).await.unwrap();
        // Not due again before its backoff.
        assert_eq!(worker::drain(&hook.app.store, clock).await.unwrap(), 0);
        clock += 3600;
    }
    assert_eq!(hook.inbox().await, ["failed"]);
    assert_eq!(
        hook.scalar::<i64>("SELECT attempts FROM webhook_events")
            .await,
        worker::MAX_ATTEMPTS
    );

    assert_eq!(
        hook.app.get("/admin/webhooks").await.status(),
        401,
        "admin only"
    );
    let overview: Value = hook.app.admin_webhooks().await.json().await.unwrap();
    assert_eq!(
        overview["counts"],
        json!({"pending": 0, "done": 0, "ignored": 0, "failed": 1})
    );
    assert_eq!(overview["failed"][0]["object_id"], ACTIVITY);
    assert!(
        overview["failed"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{overview}"
    );

    hook.allow_updates().await;
    let replay: Value = hook.app.admin_webhooks_replay().await.json().await.unwrap();
    assert_eq!(replay, json!({"replayed": 1}));
    hook.drain().await;
    assert_eq!(hook.inbox().await, ["done"]);
    let v: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
    assert_eq!(v["name"], "x");
}

#[tokio::test]
async fn a_pending_retry_holds_back_later_events_of_the_same_activity() {
    let hook = seeded().await;
    hook.refuse_updates(Some("first")).await;
    hook.rename(ACTIVITY, T0, "first").await;
    hook.rename(ACTIVITY, T0 + 1, "second").await;
    let now = now();
    worker::drain(&hook.app.store, now).await.unwrap();
    assert_eq!(
        hook.inbox().await,
        ["pending", "pending"],
        "the second waits for the first"
    );
    hook.allow_updates().await;
    // Margin: the app's own worker may have made the first attempt a second later.
    worker::drain(&hook.app.store, now + worker::backoff_secs(1) + 5)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
    assert_eq!(v["name"], "second");
}

#[tokio::test]
async fn webhook_metrics_are_exported() {
    let hook = seeded().await;
    hook.rename(ACTIVITY, T0, "x").await;
    hook.drain().await;
    let body = hook.app.metrics().await.text().await.unwrap();
    for name in [
        "webhook_events_total{kind=\"activity_update\",outcome=\"accepted\"}",
        "webhook_events_total{kind=\"activity_update\",outcome=\"applied\"}",
        "webhook_ack_seconds",
        "webhook_inbox_depth",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
}

#[tokio::test]
async fn concurrent_events_are_each_answered_after_their_row_is_committed() {
    let hook = seeded().await;
    let sends = (0..200).map(|i| {
        let hook = &hook;
        async move {
            let time = T0 + i;
            let body = hook.rename(ACTIVITY, time, &format!("name {i}")).await;
            assert_eq!(body["status"], "accepted");
            // Read at once, from another connection: the 200 came after the commit.
            let rows: i64 = hook
                .app
                .store
                .read(move |c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM webhook_events WHERE event_time = ?1",
                        [time],
                        |r| r.get(0),
                    )
                })
                .await
                .unwrap();
            assert_eq!(rows, 1, "event {i} answered before it was committed");
        }
    });
    futures_util::future::join_all(sends).await;
    assert_eq!(hook.count("webhook_events").await, 200);
    // Dedup holds across events committed in one group.
    let again = hook.rename(ACTIVITY, T0, "name 0").await;
    assert_eq!(again["status"], "duplicate");
}

/// A write the batch makes at its end for all its events (here the merge
/// into a queued fetch whose stored payload cannot be read) fails only the
/// event that needed it: the others apply, and the inbox moves on.
#[tokio::test]
async fn a_failing_write_left_for_the_end_of_a_batch_fails_only_its_event() {
    let hook = seeded().await;
    let other = ACTIVITY + 1;
    seed_activities(&hook.app.store, ATHLETE, vec![other]).await;
    hook.app
        .store
        .write(|tx| {
            tx.execute(
                "INSERT INTO jobs (athlete_id, kind, priority, payload_json, not_before, created_at)
                 VALUES (?1, 'webhook_fetch', 0, 'not a payload', 0, 0)",
                [ATHLETE],
            )
        })
        .await
        .unwrap();
    hook.deliver_together(vec![
        activity_event("update", other, T0, json!({ "title": "renamed" })),
        activity_event("create", ACTIVITY + 50, T0 + 1, json!({})),
    ])
    .await;
    hook.drain().await;
    let v: Value = serde_json::from_str(&hook.summary(other).await.unwrap()).unwrap();
    assert_eq!(v["name"], "renamed");
    assert_eq!(hook.inbox().await, ["done", "pending"]);
    let error: String = hook
        .scalar("SELECT last_error FROM webhook_events WHERE status = 'pending'")
        .await;
    assert!(!error.is_empty());
}

#[tokio::test]
async fn a_failing_event_in_a_batch_is_recorded_while_the_others_apply() {
    let hook = seeded().await;
    let others = [ACTIVITY + 1, ACTIVITY + 2];
    seed_activities(&hook.app.store, ATHLETE, others.to_vec()).await;
    hook.refuse_updates(Some("bad")).await;
    hook.deliver_together(vec![
        activity_event("update", others[0], T0, json!({ "title": "good one" })),
        activity_event("update", ACTIVITY, T0 + 1, json!({ "title": "bad" })),
        activity_event("update", others[1], T0 + 2, json!({ "title": "good two" })),
    ])
    .await;
    hook.drain().await;
    for (id, name) in [(others[0], "good one"), (others[1], "good two")] {
        let v: Value = serde_json::from_str(&hook.summary(id).await.unwrap()).unwrap();
        assert_eq!(v["name"], name);
    }
    let v: Value = serde_json::from_str(&hook.summary(ACTIVITY).await.unwrap()).unwrap();
    assert_eq!(
        v["name"], "Morning Ride",
        "the failed event was rolled back"
    );
    assert_eq!(hook.inbox().await, ["done", "pending", "done"]);
    let error: String = hook
        .scalar("SELECT last_error FROM webhook_events WHERE status = 'pending'")
        .await;
    assert!(error.contains("injected failure"), "{error}");
}
