//! Deep list pages without deep offsets. `OFFSET n` steps over n index
//! entries, so page 300 costs ~9,000 steps where page 1 costs 30. For an
//! athlete's unfiltered list, the (start_time, id) key of every
//! [`STRIDE`]th row is kept in memory, and a deep page starts from the
//! anchor before it, stepping over fewer than [`STRIDE`] entries.
//!
//! Anchors hold for one state of the athlete's activities, named by their
//! newest logged change: every insert and delete logs one (see
//! [`super::changes`]), so a changed list has another name and the anchors
//! are built again. The name and the page are read in one read transaction,
//! so a page never mixes two states.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::sql::{params, Connection};

use super::{changes, DbResult};

/// Rows between two anchors: the most a deep page steps over.
pub const STRIDE: i64 = 500;
/// Athletes whose anchors are kept; past it, the map starts again (building
/// anchors is one walk over an index, so a miss costs little).
const ATHLETES_KEPT: usize = 4096;

/// A list key: `(start_time, id)`.
pub type Key = (i64, i64);

#[derive(Clone, Default)]
pub struct PageAnchors {
    by_athlete: Arc<Mutex<HashMap<i64, Anchored>>>,
}

struct Anchored {
    /// The athlete's newest change when the anchors were taken.
    state: i64,
    /// The key of row `STRIDE * (i + 1)` of the list, newest first.
    keys: Vec<Key>,
}

impl PageAnchors {
    /// The nearest anchor at or before `offset` in the athlete's unfiltered
    /// list, as (its offset, its key); None when the offset is shallow or
    /// the athlete has no logged state to name the list by. Call it inside
    /// the read transaction that reads the page.
    pub fn before(
        &self,
        conn: &dyn Connection,
        athlete_id: i64,
        offset: i64,
    ) -> DbResult<Option<(i64, Key)>> {
        let slot = offset / STRIDE;
        if slot == 0 {
            return Ok(None);
        }
        let Some(state) = changes::newest_of(conn, athlete_id)? else {
            return Ok(None);
        };
        let cached = {
            let map = self.by_athlete.lock().expect("anchors stay consistent");
            map.get(&athlete_id)
                .filter(|a| a.state == state)
                .map(|a| a.keys.get(slot as usize - 1).copied())
        };
        let key = match cached {
            Some(key) => key,
            None => {
                let keys = walk(conn, athlete_id)?;
                let key = keys.get(slot as usize - 1).copied();
                let mut map = self.by_athlete.lock().expect("anchors stay consistent");
                if map.len() >= ATHLETES_KEPT {
                    map.clear();
                }
                map.insert(athlete_id, Anchored { state, keys });
                key
            }
        };
        // Past the last anchor, the page is past the end: no anchor needed.
        Ok(key.map(|key| (slot * STRIDE, key)))
    }
}

/// Every `STRIDE`th key of the athlete's list, from one walk of the index.
fn walk(conn: &dyn Connection, athlete_id: i64) -> DbResult<Vec<Key>> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_time, id FROM activities
         WHERE athlete_id = ?1 AND start_time < ?2 AND start_time > ?3
         ORDER BY start_time DESC, id DESC",
    )?;
    let mut keys = Vec::new();
    let mut n = 0i64;
    stmt.for_each(params![athlete_id, i64::MAX, i64::MIN], |row| {
        n += 1;
        if n % STRIDE == 0 {
            keys.push((row.get(0)?, row.get(1)?));
        }
        Ok(true)
    })?;
    Ok(keys)
}
