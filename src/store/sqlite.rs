//! The SQLite backend: one file behind two r2d2 pools, one writer and
//! several readers, so writes never contend with each other for the file
//! lock. [`Connection`] over rusqlite with cached statements, plus the
//! scalar `greatest` and `least` PostgreSQL has built in, so the shared SQL
//! takes the larger of two values the same way on both.

use std::path::Path;
use std::time::Duration;

use include_dir::{include_dir, Dir};
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, Value, ValueRef as LiteRef};
use rusqlite::TransactionBehavior;
use rusqlite_migration::Migrations;

use super::sql::{Connection, Dialect, Row, ToSql, ValueRef};
use super::DbResult;

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations/sqlite");

/// How long a connection waits for the file lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READER_POOL_SIZE: u32 = 8;
/// Readers idle this long are closed (down to one) at the pool's next
/// check, every 30 s, handing their page cache back: a read burst's memory
/// is given back within 40 s of idle.
const READER_IDLE: Duration = Duration::from_secs(10);
/// Page cache per connection, in KiB (SQLite's default is 2,000): nine
/// connections at the default could hold 18 MB.
const CACHE_KIB: i64 = 1024;
/// Prepared statements kept per connection; applying a batch of events
/// uses more than rusqlite's default of 16, which would re-prepare them.
const STATEMENT_CACHE: usize = 64;

#[derive(Clone)]
pub struct Sqlite {
    writer: Pool<SqliteConnectionManager>,
    readers: Pool<SqliteConnectionManager>,
}

impl Sqlite {
    /// Opens the database file (creating it readable by its owner only),
    /// switches it to WAL once, applies migrations and builds the pools.
    pub fn open(path: &Path) -> DbResult<Self> {
        create_private(path)?;
        {
            let mut conn = rusqlite::Connection::open(path)?;
            // WAL is a property of the file: set it here, once, rather than in
            // every pooled connection, where concurrent first opens race.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            configure(&mut conn)?;
            migrations().to_latest(&mut conn)?;
        }
        let manager = |init: fn(&mut rusqlite::Connection) -> rusqlite::Result<()>| {
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
        Ok(Self { writer, readers })
    }

    /// Runs `f` in one read transaction (a snapshot) on a reader.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let mut conn = self.readers.get()?;
        let tx = conn.transaction()?;
        f(&*tx)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer; commits
    /// when it returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let mut conn = self.writer.get()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&*tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Frees the page caches of the writer and of an idle reader (the
    /// others close when idle).
    pub fn shrink_memory(&self) -> DbResult<()> {
        for pool in [&self.writer, &self.readers] {
            pool.get()?.execute_batch("PRAGMA shrink_memory")?;
        }
        Ok(())
    }

    /// Copies the write-ahead log into the file and empties it.
    pub fn checkpoint(&self) -> DbResult<()> {
        self.writer
            .get()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
fn configure(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    add_functions(conn)?;
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
fn configure_writer(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    configure(conn)?;
    conn.pragma_update(None, "synchronous", "FULL")
}

fn migrations() -> Migrations<'static> {
    Migrations::from_directory(&MIGRATIONS_DIR).expect("migrations directory is well-formed")
}

struct Param<'a>(ValueRef<'a>);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            ValueRef::Null => LiteRef::Null,
            ValueRef::Int(i) => LiteRef::Integer(i),
            ValueRef::Real(f) => LiteRef::Real(f),
            ValueRef::Text(s) => LiteRef::Text(s.as_bytes()),
            ValueRef::Blob(b) => LiteRef::Blob(b),
        }))
    }
}

fn bind<'a>(params: &'a [&'a dyn ToSql]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(params.iter().map(|p| Param(p.to_sql())))
}

impl Connection for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn run(&self, sql: &str, params: &[&dyn ToSql]) -> DbResult<usize> {
        Ok(self.prepare_cached(sql)?.execute(bind(params))?)
    }

    fn execute_batch(&self, sql: &str) -> DbResult<()> {
        Ok(rusqlite::Connection::execute_batch(self, sql)?)
    }

    fn each_row(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        f: &mut dyn FnMut(&dyn Row) -> DbResult<bool>,
    ) -> DbResult<()> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(bind(params))?;
        while let Some(row) = rows.next()? {
            if !f(row)? {
                break;
            }
        }
        Ok(())
    }
}

