//! Who is looking: an athlete whose API token was used recently has a
//! frontend showing their data, so their announced activities are fetched
//! before anyone else's background work. Reads only note the athlete in
//! memory; the runner writes the notes in one batch before it picks work, so
//! the read path never waits for a write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::clock::Clock;
use crate::store::{DbResult, Store};

/// How long after a read an athlete counts as looking: long enough to cover
/// the habit of someone who opens the app every day or two.
pub const ATTENTION_SECS: i64 = 48 * 3600;

pub struct Attention {
    store: Store,
    clock: Arc<dyn Clock>,
    /// Reads not yet written: athlete → when.
    unwritten: Mutex<HashMap<i64, i64>>,
}

impl Attention {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            unwritten: Mutex::default(),
        }
    }

    /// Notes that the athlete's token was used now. Costs no I/O.
    pub fn record(&self, athlete_id: i64) {
        let now = self.clock.epoch();
        self.unwritten().insert(athlete_id, now);
    }

    /// Writes the reads noted since the last flush, in one transaction.
    pub async fn flush(&self) -> DbResult<()> {
        let reads: Vec<(i64, i64)> = self.unwritten().drain().collect();
        if reads.is_empty() {
            return Ok(());
        }
        let result = self.store.record_reads(reads.clone()).await;
        if result.is_err() {
            // Noted again, for the next flush; a newer read wins.
            let mut unwritten = self.unwritten();
            for (athlete_id, at) in reads {
                let slot = unwritten.entry(athlete_id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }

    /// Athletes who read since this moment are looking.
    pub fn since(&self) -> i64 {
        self.clock.epoch() - ATTENTION_SECS
    }

    fn unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i64>> {
        self.unwritten.lock().unwrap_or_else(|e| e.into_inner())
    }
}
