//! The PostgreSQL backend of [`Connection`]: the blocking `postgres` client
//! in r2d2 pools, like SQLite's. Parameters bind to whatever type the server
//! inferred for them (an `i64` into an `integer`, a flag into a `boolean`),
//! so the SQL both backends share needs no casts for its parameters.
//!
//! Connections are encrypted when the server offers TLS, as libpq's
//! default `sslmode=prefer` does (`require` insists on it, `disable` turns
//! it off), and, as in libpq without a root certificate, the server's
//! certificate is not checked: managed databases (Heroku's among them)
//! present certificates no public root signs.
//!
//! Each pooled connection keeps the statements it prepared, by their SQL,
//! and a transaction begins (and, for writes, takes its lock) in one round
//! trip: on the webhook path, round trips are what a commit costs.
//!
//! Every write transaction first takes one advisory lock for the schema:
//! writes are serialized across instances as SQLite serializes them in
//! one file. Each use case therefore keeps its single-writer meaning (a
//! permit is taken once, a job claimed once, an event applied once), and
//! the change log's ids are handed out in commit order, which the feed's
//! cursor relies on. Reads run in read-only snapshots and never wait.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;

use bytes::BytesMut;
use include_dir::{include_dir, Dir};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql as PgToSql, Type};
use postgres::{Client, Statement};
use r2d2::{ManageConnection, Pool};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sql::{self, Connection, Dialect, Row, ValueRef};
use super::{DbError, DbResult};

static MIGRATIONS_DIR: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations/postgres");

const READER_POOL_SIZE: u32 = 8;

/// Prepared statements kept per connection; past this the cache starts
/// over (statement texts are few, but `IN` lists vary in length).
const STATEMENT_CACHE: usize = 256;

/// A pooled client and the statements it prepared, by their SQL.
struct Cached {
    client: Client,
    statements: HashMap<String, Statement>,
}

struct Manager {
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

impl ManageConnection for Manager {
    type Connection = Cached;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Cached, postgres::Error> {
        Ok(Cached {
            client: self.config.connect(self.tls.clone())?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Cached) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut Cached) -> bool {
        conn.client.is_closed()
    }
}

/// The pools of one PostgreSQL database (and schema, when the URL's
/// `options` set a `search_path`).
#[derive(Clone)]
pub struct Postgres {
    pools: Arc<Pools>,
    /// The advisory lock key that serializes writes to this schema.
    write_lock: i64,
}

/// The blocking client runs a small runtime per connection, which may not
/// be dropped on an async thread, where the last clone of a store may
/// well go: the pools are dropped on a thread of their own.
struct Pools {
    writer: Option<Pool<Manager>>,
    readers: Option<Pool<Manager>>,
}

impl Pools {
    fn writer(&self) -> &Pool<Manager> {
        self.writer.as_ref().expect("taken only on drop")
    }

    fn readers(&self) -> &Pool<Manager> {
        self.readers.as_ref().expect("taken only on drop")
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        let pools = (self.writer.take(), self.readers.take());
        std::thread::spawn(move || drop(pools));
    }
}

impl Postgres {
    /// Connects, applies migrations and builds the pools.
    pub fn open(url: &str) -> DbResult<Self> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| DbError::Config(format!("DATABASE_URL is not a PostgreSQL URL: {e}")))?;
        // One connection first: a server that cannot be reached is said so
        // at once, where a pool would retry until its timeout.
        let tls = tls()?;
        let schema: Option<String> = config
            .connect(tls.clone())?
            .query_one("SELECT current_schema()", &[])?
            .get(0);
        let schema = schema.ok_or_else(|| {
            DbError::Config("DATABASE_URL's search_path names no schema that exists".into())
        })?;
        let write_lock = lock_key(&schema);
        let manager = || Manager {
            config: config.clone(),
            tls: tls.clone(),
        };
        // A broken connection is noticed when a statement fails on it (and
        // it is dropped then): a test query at every checkout would cost
        // each transaction a round trip.
        let writer = Pool::builder()
            .max_size(1)
            .test_on_check_out(false)
            .build(manager())?;
        let readers = Pool::builder()
            .max_size(READER_POOL_SIZE)
            .min_idle(Some(1))
            .test_on_check_out(false)
            .build(manager())?;
        let pg = Self {
            pools: Arc::new(Pools {
                writer: Some(writer),
                readers: Some(readers),
            }),
            write_lock,
        };
        pg.migrate()?;
        Ok(pg)
    }

