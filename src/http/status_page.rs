//! `GET /admin/status`: the service at a glance, for an operator's browser.
//! Server-rendered HTML with inline CSS and SVG and no scripts or outside
//! assets, so it works offline and under a strict content security policy.
//! The page is a list of sections, each reading what it shows: another one
//! is a function of the same shape and a line in [`status_page`].

use std::collections::BTreeMap;

use actix_web::{get, http::header, web, HttpResponse};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{AdminFaults, ApiError};
use super::{auth::AdminAuth, Services};
use crate::config::Settings;
use crate::model::Purpose;
use crate::store::athletes::Status;
use crate::store::jobs::JobsByPurpose;
use crate::strava::budget::{Blocked, BlockedView, WindowKind, WARN_PERCENT};

/// Backfills and failed events listed at most; the counts cover them all.
const LISTED: usize = 20;
const HOUR: i64 = 3600;
/// The chart's span: the current hour and the 23 before it.
const CHART_HOURS: i64 = 24;
/// Nothing but the page's own inline styles: no script, image or frame.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

/// What every section reads from.
struct Context<'a> {
    state: &'a Services,
    settings: &'a Settings,
    now: DateTime<Utc>,
}

/// One block of the page.
struct Section {
    title: &'static str,
    /// Spans the page's width (a chart, a long table) instead of a column.
    wide: bool,
    body: Markup,
}

type SectionResult = Result<Section, ApiError>;

/// The operator's page: budget, calls, queue, athletes, backfills and
/// failures, as HTML a browser opens with the admin token as Basic password.
#[utoipa::path(
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The status page", body = String, content_type = "text/html"),
        AdminFaults,
    )
)]
#[get("/admin/status")]
async fn status_page(
    _: AdminAuth,
    state: web::Data<Services>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let cx = Context {
        state: &state,
        settings: &settings,
        now: state.clock.now(),
    };
    let sections = [
        budget(&cx).await?,
        queue(&cx).await?,
        calls_chart(&cx).await?,
        athletes(&cx).await?,
        backfills(&cx).await?,
        failed_webhooks(&cx).await?,
        deliveries(&cx).await?,
    ];
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .body(page(cx.now, &sections).into_string()))
}

fn page(now: DateTime<Utc>, sections: &[Section]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // Reloads itself: an operator can leave it open.
                meta http-equiv="refresh" content="60";
                title { "strava-sync status" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "strava-sync status" }
                    p.muted { "As of " (time(now, now)) " · reloads every minute" }
                }
                main {
                    @for s in sections {
                        section.wide[s.wide] {
                            h2 { (s.title) }
                            (s.body)
                        }
                    }
                }
            }
        }
    }
}

/// Both windows as we count them and as Strava reported them, what is held
/// back, and when today's budget runs out at the current rate.
async fn budget(cx: &Context<'_>) -> SectionResult {
    let snapshot = cx.state.budget.snapshot();
    let forecast = &snapshot.forecast;
    let body = html! {
        @if snapshot.paused {
            p.alert { "Background work is paused: only interactive calls go out. "
                      "POST /admin/resume restarts it." }
        }
        table {
            thead { tr {
                th { "window" } th.num { "used" } th.num { "limit" } th {}
                th.num { "Strava reported" } th { "resets" }
            } }
            tbody {
                @for w in &snapshot.windows {
                    tr data-window=(w.window.as_str()) {
                        th scope="row" { (window_name(w.window)) }
                        td.num data-field="used" { (w.used) }
                        td.num data-field="limit" {
                            (w.limit)
                            @if w.limit != w.configured_limit {
                                span.muted { " (configured " (w.configured_limit) ")" }
                            }
                        }
                        td { (meter(w.used, w.limit)) }
                        td.num {
                            @match (w.reported_usage, w.reported_limit) {
                                (Some(used), Some(limit)) => { (used) " / " (limit) }
                                (Some(used), None) => { (used) }
                                _ => { span.muted { "nothing yet" } }
                            }
                            @if w.exhausted {
                                " " strong.bad title="Strava answered 429: nothing goes out until the window resets" { "429" }
                            }
                        }
                        td { @if let Some(at) = w.resets_at { (time(at, cx.now)) } }
                    }
                }
            }
        }
        p id="forecast" {
            "At " (format!("{:.1}", forecast.calls_per_hour)) " calls an hour, today's budget "
            @match forecast.exhausted_at {
                Some(at) => { "runs out at " strong { (time(at, cx.now)) } "." }
                None => { "lasts until midnight UTC." }
            }
        }
        @if !snapshot.blocked.is_empty() {
            h3 { "Held back now" }
            ul {
                @for ((reason, until), purposes) in held_back_together(&snapshot.blocked) {
                    li {
                        strong { (purposes.join(", ")) } ": " (held_back(reason))
                        @if let Some(until) = until { ", until " (time(until, cx.now)) }
                    }
                }
            }
        }
    };
    Ok(Section {
        title: "Budget",
        wide: false,
        body,
    })
}

