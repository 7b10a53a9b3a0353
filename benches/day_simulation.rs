//! A simulated week of the sync engine on one app's budget (100 calls a
//! quarter hour, 1,000 a day), reporting its last day, when the backlogs have
//! had time to reach their steady state (issue 10's benchmark).
//!
//! Real parts: the SQLite store, the budget (`Budget` with its policy,
//! reserves, pacing and `BUDGET_SHARES`) on a `ManualClock`, the job queue and
//! the job runner (`JobRunner::run_until_idle`: attention flush, claim,
//! dispatch, record), who is looking (`Attention`), the planner every 5
//! minutes and the gap-fill pass at 04:00. Simulated: Strava itself (an
//! in-memory athlete/activity store that takes a budget permit per call, as
//! the HTTP client does, records the call in the ledger, and answers
//! `after`-only listings oldest first), uploads, webhook deliveries, app
//! reads and manual refreshes, and athletes connecting. Calls take no time;
//! waiting for a permit moves the clock.
//!
//! Populations (`mixed` by default, `uniform` as the stress case):
//! - `mixed`: 20% of athletes upload ~1 activity a day, 30% ~0.3, 50% ~0.05
//!   (Poisson per day). 10% are daily app users (a visit on 6 days of 7,
//!   mostly 17:00–22:00 UTC, 1 to 4 reads a few minutes apart, a manual
//!   refresh on 10% of visits), 10% weekly users (a visit on 1 day of 7), the
//!   rest never open the app.
//! - `uniform`: every athlete uploads 0.5 a day; nobody reads.
//!
//! Both: 90% of uploads between 06:00 and 21:00 UTC; the activity started 20
//! to 150 minutes before upload, except 5% late uploads started 1 to 3 days
//! earlier; 10% announced before they are readable (hidden for 30 s to 10
//! min); 1% of webhooks lost; 1% of uploads silently deleted (no event) 1 to
//! 24 h after upload; 10% of athletes premium (tier weight 4). Every athlete
//! starts with a complete backfill and 10 activities in the last 20 days; 10
//! newcomers a day connect at random times with 200 to 3,000 activities of
//! history (they neither upload nor read during the week).
//!
//! `cargo bench --bench day_simulation` runs 1,000 uniform and 1,000 mixed
//! athletes for 7 days (about 2 to 4 minutes each on a busy 2-core machine);
//! 10,000 athletes take over 15 minutes a week, so they are asked for:
//! `cargo bench --bench day_simulation -- 10000 mixed days=7 seed=3` runs one
//! (every size given runs with every population given; the seed is 7 by
//! default).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;

use strava_sync::model::clock::{Clock, ManualClock};
use strava_sync::model::job::Task;
use strava_sync::model::Purpose;
use strava_sync::store::{activities, athletes, jobs, sync_state, Store};
use strava_sync::strava::budget::{Budget, CallOutcome, Limits, Permit, RateReport};
use strava_sync::strava::client::ListQuery;
use strava_sync::strava::error::StravaError;
use strava_sync::sync::attention::Attention;
use strava_sync::sync::queue::JobQueue;
use strava_sync::sync::runner::JobRunner;
use strava_sync::sync::scheduler::Planner;
use strava_sync::sync::source::ActivitySource;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
const LIMITS: Limits = Limits {
    quarter: 100,
    day: 1_000,
};
const LOST_WEBHOOKS: f64 = 0.01;
const SILENT_DELETIONS: f64 = 0.01;
const LATE_UPLOADS: f64 = 0.05;
const NOT_YET_READABLE: f64 = 0.10;
const PREMIUM: f64 = 0.10;
/// Activities every athlete has at the start, in the last 20 days.
const HISTORY: usize = 10;
const NEWCOMERS_PER_DAY: usize = 10;
/// `SYNC_SCHEDULE`'s default, 04:00 UTC.
const GAP_FILL_AT: i64 = 4 * HOUR;
/// The planner's schedule (`PLAN_SCHEDULE`).
const PLAN_EVERY: i64 = 300;
/// `MANUAL_REFRESH_COOLDOWN_SECS`'s default.
const REFRESH_COOLDOWN: i64 = 300;
/// A read misses an activity ("stale read") if it was uploaded this long
/// before the read, is readable, not deleted, and not stored yet.
const STALE_AFTER: i64 = 15 * 60;
/// Visits a day's reader makes (weekly users: 1 in 7 days).
const DAILY_VISIT_CHANCE: f64 = 6.0 / 7.0;
const WEEKLY_VISIT_CHANCE: f64 = 1.0 / 7.0;
const REFRESH_PER_VISIT: f64 = 0.10;

/// Who uploads how much and who reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Population {
    Mixed,
    Uniform,
}

