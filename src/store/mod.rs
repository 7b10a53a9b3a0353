//! Storage: one SQLite file behind two r2d2 pools, one writer and several
//! readers, so writes never contend with each other for the file lock.
//!
//! Table families live in their own modules as plain functions over a
//! `rusqlite::Connection`, so one transaction can span families. The rest of
//! the service reaches storage only through the named use-case methods on
//! [`Store`] (connect an athlete, apply an event, store a listing, claim a
//! job, ...), each one transaction run off the async threads; they are the
//! seam a second backend implements.

pub mod activities;
pub mod activity_edits;
pub mod api_tokens;
pub mod athletes;
pub mod budget;
pub mod changes;
pub mod events;
mod group_commit;
pub mod inbox;
pub mod jobs;
pub mod lifecycle;
pub mod oauth_states;
mod page_anchors;
pub mod service_state;
pub mod strava_tokens;
pub mod subscription;
pub mod sync_state;
pub mod token_cipher;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use include_dir::{include_dir, Dir};
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};
use rusqlite_migration::Migrations;

use token_cipher::TokenCipher;

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations");

/// How long a connection waits for the file lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READER_POOL_SIZE: u32 = 8;
/// Readers idle this long are closed (down to one), handing their page
/// cache back: a read burst's memory is not kept for good.
const READER_IDLE: Duration = Duration::from_secs(30);
/// Page cache per connection, in KiB (SQLite's default is 2,000): nine
/// connections at the default could hold 18 MB.
const CACHE_KIB: i64 = 1024;
/// Prepared statements kept per connection; applying a batch of events
/// uses more than rusqlite's default of 16, which would re-prepare them.
const STATEMENT_CACHE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool error: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("migration error: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("stored data is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("database file: {0}")]
    File(#[from] std::io::Error),
    /// Strava tokens that cannot be opened, or no key to open them with.
    #[error("Strava tokens: {0}")]
    Tokens(String),
    /// The webhook inbox's committer thread is gone (it panicked).
    #[error("the webhook inbox committer stopped")]
    CommitterStopped,
}

impl DbError {
    /// Whether the storage under the database failed (a full disk, an I/O
    /// error, a file that cannot be opened or written): nothing is wrong with
    /// the request, and nothing will work until an operator steps in.
    pub fn is_storage_fault(&self) -> bool {
        matches!(self, DbError::File(_))
            || matches!(
                self,
                DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if matches!(
                    e.code,
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::CannotOpen
                        | ErrorCode::ReadOnly
                        | ErrorCode::DatabaseCorrupt
                        | ErrorCode::NotADatabase
                )
            )
    }

    /// Whether the database could not serve at all (a storage fault, or no
    /// connection or lock to be had in time), as opposed to failing this
    /// request's work.
    pub fn is_unavailable(&self) -> bool {
        self.is_storage_fault()
            || matches!(self, DbError::Pool(_) | DbError::CommitterStopped)
            || matches!(
                self,
                DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            )
    }
}

pub type DbResult<T> = Result<T, DbError>;

#[derive(Clone)]
pub struct Store {
    writer: Pool<SqliteConnectionManager>,
    readers: Pool<SqliteConnectionManager>,
    /// Set by a storage fault; cleared by [`Store::ready`] once a write that
    /// allocates pages commits (smaller writes may still fit while others
    /// fail).
    failing: Arc<AtomicBool>,
    /// Seals Strava's tokens; None where no command touches them.
    cipher: Option<Arc<TokenCipher>>,
    /// Commits webhook events in groups (see [`group_commit`]).
    committer: group_commit::Committer,
    /// Where deep list pages start (see [`page_anchors`]).
    page_anchors: page_anchors::PageAnchors,
}

