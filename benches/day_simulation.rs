//! One simulated UTC day of the sync engine against 1,000 Strava calls,
//! after a simulated day before it (so the day starts with yesterday's
//! backlog and lost webhooks, as a real day does).
//!
//! Real parts: the SQLite store, the budget (`Budget` with its policy,
//! priorities, reserves and pacing) on a `ManualClock`, the job queue and its
//! selection (`Store::claim_job` at the most permissive purpose the budget serves),
//! the sync-engine handlers (`sync::dispatch::run`), the gap-fill pass at
//! 04:00 and the planner every 5 minutes. Simulated: Strava itself (an
//! in-memory athlete/activity store that takes a budget permit per call, as
//! the HTTP client does, and answers `after`-only listings oldest first), the
//! uploads and the webhook deliveries. Calls take no time; waiting for a
//! permit moves the clock.
//!
//! Assumptions, per athlete: 0.5 uploads a day (Poisson; a keen but
//! ordinary Strava user, 3 to 4 a week), mostly between 06:00 and 21:00 UTC;
//! the activity started 20 to 150 minutes before its upload, except 5% late
//! uploads that started 1 to 3 days earlier; 10% are announced before they
//! are readable (404 for 30 s to 10 min); 1% of webhooks are lost. Every
//! athlete's backfill is complete, with 10 activities in the last 20 days,
//! except one who connects at 08:00 on the measured day with 3,000.
//!
//! `cargo bench --bench day_simulation` runs 100, 1,000 and 10,000 athletes;
//! `cargo bench --bench day_simulation -- 10000 seed=3` runs one size with
//! another random seed (7 by default).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;

use strava_sync::model::clock::{Clock, ManualClock};
use strava_sync::model::job::Task;
use strava_sync::model::Purpose;
use strava_sync::store::jobs::{self, Outcome};
use strava_sync::store::{activities, athletes, sync_state, Store};
use strava_sync::strava::budget::{Budget, CallOutcome, Limits, RateReport};
use strava_sync::strava::client::ListQuery;
use strava_sync::strava::error::StravaError;
use strava_sync::sync::outcome::Step;
use strava_sync::sync::queue::JobQueue;
use strava_sync::sync::scheduler::Planner;
use strava_sync::sync::source::ActivitySource;
use strava_sync::sync::{dispatch, gap_fill};

const DAY: i64 = 86_400;
const UPLOADS_PER_DAY: f64 = 0.5;
const LOST_WEBHOOKS: f64 = 0.01;
const LATE_UPLOADS: f64 = 0.05;
const NOT_YET_READABLE: f64 = 0.10;
const HISTORY: usize = 10;
/// One more athlete connects at 08:00 on the measured day with this much
/// history, as the connect flow queues it: the first page, then backfill.
const NEWCOMER_HISTORY: usize = 3_000;
const NEWCOMER_AT: i64 = 8 * 3600;
/// `SYNC_SCHEDULE`'s default, 04:00 UTC.
const GAP_FILL_AT: i64 = 4 * 3600;
const PLAN_EVERY: i64 = 300;

#[derive(Clone)]
struct Activity {
    id: i64,
    athlete_id: i64,
    start: i64,
    created: i64,
    readable: i64,
    webhook_lost: bool,
}

impl Activity {
    fn json(&self) -> Box<RawValue> {
        let start = DateTime::from_timestamp(self.start, 0).unwrap();
        RawValue::from_string(format!(
            r#"{{"id":{},"resource_state":2,"athlete":{{"id":{},"resource_state":1}},"name":"Run","type":"Run","sport_type":"Run","distance":8012.5,"moving_time":2400,"elapsed_time":2460,"total_elevation_gain":41.0,"start_date":"{}","start_date_local":"{}"}}"#,
            self.id,
            self.athlete_id,
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            start.format("%Y-%m-%dT%H:%M:%SZ"),
        ))
        .unwrap()
    }
}

