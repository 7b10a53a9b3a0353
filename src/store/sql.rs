//! The one interface both backends implement: a connection (inside a
//! transaction) that runs SQL with `?N` parameters and hands rows back
//! column by column. Use-case functions are written once against
//! [`Connection`]; each backend translates to its own driver, and the few
//! spots where the two dialects differ ask [`Dialect`] for their fragment.

use super::{DbError, DbResult};

/// Which SQL a connection speaks, for the fragments that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A top-level field of a JSON text column, as text.
    pub fn json_text(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({column}, '$.{key}')"),
            Dialect::Postgres => format!("(strava_sync_json({column}) ->> '{key}')"),
        }
    }

    /// An `INDEXED BY` clause where SQLite's planner needs one.
    pub fn indexed_by(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!("INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }

    /// The length of a top-level array field of a JSON text column; NULL
    /// when the column or field is missing.
    pub fn json_array_length(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_array_length({column}, '$.{key}')"),
            Dialect::Postgres => {
                format!("json_array_length(strava_sync_json({column}) -> '{key}')")
            }
        }
    }
}

/// A value going into or coming out of a statement, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// A Rust value that binds to a statement parameter.
pub trait ToSql {
    fn to_sql(&self) -> ValueRef<'_>;
}

/// A Rust value read from a column.
pub trait FromSql: Sized {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String>;
}

/// One result row.
pub trait Row {
    fn value(&self, idx: usize) -> DbResult<ValueRef<'_>>;
}

impl dyn Row + '_ {
    /// Column `idx`, converted to `T`.
    pub fn get<T: FromSql>(&self, idx: usize) -> DbResult<T> {
        T::from_sql(self.value(idx)?).map_err(|e| DbError::Decode(format!("column {idx}: {e}")))
    }
}

/// A connection inside a transaction (or a read snapshot). Parameters are
/// written `?1`, `?2`, ... (or `?` in order). Callers use the methods on
/// `dyn Connection`, shaped like rusqlite's.
pub trait Connection {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns the number of rows it changed.
    fn run(&self, sql: &str, params: &[&dyn ToSql]) -> DbResult<usize>;

    /// Runs statements without parameters, one after another (savepoints,
    /// migrations).
    fn execute_batch(&self, sql: &str) -> DbResult<()>;

    /// Runs a query, handing each row to `f` in turn until it answers
    /// false (the rest are not read). `f` may not use the connection.
    fn each_row(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        f: &mut dyn FnMut(&dyn Row) -> DbResult<bool>,
    ) -> DbResult<()>;
}

impl dyn Connection + '_ {
    pub fn execute(&self, sql: &str, params: impl Params) -> DbResult<usize> {
        params.with(|p| self.run(sql, p))
    }

    /// The first row's mapping; [`DbError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&dyn Row) -> DbResult<T>,
    ) -> DbResult<T> {
        let mut f = Some(f);
        let mut out = None;
        params.with(|p| {
            self.each_row(sql, p, &mut |row| {
                if let Some(f) = f.take() {
                    out = Some(f(row)?);
                }
                Ok(false)
            })
        })?;
        out.ok_or(DbError::NoRows)
    }

    /// Every row's mapping, in order.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&dyn Row) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        let mut out = Vec::new();
        params.with(|p| {
            self.each_row(sql, p, &mut |row| {
                out.push(f(row)?);
                Ok(true)
            })
        })?;
        Ok(out)
    }

    /// A statement to run, in rusqlite's shape (both backends keep each
    /// connection's prepared statements by their text).
    pub fn prepare_cached(&self, sql: &str) -> DbResult<Statement<'_>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }
}

/// SQL bound to a connection, run with parameters.
pub struct Statement<'c> {
    conn: &'c dyn Connection,
    sql: String,
}

impl Statement<'_> {
    pub fn execute(&mut self, params: impl Params) -> DbResult<usize> {
        self.conn.execute(&self.sql, params)
    }

    /// Whether the query returns a row.
    pub fn exists(&mut self, params: impl Params) -> DbResult<bool> {
        self.conn
            .query_row(&self.sql, params, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&dyn Row) -> DbResult<T>,
    ) -> DbResult<T> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Every row's mapping, as results to collect (rusqlite's shape).
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&dyn Row) -> DbResult<T>,
    ) -> DbResult<std::vec::IntoIter<DbResult<T>>> {
        let mut rows = Vec::new();
        params.with(|p| {
            self.conn.each_row(&self.sql, p, &mut |row| {
                rows.push(Ok(f(row)?));
                Ok(true)
            })
        })?;
        Ok(rows.into_iter())
    }

    /// Hands each row to `f` until it answers false.
    pub fn for_each(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&dyn Row) -> DbResult<bool>,
    ) -> DbResult<()> {
        params.with(|p| self.conn.each_row(&self.sql, p, &mut f))
    }
}

/// `.optional()`: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    fn optional(self) -> DbResult<Option<T>>;
}

impl<T> OptionalExtension<T> for DbResult<T> {
    fn optional(self) -> DbResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A statement's parameters: `params![...]`, or an array of one type.
pub trait Params {
    fn with<R>(&self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R;
}

impl Params for &[&dyn ToSql] {
    fn with<R>(&self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        f(self)
    }
}

impl Params for Vec<&dyn ToSql> {
    fn with<R>(&self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        f(self)
    }
}

impl<T: ToSql, const N: usize> Params for [T; N] {
    fn with<R>(&self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        f(&self.each_ref().map(|v| v as &dyn ToSql))
    }
}

/// `params![a, b]`: a statement's parameters, in order.
#[macro_export]
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::sql::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToSql),+] as &[&dyn $crate::store::sql::ToSql] };
}
pub use crate::params;

/// A list of values as parameters (for `IN (?, ?, ...)` lists).
pub fn params_from<T: ToSql>(values: &[T]) -> Vec<&dyn ToSql> {
    values.iter().map(|v| v as &dyn ToSql).collect()
}

/// `?first, ?first+1, ...`: `n` numbered placeholders for an `IN` list
/// after `first - 1` other parameters.
pub fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self) -> ValueRef<'_> {
        (**self).to_sql()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, ToSql::to_sql)
    }
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> ValueRef<'_> {
                ValueRef::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
        impl FromSql for $t {
            fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
                match value {
                    ValueRef::Int(i) => <$t>::try_from(i).map_err(|e| e.to_string()),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_to_sql!(i64, i32, u64, u32, u16, u8, usize);

impl ToSql for bool {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Int(i64::from(*self))
    }
}

impl FromSql for bool {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
        i64::from_sql(value).map(|i| i != 0)
    }
}

impl ToSql for f64 {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl FromSql for f64 {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl ToSql for str {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToSql for String {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl FromSql for String {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Text(s) => Ok(s.to_owned()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl ToSql for [u8] {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToSql for Vec<u8> {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl<const N: usize> ToSql for [u8; N] {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Null => Ok(None),
            v => T::from_sql(v).map(Some),
        }
    }
}