impl Population {
    fn name(self) -> &'static str {
        match self {
            Population::Mixed => "mixed",
            Population::Uniform => "uniform",
        }
    }

    /// An athlete's mean uploads a day.
    fn upload_rate(self, rng: &mut StdRng) -> f64 {
        match self {
            Population::Uniform => 0.5,
            Population::Mixed => match rng.random::<f64>() {
                x if x < 0.2 => 1.0,
                x if x < 0.5 => 0.3,
                _ => 0.05,
            },
        }
    }

    fn usage(self, rng: &mut StdRng) -> Usage {
        match self {
            Population::Uniform => Usage::Never,
            Population::Mixed => match rng.random::<f64>() {
                x if x < 0.1 => Usage::Daily,
                x if x < 0.2 => Usage::Weekly,
                _ => Usage::Never,
            },
        }
    }
}

/// How often an athlete opens the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Daily,
    Weekly,
    Never,
}

impl Usage {
    fn visit_chance(self) -> f64 {
        match self {
            Usage::Daily => DAILY_VISIT_CHANCE,
            Usage::Weekly => WEEKLY_VISIT_CHANCE,
            Usage::Never => 0.0,
        }
    }
}

/// An activity as the simulated Strava holds it.
#[derive(Clone)]
struct Activity {
    id: i64,
    athlete_id: i64,
    start: i64,
    /// Hidden from listings and fetches by id until then.
    readable: i64,
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

/// An upload during the week and what happens to it.
struct Upload {
    activity: Activity,
    created: i64,
    usage: Usage,
    premium: bool,
    webhook_lost: bool,
    /// When it is silently deleted (no event), if it is.
    deleted_at: Option<i64>,
}

impl Upload {
    /// Whether a read at `at` should show it: uploaded long enough ago,
    /// readable, not deleted.
    fn due_by(&self, at: i64) -> bool {
        self.created <= at - STALE_AFTER
            && self.activity.readable <= at
            && self.deleted_at.is_none_or(|d| d > at)
    }

    /// Deleted before it was ever stored: it can never be available.
    fn vanished(&self, delivered: Option<i64>) -> bool {
        self.deleted_at
            .is_some_and(|d| delivered.is_none_or(|at| at > d))
    }
}

/// What the simulated Strava knows and what it handed out, when, and why.
#[derive(Default)]
struct World {
    by_athlete: HashMap<i64, Vec<Activity>>,
    by_id: HashMap<i64, Activity>,
    /// First time each activity was returned (and so stored), and for which
    /// purpose.
    delivered: HashMap<i64, (i64, Purpose)>,
}

impl World {
    fn add(&mut self, a: Activity) {
        self.by_id.insert(a.id, a.clone());
        self.by_athlete.entry(a.athlete_id).or_default().push(a);
    }

    /// A silent deletion: gone from listings and fetches alike.
    fn remove(&mut self, athlete_id: i64, id: i64) {
        self.by_id.remove(&id);
        if let Some(list) = self.by_athlete.get_mut(&athlete_id) {
            list.retain(|a| a.id != id);
        }
    }

    fn delivered_at(&self, id: i64) -> Option<i64> {
        self.delivered.get(&id).map(|&(at, _)| at)
    }
}

struct FakeStrava {
    budget: Arc<Budget>,
    clock: Arc<ManualClock>,
    world: Mutex<World>,
}

impl FakeStrava {
    /// Takes a permit as the HTTP client does; while the budget refuses this
    /// purpose (a listing's later pages), simulated time passes until that
    /// may change.
    async fn permit(&self, purpose: Purpose) -> Permit {
        loop {
            match self.budget.servable() {
                (order, _) if order.contains(&purpose) => break,
                (_, Some(until)) => self
                    .clock
                    .set(until.max(self.clock.now() + chrono::Duration::seconds(1))),
                (_, None) => self.clock.advance(chrono::Duration::seconds(60)),
            }
        }
        self.budget.acquire(purpose).await.expect("permit")
    }