/// What the simulated Strava knows and what it handed out, when, and why.
#[derive(Default)]
struct World {
    by_athlete: HashMap<i64, Vec<Activity>>,
    by_id: HashMap<i64, Activity>,
    /// First time each activity was returned, and to which purpose.
    delivered: HashMap<i64, (i64, Purpose)>,
}

struct FakeStrava {
    budget: Arc<Budget>,
    clock: Arc<ManualClock>,
    world: Mutex<World>,
}

impl FakeStrava {
    /// Takes a permit as the HTTP client does; while the budget refuses this
    /// purpose, simulated time passes until it may change.
    async fn permit(&self, purpose: Purpose) -> strava_sync::strava::budget::Permit {
        loop {
            match self.budget.servable() {
                (Some(lowest), _) if purpose <= lowest => break,
                (_, Some(until)) => self
                    .clock
                    .set(until.max(self.clock.now() + chrono::Duration::seconds(1))),
                (_, None) => self.clock.advance(chrono::Duration::seconds(60)),
            }
        }
        self.budget.acquire(purpose).await.expect("permit")
    }

    async fn record(
        &self,
        permit: strava_sync::strava::budget::Permit,
        endpoint: &'static str,
        athlete_id: i64,
        status: u16,
    ) {
        let outcome = CallOutcome {
            endpoint,
            athlete_id: Some(athlete_id),
            status: Some(status),
            report: RateReport::default(),
            duration: Duration::ZERO,
        };
        self.budget.record(permit, outcome).await.expect("ledger");
    }
}

impl ActivitySource for FakeStrava {
    async fn list_activities(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        query: &ListQuery,
    ) -> Result<Vec<Box<RawValue>>, StravaError> {
        let permit = self.permit(purpose).await;
        let now = self.clock.epoch();
        let page = {
            let mut world = self.world.lock().unwrap();
            let mut listed: Vec<Activity> = world
                .by_athlete
                .get(&athlete_id)
                .into_iter()
                .flatten()
                .filter(|a| a.readable <= now)
                .filter(|a| query.before.is_none_or(|b| a.start < b))
                .filter(|a| query.after.is_none_or(|t| a.start > t))
                .cloned()
                .collect();
            // As reported of Strava: oldest first when only `after` is given.
            if query.after.is_some() && query.before.is_none() {
                listed.sort_by_key(|a| (a.start, a.id));
            } else {
                listed.sort_by_key(|a| std::cmp::Reverse((a.start, a.id)));
            }
            let per_page = query.per_page.unwrap_or(30) as usize;
            let skip = (query.page.unwrap_or(1).max(1) as usize - 1) * per_page;
            let page: Vec<Activity> = listed.into_iter().skip(skip).take(per_page).collect();
            for a in &page {
                world.delivered.entry(a.id).or_insert((now, purpose));
            }
            page
        };
        self.record(permit, "GET /athlete/activities", athlete_id, 200)
            .await;
        Ok(page.iter().map(Activity::json).collect())
    }

    async fn get_activity(
        &self,
        athlete_id: i64,
        purpose: Purpose,
        id: i64,
    ) -> Result<Box<RawValue>, StravaError> {
        let permit = self.permit(purpose).await;
        let now = self.clock.epoch();
        let found = {
            let mut world = self.world.lock().unwrap();
            let found = world
                .by_id
                .get(&id)
                .filter(|a| a.athlete_id == athlete_id && a.readable <= now)
                .cloned();
            if found.is_some() {
                world.delivered.entry(id).or_insert((now, purpose));
            }
            found
        };
        let status = if found.is_some() { 200 } else { 404 };
        self.record(permit, "GET /activities/{id}", athlete_id, status)
            .await;
        found.map(|a| a.json()).ok_or(StravaError::NotFound)
    }
}

/// Poisson draw (Knuth), fine for small means.
fn poisson(rng: &mut StdRng, mean: f64) -> usize {
    let (limit, mut product, mut n) = ((-mean).exp(), rng.random::<f64>(), 0);
    while product > limit {
        product *= rng.random::<f64>();
        n += 1;
    }
    n
}

