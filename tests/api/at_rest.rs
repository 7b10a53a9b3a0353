//! What the database file gives away when copied: Strava's tokens only
//! sealed under `TOKEN_ENCRYPTION_KEY` (plaintext ones sealed at start, a
//! rotated key still read), a file only its owner can read, and nothing of
//! a purged athlete left in its free space.

use std::path::{Path, PathBuf};

use serde_json::json;
use strava_sync::startup::Application;
use strava_sync::store::strava_tokens::StoredTokens;
use strava_sync::store::{athletes, Store};

use crate::helpers::{now, on_postgres, test_settings, TestApp};

/// The database file and its write-ahead log, as a copy would take them.
fn file_bytes(db: &Path) -> Vec<u8> {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    [db.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .flatten()
        .collect()
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

fn tokens(access: &str) -> StoredTokens {
    StoredTokens {
        access_token: access.to_string(),
        refresh_token: format!("{access}-refresh"),
        expires_at: now() + 6 * 3600,
    }
}

#[tokio::test]
async fn strava_tokens_are_sealed_at_rest_and_the_file_is_its_owners_alone() {
    let app = TestApp::spawn().await;
    let profile = json!({"id": 7, "firstname": "Ada"});
    let given = tokens("access-7f3c2a");
    let (athlete, _) = app
        .store
        .connect_athlete(
            profile,
            "read,activity:read_all".into(),
            given.clone(),
            now(),
        )
        .await
        .unwrap();
    let columns: Vec<Vec<u8>> = app
        .store
        .read(|c| {
            c.query_map(
                "SELECT access_token FROM strava_tokens UNION ALL SELECT refresh_token FROM strava_tokens",
                strava_sync::params![],
                |r| r.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(columns.len(), 2);
    for sealed in &columns {
        assert!(!holds(sealed, "access-7f3c2a"), "stored sealed, as bytes");
    }
    let (_, stored) = app.store.athlete_tokens(athlete).await.unwrap().unwrap();
    assert_eq!(stored, given);
    if on_postgres() {
        // The rest is about SQLite's file.
        return;
    }
    let bytes = file_bytes(&app.database_path());
    assert!(holds(&bytes, "Ada"), "the file is read at all");
    assert!(!holds(&bytes, "access-7f3c2a"));

    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let path = format!("{}{suffix}", app.database_path().display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{path} is {mode:o}");
    }
}

const KEY_A: &str = "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11";
const KEY_B: &str = "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22";

/// Builds the app on `dir`'s database with these keys; returns what it
/// reads of athlete 7's tokens, or why it would not start.
async fn start_with(
    dir: &tempfile::TempDir,
    keys: &[(&str, &str)],
) -> Result<StoredTokens, String> {
    let app = Application::build(test_settings(dir, keys))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let store = app.services().store.clone();
    let (_, stored) = store.athlete_tokens(7).await.unwrap().unwrap();
    Ok(stored)
}

#[tokio::test]
async fn plaintext_tokens_are_sealed_at_start_and_a_rotated_key_still_opens_them() {
    if on_postgres() {
        // Plaintext tokens are SQLite's past; PostgreSQL's schema holds
        // only sealed bytes.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("test.db");
    // A database from before encryption.
    let store = Store::open(&db).unwrap();
    store
        .write(|tx| {
            athletes::upsert(tx, &json!({"id": 7}), "read,activity:read_all", 0)?;
            tx.execute(
                "INSERT INTO strava_tokens (athlete_id, access_token, refresh_token, expires_at, updated_at)
                 VALUES (7, 'plain-access-9d', 'plain-refresh-9d', 1, 0)",
                strava_sync::params![],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    drop(store);
    assert!(holds(&file_bytes(&db), "plain-access-9d"));

    let opened = start_with(&dir, &[("TOKEN_ENCRYPTION_KEY", KEY_A)])
        .await
        .unwrap();
    assert_eq!(opened.access_token, "plain-access-9d");
    assert_eq!(opened.refresh_token, "plain-refresh-9d");
    let bytes = file_bytes(&db);
    assert!(!holds(&bytes, "plain-access-9d") && !holds(&bytes, "plain-refresh-9d"));

    // Rotation: the new key, with the old one still accepted for reading...
    let rotated = [
        ("TOKEN_ENCRYPTION_KEY", KEY_B),
        ("TOKEN_ENCRYPTION_KEY_PREVIOUS", KEY_A),
    ];
    assert_eq!(start_with(&dir, &rotated).await.unwrap(), opened);
    // ...has sealed everything anew, so the old key can go.
    let only_b = [("TOKEN_ENCRYPTION_KEY", KEY_B)];
    assert_eq!(start_with(&dir, &only_b).await.unwrap(), opened);
    let err = start_with(&dir, &[("TOKEN_ENCRYPTION_KEY", KEY_A)])
        .await
        .unwrap_err();
    assert!(err.contains("TOKEN_ENCRYPTION_KEY"), "{err}");
    assert!(!err.contains("plain-"), "{err}");
}

#[tokio::test]
async fn a_purged_athlete_leaves_nothing_in_the_files_free_space() {
    if on_postgres() {
        // SQLite's file and its free pages.
        return;
    }
    let app = TestApp::spawn().await;
    let (athlete, token) = app.seed_athlete("athlete.json").await;
    let page: Vec<Box<serde_json::value::RawValue>> = (0..300)
        .map(|i| {
            serde_json::value::RawValue::from_string(format!(
                r#"{{"id":{},"athlete":{{"id":{athlete}}},"name":"Quokka-{i}","start_date":"2024-05-01T07:00:00Z","type":"Ride"}}"#,
                17_179_869_185i64 + i
            ))
            .unwrap()
        })
        .collect();
    app.seed_summaries(athlete, page).await;
    assert_eq!(app.disconnect(&token).await.status(), 200);

    // Everything committed reaches the file, as a copy or backup finds it.
    let db = app.database_path();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert!(!holds(&std::fs::read(&db).unwrap(), "Quokka-"));
}
