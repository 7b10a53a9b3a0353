//! Strava's tokens for each athlete. They must be usable, so they are stored
//! as given; the rotated refresh token is written before it is ever used.

use rusqlite::{params, Connection, OptionalExtension};

use super::{DbResult, Store};

#[derive(Clone, PartialEq, Eq)]
pub struct StoredTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Epoch seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

pub fn get(conn: &Connection, athlete_id: i64) -> DbResult<Option<StoredTokens>> {
    Ok(conn
        .query_row(
            "SELECT access_token, refresh_token, expires_at FROM strava_tokens
             WHERE athlete_id = ?1",
            [athlete_id],
            |r| {
                Ok(StoredTokens {
                    access_token: r.get(0)?,
                    refresh_token: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// Stores (or replaces) an athlete's tokens.
pub fn put(conn: &Connection, athlete_id: i64, tokens: &StoredTokens, at: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO strava_tokens (athlete_id, access_token, refresh_token, expires_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(athlete_id) DO UPDATE SET access_token = excluded.access_token,
             refresh_token = excluded.refresh_token, expires_at = excluded.expires_at,
             updated_at = excluded.updated_at",
        params![
            athlete_id,
            tokens.access_token,
            tokens.refresh_token,
            tokens.expires_at,
            at
        ],
    )?;
    Ok(())
}

impl Store {
    /// Stores a refreshed set of tokens (the rotated refresh token is
    /// committed before the access token is used).
    pub async fn save_tokens(
        &self,
        athlete_id: i64,
        tokens: StoredTokens,
        now: i64,
    ) -> DbResult<()> {
        self.write(move |tx| put(tx, athlete_id, &tokens, now))
            .await
    }
}
