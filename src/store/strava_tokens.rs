//! Strava's tokens for each athlete, sealed at rest ([`TokenCipher`]); the
//! rotated refresh token is written before it is ever used. The columns are
//! declared TEXT by the first schema but hold the sealed BLOBs (SQLite keeps
//! a value's own type): a TEXT value is a plaintext token from before
//! encryption, sealed by [`Store::seal_tokens`] at start.

use super::sql::{self, params, Connection, OptionalExtension, ValueRef};

use super::token_cipher::TokenCipher;
use super::{DbError, DbResult, Store};

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

const ACCESS: &str = "access_token";
const REFRESH: &str = "refresh_token";

/// A stored token column: sealed, or plaintext from before encryption.
enum Stored {
    Sealed(Vec<u8>),
    Plain(String),
}

fn column(value: ValueRef<'_>) -> DbResult<Stored> {
    Ok(match value {
        ValueRef::Blob(b) => Stored::Sealed(b.to_vec()),
        ValueRef::Text(t) => Stored::Plain(t.to_string()),
        other => return Err(DbError::Decode(format!("a token column holds {other:?}"))),
    })
}

/// What one row holds, unopened.
struct Row {
    athlete_id: i64,
    access: Stored,
    refresh: Stored,
    expires_at: i64,
}

const SELECT: &str =
    "SELECT athlete_id, access_token, refresh_token, expires_at FROM strava_tokens";

fn row(r: &dyn sql::Row) -> DbResult<Row> {
    Ok(Row {
        athlete_id: r.get(0)?,
        access: column(r.value(1)?)?,
        refresh: column(r.value(2)?)?,
        expires_at: r.get(3)?,
    })
}

/// Opens one column; a plaintext one is an error here, since every row is
/// sealed at start.
fn open(
    cipher: &TokenCipher,
    athlete_id: i64,
    name: &str,
    value: &Stored,
) -> DbResult<(String, bool)> {
    match value {
        Stored::Sealed(bytes) => cipher
            .open(athlete_id, name, bytes)
            .map(|o| (o.text, o.stale))
            .map_err(|e| DbError::Tokens(format!("athlete {athlete_id}'s {name} is {e}"))),
        Stored::Plain(_) => Err(DbError::Tokens(format!(
            "athlete {athlete_id}'s {name} is not sealed"
        ))),
    }
}

pub fn get(
    conn: &dyn Connection,
    cipher: &TokenCipher,
    athlete_id: i64,
) -> DbResult<Option<StoredTokens>> {
    let Some(stored) = conn
        .query_row(
            &format!("{SELECT} WHERE athlete_id = ?1"),
            [athlete_id],
            row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    Ok(Some(StoredTokens {
        access_token: open(cipher, athlete_id, ACCESS, &stored.access)?.0,
        refresh_token: open(cipher, athlete_id, REFRESH, &stored.refresh)?.0,
        expires_at: stored.expires_at,
    }))
}

/// Stores (or replaces) an athlete's tokens, sealed.
pub fn put(
    conn: &dyn Connection,
    cipher: &TokenCipher,
    athlete_id: i64,
    tokens: &StoredTokens,
    at: i64,
) -> DbResult<()> {
    conn.execute(
        "INSERT INTO strava_tokens (athlete_id, access_token, refresh_token, expires_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(athlete_id) DO UPDATE SET access_token = excluded.access_token,
             refresh_token = excluded.refresh_token, expires_at = excluded.expires_at,
             updated_at = excluded.updated_at",
        params![
            athlete_id,
            cipher.seal(athlete_id, ACCESS, &tokens.access_token),
            cipher.seal(athlete_id, REFRESH, &tokens.refresh_token),
            tokens.expires_at,
            at
        ],
    )?;
    Ok(())
}

/// Seals every plaintext row and reseals every row sealed with the previous
/// key. Returns how many rows changed; fails, naming the athlete, on a row
/// no configured key opens.
pub fn seal_all(conn: &dyn Connection, cipher: &TokenCipher) -> DbResult<usize> {
    let rows: Vec<Row> = conn
        .prepare(SELECT)?
        .query_map(params![], row)?
        .collect::<Result<_, _>>()?;
    let mut changed = 0;
    for stored in rows {
        let id = stored.athlete_id;
        let text = |name, value: &Stored| match value {
            Stored::Plain(text) => Ok((text.clone(), true)),
            sealed => open(cipher, id, name, sealed),
        };
        let (access, stale_access) = text(ACCESS, &stored.access)?;
        let (refresh, stale_refresh) = text(REFRESH, &stored.refresh)?;
        if stale_access || stale_refresh {
            conn.execute(
                "UPDATE strava_tokens SET access_token = ?2, refresh_token = ?3 WHERE athlete_id = ?1",
                params![id, cipher.seal(id, ACCESS, &access), cipher.seal(id, REFRESH, &refresh)],
            )?;
            changed += 1;
        }
    }
    Ok(changed)
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
        let cipher = self.cipher()?;
        self.write(move |tx| put(tx, &cipher, athlete_id, &tokens, now))
            .await
    }

    /// Seals what is stored in plaintext or under the previous key, then
    /// checkpoints, so the old values leave the write-ahead log and the
    /// file. Returns how many athletes' tokens were sealed anew.
    pub async fn seal_tokens(&self) -> DbResult<usize> {
        let cipher = self.cipher()?;
        let changed = self.write(move |tx| seal_all(tx, &cipher)).await?;
        if changed > 0 {
            self.checkpoint().await?;
        }
        Ok(changed)
    }
}
