//! How a call to Strava can fail, shared by the client and the token
//! lifecycle (which refreshes tokens for the client).

use super::oauth::OAuthError;
use crate::store::DbError;

#[derive(Debug, thiserror::Error)]
pub enum StravaError {
    /// 401: the access token is invalid or revoked.
    #[error("Strava refused the access token")]
    InvalidToken,
    /// 401: the athlete did not grant the scope the call needs.
    #[error("the athlete did not grant {0}")]
    MissingScope(String),
    #[error("not found on Strava")]
    NotFound,
    /// 429: the budget window is locked until it resets.
    #[error("Strava's rate limit was exceeded")]
    RateLimited,
    #[error("Strava answered {0}")]
    Server(u16),
    /// No answer: connection refused, reset, or timed out.
    #[error("could not reach Strava: {0}")]
    Transport(String),
    #[error("Strava is failing; calls are suspended until {0}")]
    CircuitOpen(chrono::DateTime<chrono::Utc>),
    #[error("unexpected answer from Strava ({status}): {message}")]
    Unexpected { status: u16, message: String },
    /// A success whose body is not the JSON the endpoint promises.
    #[error("Strava sent malformed JSON: {0}")]
    Malformed(String),
    /// Strava's refresh was refused: the athlete must connect again.
    #[error("the athlete needs to re-authorize")]
    NeedsReauth,
    #[error("the athlete is not connected")]
    NotConnected,
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl StravaError {
    /// Whether trying again later may succeed (Strava or the network was at
    /// fault, not the request).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StravaError::RateLimited
                | StravaError::Server(_)
                | StravaError::Transport(_)
                | StravaError::CircuitOpen(_)
                | StravaError::OAuth(OAuthError::Transport(_))
        )
    }
}
