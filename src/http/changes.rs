//! The change feed (API token): `GET /api/v3/athlete/changes?since=` answers
//! the athlete's changes after a cursor and the cursor to ask from next; with
//! `Accept: text/event-stream` the same changes come as Server-Sent Events,
//! live, resuming from `Last-Event-ID`, so a browser app needs no polling.
//! Only the token's athlete's changes are ever read.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{get, web, HttpRequest, HttpResponse};
use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::error::{ApiError, AthleteFaults, Fault};
use super::query::QueryParams;
use super::{auth::FeedAuth, Services};
use crate::model::app_event::AppEvent;
use crate::store::Store;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Open streams per athlete: a page in several tabs, not a flood (a newer
/// stream ends the oldest).
pub const STREAMS_PER_ATHLETE: usize = 5;
/// Open streams in all, so held connections stay bounded.
const STREAMS_IN_ALL: usize = 10_000;

/// The feed's parameters as parsed, absent ones at their defaults (the
/// document's come from this type).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ChangesParams {
    /// Answer the changes after this cursor (an event's `id`, or a
    /// `next_cursor`); 0 is the start of what is kept.
    #[param(required = false, minimum = 0, default = 0)]
    since: i64,
    /// Changes per answer.
    #[param(required = false, minimum = 1, maximum = 1000, default = 100)]
    limit: i64,
}

/// One answer of the feed.
#[derive(Serialize, ToSchema)]
struct ChangesPage {
    /// Oldest first.
    changes: Vec<AppEvent>,
    /// Where to ask from next.
    next_cursor: i64,
}

/// The athlete's changes after a cursor: as JSON, or, with `Accept:
/// text/event-stream`, as Server-Sent Events that go on live (resuming
/// after `Last-Event-ID`).
#[utoipa::path(
    tag = "read API",
    security(("api_token" = [])),
    params(
        ChangesParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "With `Accept: text/event-stream`: resume after this event"),
        ("access_token" = Option<String>, Query, description = "The API token, for a browser's EventSource, which cannot send an Authorization header (this route only)"),
    ),
    responses(
        (status = 200, description = "The changes after the cursor, or their live stream",
            content((ChangesPage = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "A malformed or out-of-range `since`, `limit` or `Last-Event-ID`", body = Fault),
        (status = 410, description = "Changes after this cursor were pruned: read the activities again", body = Fault),
        AthleteFaults,
    )
)]
#[get("/api/v3/athlete/changes")]
async fn changes(
    auth: FeedAuth,
    state: web::Data<Services>,
    streams: web::Data<OpenStreams>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = QueryParams::parse(req.query_string(), "Changes")?;
    let given = ChangesParams {
        since: params.bounded("since", 0..=i64::MAX, 0)?,
        limit: params.bounded("limit", 1..=MAX_LIMIT, DEFAULT_LIMIT)?,
    };
    let live = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(wants_event_stream);
    let resume = match req.headers().get("last-event-id") {
        Some(v) if live => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|c| *c >= 0)
                .ok_or_else(|| {
                    params.invalid("Last-Event-ID", "Last-Event-ID must be an event id".into())
                })?,
        ),
        _ => None,
    };
    let since = resume.unwrap_or(given.since);
    let limit = given.limit as usize;
    // Watching begins before the first read, so a change logged in between
    // still wakes the stream.
    let touched = state.changes.touched();
    // Read before a stream starts, so an expired cursor is a plain 410.
    let page = state
        .store
        .changes_after(auth.athlete_id, since, limit)
        .await?
        .ok_or(ApiError::Gone {
            resource: "Changes",
            message: "Changes after this cursor were pruned: read the activities again and \
                      follow the feed from its next_cursor"
                .into(),
        })?;
    if !live {
        return Ok(HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(ChangesPage {
                changes: page.changes,
                next_cursor: page.next_cursor,
            }));
    }
    let permit = streams.open(auth.athlete_id)?;
    let feed = Feed {
        store: state.store.clone(),
        athlete_id: auth.athlete_id,
        token: auth.token,
        cursor: page.next_cursor,
        caught_up: !page.more,
        queued: page.changes.into(),
        touched,
        closing: state.changes.closing(),
        keep_alive_at: Instant::now() + KEEP_ALIVE,
        permit,
    };
    let opening = Bytes::from_static(b": strava-sync change feed\nretry: 2000\n\n");
    let events = stream::unfold(feed, Feed::next).map(Ok::<_, Infallible>);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Proxies such as nginx would otherwise hold the events back.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream::once(async { Ok::<_, Infallible>(opening) }).chain(events)))
}

/// One open stream: what it has read up to, what it has yet to send.
struct Feed {
    store: Store,
    athlete_id: i64,
    token: String,
    cursor: i64,
    /// Whether the last read found everything up to the cursor; if not, the
    /// next read comes at once rather than at the next change.
    caught_up: bool,
    queued: VecDeque<AppEvent>,
    /// The athletes with new changes, poll by poll.
    touched: broadcast::Receiver<Arc<Vec<i64>>>,
    closing: CancellationToken,
    keep_alive_at: Instant,
    permit: StreamPermit,
}

