//! Connected athletes: profile, granted scope and connection status.

use std::collections::HashMap;

use super::sql::{params, Connection, OptionalExtension};
use serde::Deserialize;

use super::strava_tokens::{self, StoredTokens};
use super::{api_tokens, changes, jobs, DbResult, Store};
use crate::model::app_event::ChangeKind;
use crate::model::job::Task;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Connected,
    /// Strava refused the refresh token: nothing can be fetched until the
    /// athlete connects again.
    NeedsReauth,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::NeedsReauth => "needs_reauth",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "needs_reauth" {
            Status::NeedsReauth
        } else {
            Status::Connected
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Athlete {
    pub id: i64,
    pub scope: String,
    pub status: Status,
    pub connected_at: i64,
}

impl Athlete {
    /// Whether the granted scope shows "Only You" activities too.
    pub fn reads_all(&self) -> bool {
        self.scope
            .split(',')
            .any(|s| s.trim() == "activity:read_all")
    }
}

/// `granted` without `refused` and the scopes that include it
/// (`activity:read_all` includes `activity:read`).
fn without_scope(granted: &str, refused: &str) -> String {
    granted
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with(refused))
        .collect::<Vec<_>>()
        .join(",")
}

/// Inserts or refreshes an athlete from Strava's athlete JSON (every field
/// kept); a reconnect resets the status to connected, and a change of status
/// is logged. Returns the athlete id.
pub fn upsert(
    conn: &dyn Connection,
    profile: &serde_json::Value,
    scope: &str,
    at: i64,
) -> DbResult<i64> {
    #[derive(Deserialize)]
    struct Id {
        id: i64,
    }
    let id = Id::deserialize(profile)?.id;
    let was_connected = get(conn, id)?.is_some_and(|a| a.status == Status::Connected);
    conn.execute(
        "INSERT INTO athletes (id, profile_json, scope, status, connected_at, updated_at)
         VALUES (?1, ?2, ?3, 'connected', ?4, ?4)
         ON CONFLICT(id) DO UPDATE SET profile_json = excluded.profile_json,
             scope = excluded.scope, status = 'connected', updated_at = excluded.updated_at",
        params![id, profile.to_string(), scope, at],
    )?;
    conn.execute(
        "INSERT INTO sync_state (athlete_id) VALUES (?1) ON CONFLICT DO NOTHING",
        [id],
    )?;
    if !was_connected {
        changes::record_athlete(conn, id, ChangeKind::AthleteConnected, at)?;
    }
    Ok(id)
}

/// Cached: every webhook event looks its athlete up, on receipt and when applied.
pub fn get(conn: &dyn Connection, id: i64) -> DbResult<Option<Athlete>> {
    conn.prepare_cached("SELECT id, scope, status, connected_at FROM athletes WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok(Athlete {
                id: r.get(0)?,
                scope: r.get(1)?,
                status: Status::parse(&r.get::<String>(2)?),
                connected_at: r.get(3)?,
            })
        })
        .optional()
}

/// Whether athletes are known, each looked up once within a transaction: a
/// batch of webhook events names the same few athletes again and again, and
/// on PostgreSQL every lookup is a round trip.
#[derive(Default)]
pub(super) struct Known(HashMap<i64, bool>);

impl Known {
    pub(super) fn check(&mut self, conn: &dyn Connection, id: i64) -> DbResult<bool> {
        if let Some(known) = self.0.get(&id) {
            return Ok(*known);
        }
        let known = get(conn, id)?.is_some();
        self.0.insert(id, known);
        Ok(known)
    }

    /// The athlete was purged in this transaction.
    pub(super) fn forget(&mut self, id: i64) {
        self.0.insert(id, false);
    }
}

/// The athlete's profile JSON as last received.
pub fn profile_json(conn: &dyn Connection, id: i64) -> DbResult<Option<String>> {
    conn.query_row(
        "SELECT profile_json FROM athletes WHERE id = ?1",
        [id],
        |r| r.get(0),
    )
    .optional()
}

/// Sets the athlete's status, logging a change of it.
pub fn set_status(conn: &dyn Connection, id: i64, status: Status, at: i64) -> DbResult<()> {
    let changed = conn.execute(
        "UPDATE athletes SET status = ?2, updated_at = ?3 WHERE id = ?1 AND status != ?2",
        params![id, status.as_str(), at],
    )? > 0;
    if changed {
        let kind = match status {
            Status::Connected => ChangeKind::AthleteConnected,
            Status::NeedsReauth => ChangeKind::AthleteNeedsReauth,
        };
        changes::record_athlete(conn, id, kind, at)?;
    }
    Ok(())
}

/// Deletes everything held for an athlete: tokens, activities, jobs, sync
/// state and API tokens (by cascade), plus tombstones, inbox events and
/// logged changes, and takes their id off the call ledger (the calls still
/// count in the budget's history); logs `athlete.deauthorized` at `at`. Call
/// it inside one transaction. Returns whether the athlete existed.
pub fn purge(conn: &dyn Connection, id: i64, at: i64) -> DbResult<bool> {
    conn.execute(
        "DELETE FROM activity_tombstones WHERE athlete_id = ?1",
        [id],
    )?;
    conn.execute("DELETE FROM webhook_events WHERE owner_id = ?1", [id])?;
    conn.execute(
        "UPDATE strava_calls SET athlete_id = NULL WHERE athlete_id = ?1",
        [id],
    )?;
    let existed = conn.execute("DELETE FROM athletes WHERE id = ?1", [id])? > 0;
    if existed {
        changes::record_deauthorization(conn, id, at)?;
    }
    Ok(existed)
}

