//! The token lifecycle: an athlete's access token is refreshed a little
//! before it expires, once per athlete however many callers need it at the
//! same moment (a per-athlete lock, re-checked after waiting), and the
//! rotated refresh token is committed before the new access token is used.
//! A refused refresh marks the athlete as needing re-authorization; from then
//! on nothing is sent for them (no loop of doomed refreshes) until they
//! connect again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::StravaError;
use super::oauth::{OAuthError, StravaOAuth, TokenGrant};
use crate::model::clock::Clock;
use crate::store::athletes::Status;
use crate::store::strava_tokens::StoredTokens;
use crate::store::Store;

/// Refresh when the access token expires within this many seconds.
pub const REFRESH_AHEAD_SECS: i64 = 600;

impl From<&TokenGrant> for StoredTokens {
    fn from(g: &TokenGrant) -> Self {
        StoredTokens {
            access_token: g.access_token.clone(),
            refresh_token: g.refresh_token.clone(),
            expires_at: g.expires_at,
        }
    }
}

pub struct Tokens {
    store: Store,
    oauth: Arc<StravaOAuth>,
    clock: Arc<dyn Clock>,
    /// One lock per athlete with a refresh in flight or waited for.
    refreshing: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Tokens {
    pub fn new(store: Store, oauth: Arc<StravaOAuth>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            oauth,
            clock,
            refreshing: Mutex::default(),
        }
    }

    /// A usable access token for the athlete, refreshing it first if needed.
    pub async fn access_token(&self, athlete_id: i64) -> Result<String, StravaError> {
        if let Fresh::Yes(token) = self.check(athlete_id).await? {
            return Ok(token);
        }
        let lock = self.lock_for(athlete_id);
        let result = {
            let _one_at_a_time = lock.lock().await;
            // Whoever held the lock before us may have refreshed already.
            match self.check(athlete_id).await? {
                Fresh::Yes(token) => Ok(token),
                Fresh::No(stored) => self.refresh(athlete_id, &stored).await,
            }
        };
        let mut locks = self.locks();
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(&athlete_id);
        }
        result
    }

    /// The stored token if it is good for a while yet, else the stored set.
    async fn check(&self, athlete_id: i64) -> Result<Fresh, StravaError> {
        let Some((athlete, tokens)) = self.store.athlete_tokens(athlete_id).await? else {
            return Err(StravaError::NotConnected);
        };
        if athlete.status == Status::NeedsReauth {
            return Err(StravaError::NeedsReauth);
        }
        Ok(
            if tokens.expires_at > self.clock.epoch() + REFRESH_AHEAD_SECS {
                Fresh::Yes(tokens.access_token)
            } else {
                Fresh::No(tokens)
            },
        )
    }

    async fn refresh(&self, athlete_id: i64, stored: &StoredTokens) -> Result<String, StravaError> {
        match self.oauth.refresh(&stored.refresh_token).await {
            Ok(grant) => {
                let tokens = StoredTokens::from(&grant);
                self.store
                    .save_tokens(athlete_id, tokens, self.clock.epoch())
                    .await?;
                tracing::info!(athlete_id, "refreshed Strava tokens");
                Ok(grant.access_token)
            }
            Err(OAuthError::RefreshRefused(fault)) => {
                tracing::warn!(athlete_id, %fault, "refresh refused; the athlete must re-authorize");
                self.store
                    .mark_needs_reauth(athlete_id, self.clock.epoch())
                    .await?;
                Err(StravaError::NeedsReauth)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn lock_for(&self, athlete_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.locks().entry(athlete_id).or_default().clone()
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<tokio::sync::Mutex<()>>>> {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Fresh {
    Yes(String),
    No(StoredTokens),
}