    /// Writes the call to the ledger, as the client does after each response.
    async fn record(&self, permit: Permit, endpoint: &'static str, athlete_id: i64, status: u16) {
        let outcome = CallOutcome {
            endpoint,
            athlete_id: Some(athlete_id),
            status: Some(status),
            report: RateReport::default(),
            duration: Duration::ZERO,
        };
        self.budget.record(permit, outcome).await.expect("ledger");
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
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
            let mut world = self.world();
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
            let mut world = self.world();
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
        rng.random_range(6 * HOUR..21 * HOUR)
    } else {
        rng.random_range(0..DAY)
    }
}

/// When a visit starts: 80% in the evening (17:00–22:00), else in the day.
fn visit_second(rng: &mut StdRng) -> i64 {
    if rng.random_bool(0.8) {
        rng.random_range(17 * HOUR..22 * HOUR)
    } else {
        rng.random_range(7 * HOUR..17 * HOUR)
    }
}

/// Something that happens at a given simulated time, outside the service.
#[derive(Clone, Copy)]
enum Event {
    /// The upload at this index appears on Strava (and its webhook, unless
    /// lost, is committed and queues a fetch).
    Upload(usize),
    /// The upload at this index silently disappears from Strava.
    Delete(usize),
    /// An app read by the athlete (and a manual refresh with it).
    Read {
        athlete_id: i64,
        usage: Usage,
        refresh: bool,
    },
    /// The newcomer at this index connects.
    Connect(usize),
}

/// An athlete who connects during the week.
struct Newcomer {
    id: i64,
    at: i64,
    history: usize,
}

/// One app read on the measured day.
struct Read {
    usage: Usage,
    stale: bool,
}

/// The service's state at one midnight.
struct Midnight {
    /// Calls of the day that just ended.
    used: i64,
    /// Queued jobs that were due (work waiting).
    due_jobs: i64,
}

/// What the sim saw while it ran (the rest comes from `World` at the end).
#[derive(Default)]
struct Observed {
    reads: Vec<Read>,
    /// Deleted uploads (index) that the store no longer held at an hourly check.
    removed_at: HashMap<usize, i64>,
    /// Newcomer (index) → when their backfill was complete (5-min checks).
    completed_at: HashMap<usize, i64>,
    midnights: Vec<Midnight>,
}

/// One run's parameters.
#[derive(Clone, Copy)]
struct Run {
    athletes: usize,
    population: Population,
    days: i64,
    seed: u64,
}

/// Everything a run generated in advance.
struct Scenario {
    uploads: Vec<Upload>,
    /// Upload indices per athlete, to judge their reads.
    by_athlete: HashMap<i64, Vec<usize>>,
    newcomers: Vec<Newcomer>,
    events: Vec<(i64, Event)>,
    premium: Vec<i64>,
}

/// The first simulated midnight (a Monday).
fn day0() -> i64 {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .unwrap()
        .timestamp()
}

/// Draws the week: existing athletes' history (into `world`), uploads,
/// deletions, reads and newcomers.
fn scenario(
    run: Run,
    world: &mut World,
    rng: &mut StdRng,
) -> (Scenario, Vec<(i64, Vec<Activity>)>) {
    let day0 = day0();
    let mut next_id: i64 = 10_000_000_000;
    let mut new_activity = |athlete_id: i64, start: i64, readable: i64| {
        next_id += 1;
        Activity {
            id: next_id,
            athlete_id,
            start,
            readable,
        }
    };
    let mut history = Vec::new();
    let mut uploads = Vec::new();
    let mut events = Vec::new();
    let mut premium = Vec::new();
    for athlete_id in 1..=run.athletes as i64 {
        let rate = run.population.upload_rate(rng);
        let usage = run.population.usage(rng);
        let is_premium = rng.random_bool(PREMIUM);
        if is_premium {
            premium.push(athlete_id);
        }
        let acts: Vec<Activity> = (0..HISTORY)
            .map(|_| {
                let start = day0 - rng.random_range(HOUR..20 * DAY);
                new_activity(athlete_id, start, start + HOUR)
            })
            .collect();
        history.push((athlete_id, acts));
        for day in (0..run.days).map(|d| day0 + d * DAY) {
            for _ in 0..poisson(rng, rate) {
                let created = day + upload_second(rng);
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
                let deleted_at = rng
                    .random_bool(SILENT_DELETIONS)
                    .then(|| created + rng.random_range(HOUR..=DAY));
                let index = uploads.len();
                events.push((created, Event::Upload(index)));
                if let Some(at) = deleted_at {
                    events.push((at, Event::Delete(index)));
                }
                uploads.push(Upload {
                    activity: new_activity(athlete_id, start, readable),
                    created,
                    usage,
                    premium: is_premium,
                    webhook_lost: rng.random_bool(LOST_WEBHOOKS),
                    deleted_at,
                });
            }
            if rng.random_bool(usage.visit_chance()) {
                let mut at = day + visit_second(rng);
                let refresh = rng.random_bool(REFRESH_PER_VISIT);
                for read in 0..rng.random_range(1..=4) {
                    events.push((
                        at,
                        Event::Read {
                            athlete_id,
                            usage,
                            refresh: refresh && read == 0,
                        },
                    ));
                    at += rng.random_range(60..=300);
                }
            }
        }
    }
    let mut newcomers = Vec::new();
    for day in (0..run.days).map(|d| day0 + d * DAY) {
        for _ in 0..NEWCOMERS_PER_DAY {
            let id = (run.athletes + 1 + newcomers.len()) as i64;
            let at = day + rng.random_range(0..DAY);
            let size = rng.random_range(200..=3_000);
            let acts = (0..size)
                .map(|_| {
                    let start = at - rng.random_range(HOUR..5 * 365 * DAY);
                    new_activity(id, start, start + HOUR)
                })
                .collect();
            history.push((id, acts));
            events.push((at, Event::Connect(newcomers.len())));
            newcomers.push(Newcomer {
                id,
                at,
                history: size,
            });
        }
    }
    for (_, acts) in &history {
        for a in acts {
            world.add(a.clone());
        }
    }
    events.sort_by_key(|(at, _)| *at);
    let mut by_athlete: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, u) in uploads.iter().enumerate() {
        by_athlete.entry(u.activity.athlete_id).or_default().push(i);
    }
    let scenario = Scenario {
        uploads,
        by_athlete,
        newcomers,
        events,
        premium,
    };
    (scenario, history)
}