    /// Applies the migrations not applied yet, in order, under the write
    /// lock: instances starting together migrate once.
    fn migrate(&self) -> DbResult<()> {
        self.write(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version BIGINT PRIMARY KEY,
                     name    TEXT NOT NULL
                 )",
            )?;
            let applied: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                super::sql::params![],
                |r| r.get(0),
            )?;
            let mut dirs: Vec<_> = MIGRATIONS_DIR.dirs().collect();
            dirs.sort_by_key(|d| d.path().to_owned());
            for (i, dir) in dirs.iter().enumerate() {
                let version = i as i64 + 1;
                if version <= applied {
                    continue;
                }
                let sql = dir
                    .get_file(dir.path().join("up.sql"))
                    .and_then(|f| f.contents_utf8())
                    .ok_or_else(|| DbError::Config(format!("{:?} has no up.sql", dir.path())))?;
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
                    super::sql::params![version, dir.path().display().to_string()],
                )?;
            }
            Ok(())
        })
    }

    /// Runs `f` in a read-only snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let mut pooled = self.pools.readers().get()?;
        let snapshot = PgConnection::begin(
            &mut pooled,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )?;
        snapshot.run(f)
    }

    /// Runs `f` in a transaction of its own that does not take the write
    /// lock, for a row only this instance writes (its heartbeat), which
    /// must not wait behind the other instances' writes.
    pub fn write_apart<T>(&self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let mut pooled = self.pools.readers().get()?;
        let tx = PgConnection::begin(&mut pooled, "BEGIN ISOLATION LEVEL READ COMMITTED")?;
        tx.run(f)
    }

    /// Runs `f` in a transaction holding the schema's write lock; commits
    /// when it returns `Ok`.
    pub fn write<T>(&self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let mut pooled = self.pools.writer().get()?;
        // Read committed whatever the server's default: each statement after
        // the lock must see what the instance before committed.
        let begin = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({})",
            self.write_lock
        );
        let tx = PgConnection::begin(&mut pooled, &begin)?;
        tx.run(f)
    }
}

/// TLS as libpq does it by default: encrypted, the certificate unchecked.
fn tls() -> DbResult<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptedOnly(provider)))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts the server's certificate as libpq's `sslmode=require` does,
/// while checking that the handshake is signed by it.
#[derive(Debug)]
struct EncryptedOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptedOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stable advisory lock key per schema, so tests (and tenants) in their
/// own schemas of one database do not wait on each other.
fn lock_key(schema: &str) -> i64 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("strava-sync:{schema}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// A pooled connection inside a transaction; dropped unfinished (an
/// error, a panic), the transaction is rolled back before the connection
/// returns to the pool.
struct PgConnection<'a> {
    conn: RefCell<&'a mut Cached>,
    open: bool,
}

impl<'a> PgConnection<'a> {
    /// Begins a transaction with `begin` (one round trip, whatever it holds).
    fn begin(conn: &'a mut Cached, begin: &str) -> DbResult<Self> {
        let mut this = Self {
            conn: RefCell::new(conn),
            open: true,
        };
        // Should a part after BEGIN fail, dropping `this` rolls it back.
        this.conn.get_mut().client.batch_execute(begin)?;
        Ok(this)
    }

    /// Runs `f`, then commits if it succeeded (else rolls back).
    fn run<T>(mut self, f: impl FnOnce(&dyn Connection) -> DbResult<T>) -> DbResult<T> {
        let out = f(&self)?;
        self.open = false;
        self.conn.get_mut().client.batch_execute("COMMIT")?;
        Ok(out)
    }

