//! The application's push subscription as kept in `service_state`: the
//! callback path secret (generated once, so the callback URL stays stable
//! across restarts and the CLI and the server agree on it) and the id Strava
//! gave the subscription, which incoming events must carry.

use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};

use super::DbResult;

const PATH_SECRET: &str = "webhook_path_secret";
const SUBSCRIPTION_ID: &str = "webhook_subscription_id";

/// The callback path secret, created on first use: 32 random bytes as hex.
pub fn path_secret(conn: &Connection) -> DbResult<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute(
        "INSERT OR IGNORE INTO service_state (key, value) VALUES (?1, ?2)",
        params![PATH_SECRET, fresh],
    )?;
    Ok(get(conn, PATH_SECRET)?.expect("just inserted"))
}

/// The id of our subscription, once `subscription create` has stored it.
pub fn id(conn: &Connection) -> DbResult<Option<i64>> {
    Ok(get(conn, SUBSCRIPTION_ID)?.and_then(|v| v.parse().ok()))
}

pub fn set_id(conn: &Connection, id: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO service_state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![SUBSCRIPTION_ID, id.to_string()],
    )?;
    Ok(())
}

pub fn clear_id(conn: &Connection) -> DbResult<()> {
    conn.execute(
        "DELETE FROM service_state WHERE key = ?1",
        [SUBSCRIPTION_ID],
    )?;
    Ok(())
}

fn get(conn: &Connection, key: &str) -> DbResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM service_state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}