/// Stores every existing athlete with a complete backfill and their history
/// (newcomers are left for their connect), and places premium athletes.
async fn seed_store(store: &Store, run: Run, history: &[(i64, Vec<Activity>)], premium: &[i64]) {
    store
        .set_tiers(
            vec![("standard".into(), 1), ("premium".into(), 4)],
            "standard".into(),
        )
        .await
        .unwrap();
    let existing: Vec<(i64, Vec<Box<RawValue>>)> = history
        .iter()
        .filter(|(id, _)| *id <= run.athletes as i64)
        .map(|(id, acts)| (*id, acts.iter().map(Activity::json).collect()))
        .collect();
    for chunk in existing.chunks(500) {
        let chunk = chunk.to_vec();
        store
            .write(move |tx| {
                for (athlete_id, page) in &chunk {
                    athletes::upsert(tx, &serde_json::json!({"id": athlete_id}), "read,activity:read_all", 0)?;
                    tx.execute(
                        "UPDATE sync_state SET backfill_complete = 1, backfill_pages = 1 WHERE athlete_id = ?1",
                        [athlete_id],
                    )?;
                    activities::upsert_summaries(tx, *athlete_id, page, 0)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    for &id in premium {
        store.set_tier(id, "premium".into()).await.unwrap();
    }
}

/// The running service around the simulated Strava.
struct Service {
    store: Store,
    clock: Arc<ManualClock>,
    budget: Arc<Budget>,
    strava: Arc<FakeStrava>,
    attention: Arc<Attention>,
    runner: Arc<JobRunner<FakeStrava>>,
    planner: Planner,
}

impl Service {
    /// What the webhook worker commits for a create event: the event (the
    /// fetch takes its `event_time` as the announcement) and the fetch job.
    async fn announce(&self, a: &Activity, at: i64) {
        let (id, athlete_id) = (a.id, a.athlete_id);
        self.store
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                         owner_id, event_time, updates_json, received_at, status, next_attempt_at)
                     VALUES (?1, 'activity', ?2, 'create', ?3, ?4, '{}', ?4, 'done', ?4)",
                    strava_sync::params![format!("create:{id}"), id, athlete_id, at],
                )?;
                jobs::enqueue(tx, athlete_id, Task::fetch(vec![id]), at, at).map(|_| ())
            })
            .await
            .unwrap();
    }

    /// What connecting does (`Store::connect_athlete`, less the tokens): the
    /// first page at once, then the backfill.
    async fn connect(&self, athlete_id: i64, now: i64) {
        self.store
            .write(move |tx| {
                athletes::upsert(
                    tx,
                    &serde_json::json!({"id": athlete_id}),
                    "read,activity:read_all",
                    now,
                )?;
                jobs::enqueue(tx, athlete_id, Task::FirstPage, now, now)?;
                jobs::enqueue(tx, athlete_id, Task::Backfill, now, now).map(|_| ())
            })
            .await
            .unwrap();
    }

    /// Calls of `[from, to)` by purpose, from the ledger.
    async fn calls(&self, from: i64, to: i64) -> BTreeMap<String, i64> {
        self.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT purpose, COUNT(*) FROM strava_calls WHERE at >= ?1 AND at < ?2
                     GROUP BY purpose",
                )?;
                let rows = stmt
                    .query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap()
    }

    /// Queued jobs of connected athletes due by `now`: work that waits.
    async fn due_jobs(&self, now: i64) -> i64 {
        self.store
            .read(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM jobs j JOIN athletes a ON a.id = j.athlete_id
                     WHERE j.status = 'queued' AND j.not_before <= ?1 AND a.status = 'connected'",
                    [now],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap()
    }

    /// Which of these (athlete, activity) pairs the store still holds.
    async fn still_stored(&self, pairs: Vec<(i64, i64)>) -> Vec<i64> {
        self.store
            .read(move |c| {
                let mut held = Vec::new();
                for (athlete_id, id) in pairs {
                    held.extend(activities::stored_ids(c, athlete_id, &[id])?);
                }
                Ok(held)
            })
            .await
            .unwrap()
    }

    async fn backfill_complete(&self, athlete_id: i64) -> bool {
        self.store
            .read(move |c| Ok(sync_state::get(c, athlete_id)?.backfill_complete))
            .await
            .unwrap()
    }
}