/// Calls to Strava per hour over the last day, stacked by purpose.
async fn calls_chart(cx: &Context<'_>) -> SectionResult {
    let now = cx.now.timestamp();
    let first = now - now.rem_euclid(HOUR) - (CHART_HOURS - 1) * HOUR;
    let mut hours: BTreeMap<i64, BTreeMap<Purpose, i64>> = BTreeMap::new();
    let mut totals: BTreeMap<Purpose, i64> = BTreeMap::new();
    for (hour, purpose, calls) in cx.state.store.calls_by_hour(first).await? {
        // The ledger records only purposes' own names.
        if let Some(purpose) = Purpose::parse(&purpose) {
            *hours.entry(hour).or_default().entry(purpose).or_default() += calls;
            *totals.entry(purpose).or_default() += calls;
        }
    }
    let body = html! {
        (chart(first, &hours))
        ul.legend {
            @for purpose in Purpose::ALL {
                li data-purpose=(purpose.as_str()) {
                    span.swatch style={ "background:" (colour(purpose)) } {}
                    (purpose.as_str()) " "
                    span.muted { (totals.get(&purpose).copied().unwrap_or(0)) }
                }
            }
        }
    };
    Ok(Section {
        title: "Calls to Strava, last 24 hours (UTC)",
        wide: true,
        body,
    })
}

/// The chart's drawing area, in SVG user units.
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 24.0;

/// Stacked bars, one per hour from `first`, purposes in priority order from
/// the bottom; each bar segment names its hour, purpose and count.
fn chart(first: i64, hours: &BTreeMap<i64, BTreeMap<Purpose, i64>>) -> Markup {
    let busiest = hours.values().map(|h| h.values().sum()).max().unwrap_or(0);
    let (top, step) = axis(busiest);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let slot = plot_w / CHART_HOURS as f64;
    let bar_w = slot * 0.7;
    let y = |calls: i64| TOP + plot_h * (1.0 - calls as f64 / top as f64);
    html! {
        svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label="Calls to Strava per hour over the last 24 hours, by purpose" {
            g.axis {
                @for tick in (0..=top).step_by(step as usize) {
                    line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(tick)) y2=(y(tick)) {}
                    text x=(LEFT - 6.0) y=(y(tick) + 4.0) text-anchor="end" { (tick) }
                }
                @for i in 0..CHART_HOURS {
                    // Every third hour, counted back from the current one.
                    @if (CHART_HOURS - 1 - i) % 3 == 0 {
                        text x=(LEFT + slot * (i as f64 + 0.5)) y=(HEIGHT - 6.0)
                            text-anchor="middle" { (hour_label(first + i * HOUR)) }
                    }
                }
            }
            @if busiest == 0 {
                text.empty x=(LEFT + plot_w / 2.0) y=(TOP + plot_h / 2.0) text-anchor="middle" {
                    "No calls in the last 24 hours"
                }
            }
            @for (hour, calls) in hours {
                @let x = LEFT + slot * ((hour - first) / HOUR) as f64 + (slot - bar_w) / 2.0;
                @for (purpose, below, n) in stacked(calls) {
                    rect.bar x=(x) y=(y(below + n)) width=(bar_w)
                        height=(y(below) - y(below + n)) fill=(colour(purpose))
                        data-purpose=(purpose.as_str()) {
                        title { (hour_label(*hour)) " UTC, " (purpose.as_str()) ": " (n) }
                    }
                }
                @let total: i64 = calls.values().sum();
                text.total x=(x + bar_w / 2.0) y=(y(total) - 3.0) text-anchor="middle" { (total) }
            }
        }
    }
}

