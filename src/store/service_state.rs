//! `service_state`: small service-wide facts kept as text by key (the
//! webhook path secret and subscription id, the budget's paused flag).

use super::sql::{params, Connection, OptionalExtension};

use super::DbResult;

pub fn get(conn: &dyn Connection, key: &str) -> DbResult<Option<String>> {
    conn.prepare_cached("SELECT value FROM service_state WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()
}

pub fn set(conn: &dyn Connection, key: &str, value: &str) -> DbResult<()> {
    conn.execute(
        "INSERT INTO service_state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The value under `key`, storing `fresh` first if there is none yet.
pub fn get_or_insert(conn: &dyn Connection, key: &str, fresh: &str) -> DbResult<String> {
    conn.execute(
        "INSERT INTO service_state (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![key, fresh],
    )?;
    Ok(get(conn, key)?.expect("the key was just ensured"))
}

pub fn delete(conn: &dyn Connection, key: &str) -> DbResult<()> {
    conn.execute("DELETE FROM service_state WHERE key = ?1", [key])?;
    Ok(())
}

/// Writes a page's worth under a scratch key and takes it back: a write that
/// must allocate pages and commit, to learn whether storage takes writes.
pub fn probe_write(conn: &dyn Connection) -> DbResult<()> {
    let page: String = (0..4096)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    conn.execute(
        "INSERT INTO service_state (key, value) VALUES ('probe', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![page],
    )?;
    delete(conn, "probe")
}
