//! The database a benchmark runs on: a SQLite file in its directory, or,
//! when `BENCH_DATABASE_URL` names a PostgreSQL database, a fresh schema in
//! it (dropped first if a run before left it), so one machine measures both
//! backends with the same scenarios.

use std::path::Path;

use strava_sync::config::Database;
use strava_sync::store::Store;

/// The database named `name`: in `dir`, or a schema of that name.
pub fn database(dir: &Path, name: &str) -> Database {
    let Some(url) = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return Database::Sqlite(dir.join(format!("{name}.db")));
    };
    let schema = format!("strava_sync_bench_{name}");
    let admin = url.clone();
    let fresh = schema.clone();
    // The blocking client must not run on an async thread.
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .expect("BENCH_DATABASE_URL accepts connections");
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {fresh} CASCADE; CREATE SCHEMA {fresh}"
            ))
            .unwrap();
    })
    .join()
    .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    Database::Postgres(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}

/// The machine's load average (1, 5 and 15 minutes) as the kernel reports
/// it, printed with the figures: on a shared machine they depend on it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Opens (and migrates) `database` off the async threads.
pub fn open(database: &Database) -> Store {
    let database = database.clone();
    std::thread::spawn(move || Store::connect(&database))
        .join()
        .unwrap()
        .expect("the bench database opens")
}

/// Gives PostgreSQL the statistics autovacuum gathers shortly after a
/// backfill: planned on an empty table's, the first page sorts every row.
pub fn analyze(store: &Store, database: &Database) {
    if let Database::Postgres(_) = database {
        let store = store.clone();
        std::thread::spawn(move || store.write_blocking(|tx| tx.execute_batch("ANALYZE")))
            .join()
            .unwrap()
            .expect("ANALYZE runs");
    }
}