/// An hour's calls as bar segments: each purpose with the calls stacked
/// below it and its own.
fn stacked(calls: &BTreeMap<Purpose, i64>) -> Vec<(Purpose, i64, i64)> {
    let mut below = 0;
    calls
        .iter()
        .map(|(purpose, n)| {
            let segment = (*purpose, below, *n);
            below += n;
            segment
        })
        .collect()
}

/// The axis' top and step: the smallest step of 1, 2 or 5 × 10ⁿ that
/// reaches `max` in at most five steps.
fn axis(max: i64) -> (i64, i64) {
    let mut scale = 1;
    loop {
        for step in [scale, 2 * scale, 5 * scale] {
            if step * 5 >= max {
                let steps = ((max + step - 1) / step).max(1);
                return (step * steps, step);
            }
        }
        scale *= 10;
    }
}

/// Jobs by purpose, and webhook events waiting to be applied.
async fn queue(cx: &Context<'_>) -> SectionResult {
    let store = &cx.state.store;
    let jobs = store.jobs_by_purpose(cx.now.timestamp()).await?;
    let inbox = store.inbox_depth().await?;
    let total = |count: fn(&JobsByPurpose) -> i64| jobs.iter().map(count).sum::<i64>();
    let body = html! {
        table {
            thead { tr {
                th { "purpose" } th.num { "queued" } th.num { "due now" }
                th.num { "waiting for re-authorization" } th.num { "running" }
            } }
            tbody {
                @for j in &jobs {
                    tr data-purpose=(j.purpose.as_str()) {
                        th scope="row" { (j.purpose.as_str()) }
                        td.num { (j.queued) } td.num { (j.due) }
                        td.num { (j.waiting_for_reauth) } td.num { (j.running) }
                    }
                }
                @if jobs.is_empty() { tr { td.muted colspan="5" { "No job is queued or running." } } }
            }
            tfoot { tr {
                th scope="row" { "all" }
                td.num { (total(|j| j.queued)) } td.num { (total(|j| j.due)) }
                td.num { (total(|j| j.waiting_for_reauth)) } td.num { (total(|j| j.running)) }
            } }
        }
        p { "Webhook events waiting to be applied: " strong id="inbox-depth" { (inbox) } }
    };
    Ok(Section {
        title: "Queue",
        wide: false,
        body,
    })
}

/// Athletes by tier and connection state.
async fn athletes(cx: &Context<'_>) -> SectionResult {
    const STATES: [Status; 2] = [Status::Connected, Status::NeedsReauth];
    let mut tiers: BTreeMap<String, [i64; 2]> = BTreeMap::new();
    for (tier, status, n) in cx.state.store.athletes_by_tier().await? {
        if let Some(i) = STATES.iter().position(|s| s.as_str() == status) {
            tiers.entry(tier).or_default()[i] += n;
        }
    }
    let column = |i: usize| tiers.values().map(|counts| counts[i]).sum::<i64>();
    let body = html! {
        table {
            thead { tr {
                th { "tier" }
                @for state in STATES { th.num { (state.as_str()) } }
            } }
            tbody {
                @for (tier, counts) in &tiers {
                    tr { th scope="row" { (tier) } @for n in counts { td.num { (n) } } }
                }
                @if tiers.is_empty() { tr { td.muted colspan="3" { "No athlete has connected yet." } } }
            }
            tfoot { tr {
                th scope="row" { "all" }
                @for i in 0..STATES.len() { td.num { (column(i)) } }
            } }
        }
    };
    Ok(Section {
        title: "Athletes",
        wide: false,
        body,
    })
}

