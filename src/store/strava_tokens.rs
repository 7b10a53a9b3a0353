//! Strava's tokens for each athlete, sealed at rest ([`TokenCipher`]); the
//! rotated refresh token is written before it is ever used. The columns are
//! declared TEXT by the first schema but hold the sealed BLOBs (SQLite keeps
//! a value's own type): a TEXT value is a plaintext token from before
//! encryption, sealed by [`Store::seal_tokens`] at start.

use super::sql::{self, params, Connection, OptionalExtension, ValueRef};

use super::token_cipher::TokenCipher;
use super::{instances, DbError, DbResult, Store};

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
             updated_at = excluded.updated_at, refreshing_by = NULL, refreshing_since = NULL",
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
        .prepare_cached(SELECT)?
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

/// How long a refresh an instance took on holds the others off: longer than
/// Strava's token endpoint is given to answer.
pub const REFRESH_LEASE_SECS: i64 = 60;

/// What an instance that needs a new access token is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshClaim {
    /// Use these: another caller refreshed already.
    Use(StoredTokens),
    /// Another live instance is refreshing; ask again shortly.
    Wait,
    /// Refresh from these; the others wait until the new ones are saved.
    Refresh(StoredTokens),
}

fn claim_refresh(
    conn: &dyn Connection,
    cipher: &TokenCipher,
    me: &str,
    athlete_id: i64,
    usable: impl FnOnce(&StoredTokens) -> bool,
    now: i64,
) -> DbResult<Option<RefreshClaim>> {
    let Some(tokens) = get(conn, cipher, athlete_id)? else {
        return Ok(None);
    };
    if usable(&tokens) {
        return Ok(Some(RefreshClaim::Use(tokens)));
    }
    let held_elsewhere = conn
        .prepare_cached(&format!(
            "SELECT 1 FROM strava_tokens
             WHERE athlete_id = ?1 AND refreshing_by <> ?2 AND refreshing_since >= ?3
               AND {}",
            instances::alive("strava_tokens.refreshing_by", 4)
        ))?
        .exists(params![
            athlete_id,
            me,
            now - REFRESH_LEASE_SECS,
            instances::alive_since(now)
        ])?;
    if held_elsewhere {
        return Ok(Some(RefreshClaim::Wait));
    }
    conn.execute(
        "UPDATE strava_tokens SET refreshing_by = ?2, refreshing_since = ?3 WHERE athlete_id = ?1",
        params![athlete_id, me, now],
    )?;
    Ok(Some(RefreshClaim::Refresh(tokens)))
}

impl Store {
    /// Decides, across the instances sharing the database, who refreshes
    /// the athlete's tokens: the stored ones if `usable` takes them, else a
    /// wait while another live instance refreshes, else the refresh, taken
    /// on by this instance until [`Store::save_tokens`] or
    /// [`Store::give_up_token_refresh`]. None when no tokens are stored.
    pub async fn claim_token_refresh(
        &self,
        athlete_id: i64,
        usable: impl FnOnce(&StoredTokens) -> bool + Send + 'static,
        now: i64,
    ) -> DbResult<Option<RefreshClaim>> {
        let cipher = self.cipher()?;
        let me = self.instance.clone();
        self.write(move |tx| claim_refresh(tx, &cipher, &me, athlete_id, usable, now))
            .await
    }

    /// Lets the others refresh after this instance's refresh failed.
    pub async fn give_up_token_refresh(&self, athlete_id: i64) -> DbResult<()> {
        let me = self.instance.clone();
        self.write(move |tx| {
            tx.execute(
                "UPDATE strava_tokens SET refreshing_by = NULL, refreshing_since = NULL
                 WHERE athlete_id = ?1 AND refreshing_by = ?2",
                params![athlete_id, &*me],
            )
            .map(drop)
        })
        .await
    }

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
