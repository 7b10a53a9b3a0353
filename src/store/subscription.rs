//! The application's push subscription as kept in `service_state`: the
//! callback path secret (generated once, so the callback URL stays stable
//! across restarts and the CLI and the server agree on it) and the id Strava
//! gave the subscription, which incoming events must carry.

use super::sql::Connection;

use super::api_tokens::random_token;
use super::{service_state, DbResult, Store};

const PATH_SECRET: &str = "webhook_path_secret";
const SUBSCRIPTION_ID: &str = "webhook_subscription_id";

/// The callback path secret, created on first use: 32 random bytes as hex.
pub fn path_secret(conn: &dyn Connection) -> DbResult<String> {
    service_state::get_or_insert(conn, PATH_SECRET, &random_token())
}

/// The id of our subscription, once `subscription create` has stored it.
pub fn id(conn: &dyn Connection) -> DbResult<Option<i64>> {
    Ok(service_state::get(conn, SUBSCRIPTION_ID)?.and_then(|v| v.parse().ok()))
}

pub fn set_id(conn: &dyn Connection, id: i64) -> DbResult<()> {
    service_state::set(conn, SUBSCRIPTION_ID, &id.to_string())
}

pub fn clear_id(conn: &dyn Connection) -> DbResult<()> {
    service_state::delete(conn, SUBSCRIPTION_ID)
}

impl Store {
    /// The callback path secret, created on first use.
    pub async fn path_secret(&self) -> DbResult<String> {
        self.write(|tx| path_secret(tx)).await
    }

    pub async fn subscription_id(&self) -> DbResult<Option<i64>> {
        self.read(id).await
    }

    pub async fn set_subscription_id(&self, subscription_id: i64) -> DbResult<()> {
        self.write(move |tx| set_id(tx, subscription_id)).await
    }

    pub async fn clear_subscription_id(&self) -> DbResult<()> {
        self.write(|tx| clear_id(tx)).await
    }
}