    /// The statement for `sql`, prepared on this connection once.
    fn statement(&self, sql: &str) -> DbResult<Statement> {
        let mut conn = self.conn.borrow_mut();
        if let Some(statement) = conn.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = conn.client.prepare(&numbered(sql))?;
        if conn.statements.len() >= STATEMENT_CACHE {
            conn.statements.clear();
        }
        conn.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Drop for PgConnection<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves a connection that is closed or
            // broken, which the pool drops.
            let _ = self.conn.get_mut().client.batch_execute("ROLLBACK");
        }
    }
}

impl Connection for PgConnection<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run(&self, sql: &str, params: &[&dyn sql::ToSql]) -> DbResult<usize> {
        let statement = self.statement(sql)?;
        let params: Vec<Param> = params.iter().map(|p| Param(p.to_sql())).collect();
        let refs: Vec<&(dyn PgToSql + Sync)> =
            params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
        let changed = self.conn.borrow_mut().client.execute(&statement, &refs)?;
        Ok(changed as usize)
    }

    fn execute_batch(&self, sql: &str) -> DbResult<()> {
        Ok(self.conn.borrow_mut().client.batch_execute(sql)?)
    }

    fn each_row(
        &self,
        sql: &str,
        params: &[&dyn sql::ToSql],
        f: &mut dyn FnMut(&dyn Row) -> DbResult<bool>,
    ) -> DbResult<()> {
        let statement = self.statement(sql)?;
        let params: Vec<Param> = params.iter().map(|p| Param(p.to_sql())).collect();
        let refs: Vec<&(dyn PgToSql + Sync)> =
            params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
        // Rows stream in as they are read, so a caller that stops early
        // does not hold the rest in memory.
        let mut conn = self.conn.borrow_mut();
        let mut rows = conn.client.query_raw(&statement, refs)?;
        while let Some(row) = rows.next()? {
            if !f(&PgRow(&row))? {
                break;
            }
        }
        Ok(())
    }
}

/// Rewrites `?N` and `?` placeholders as PostgreSQL's `$N`, leaving quoted
/// text alone.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                    next += 1;
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug)]
struct Param<'a>(ValueRef<'a>);

impl PgToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.0 {
            ValueRef::Null => Ok(IsNull::Yes),
            ValueRef::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::FLOAT4 => (i as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            ValueRef::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(format!("cannot bind a number as {ty}").into()),
            },
            ValueRef::Text(s) => s.to_sql(ty, out),
            ValueRef::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

struct PgRow<'a>(&'a postgres::Row);

impl Row for PgRow<'_> {
    fn value(&self, idx: usize) -> DbResult<ValueRef<'_>> {
        let row = self.0;
        let column = row
            .columns()
            .get(idx)
            .ok_or_else(|| DbError::Decode(format!("no column {idx}")))?;
        let int = |v: Option<i64>| v.map_or(ValueRef::Null, ValueRef::Int);
        Ok(match *column.type_() {
            Type::INT8 => int(row.try_get(idx)?),
            Type::INT4 => int(row.try_get::<_, Option<i32>>(idx)?.map(i64::from)),
            Type::INT2 => int(row.try_get::<_, Option<i16>>(idx)?.map(i64::from)),
            Type::BOOL => int(row.try_get::<_, Option<bool>>(idx)?.map(i64::from)),
            Type::FLOAT8 => row
                .try_get::<_, Option<f64>>(idx)?
                .map_or(ValueRef::Null, ValueRef::Real),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(idx)?
                .map_or(ValueRef::Null, |f| ValueRef::Real(f64::from(f))),
            Type::BYTEA => row
                .try_get::<_, Option<&[u8]>>(idx)?
                .map_or(ValueRef::Null, ValueRef::Blob),
            _ => row
                .try_get::<_, Option<&str>>(idx)?
                .map_or(ValueRef::Null, ValueRef::Text),
        })
    }
}

impl DbError {
    /// The SQLSTATE of a PostgreSQL error, if this is one.
    pub(super) fn sql_state(&self) -> Option<&SqlState> {
        match self {
            DbError::Postgres(e) => e.code(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(numbered("a = ?1 AND b = ?12"), "a = $1 AND b = $12");
        assert_eq!(numbered("IN (?, ?, ?)"), "IN ($1, $2, $3)");
        assert_eq!(numbered("x = '?' AND y = ?2"), "x = '?' AND y = $2");
    }
}
