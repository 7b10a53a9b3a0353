//! The token lifecycle: an athlete's access token is refreshed a little
//! before it expires, once per athlete however many callers need it at the
//! same moment, in this instance (a per-athlete lock, re-checked after
//! waiting) and across the instances sharing the database (a refresh one
//! instance took on holds the others off until its tokens are saved); the
//! rotated refresh token is committed before the new access token is used.
//! A token Strava refuses although it looked valid (revoked, or our clock
//! behind Strava's) is refreshed once too. A refused refresh, a refreshed
//! token refused again, or a call refused for a scope the athlete did not
//! grant marks the athlete as needing re-authorization; from then on nothing
//! is sent for them (no loop of doomed refreshes) until they connect again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::error::StravaError;
use super::oauth::{OAuthError, StravaOAuth, TokenGrant};
use crate::model::clock::Clock;
use crate::store::athletes::Status;
use crate::store::strava_tokens::{RefreshClaim, StoredTokens};
use crate::store::Store;

/// Refresh when the access token expires within this many seconds.
pub const REFRESH_AHEAD_SECS: i64 = 600;

/// How often a caller looks again while another instance refreshes.
const PEER_REFRESH_POLL: std::time::Duration = std::time::Duration::from_millis(200);

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
        let stored = self.stored(athlete_id).await?;
        if self.fresh(&stored) {
            return Ok(stored.access_token);
        }
        // Whoever held the lock before us may have refreshed already.
        self.one_at_a_time(athlete_id, self.refreshed(athlete_id, None))
            .await
    }

    /// A new access token after Strava refused `rejected`, which looked
    /// valid: refreshed once, unless another caller refused at the same
    /// moment has stored a new one already.
    pub async fn renew(&self, athlete_id: i64, rejected: &str) -> Result<String, StravaError> {
        self.one_at_a_time(athlete_id, self.refreshed(athlete_id, Some(rejected)))
            .await
    }

    /// A fresh access token that is not `rejected`: the stored one when it
    /// is, else one this instance refreshes, unless another instance is
    /// refreshing it, whose outcome is then awaited.
    async fn refreshed(
        &self,
        athlete_id: i64,
        rejected: Option<&str>,
    ) -> Result<String, StravaError> {
        loop {
            self.stored(athlete_id).await?;
            let fresh_after = self.clock.epoch() + REFRESH_AHEAD_SECS;
            let rejected = rejected.map(str::to_owned);
            let usable = move |t: &StoredTokens| {
                t.expires_at > fresh_after && rejected.as_ref() != Some(&t.access_token)
            };
            let claim = self
                .store
                .claim_token_refresh(athlete_id, usable, self.clock.epoch())
                .await?;
            match claim {
                None => return Err(StravaError::NotConnected),
                Some(RefreshClaim::Use(tokens)) => return Ok(tokens.access_token),
                Some(RefreshClaim::Wait) => tokio::time::sleep(PEER_REFRESH_POLL).await,
                Some(RefreshClaim::Refresh(stored)) => {
                    let refreshed = self.refresh(athlete_id, &stored).await;
                    if refreshed.is_err() {
                        self.store.give_up_token_refresh(athlete_id).await?;
                    }
                    return refreshed;
                }
            }
        }
    }

    /// Strava refused even a renewed token: the athlete must connect again.
    pub async fn refused(&self, athlete_id: i64) -> StravaError {
        tracing::warn!(
            athlete_id,
            "Strava refused a renewed token; the athlete must re-authorize"
        );
        self.needs_reauth(athlete_id).await
    }

    /// Marks the athlete as needing to connect again; the error to return.
    async fn needs_reauth(&self, athlete_id: i64) -> StravaError {
        match self
            .store
            .mark_needs_reauth(athlete_id, self.clock.epoch())
            .await
        {
            Ok(()) => StravaError::NeedsReauth,
            Err(e) => e.into(),
        }
    }

    /// Strava refused a call for `scope` the athlete did not grant, whatever
    /// the callback claimed: the scope is dropped from what is stored, and
    /// the athlete must connect again, granting it.
    pub async fn scope_refused(&self, athlete_id: i64, scope: &str) -> StravaError {
        tracing::warn!(
            athlete_id,
            scope,
            "Strava refused a call for a missing scope"
        );
        let now = self.clock.epoch();
        match self
            .store
            .refuse_scope(athlete_id, scope.to_string(), now)
            .await
        {
            Ok(()) => StravaError::NeedsReauth,
            Err(e) => e.into(),
        }
    }

    /// Runs `work` holding the athlete's refresh lock.
    async fn one_at_a_time<T>(&self, athlete_id: i64, work: impl Future<Output = T>) -> T {
        let lock = self.lock_for(athlete_id);
        let result = {
            let _one_at_a_time = lock.lock().await;
            work.await
        };
        let mut locks = self.locks();
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(&athlete_id);
        }
        result
    }

    /// The athlete's stored tokens, unless there are none to use.
    async fn stored(&self, athlete_id: i64) -> Result<StoredTokens, StravaError> {
        let Some((athlete, tokens)) = self.store.athlete_tokens(athlete_id).await? else {
            return Err(StravaError::NotConnected);
        };
        if athlete.status == Status::NeedsReauth {
            return Err(StravaError::NeedsReauth);
        }
        Ok(tokens)
    }

    /// Whether the access token is good for a while yet.
    fn fresh(&self, tokens: &StoredTokens) -> bool {
        tokens.expires_at > self.clock.epoch() + REFRESH_AHEAD_SECS
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
                Err(self.needs_reauth(athlete_id).await)
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
