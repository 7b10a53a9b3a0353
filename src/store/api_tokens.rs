//! API tokens for the read API: random, shown once, stored only as SHA-256
//! hashes, each scoped to one athlete.

use super::sql::{params, Connection, OptionalExtension};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{DbResult, Store};

/// Issues a new token for the athlete and returns it in clear, the only time
/// it exists outside the caller's hands.
pub fn issue(conn: &dyn Connection, athlete_id: i64, at: i64) -> DbResult<String> {
    let token = random_token();
    conn.execute(
        "INSERT INTO api_tokens (token_hash, athlete_id, created_at) VALUES (?1, ?2, ?3)",
        params![hash(&token).as_slice(), athlete_id, at],
    )?;
    Ok(token)
}

/// The athlete a token belongs to, if it is valid.
pub fn athlete_for(conn: &dyn Connection, token: &str) -> DbResult<Option<i64>> {
    conn.query_row(
        "SELECT athlete_id FROM api_tokens WHERE token_hash = ?1",
        [hash(token).as_slice()],
        |r| r.get(0),
    )
    .optional()
}

/// 256 random bits as 64 hex characters: unguessable secrets (API tokens,
/// OAuth states).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// Lower-case hex of some bytes (tokens, ETags).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Store {
    /// The athlete an API token belongs to, if it is valid.
    pub async fn athlete_for_token(&self, token: String) -> DbResult<Option<i64>> {
        self.read(move |c| athlete_for(c, &token)).await
    }
}