/// An upload time of day: 90% between 06:00 and 21:00, the rest any time.
fn upload_second(rng: &mut StdRng) -> i64 {
    if rng.random_bool(0.9) {
        rng.random_range(6 * 3600..21 * 3600)
    } else {
        rng.random_range(0..DAY)
    }
}

/// The measured (second) day.
struct Report {
    athletes: usize,
    calls: BTreeMap<String, i64>,
    created: usize,
    available: usize,
    p50: Option<i64>,
    p95: Option<i64>,
    /// Webhooks lost over both days (and of those, before the measured day's
    /// gap-fill pass), and how those activities came in by the end: through
    /// the gap-fill, or another listing (a webhook fetch listing several).
    lost: usize,
    lost_before_pass: usize,
    lost_recovered_by_gap_fill: usize,
    lost_recovered_otherwise: usize,
    /// Uploads of either day not available at the end.
    backlog: usize,
    /// How long the newcomer's backfill took, and its pages done at the end.
    backfill: Option<i64>,
    backfill_pages: i64,
    wall: Duration,
}

async fn simulate(athletes_n: usize, seed: u64) -> Report {
    let wall = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sim.db")).unwrap();
    let day0 = Utc
        .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    let measured = day0 + DAY;
    let clock = ManualClock::new(DateTime::from_timestamp(day0, 0).unwrap());
    let budget = Budget::load(
        store.clone(),
        clock.clone(),
        Limits {
            quarter: 100,
            day: 1000,
        },
    )
    .await
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_id: i64 = 10_000_000_000;
    let mut world = World::default();

    // History: stored here and on Strava alike; backfills are complete.
    let mut history: Vec<(i64, Vec<Activity>)> = Vec::new();
    for athlete_id in 1..=athletes_n as i64 {
        let mut acts = Vec::new();
        for _ in 0..HISTORY {
            next_id += 1;
            let start = day0 - rng.random_range(3600..20 * DAY);
            acts.push(Activity {
                id: next_id,
                athlete_id,
                start,
                created: start + 3600,
                readable: start + 3600,
                webhook_lost: false,
            });
        }
        history.push((athlete_id, acts));
    }
    for chunk in history.chunks(500) {
        let chunk = chunk.to_vec();
        store
            .write(move |tx| {
                for (athlete_id, acts) in &chunk {
                    athletes::upsert(tx, &serde_json::json!({"id": athlete_id}), "read,activity:read_all", 0)?;
                    tx.execute(
                        "UPDATE sync_state SET backfill_complete = 1, backfill_pages = 1 WHERE athlete_id = ?1",
                        [athlete_id],
                    )?;
                    let page: Vec<Box<RawValue>> = acts.iter().map(Activity::json).collect();
                    activities::upsert_summaries(tx, *athlete_id, &page, 0)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    let newcomer = athletes_n as i64 + 1;
    let connect_at = measured + NEWCOMER_AT;
    let mut acts = Vec::new();
    for _ in 0..NEWCOMER_HISTORY {
        next_id += 1;
        let start = connect_at - rng.random_range(3600..5 * 365 * DAY);
        acts.push(Activity {
            id: next_id,
            athlete_id: newcomer,
            start,
            created: start + 3600,
            readable: start + 3600,
            webhook_lost: false,
        });
    }
    history.push((newcomer, acts));
    for (athlete_id, acts) in history {
        for a in &acts {
            world.by_id.insert(a.id, a.clone());
        }
        world.by_athlete.insert(athlete_id, acts);
    }

    // Both days' uploads, in time order.
    let mut uploads = Vec::new();
    for (athlete_id, day) in (1..=athletes_n as i64).flat_map(|a| [(a, day0), (a, measured)]) {
        for _ in 0..poisson(&mut rng, UPLOADS_PER_DAY) {
            next_id += 1;
            let created = day + upload_second(&mut rng);
            let start = if rng.random_bool(LATE_UPLOADS) {
                created - rng.random_range(DAY..3 * DAY)
            } else {
                created - rng.random_range(20 * 60..150 * 60)
            };
            let readable = if rng.random_bool(NOT_YET_READABLE) {
                created + rng.random_range(30..600)
            } else {
                created
            };
            let webhook_lost = rng.random_bool(LOST_WEBHOOKS);
            uploads.push(Activity {
                id: next_id,
                athlete_id,
                start,
                created,
                readable,
                webhook_lost,
            });
        }
    }
    uploads.sort_by_key(|a| a.created);

    let strava = FakeStrava {
        budget: budget.clone(),
        clock: clock.clone(),
        world: Mutex::new(world),
    };
    let planner = Planner {
        store: store.clone(),
        queue: Arc::new(JobQueue::new(store.clone(), clock.clone())),
        clock: clock.clone(),
        daily_limit: 1000,
    };
    let end = measured + DAY;
    let (mut connected, mut backfill_done) = (false, None);
    let (mut next_upload, mut next_plan, mut next_gap_fill) = (0, day0, day0 + GAP_FILL_AT);
    loop {
        let now = clock.epoch();
        if now >= end {
            break;
        }
        while next_upload < uploads.len() && uploads[next_upload].created <= now {
            let a = uploads[next_upload].clone();
            next_upload += 1;
            {
                let mut world = strava.world.lock().unwrap();
                world.by_id.insert(a.id, a.clone());
                world
                    .by_athlete
                    .entry(a.athlete_id)
                    .or_default()
                    .push(a.clone());
            }
            if !a.webhook_lost {
                store
                    .write(move |tx| {
                        // What the webhook worker commits for a create event.
                        tx.execute(
                            "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                                 owner_id, event_time, updates_json, received_at, status, next_attempt_at)
                             VALUES (?1, 'activity', ?2, 'create', ?3, ?4, '{}', ?4, 'done', ?4)",
                            rusqlite::params![format!("create:{}", a.id), a.id, a.athlete_id, a.created],
                        )?;
                        jobs::enqueue(tx, a.athlete_id, Task::fetch(a.id), a.created, a.created)
                            .map(|_| ())
                    })
                    .await
                    .unwrap();
            }
        }
        if now >= next_plan {
            planner.plan().await;
            next_plan += PLAN_EVERY;
        }
        if now >= next_gap_fill {
            gap_fill::start_pass(&store, 1000, now).await.unwrap();
            next_gap_fill += DAY;
        }
        if !connected && now >= connect_at {
            store
                .write(move |tx| {
                    athletes::upsert(
                        tx,
                        &serde_json::json!({"id": newcomer}),
                        "read,activity:read_all",
                        now,
                    )?;
                    jobs::enqueue(tx, newcomer, Task::FirstPage, now, now)?;
                    jobs::enqueue(tx, newcomer, Task::Backfill, now, now).map(|_| ())
                })
                .await
                .unwrap();
            connected = true;
        }
        let (lowest, until) = budget.servable();
        let job = match lowest {
            Some(p) => store.claim_job(now, p.rank()).await.unwrap(),
            None => None,
        };
        if let Some(job) = job {
            let outcome =
                dispatch::run(&store, &strava, job.athlete_id, &job.task, clock.epoch()).await;
            let done_at = clock.epoch();
            let outcome = match outcome {
                Ok(Step::Done(counts)) => Outcome::Done(counts),
                Ok(Step::More(counts)) => Outcome::Requeue {
                    counts,
                    not_before: done_at,
                    error: None,
                },
                Err(e) => Outcome::Failed(e.to_string()),
            };
            store.record_job(job.id, outcome, done_at).await.unwrap();
            if job.athlete_id == newcomer && backfill_done.is_none() {
                let complete = store
                    .read(move |c| Ok(sync_state::get(c, newcomer)?.backfill_complete))
                    .await
                    .unwrap();
                backfill_done = complete.then_some(done_at - connect_at);
            }
            continue;
        }
        let due = store.queue_state(now).await.unwrap().next_due;
        let mut next = [
            uploads.get(next_upload).map(|a| a.created),
            Some(next_plan),
            Some(next_gap_fill),
            (!connected).then_some(connect_at),
            until.map(|t| t.timestamp()),
            due,
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        next = next.max(now + 1);
        clock.set(DateTime::from_timestamp(next, 0).unwrap());
    }

    let world = strava.world.into_inner().unwrap();
    let mut delays: Vec<i64> = Vec::new();
    let (mut created, mut backlog) = (0, 0);
    let (mut lost, mut lost_before_pass, mut by_gap_fill, mut otherwise) = (0, 0, 0, 0);
    for a in &uploads {
        let delivered = world.delivered.get(&a.id);
        if a.created >= measured {
            created += 1;
            if let Some(&(at, _)) = delivered {
                delays.push(at - a.created);
            }
        }
        if a.webhook_lost {
            lost += 1;
            lost_before_pass += usize::from(a.created < measured + GAP_FILL_AT);
            match delivered {
                Some(&(_, Purpose::GapFill)) => by_gap_fill += 1,
                Some(_) => otherwise += 1,
                None => {}
            }
        }
        backlog += usize::from(delivered.is_none());
    }
    delays.sort_unstable();
    // Activities not available by midnight count as slower than all others.
    let percentile = |p: f64| {
        let rank = ((created as f64 * p).ceil() as usize).max(1) - 1;
        delays.get(rank).copied()
    };
    let calls = store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT purpose, COUNT(*) FROM strava_calls WHERE at >= ?1 GROUP BY purpose",
            )?;
            let rows = stmt
                .query_map([measured], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap();
    Report {
        athletes: athletes_n,
        calls,
        created,
        available: delays.len(),
        p50: percentile(0.5),
        p95: percentile(0.95),
        lost,
        lost_before_pass,
        lost_recovered_by_gap_fill: by_gap_fill,
        lost_recovered_otherwise: otherwise,
        backlog,
        backfill: backfill_done,
        backfill_pages: store
            .read(move |c| Ok(sync_state::get(c, newcomer)?.backfill_pages))
            .await
            .unwrap(),
        wall: wall.elapsed(),
    }
}

fn minutes(secs: Option<i64>) -> String {
    secs.map_or_else(
        || "not within the day".to_string(),
        |s| format!("{:.1} min", s as f64 / 60.0),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let seed = args
        .iter()
        .find_map(|a| a.strip_prefix("seed=")?.parse().ok())
        .unwrap_or(7);
    let sizes = if sizes.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for athletes in sizes {
        let r = runtime.block_on(simulate(athletes, seed));
        let total: i64 = r.calls.values().sum();
        println!(
            "== {} athletes, day 2 of 2, 1,000 calls/day (simulated in {:.1?})",
            r.athletes, r.wall
        );
        println!("calls: {total} total; by purpose: {:?}", r.calls);
        println!(
            "uploads: {} created, {} available here by midnight; creation to availability p50 {}, p95 {}",
            r.created, r.available, minutes(r.p50), minutes(r.p95)
        );
        println!(
            "lost webhooks: {} ({} before the day's 04:00 gap-fill pass); brought in by the gap-fill: {}, by other listings: {}; uploads still missing at the end: {}",
            r.lost, r.lost_before_pass, r.lost_recovered_by_gap_fill, r.lost_recovered_otherwise, r.backlog
        );
        println!(
            "a {NEWCOMER_HISTORY}-activity backfill connected at 08:00: {} ({} pages done)",
            r.backfill.map_or_else(
                || "not complete by midnight".to_string(),
                |s| format!("complete after {}", minutes(Some(s)))
            ),
            r.backfill_pages
        );
    }
}