impl Feed {
    /// The next chunk to send; None ends the stream (shutdown, a newer
    /// stream of the athlete, a revoked token, an expired cursor, storage
    /// failing).
    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                self.keep_alive_at = Instant::now() + KEEP_ALIVE;
                return Some((sse(&event), self));
            }
            // Caught up, it waits until its own athlete has changes (or it
            // fell behind the news and must look).
            while self.caught_up {
                tokio::select! {
                    _ = self.closing.cancelled() => return None,
                    _ = self.permit.ended.cancelled() => return None,
                    touched = self.touched.recv() => match touched {
                        Ok(athletes) if !athletes.contains(&self.athlete_id) => {}
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep_until(self.keep_alive_at) => {
                        self.keep_alive_at = Instant::now() + KEEP_ALIVE;
                        return Some((Bytes::from_static(b": keep-alive\n\n"), self));
                    }
                }
            }
            // The token may have been revoked (a disconnect) since the
            // stream began: its changes stop with it.
            match self.store.athlete_for_token(self.token.clone()).await {
                Ok(Some(athlete)) if athlete == self.athlete_id => {}
                _ => return None,
            }
            match self
                .store
                .changes_after(self.athlete_id, self.cursor, DEFAULT_LIMIT as usize)
                .await
            {
                Ok(Some(page)) => {
                    self.cursor = page.next_cursor;
                    self.caught_up = !page.more;
                    self.queued.extend(page.changes);
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::error!(error = %e, "change feed read failed");
                    return None;
                }
            }
        }
    }
}

/// One event as SSE: its id (the cursor to resume from) and its JSON. A
/// line break in JSON can only be whitespace between tokens; each `\n`
/// starts another `data:` line (the client joins them back) and `\r`, which
/// SSE would read as a line end, is left out.
fn sse(event: &AppEvent) -> Bytes {
    let json = serde_json::to_string(event).expect("an event serialises");
    let mut out = format!("id: {}\n", event.id);
    for line in json.replace('\r', "").split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The open streams, per athlete, oldest first. A sixth stream of one
/// athlete ends their oldest, so connections a client dropped without
/// closing (a closed tab, a lost network) cannot lock it out; the number in
/// all is capped.
#[derive(Default)]
pub struct OpenStreams {
    open: Arc<Mutex<Streams>>,
}

#[derive(Default)]
struct Streams {
    by_athlete: HashMap<i64, VecDeque<(u64, CancellationToken)>>,
    in_all: usize,
    next: u64,
}

impl OpenStreams {
    fn open(&self, athlete_id: i64) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().expect("stream counts stay consistent");
        let open = &mut *open;
        let mine = open.by_athlete.entry(athlete_id).or_default();
        if mine.len() >= STREAMS_PER_ATHLETE {
            if let Some((_, oldest)) = mine.pop_front() {
                oldest.cancel();
                open.in_all -= 1;
            }
        } else if open.in_all >= STREAMS_IN_ALL {
            return Err(ApiError::TooManyRequests {
                resource: "Changes",
                retry_after_secs: KEEP_ALIVE.as_secs(),
            });
        }
        let (id, ended) = (open.next, CancellationToken::new());
        open.next += 1;
        open.in_all += 1;
        mine.push_back((id, ended.clone()));
        Ok(StreamPermit {
            open: self.open.clone(),
            athlete_id,
            id,
            ended,
        })
    }
}

/// Held by a stream; dropping it (the client left) frees the place, and
/// `ended` tells the stream a newer one took it.
struct StreamPermit {
    open: Arc<Mutex<Streams>>,
    athlete_id: i64,
    id: u64,
    ended: CancellationToken,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("stream counts stay consistent");
        let open = &mut *open;
        let Some(mine) = open.by_athlete.get_mut(&self.athlete_id) else {
            return;
        };
        if let Some(at) = mine.iter().position(|(id, _)| *id == self.id) {
            mine.remove(at);
            open.in_all -= 1;
        }
        if mine.is_empty() {
            open.by_athlete.remove(&self.athlete_id);
        }
    }
}

/// Whether an `Accept` header asks for Server-Sent Events: a media range
/// `text/event-stream` (any case) whose quality is not zero, since `;q=0`
/// is how a client says it will not take them.
fn wants_event_stream(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        media.eq_ignore_ascii_case("text/event-stream")
            && parts.all(|param| match param.split_once('=') {
                Some((name, q)) if name.trim().eq_ignore_ascii_case("q") => {
                    q.trim().parse::<f32>().map_or(true, |q| q > 0.0)
                }
                _ => true,
            })
    })
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(changes);
}

#[cfg(test)]
mod tests {
    use super::wants_event_stream;

    #[test]
    fn only_a_wanted_event_stream_streams() {
        for accept in [
            "text/event-stream",
            "TEXT/Event-Stream",
            "application/json, text/event-stream;q=0.5",
            "text/event-stream; charset=utf-8",
        ] {
            assert!(wants_event_stream(accept), "{accept}");
        }
        for accept in [
            "text/event-stream;q=0",
            "text/event-stream; q=0.0, application/json",
            "application/json",
            "*/*",
            "text/event-streams",
            "",
        ] {
            assert!(!wants_event_stream(accept), "{accept}");
        }
    }
}