impl Row for rusqlite::Row<'_> {
    fn value(&self, idx: usize) -> DbResult<ValueRef<'_>> {
        Ok(match self.get_ref(idx)? {
            LiteRef::Null => ValueRef::Null,
            LiteRef::Integer(i) => ValueRef::Int(i),
            LiteRef::Real(f) => ValueRef::Real(f),
            LiteRef::Text(t) => ValueRef::Text(
                std::str::from_utf8(t).map_err(|e| super::DbError::Decode(e.to_string()))?,
            ),
            LiteRef::Blob(b) => ValueRef::Blob(b),
        })
    }
}

/// Adds `greatest(a, b)` and `least(a, b)` to a connection, with
/// PostgreSQL's meaning: NULLs are ignored.
pub fn add_functions(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for (name, want) in [
        ("greatest", std::cmp::Ordering::Greater),
        ("least", std::cmp::Ordering::Less),
    ] {
        conn.create_scalar_function(name, 2, flags, move |ctx| {
            let a: Value = ctx.get(0)?;
            let b: Value = ctx.get(1)?;
            Ok(match (&a, &b) {
                (Value::Null, _) => b,
                (_, Value::Null) => a,
                _ if compare(&b, &a) == Some(want) => b,
                _ => a,
            })
        })?;
    }
    Ok(())
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let number = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Real(f) => Some(*f),
        _ => None,
    };
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => Some(x.cmp(y)),
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

#[cfg(test)]
mod tests {
    use super::super::sql::params;
    use super::super::Store;

    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }

    /// The inbox rebuilt by migration 8 keeps its events, its dedup key is
    /// indexed by event time first, and a repeat of an event still collapses
    /// into it.
    #[test]
    fn the_inbox_keeps_its_events_and_their_dedup_across_its_rebuild() {
        use crate::model::event::{AspectType, Event, ObjectType};
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::migrations().to_version(&mut conn, 7).unwrap();
        let event = Event {
            object_type: ObjectType::Activity,
            object_id: 12,
            aspect_type: AspectType::Update,
            owner_id: 3,
            event_time: 1_700_000_000,
            updates: [("title".to_string(), "Lunch".to_string())].into(),
        };
        conn.execute(
            "INSERT INTO webhook_events (dedup_key, object_type, object_id, aspect_type,
                 owner_id, event_time, updates_json, received_at, next_attempt_at, status)
             VALUES (?1, 'activity', 12, 'update', 3, 1700000000, '{\"title\":\"Lunch\"}',
                 1700000005, 1700000005, 'done')",
            [event.dedup_key()],
        )
        .unwrap();
        super::migrations().to_latest(&mut conn).unwrap();
        let kept: (i64, String, i64) = conn
            .query_row(
                "SELECT id, status, received_at FROM webhook_events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(kept, (1, "done".to_string(), 1_700_000_005));
        let dedup_first: String = conn
            .query_row(
                "SELECT name FROM pragma_index_info('webhook_events_dedup') WHERE seqno = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dedup_first, "event_time", "new events land together");
        assert!(!super::super::inbox::insert(&conn, &event, 1_700_000_009).unwrap());
        let later = Event {
            event_time: event.event_time + 1,
            ..event
        };
        assert!(super::super::inbox::insert(&conn, &later, 1_700_000_009).unwrap());
    }

    #[tokio::test]
    async fn opens_in_wal_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let (mode, fk) = store
            .read(|c| {
                let mode: String = c.query_row("PRAGMA journal_mode", params![], |r| r.get(0))?;
                let fk: i64 = c.query_row("PRAGMA foreign_keys", params![], |r| r.get(0))?;
                Ok((mode, fk))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
        let synchronous = store
            .write(|tx| tx.query_row("PRAGMA synchronous", params![], |r| r.get::<i64>(0)))
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL: a commit is durable when it returns");
        store.shrink_memory().await.unwrap();
        assert!(store.ready().await);
    }

    #[tokio::test]
    async fn greatest_and_least_ignore_nulls_as_postgresql_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let row = store
            .read(|c| {
                c.query_row(
                    "SELECT greatest(1, 2), least(1, 2), greatest(NULL, 3), least(4, NULL),
                            greatest(1.5, 1)",
                    params![],
                    |r| {
                        Ok((
                            r.get::<i64>(0)?,
                            r.get::<i64>(1)?,
                            r.get::<i64>(2)?,
                            r.get::<i64>(3)?,
                            r.get::<f64>(4)?,
                        ))
                    },
                )
            })
            .await
            .unwrap();
        assert_eq!(row, (2, 1, 3, 4, 1.5));
    }
}
