//! Strava webhooks behind the HTTP callback: the state the callback and the
//! worker share, the worker that applies inbox events, and the
//! push-subscription commands.
//!
//! Flow: the callback validates an event and commits it to the inbox
//! (`store::inbox`) before answering 200, then wakes the worker; the worker
//! applies events in `event_time` order per object, without calling Strava
//! except through the `WebhookFetch` jobs it queues for creates.

pub mod subscription;
pub mod worker;

use tokio::sync::Notify;

use crate::store::{DbResult, Store};

/// What the callback, the admin routes and the worker share.
pub struct Webhooks {
    /// The unguessable last segment of the callback path.
    pub path_secret: String,
    /// Wakes the worker when an event is committed or replayed.
    pub wake: Notify,
}

impl Webhooks {
    /// Loads the path secret, creating it on first start.
    pub async fn load(store: &Store) -> DbResult<Self> {
        let path_secret = store.path_secret().await?;
        Ok(Self {
            path_secret,
            wake: Notify::new(),
        })
    }
}

/// The callback URL to register with Strava.
pub fn callback_url(public_url: &str, path_secret: &str) -> String {
    format!("{public_url}/webhook/{path_secret}")
}