impl Store {
    /// Connects an athlete in one transaction: their profile and granted
    /// scope, Strava's tokens, a fresh API token (returned in clear), and
    /// their first page (interactive) and history backfill queued.
    pub async fn connect_athlete(
        &self,
        profile: serde_json::Value,
        scope: String,
        tokens: StoredTokens,
        now: i64,
    ) -> DbResult<(i64, String)> {
        let cipher = self.cipher()?;
        self.write(move |tx| {
            let id = upsert(tx, &profile, &scope, now)?;
            strava_tokens::put(tx, &cipher, id, &tokens, now)?;
            let api_token = api_tokens::issue(tx, id, now)?;
            jobs::enqueue(tx, id, Task::FirstPage, now, now)?;
            jobs::enqueue(tx, id, Task::Backfill, now, now)?;
            Ok((id, api_token))
        })
        .await
    }

    /// Deletes everything held for an athlete (see [`purge`]).
    pub async fn purge_athlete(&self, id: i64, now: i64) -> DbResult<bool> {
        self.write(move |tx| purge(tx, id, now)).await
    }

    pub async fn athlete(&self, id: i64) -> DbResult<Option<Athlete>> {
        self.read(move |c| get(c, id)).await
    }

    /// The athlete's profile JSON as last received.
    pub async fn athlete_json(&self, id: i64) -> DbResult<Option<String>> {
        self.read(move |c| profile_json(c, id)).await
    }

    /// The athlete and their Strava tokens, if both are stored.
    pub async fn athlete_tokens(&self, id: i64) -> DbResult<Option<(Athlete, StoredTokens)>> {
        let cipher = self.cipher()?;
        self.read(move |c| Ok(get(c, id)?.zip(strava_tokens::get(c, &cipher, id)?)))
            .await
    }

    /// Records when athletes' API tokens were last used (never moving back).
    pub async fn record_reads(&self, reads: Vec<(i64, i64)>) -> DbResult<()> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE athletes SET last_read_at = greatest(COALESCE(last_read_at, 0), ?2)
                 WHERE id = ?1",
            )?;
            for (id, at) in reads {
                stmt.execute(params![id, at])?;
            }
            Ok(())
        })
        .await
    }

    /// Replaces the known tiers with the configured ones.
    pub async fn set_tiers(&self, tiers: Vec<(String, u32)>, default: String) -> DbResult<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM tier_weights", params![])?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tier_weights (name, weight, is_default) VALUES (?1, ?2, ?3)",
            )?;
            for (name, weight) in &tiers {
                stmt.execute(params![name, weight, *name == default])?;
            }
            Ok(())
        })
        .await
    }

    /// Places an athlete in a tier. Returns whether the athlete exists.
    pub async fn set_tier(&self, id: i64, tier: String) -> DbResult<bool> {
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE athletes SET tier = ?2 WHERE id = ?1",
                params![id, tier],
            )? > 0)
        })
        .await
    }

    /// Athletes by tier and status, for the metrics.
    pub async fn athletes_by_tier(&self) -> DbResult<Vec<(String, String, i64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT COALESCE(a.tier, (SELECT name FROM tier_weights WHERE is_default = 1), ''),
                        a.status, COUNT(*)
                 FROM athletes a GROUP BY 1, 2",
            )?;
            let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()
        })
        .await
    }

    /// Marks the athlete as needing to connect again (Strava refused a refresh).
    pub async fn mark_needs_reauth(&self, id: i64, now: i64) -> DbResult<()> {
        self.write(move |tx| set_status(tx, id, Status::NeedsReauth, now))
            .await
    }

    /// Records that Strava refused a call for lack of `scope`: it, and the
    /// scopes that include it, leave the stored scope (which the callback URL
    /// claimed), and the athlete must connect again.
    pub async fn refuse_scope(&self, id: i64, scope: String, now: i64) -> DbResult<()> {
        self.write(move |tx| {
            let Some(athlete) = get(tx, id)? else {
                return Ok(());
            };
            let honoured = without_scope(&athlete.scope, &scope);
            tx.execute(
                "UPDATE athletes SET scope = ?2 WHERE id = ?1",
                params![id, honoured],
            )?;
            set_status(tx, id, Status::NeedsReauth, now)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_all_is_recognised_among_other_scopes() {
        let athlete = |scope: &str| Athlete {
            id: 1,
            scope: scope.into(),
            status: Status::Connected,
            connected_at: 0,
        };
        assert!(athlete("read, activity:read_all").reads_all());
        assert!(!athlete("read,activity:read").reads_all());
    }

    #[test]
    fn a_refused_scope_takes_the_scopes_including_it_along() {
        let granted = "read,activity:read_all,profile:read_all";
        assert_eq!(
            without_scope(granted, "activity:read"),
            "read,profile:read_all"
        );
        assert_eq!(without_scope(granted, "activity:write"), granted);
    }
}
