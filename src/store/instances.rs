//! The instances sharing the database. Each one has a row it refreshes
//! while it lives; work an instance claimed (a running job, a token
//! refresh) is taken over by the others once its heartbeat is stale, and
//! never while it is fresh.

use super::sql::{params, Connection, Dialect};
use super::{jobs, DbResult, Store};

/// How often a live instance refreshes its heartbeat.
pub const HEARTBEAT_SECS: u64 = 5;

/// How long after its last heartbeat an instance counts as dead: several
/// beats, and more than the clocks of two hosts drift apart.
pub const HEARTBEAT_LEASE_SECS: i64 = 30;

/// The oldest heartbeat of an instance alive at `now`.
pub fn alive_since(now: i64) -> i64 {
    now - HEARTBEAT_LEASE_SECS
}

/// SQL over a column naming an instance (`claimed_by`, `refreshing_by`),
/// with parameter `?{since}` bound to [`alive_since`]: whether that
/// instance is alive. (Times are bound whole: PostgreSQL would take a
/// parameter in `?1 - 30` for a 32-bit integer.)
pub fn alive(column: &str, since: u8) -> String {
    format!(
        "EXISTS (SELECT 1 FROM instances i WHERE i.id = {column}
                 AND i.heartbeat_at >= ?{since})"
    )
}

/// How long the row of an instance that stopped answering is kept.
const FORGET_SECS: i64 = 86_400;

fn join(conn: &dyn Connection, me: &str, now: i64) -> DbResult<()> {
    if conn.dialect() == Dialect::Sqlite {
        // A SQLite file serves one instance: whatever ran before was left
        // by a process that is gone, and is taken over at once.
        conn.execute("DELETE FROM instances", params![])?;
    } else {
        // Every start is a new instance; the long dead are forgotten.
        conn.execute(
            "DELETE FROM instances WHERE heartbeat_at < ?1",
            params![now - FORGET_SECS],
        )?;
    }
    conn.execute(
        "INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)",
        params![me, now],
    )?;
    Ok(())
}

impl Store {
    /// Registers this instance as alive.
    pub async fn join_instances(&self, now: i64) -> DbResult<()> {
        let me = self.instance.clone();
        self.write(move |tx| join(tx, &me, now)).await
    }

    /// Keeps this instance alive (registering it again should its row have
    /// been forgotten during a pause longer than a day).
    pub async fn instance_heartbeat(&self, now: i64) -> DbResult<()> {
        let me = self.instance.clone();
        self.write_apart(move |tx| {
            let beat = tx.execute(
                "UPDATE instances SET heartbeat_at = ?2 WHERE id = ?1",
                params![&*me, now],
            )?;
            if beat == 0 {
                tx.execute(
                    "INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)",
                    params![&*me, now],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Leaves at shutdown: the jobs still running here go back to the
    /// queue at once, for the others or the next start.
    pub async fn leave_instances(&self) -> DbResult<()> {
        let me = self.instance.clone();
        self.write(move |tx| {
            jobs::release(tx, &me)?;
            tx.execute("DELETE FROM instances WHERE id = ?1", params![&*me])?;
            Ok(())
        })
        .await
    }
}
