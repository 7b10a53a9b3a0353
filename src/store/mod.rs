//! Storage: a SQLite file ([`sqlite`], the default) or a PostgreSQL
//! database several instances share ([`postgres`]), each behind r2d2 pools
//! with one writer and several readers.
//!
//! Table families live in their own modules as plain functions over a
//! [`sql::Connection`], the interface both backends implement, so one
//! transaction can span families and each use case is written once. The
//! rest of the service reaches storage only through the named use-case
//! methods on [`Store`] (connect an athlete, apply an event, store a
//! listing, claim a job, ...), each one transaction run off the async
//! threads.

pub mod activities;
pub mod activity_edits;
pub mod api_tokens;
pub mod athletes;
pub mod budget;
pub mod changes;
pub mod events;
mod group_commit;
pub mod inbox;
pub mod instances;
pub mod jobs;
pub mod lifecycle;
pub mod oauth_states;
mod page_anchors;
mod postgres;
pub mod service_state;
pub mod sql;
mod sqlite;
pub mod strava_tokens;
pub mod subscription;
pub mod sync_state;
pub mod token_cipher;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::ErrorCode;

use crate::config::Database;
use token_cipher::TokenCipher;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres_message(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("query returned no rows")]
    NoRows,
    /// A stored value that does not read as the type asked for.
    #[error("unreadable stored value: {0}")]
    Decode(String),
    #[error("connection pool error: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("migration error: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A database setting that cannot work (an unparsable URL).
    #[error("{0}")]
    Config(String),
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
            // PostgreSQL's "insufficient resources" (a full disk among them)
            // and "system error" (I/O) classes.
            || self
                .sql_state()
                .is_some_and(|s| s.code().starts_with("53") || s.code().starts_with("58"))
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
            || matches!(self, DbError::Postgres(e) if e.is_closed())
            // Connection exceptions, and a server shutting down or starting.
            || self
                .sql_state()
                .is_some_and(|s| s.code().starts_with("08") || s.code().starts_with("57P"))
    }
}

/// The server's own message where there is one: the driver's display of
/// a server error says only "db error".
fn postgres_message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// Where the data lives.
#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
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
    /// This process among the instances sharing the database (see
    /// [`instances`]): what it claims is marked with it.
    instance: Arc<str>,
}

impl Store {
    /// Opens a SQLite file (see [`sqlite::Sqlite::open`]).
    pub fn open(path: &Path) -> DbResult<Self> {
        Ok(Self::with_backend(Backend::Sqlite(sqlite::Sqlite::open(
            path,
        )?)))
    }

    /// Opens the configured database, applying migrations. Blocking: on
    /// PostgreSQL it connects and may wait for another instance migrating.
    pub fn connect(database: &Database) -> DbResult<Self> {
        match database {
            Database::Sqlite(path) => Self::open(path),
            Database::Postgres(url) => Ok(Self::with_backend(Backend::Postgres(
                postgres::Postgres::open(url)?,
            ))),
        }
    }

    fn with_backend(backend: Backend) -> Self {
        Self {
            backend,
            failing: Arc::default(),
            cipher: None,
            committer: Default::default(),
            page_anchors: Default::default(),
            instance: format!("{:016x}", rand::random::<u64>()).into(),
        }
    }

    /// Hands back what the database's connections cache in this process
    /// (SQLite's page caches; PostgreSQL caches in its server), so memory a
    /// burst filled is not kept through the idle after it.
    pub async fn shrink_memory(&self) -> DbResult<()> {
        match &self.backend {
            Backend::Sqlite(lite) => {
                let lite = lite.clone();
                tokio::task::spawn_blocking(move || lite.shrink_memory()).await?
            }
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Applies migrations and returns.
    pub fn migrate(database: &Database) -> DbResult<()> {
        Self::connect(database).map(|_| ())
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

    /// Hands freed space back to the file system where the backend keeps
    /// deleted rows around (SQLite's write-ahead log).
    async fn checkpoint(&self) -> DbResult<()> {
        match &self.backend {
            Backend::Sqlite(lite) => {
                let lite = lite.clone();
                tokio::task::spawn_blocking(move || lite.checkpoint()).await?
            }
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Runs read-only work on a reader connection, off the async threads.
    /// The use-case methods are built on it; outside `store` only tests and
    /// tools reach for it, to seed or inspect rows.
    pub async fn read<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn sql::Connection) -> DbResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f)).await?
    }

    /// Runs work in one write transaction (SQLite's `BEGIN IMMEDIATE` on its
    /// one writer; PostgreSQL's under the schema's write lock), off the async
    /// threads; commits when the closure returns `Ok`.
    pub async fn write<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn sql::Connection) -> DbResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_blocking(f)).await?
    }

    /// [`Store::write`] for a row only this instance writes (its
    /// heartbeat): on PostgreSQL it does not queue behind the other
    /// instances' writes, so a busy database does not make a live instance
    /// look dead. SQLite has one instance and one writer.
    pub async fn write_apart<T, F>(&self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn sql::Connection) -> DbResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.noted(match &store.backend {
                Backend::Sqlite(lite) => lite.write(f),
                Backend::Postgres(pg) => pg.write_apart(f),
            })
        })
        .await?
    }

    /// [`Store::write`] for callers already on a blocking thread.
    pub fn write_blocking<T>(
        &self,
        f: impl FnOnce(&dyn sql::Connection) -> DbResult<T>,
    ) -> DbResult<T> {
        self.noted(match &self.backend {
            Backend::Sqlite(lite) => lite.write(f),
            Backend::Postgres(pg) => pg.write(f),
        })
    }

    /// [`Store::read`] for callers already on a blocking thread.
    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&dyn sql::Connection) -> DbResult<T>,
    ) -> DbResult<T> {
        self.noted(match &self.backend {
            Backend::Sqlite(lite) => lite.read(f),
            Backend::Postgres(pg) => pg.read(f),
        })
    }

    /// Passes `result` on, marking the store failing on a storage fault
    /// (logged once per spell).
    fn noted<T>(&self, result: DbResult<T>) -> DbResult<T> {
        if let Err(error) = &result {
            if error.is_storage_fault() && !self.failing.swap(true, Ordering::Relaxed) {
                tracing::error!(%error, "storage failed; not ready until it takes writes again");
            }
        }
        result
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
                .read(|c| c.query_row("SELECT 1", sql::params![], |r| r.get::<i64>(0)))
                .await
                .is_ok()
    }
}