/// History backfills still walking, with how far each has come.
async fn backfills(cx: &Context<'_>) -> SectionResult {
    let report = cx.state.store.backfill_report(LISTED).await?;
    let body = html! {
        p { strong id="backfills-in-progress" { (report.in_progress) } " in progress." }
        @if !report.shown.is_empty() {
            table {
                thead { tr {
                    th { "athlete" } th { "name" } th.num { "pages" }
                    th.num { "activities stored" } th { "reached back to" }
                } }
                tbody {
                    @for b in &report.shown {
                        tr {
                            td { (b.athlete_id) }
                            td.text { (b.name) }
                            td.num { (b.pages) }
                            td.num { (b.activities) }
                            td { @match b.reached.and_then(from_epoch) {
                                Some(at) => { (date(at)) }
                                None => { span.muted { "not started" } }
                            } }
                        }
                    }
                }
            }
            @if report.in_progress > report.shown.len() as i64 {
                p.muted { "The " (report.shown.len()) " connected first are listed." }
            }
        }
    };
    Ok(Section {
        title: "Backfills",
        wide: false,
        body,
    })
}

/// Inbox events whose retries ran out, newest first.
async fn failed_webhooks(cx: &Context<'_>) -> SectionResult {
    let report = cx.state.store.inbox_report(LISTED).await?;
    let failed = report.counts.get("failed").copied().unwrap_or(0);
    let body = html! {
        p {
            strong id="failed-webhooks" { (failed) } " failed"
            @for (status, n) in &report.counts {
                @if *status != "failed" { " · " (n) " " (status) }
            }
            @if failed > 0 { span.muted { " · POST /admin/webhooks/replay retries them" } }
        }
        @if !report.failed.is_empty() {
            table {
                thead { tr {
                    th { "received" } th { "event" } th.num { "object" } th.num { "owner" }
                    th.num { "attempts" } th { "changes" } th { "last error" }
                } }
                tbody {
                    @for stored in &report.failed {
                        @let event = &stored.event;
                        tr {
                            td { @if let Some(at) = from_epoch(stored.received_at) { (time(at, cx.now)) } }
                            td { (event.kind()) }
                            td.num { (event.object_id) }
                            td.num { (event.owner_id) }
                            td.num { (stored.attempts) }
                            td.text {
                                @for (field, value) in &event.updates { div { (field) ": " (value) } }
                            }
                            td.text { (stored.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(Section {
        title: "Failed webhook events",
        wide: true,
        body,
    })
}

/// How full a window is, as a bar that turns red past [`WARN_PERCENT`].
fn meter(used: u32, limit: u32) -> Markup {
    let percent = (u64::from(used) * 100)
        .checked_div(u64::from(limit))
        .unwrap_or(100)
        .min(100);
    html! {
        span.meter.high[percent >= u64::from(WARN_PERCENT)] title={ (percent) "% used" } {
            span style={ "width:" (percent) "%" } {}
        }
    }
}

fn window_name(window: WindowKind) -> &'static str {
    match window {
        WindowKind::Quarter => "15 minutes",
        WindowKind::Day => "day (UTC)",
    }
}

/// Why purposes are held back and until when, and which they are.
type HeldBack = ((Blocked, Option<DateTime<Utc>>), Vec<&'static str>);

/// The purposes held back for the same reason until the same time, in one
/// line each (a full window holds back most of them at once).
fn held_back_together(blocked: &BTreeMap<&'static str, BlockedView>) -> Vec<HeldBack> {
    let mut lines: Vec<HeldBack> = Vec::new();
    for (purpose, view) in blocked {
        let key = (view.reason, view.until);
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, purposes)) => purposes.push(purpose),
            None => lines.push((key, vec![purpose])),
        }
    }
    lines
}

fn held_back(reason: Blocked) -> String {
    match reason {
        Blocked::Paused => "paused by an operator".into(),
        Blocked::RateLimited(w) => format!("Strava answered 429 ({})", window_name(w)),
        Blocked::Full(w) => format!("its part of the window is used ({})", window_name(w)),
        Blocked::Pacing => "ahead of the day's pace".into(),
        Blocked::Capped => "fetches for readers used the webhook share".into(),
    }
}

/// Each purpose's colour in the chart and legend.
fn colour(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Interactive => "#e15759",
        Purpose::Attention => "#f28e2b",
        Purpose::Webhook => "#4e79a7",
        Purpose::GapFill => "#76b7b2",
        Purpose::Backfill => "#59a14f",
        Purpose::Enrichment => "#b07aa1",
        Purpose::Reconcile => "#9c755f",
    }
}

fn from_epoch(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t, 0)
}

fn hour_label(t: i64) -> String {
    from_epoch(t).map_or_else(String::new, |t| t.format("%H:00").to_string())
}

fn date(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d")) } }
}

/// A moment in UTC (with its date when it is a day or more away), and how
/// far it is from now.
fn time(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let secs = (t - now).num_seconds();
    let format = if secs.abs() < 86_400 {
        "%H:%M UTC"
    } else {
        "%Y-%m-%d %H:%M UTC"
    };
    html! {
        time datetime=(t.to_rfc3339()) { (t.format(format)) }
        @if secs != 0 { " " span.muted { "(" (distance(secs)) ")" } }
    }
}

/// `in 7 min`, `2 h 5 min ago`.
fn distance(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let span = match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    };
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

const CSS: &str = r#"
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { padding: 16px 24px 0; }
h1 { font-size: 20px; margin: 0; }
header p { margin: 2px 0 0; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
       grid-auto-flow: dense; align-items: start; gap: 16px; padding: 16px 24px 24px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
          padding: 12px 16px; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 15px; margin: 0 0 8px; }
h3 { font-size: 13px; margin: 12px 0 4px; }
p, ul { margin: 8px 0 0; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
thead th { color: var(--muted); font-size: 12px; font-weight: 600; white-space: nowrap; }
tbody th, time { white-space: nowrap; }
tfoot th, tfoot td { border-bottom: 0; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.text { overflow-wrap: anywhere; max-width: 360px; }
.muted { color: var(--muted); }
.bad { color: #b42318; }
.alert { color: #7a2e0e; background: #fff4e5; border: 1px solid #f5c78c;
         padding: 6px 10px; border-radius: 4px; }
.meter { display: inline-block; width: 80px; height: 8px; background: #e6eaef;
         border-radius: 4px; overflow: hidden; vertical-align: middle; }
.meter span { display: block; height: 100%; background: #4e79a7; }
.meter.high span { background: #e15759; }
svg { display: block; width: 100%; height: auto; }
.axis line { stroke: #e6eaef; }
.axis text, .total, .empty { font-size: 12px; fill: var(--muted); }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
"#;

/// Events for the application: how many wait, how long the oldest has, and
/// the failed ones.
async fn deliveries(cx: &Context<'_>) -> SectionResult {
    let report = cx.state.store.delivery_report(LISTED).await?;
    let (pending, failed) = (report.counts.pending, report.counts.failed);
    let oldest = report.oldest_pending_at.and_then(from_epoch);
    let body = html! {
        @if cx.settings.app_webhook.is_none() {
            p {
                "APP_WEBHOOK_URL is not set: nothing is sent. "
                strong id="logged-changes" { (pending) }
                " changes are kept for the change feed."
            }
        } @else {
            p {
                strong id="pending-deliveries" { (pending) } " waiting · "
                strong id="failed-deliveries" { (failed) } " failed"
                @if let Some(at) = oldest { " · oldest from " (time(at, cx.now)) }
                @if failed > 0 {
                    span.muted { " · POST /admin/deliveries/replay sends them again" }
                }
            }
        }
        @if !report.failed.is_empty() {
            table {
                thead { tr {
                    th.num { "event" } th { "type" } th.num { "athlete" } th.num { "activity" }
                    th.num { "attempts" } th { "last error" }
                } }
                tbody {
                    @for failed in &report.failed {
                        @let event = &failed.event;
                        tr {
                            td.num { (event.id) }
                            td { (event.kind.as_str()) }
                            td.num { (event.athlete_id) }
                            td.num { @if let Some(id) = event.activity_id { (id) } }
                            td.num { (failed.attempts) }
                            td.text { (failed.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(Section {
        title: "Events for the application",
        wide: true,
        body,
    })
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(status_page);
}
