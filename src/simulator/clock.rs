//! The simulator's clock: real time plus an offset that tests move forward,
//! so a test crosses a rate-limit window, a UTC day or a token expiry without
//! sleeping. Everything time-dependent in the simulator reads this clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
pub(crate) struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Epoch seconds on the simulator clock.
    pub fn epoch(&self) -> i64 {
        self.now().timestamp()
    }

    /// Moves the clock forward; it never goes back.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}