impl Store {
    /// Opens the database file (creating it readable by its owner only),
    /// switches it to WAL once, applies migrations and builds the pools.
    pub fn open(path: &Path) -> DbResult<Self> {
        create_private(path)?;
        {
            let mut conn = Connection::open(path)?;
            // WAL is a property of the file: set it here, once, rather than in
            // every pooled connection, where concurrent first opens race.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            configure(&mut conn)?;
            migrations().to_latest(&mut conn)?;
        }
        let manager = |init: fn(&mut Connection) -> rusqlite::Result<()>| {
            SqliteConnectionManager::file(path).with_init(init)
        };
        let writer = Pool::builder()
            .max_size(1)
            .build(manager(configure_writer))?;
        let readers = Pool::builder()
            .max_size(READER_POOL_SIZE)
            .min_idle(Some(1))
            .idle_timeout(Some(READER_IDLE))
            .build(manager(configure))?;
        Ok(Self {
            writer,
            readers,
            failing: Arc::default(),
            cipher: None,
            committer: Default::default(),
            page_anchors: Default::default(),
        })
    }

    /// This store, sealing Strava's tokens with `cipher`.
    pub fn with_token_cipher(self, cipher: TokenCipher) -> Self {
        Self {
            cipher: Some(Arc::new(cipher)),
            ..self
        }
    }

    fn cipher(&self) -> DbResult<Arc<TokenCipher>> {
        self.cipher
            .clone()
            .ok_or_else(|| DbError::Tokens("no TOKEN_ENCRYPTION_KEY to open them with".into()))
    }

    /// Copies the write-ahead log into the file and empties it.
    async fn checkpoint(&self) -> DbResult<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            writer
                .get()?
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await?
    }

    /// Applies migrations to the file and returns.
    pub fn migrate(path: &Path) -> DbResult<()> {
        Self::open(path).map(|_| ())
    }

    /// Runs read-only work on a reader connection, off the async threads.
    /// The use-case methods are built on it; outside `store` only tests and
    /// tools reach for it, to seed or inspect rows.
    pub async fn read<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f)).await?
    }

    /// Runs work in one `BEGIN IMMEDIATE` transaction on the writer, off the
    /// async threads; commits when the closure returns `Ok`.
    pub async fn write<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> DbResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_blocking(f)).await?
    }

    /// [`Store::write`] for callers already on a blocking thread.
    pub fn write_blocking<T>(&self, f: impl FnOnce(&Transaction) -> DbResult<T>) -> DbResult<T> {
        let result = (|| {
            let mut conn = self.writer.get()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if let Err(e) = &result {
            self.note_fault(e);
        }
        result
    }

    /// [`Store::read`] for callers already on a blocking thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> DbResult<T>) -> DbResult<T> {
        let result = self
            .readers
            .get()
            .map_err(DbError::from)
            .and_then(|c| f(&c));
        if let Err(e) = &result {
            self.note_fault(e);
        }
        result
    }

    /// Marks the store failing on a storage fault (logged once per spell).
    fn note_fault(&self, error: &DbError) {
        if error.is_storage_fault() && !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, "storage failed; not ready until it takes writes again");
        }
    }

    /// Whether the database answers and, after a storage fault, takes a
    /// write again: one that must allocate pages and reach the disk, as the
    /// write that failed did.
    pub async fn ready(&self) -> bool {
        if self.failing.load(Ordering::Relaxed)
            && self
                .write(|tx| service_state::probe_write(tx))
                .await
                .is_ok()
        {
            self.failing.store(false, Ordering::Relaxed);
        }
        !self.failing.load(Ordering::Relaxed)
            && self
                .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
                .await
                .is_ok()
    }
}

/// Creates the database file, readable and writable by its owner only, if
/// it does not exist yet; SQLite gives the WAL and shared-memory files the
/// database file's permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every connection overwrites what it deletes (`secure_delete`), so a
/// purged athlete's rows do not live on in the file's free space, and keeps
/// a bounded page cache.
fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

/// The writer syncs the WAL at every commit: a webhook acknowledged after its
/// commit must survive a power loss too, not only a crash of the process
/// (with `NORMAL` the last commits before an OS crash can roll back).
fn configure_writer(conn: &mut Connection) -> rusqlite::Result<()> {
    configure(conn)?;
    conn.pragma_update(None, "synchronous", "FULL")
}

fn migrations() -> Migrations<'static> {
    Migrations::from_directory(&MIGRATIONS_DIR).expect("migrations directory is well-formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[tokio::test]
    async fn opens_in_wal_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let (mode, fk) = store
            .read(|c| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let fk: i64 = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
                Ok((mode, fk))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
        let synchronous = store
            .write(|tx| Ok(tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL: a commit is durable when it returns");
        assert!(store.ready().await);
    }
}
