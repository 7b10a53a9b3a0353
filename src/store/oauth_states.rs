//! OAuth `state` values: issued at `GET /auth/strava`, consumed once at the
//! callback, useless after they expire.

use super::sql::{params, Connection, OptionalExtension};

use super::{DbResult, Store};

/// Records a fresh state valid until `expires_at`, dropping expired ones,
/// unless `max_pending` unexpired ones are already waiting. Returns whether
/// it was recorded.
pub fn create(
    conn: &dyn Connection,
    state: &str,
    expires_at: i64,
    now: i64,
    max_pending: i64,
) -> DbResult<bool> {
    conn.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
    let pending: i64 =
        conn.query_row("SELECT COUNT(*) FROM oauth_states", params![], |r| r.get(0))?;
    if pending >= max_pending {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO oauth_states (state, expires_at) VALUES (?1, ?2)",
        params![state, expires_at],
    )?;
    Ok(true)
}

/// Uses a state up: true only the first time, and only before it expires.
pub fn consume(conn: &dyn Connection, state: &str, now: i64) -> DbResult<bool> {
    let expires_at: Option<i64> = conn
        .query_row(
            "DELETE FROM oauth_states WHERE state = ?1 RETURNING expires_at",
            [state],
            |r| r.get(0),
        )
        .optional()?;
    Ok(expires_at.is_some_and(|t| t > now))
}

impl Store {
    /// Records a fresh OAuth state valid until `expires_at`, unless
    /// `max_pending` are waiting already. Returns whether it was recorded.
    pub async fn create_oauth_state(
        &self,
        state: String,
        expires_at: i64,
        now: i64,
        max_pending: i64,
    ) -> DbResult<bool> {
        self.write(move |tx| create(tx, &state, expires_at, now, max_pending))
            .await
    }

    /// Uses a state up: true only the first time, and only before it expires.
    pub async fn consume_oauth_state(&self, state: String, now: i64) -> DbResult<bool> {
        self.write(move |tx| consume(tx, &state, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_state_works_once_and_only_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .write_blocking(|tx| {
                assert!(create(tx, "fresh", 1_000, 0, 3)?);
                assert!(create(tx, "stale", 1_000, 0, 3)?);
                assert!(consume(tx, "fresh", 999)?);
                assert!(!consume(tx, "fresh", 999)?, "reused");
                assert!(!consume(tx, "stale", 1_000)?, "expired");
                assert!(!consume(tx, "forged", 0)?, "unknown");
                assert!(create(tx, "a", 2_000, 1_000, 2)?, "the expired one went");
                assert!(create(tx, "b", 2_000, 1_000, 2)?);
                assert!(!create(tx, "c", 2_000, 1_000, 2)?, "two are waiting");
                Ok(())
            })
            .unwrap();
    }
}