/// Times of the periodic things the service (or the sim's checks) do.
struct Ticks {
    plan: i64,
    gap_fill: i64,
    hour: i64,
    midnight: i64,
}

impl Ticks {
    fn next(&self) -> i64 {
        self.plan
            .min(self.gap_fill)
            .min(self.hour)
            .min(self.midnight)
    }
}

/// Runs the week and returns the last day's figures as Markdown.
async fn simulate(run: Run) -> String {
    let wall = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sim.db")).unwrap();
    let day0 = day0();
    let end = day0 + run.days * DAY;
    let clock = ManualClock::new(DateTime::from_timestamp(day0, 0).unwrap());
    let shares = [
        (Purpose::Webhook, 55),
        (Purpose::GapFill, 15),
        (Purpose::Backfill, 15),
        (Purpose::Reconcile, 10),
        (Purpose::Enrichment, 5),
    ]
    .into();
    let budget = Budget::load(store.clone(), clock.clone(), LIMITS, shares)
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(run.seed);
    let mut world = World::default();
    let (sc, history) = scenario(run, &mut world, &mut rng);
    seed_store(&store, run, &history, &sc.premium).await;
    drop(history);

    let strava = Arc::new(FakeStrava {
        budget: budget.clone(),
        clock: clock.clone(),
        world: Mutex::new(world),
    });
    let queue = Arc::new(JobQueue::new(store.clone(), clock.clone()));
    let attention = Arc::new(Attention::new(store.clone(), clock.clone()));
    let svc = Service {
        runner: JobRunner::new(
            store.clone(),
            attention.clone(),
            strava.clone(),
            budget.clone(),
            queue.clone(),
        ),
        planner: Planner {
            store: store.clone(),
            queue,
            attention: attention.clone(),
            clock: clock.clone(),
            daily_limit: LIMITS.day,
        },
        store,
        clock,
        budget,
        strava,
        attention,
    };

    let mut seen = Observed::default();
    let measured = end - DAY;
    let mut ticks = Ticks {
        plan: day0,
        gap_fill: day0 + GAP_FILL_AT,
        hour: day0 + HOUR,
        midnight: day0 + DAY,
    };
    let mut next_event = 0;
    loop {
        let now = svc.clock.epoch();
        // Midnight first: what the day that ended left waiting.
        if now >= ticks.midnight {
            seen.midnights.push(Midnight {
                used: svc
                    .calls(ticks.midnight - DAY, ticks.midnight)
                    .await
                    .values()
                    .sum(),
                due_jobs: svc.due_jobs(ticks.midnight).await,
            });
            ticks.midnight += DAY;
        }
        if now >= end {
            break;
        }
        while let Some(&(at, event)) = sc.events.get(next_event).filter(|(at, _)| *at <= now) {
            next_event += 1;
            handle(&svc, &sc, &mut seen, event, at, now >= measured).await;
        }
        if now >= ticks.plan {
            svc.planner.plan().await;
            check_newcomers(&svc, &sc, &mut seen, now).await;
            ticks.plan += PLAN_EVERY;
        }
        if now >= ticks.gap_fill {
            svc.planner.gap_fill_pass().await.unwrap();
            ticks.gap_fill += DAY;
        }
        if now >= ticks.hour {
            check_deletions(&svc, &sc, &mut seen, now).await;
            ticks.hour += HOUR;
        }
        svc.runner.run_until_idle().await.unwrap();
        // Sleep until something can change: an event, a tick, the budget,
        // or a queued job (a retry) falling due.
        let now = svc.clock.epoch();
        let (_, budget_change) = svc.budget.servable();
        let next = [
            sc.events.get(next_event).map(|(at, _)| *at),
            Some(ticks.next()),
            budget_change.map(|t| t.timestamp()),
            svc.store.queue_state(now).await.unwrap().next_due,
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap()
        .max(now + 1);
        svc.clock.set(DateTime::from_timestamp(next, 0).unwrap());
    }
    let calls = svc.calls(measured, end).await;
    let world = std::mem::take(&mut *svc.strava.world());
    report(run, &sc, &world, &seen, &calls, wall.elapsed())
}

/// Applies one outside event at `at` (the clock may be a little later, if a
/// listing waited for a permit); `measured` says whether reads count.
async fn handle(
    svc: &Service,
    sc: &Scenario,
    seen: &mut Observed,
    event: Event,
    at: i64,
    measured: bool,
) {
    match event {
        Event::Upload(i) => {
            let u = &sc.uploads[i];
            svc.strava.world().add(u.activity.clone());
            if !u.webhook_lost {
                svc.announce(&u.activity, u.created).await;
            }
        }
        Event::Delete(i) => {
            let a = &sc.uploads[i].activity;
            svc.strava.world().remove(a.athlete_id, a.id);
        }
        Event::Read {
            athlete_id,
            usage,
            refresh,
        } => {
            svc.attention.record(athlete_id);
            if measured {
                let world = svc.strava.world();
                let stale = sc
                    .by_athlete
                    .get(&athlete_id)
                    .into_iter()
                    .flatten()
                    .map(|&i| &sc.uploads[i])
                    .filter(|u| u.due_by(at))
                    .any(|u| world.delivered_at(u.activity.id).is_none_or(|d| d > at));
                seen.reads.push(Read { usage, stale });
            }
            if refresh {
                let now = svc.clock.epoch();
                svc.store
                    .request_refresh(athlete_id, REFRESH_COOLDOWN, now)
                    .await
                    .unwrap();
            }
        }
        Event::Connect(n) => svc.connect(sc.newcomers[n].id, at).await,
    }
}

/// Notes newcomers whose backfill completed since the last check.
async fn check_newcomers(svc: &Service, sc: &Scenario, seen: &mut Observed, now: i64) {
    for (n, newcomer) in sc.newcomers.iter().enumerate() {
        if newcomer.at <= now
            && !seen.completed_at.contains_key(&n)
            && svc.backfill_complete(newcomer.id).await
        {
            seen.completed_at.insert(n, now);
        }
    }
}

/// Notes silently deleted uploads that were stored before their deletion
/// and that the store no longer holds.
async fn check_deletions(svc: &Service, sc: &Scenario, seen: &mut Observed, now: i64) {
    let waiting: Vec<usize> = {
        let world = svc.strava.world();
        sc.uploads
            .iter()
            .enumerate()
            .filter(|(i, u)| {
                u.deleted_at.is_some_and(|d| d <= now)
                    && !u.vanished(world.delivered_at(u.activity.id))
                    && !seen.removed_at.contains_key(i)
            })
            .map(|(i, _)| i)
            .collect()
    };
    if waiting.is_empty() {
        return;
    }
    let pairs = waiting
        .iter()
        .map(|&i| (sc.uploads[i].activity.athlete_id, sc.uploads[i].activity.id))
        .collect();
    let held = svc.still_stored(pairs).await;
    for i in waiting {
        if !held.contains(&sc.uploads[i].activity.id) {
            seen.removed_at.insert(i, now);
        }
    }
}

/// Delays in seconds; `None` (not available by the end) ranks slowest.
#[derive(Default)]
struct Delays(Vec<Option<i64>>);

impl Delays {
    fn percentile(&self, p: f64) -> String {
        let mut sorted: Vec<i64> = self.0.iter().map(|d| d.unwrap_or(i64::MAX)).collect();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 * p).ceil() as usize).max(1) - 1;
        sorted.get(rank).map_or("–".into(), |&d| human(d))
    }

    fn max(&self) -> String {
        self.percentile(1.0)
    }

    fn within(&self, limit: i64) -> usize {
        self.0
            .iter()
            .filter(|d| d.is_some_and(|d| d <= limit))
            .count()
    }

    fn missing(&self) -> usize {
        self.0.iter().filter(|d| d.is_none()).count()
    }
}

