//! Strava's tokens at rest: sealed with AES-256-GCM under
//! `TOKEN_ENCRYPTION_KEY`, so a copied database file or backup holds no
//! usable Strava credential.
//!
//! A sealed value is `[1][key id: 4][nonce: 12][ciphertext and tag]`. The
//! key id (the start of a hash of the key) says which key sealed it, so a
//! value sealed with `TOKEN_ENCRYPTION_KEY_PREVIOUS` is opened with that key
//! and resealed with the current one at start, and a value sealed with
//! neither is named as such rather than failing as tampering. The athlete
//! and the column are the associated data: a value moved to another row or
//! column does not open.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

use crate::config::TokenKey;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// The current key, and the one being rotated out.
pub struct TokenCipher {
    current: Sealer,
    previous: Option<Sealer>,
}

struct Sealer {
    id: [u8; KEY_ID_LEN],
    aead: Aes256Gcm,
}

impl Sealer {
    fn new(key: &TokenKey) -> Self {
        let digest = Sha256::digest([b"strava-sync token key:".as_slice(), key.expose()].concat());
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            id,
            aead: Aes256Gcm::new(key.expose().into()),
        }
    }
}

/// Why a stored value did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error(
        "sealed with a key that is neither TOKEN_ENCRYPTION_KEY nor TOKEN_ENCRYPTION_KEY_PREVIOUS"
    )]
    UnknownKey,
    #[error("not a sealed token, or altered")]
    Malformed,
}

/// A value opened, and whether it should be sealed again with the current
/// key.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub text: String,
    pub stale: bool,
}

impl TokenCipher {
    pub fn new(current: &TokenKey, previous: Option<&TokenKey>) -> Self {
        Self {
            current: Sealer::new(current),
            previous: previous.map(Sealer::new),
        }
    }

    /// Seals `text`, the athlete's `column`, with the current key.
    pub fn seal(&self, athlete_id: i64, column: &str, text: &str) -> Vec<u8> {
        let nonce = Nonce::generate();
        let aad = associated(athlete_id, column);
        let sealed = self
            .current
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: text.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any token-sized message");
        [
            [VERSION].as_slice(),
            &self.current.id,
            nonce.as_slice(),
            &sealed,
        ]
        .concat()
    }

    /// Opens what [`TokenCipher::seal`] made for the athlete's `column`.
    pub fn open(&self, athlete_id: i64, column: &str, value: &[u8]) -> Result<Opened, OpenError> {
        if value.len() < HEADER_LEN || value[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let (id, rest) = value[1..].split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (sealer, stale) = if id == self.current.id {
            (&self.current, false)
        } else {
            match &self.previous {
                Some(previous) if id == previous.id => (previous, true),
                _ => return Err(OpenError::UnknownKey),
            }
        };
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let aad = associated(athlete_id, column);
        let text = sealer
            .aead
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Malformed)?;
        Ok(Opened {
            text: String::from_utf8(text).map_err(|_| OpenError::Malformed)?,
            stale,
        })
    }
}

fn associated(athlete_id: i64, column: &str) -> Vec<u8> {
    format!("strava_tokens:{athlete_id}:{column}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> TokenKey {
        TokenKey::new([byte; 32])
    }

    #[test]
    fn a_sealed_token_opens_only_for_its_row_and_column_and_key() {
        let cipher = TokenCipher::new(&key(1), None);
        let sealed = cipher.seal(7, "access_token", "abc123");
        assert!(!sealed.windows(6).any(|w| w == b"abc123"));
        let opened = cipher.open(7, "access_token", &sealed).unwrap();
        assert_eq!(
            opened,
            Opened {
                text: "abc123".into(),
                stale: false
            }
        );
        assert_ne!(
            sealed,
            cipher.seal(7, "access_token", "abc123"),
            "fresh nonces"
        );
        assert_eq!(
            cipher.open(8, "access_token", &sealed),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            cipher.open(7, "refresh_token", &sealed),
            Err(OpenError::Malformed)
        );
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            cipher.open(7, "access_token", &altered),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            cipher.open(7, "access_token", b"abc123"),
            Err(OpenError::Malformed)
        );
        let other = TokenCipher::new(&key(2), None);
        assert_eq!(
            other.open(7, "access_token", &sealed),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn the_previous_key_still_opens_and_says_so() {
        let old = TokenCipher::new(&key(1), None);
        let sealed = old.seal(7, "refresh_token", "r");
        let rotated = TokenCipher::new(&key(2), Some(&key(1)));
        let opened = rotated.open(7, "refresh_token", &sealed).unwrap();
        assert!(opened.stale);
        let resealed = rotated.seal(7, "refresh_token", &opened.text);
        assert!(!rotated.open(7, "refresh_token", &resealed).unwrap().stale);
    }
}