/// A duration for people; `i64::MAX` means it has not happened yet.
fn human(secs: i64) -> String {
    match secs {
        i64::MAX => "not yet".into(),
        s if s < 120 => format!("{s} s"),
        s if s < 2 * HOUR => format!("{:.1} min", s as f64 / 60.0),
        s if s < 2 * DAY => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

/// The last day's figures (and the week's slowest), as Markdown tables.
fn report(
    run: Run,
    sc: &Scenario,
    world: &World,
    seen: &Observed,
    calls: &BTreeMap<String, i64>,
    wall: Duration,
) -> String {
    let day0 = day0();
    let end = day0 + run.days * DAY;
    let measured = end - DAY;
    let delivered = |u: &Upload| world.delivered_at(u.activity.id);
    let delay = |u: &Upload| delivered(u).map(|at| at - u.created);
    // The measured day's uploads that could ever be available.
    let today: Vec<&Upload> = sc
        .uploads
        .iter()
        .filter(|u| u.created >= measured && !u.vanished(delivered(u)))
        .collect();
    let delays_of = |keep: &dyn Fn(&Upload) -> bool| {
        Delays(today.iter().filter(|u| keep(u)).map(|u| delay(u)).collect())
    };
    let mut t = String::new();
    let total: i64 = calls.values().sum();
    let created = sc.uploads.iter().filter(|u| u.created >= measured).count();
    let _ = writeln!(
        t,
        "### {} athletes, {}, day {} of {} (seed {}, simulated in {:.0?})\n",
        run.athletes,
        run.population.name(),
        run.days,
        run.days,
        run.seed,
        wall
    );
    let by_purpose: Vec<String> = calls.iter().map(|(p, n)| format!("{p} {n}")).collect();
    let _ = writeln!(t, "| measure | value |\n| --- | --- |");
    let _ = writeln!(t, "| calls | {total}: {} |", by_purpose.join(", "));
    let _ = writeln!(
        t,
        "| uploads created / calls per created activity | {created} / {:.2} |",
        total as f64 / created.max(1) as f64
    );
    let midnight = seen.midnights.last();
    let _ = writeln!(
        t,
        "| calls unspent while work waited (at midnight) | {} |",
        midnight.map_or("–".into(), |m| if m.due_jobs > 0 {
            format!(
                "{} ({} jobs due)",
                i64::from(LIMITS.day) - m.used,
                m.due_jobs
            )
        } else {
            "0 (nothing due)".into()
        })
    );
    for (label, usage) in [
        ("daily users", Usage::Daily),
        ("weekly users", Usage::Weekly),
    ] {
        if run.population == Population::Uniform {
            break;
        }
        let d = delays_of(&|u| u.usage == usage);
        let reads: Vec<&Read> = seen.reads.iter().filter(|r| r.usage == usage).collect();
        let stale = reads.iter().filter(|r| r.stale).count();
        let _ = writeln!(
            t,
            "| {label}: uploads, p50 / p95 upload→available | {}, {} / {} |",
            d.0.len(),
            d.percentile(0.5),
            d.percentile(0.95)
        );
        let _ = writeln!(
            t,
            "| {label}: stale reads | {stale} of {} ({:.1}%) |",
            reads.len(),
            100.0 * stale as f64 / reads.len().max(1) as f64
        );
    }
    let all = delays_of(&|_| true);
    let _ = writeln!(
            t,
            "| all uploads: p50 / p95 / max upload→available | {} / {} / {} ({} not available by midnight) |",
            all.percentile(0.5),
            all.percentile(0.95),
            all.max(),
            all.missing()
        );
    for (label, premium) in [("premium", true), ("standard", false)] {
        let d = delays_of(&|u| u.premium == premium);
        let _ = writeln!(
            t,
            "| {label}: p50 / p95 upload→available | {} / {} ({} uploads) |",
            d.percentile(0.5),
            d.percentile(0.95),
            d.0.len()
        );
    }
    // The week: the backlog at each midnight, and the slowest arrival.
    let backlog = |m: i64| {
        sc.uploads
            .iter()
            .filter(|u| u.created < m && delivered(u).is_none_or(|at| at > m))
            .filter(|u| u.deleted_at.is_none_or(|d| d > m))
            .count()
    };
    let backlogs: Vec<String> = (1..=run.days)
        .map(|d| backlog(day0 + d * DAY).to_string())
        .collect();
    let _ = writeln!(
        t,
        "| backlog at each midnight (uploads not available) | {} |",
        backlogs.join(", ")
    );
    let unspent: Vec<String> = seen
        .midnights
        .iter()
        .map(|m| {
            if m.due_jobs > 0 {
                (i64::from(LIMITS.day) - m.used).to_string()
            } else {
                "0*".into()
            }
        })
        .collect();
    let _ = writeln!(
        t,
        "| calls unspent while work waited, each day (* nothing due) | {} |",
        unspent.join(", ")
    );
    let slowest = sc.uploads.iter().filter_map(delay).max().unwrap_or(0);
    let oldest_waiting = sc
        .uploads
        .iter()
        .filter(|u| delivered(u).is_none() && !u.vanished(None))
        .map(|u| end - u.created)
        .max();
    let _ = writeln!(
        t,
        "| week: latest arrival / oldest still waiting at the end | {} / {} |",
        human(slowest),
        oldest_waiting.map_or("none".into(), human)
    );
    // Newcomers.
    let hours = |n: usize| seen.completed_at.get(&n).map(|&at| at - sc.newcomers[n].at);
    let connected: Vec<usize> = (0..sc.newcomers.len()).collect();
    let overall = Delays(connected.iter().map(|&n| hours(n)).collect());
    let last_day: Vec<String> = connected
        .iter()
        .filter(|&&n| sc.newcomers[n].at >= measured)
        .map(|&n| {
            format!(
                "{} ({})",
                hours(n).map_or("incomplete".into(), human),
                sc.newcomers[n].history
            )
        })
        .collect();
    let _ = writeln!(
        t,
        "| newcomers of the last day: history complete after (activities) | {} |",
        last_day.join(", ")
    );
    let _ = writeln!(
            t,
            "| all {} newcomers: p50 / max until complete, within 24 h, incomplete | {} / {} , {}, {} |",
            overall.0.len(),
            overall.percentile(0.5),
            overall.max(),
            overall.within(DAY),
            overall.missing()
        );
    // Lost webhooks and silent deletions, over the week.
    let lost = Delays(
        sc.uploads
            .iter()
            .filter(|u| u.webhook_lost && !u.vanished(delivered(u)))
            .map(delay)
            .collect(),
    );
    let lost_old = sc
        .uploads
        .iter()
        .filter(|u| u.webhook_lost && !u.vanished(delivered(u)) && u.created <= end - DAY)
        .collect::<Vec<_>>();
    let lost_old_in_time = lost_old
        .iter()
        .filter(|u| delay(u).is_some_and(|d| d <= DAY))
        .count();
    let _ = writeln!(
            t,
            "| lost webhooks (week): found, p50 / max to find | {} of {}, {} / {}; of those lost over 24 h before the end, {} of {} found within 24 h |",
            lost.0.len() - lost.missing(),
            lost.0.len(),
            lost.percentile(0.5),
            lost.max(),
            lost_old_in_time,
            lost_old.len()
        );
    let deleted: Vec<(usize, &Upload)> = sc
        .uploads
        .iter()
        .enumerate()
        .filter(|(_, u)| u.deleted_at.is_some_and(|d| d < end))
        .collect();
    let stored_then: Vec<(usize, &Upload)> = deleted
        .iter()
        .copied()
        .filter(|(_, u)| !u.vanished(delivered(u)))
        .collect();
    let removal =
        |i: usize, u: &Upload| seen.removed_at.get(&i).map(|at| at - u.deleted_at.unwrap());
    let removed = Delays(stored_then.iter().map(|&(i, u)| removal(i, u)).collect());
    let old: Vec<(usize, &Upload)> = stored_then
        .iter()
        .copied()
        .filter(|(_, u)| u.deleted_at.unwrap() <= end - 2 * DAY)
        .collect();
    let old_in_time = old
        .iter()
        .filter(|&&(i, u)| removal(i, u).is_some_and(|d| d <= 2 * DAY))
        .count();
    let _ = writeln!(
            t,
            "| silent deletions (week): removed, p50 / max to remove (hourly checks) | {} of {} stored ({} more deleted before they arrived), {} / {}; of those over 48 h before the end, {} of {} removed within 48 h |",
            removed.0.len() - removed.missing(),
            removed.0.len(),
            deleted.len() - stored_then.len(),
            removed.percentile(0.5),
            removed.max(),
            old_in_time,
            old.len()
        );
    t
}

/// Parses `[SIZE...] [mixed|uniform...] [days=N] [seed=N]`; with no sizes
/// and no populations, the default set.
fn runs(args: &[String]) -> Vec<Run> {
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let populations: Vec<Population> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "mixed" => Some(Population::Mixed),
            "uniform" => Some(Population::Uniform),
            _ => None,
        })
        .collect();
    let setting = |key: &str, default: u64| {
        args.iter()
            .find_map(|a| a.strip_prefix(key)?.parse().ok())
            .unwrap_or(default)
    };
    let (days, seed) = (setting("days=", 7) as i64, setting("seed=", 7));
    let run = |athletes, population| Run {
        athletes,
        population,
        days: days.max(1),
        seed,
    };
    if sizes.is_empty() && populations.is_empty() {
        use Population::*;
        return [(1_000, Uniform), (1_000, Mixed)]
            .into_iter()
            .map(|(n, p)| run(n, p))
            .collect();
    }
    let sizes = if sizes.is_empty() { vec![1_000] } else { sizes };
    let populations = if populations.is_empty() {
        vec![Population::Mixed]
    } else {
        populations
    };
    sizes
        .iter()
        .flat_map(|&n| populations.iter().map(move |&p| run(n, p)))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for run in runs(&args) {
        println!("{}", runtime.block_on(simulate(run)));
    }
}
