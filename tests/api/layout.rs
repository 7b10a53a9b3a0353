//! The code's shape, checked: data flows one way through the layers, storage
//! is reached only through `store`, and time comes from one clock. Reads the
//! sources (test code of `#[cfg(test)]` modules excluded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the layer it sits in: a module may import only
/// modules of a lower layer. `simulator` stands apart (a fake Strava that
/// imports nothing of the service); `startup`, `demo` and `main` compose.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("simulator", 0),
    ("config", 1),
    ("telemetry", 2),
    ("store", 2),
    ("strava", 3),
    ("sync", 4),
    ("webhook", 5),
    ("outbox", 5),
    ("http", 6),
    ("startup", 7),
    ("demo", 8),
    ("lib", 9),
    ("main", 9),
];

/// Every source file under `src/` with its text, test modules cut off.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.push((path, code));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.into_iter()
        .map(|(p, code)| (p.strip_prefix(&root).unwrap().to_path_buf(), code))
        .collect()
}

/// The top-level module a source file belongs to (`store/jobs.rs` → `store`).
fn top_module(path: &Path) -> String {
    let first = path.components().next().unwrap().as_os_str();
    first.to_str().unwrap().trim_end_matches(".rs").to_string()
}

/// The files outside `allowed` (paths relative to `src/`) that contain `needle`.
pub fn files_containing(needle: &str, allowed: &[&str]) -> Vec<PathBuf> {
    sources()
        .into_iter()
        .filter(|(path, code)| {
            !allowed.iter().any(|a| path.starts_with(a)) && code.contains(needle)
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn no_module_imports_one_above_it() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut upward = Vec::new();
    for (path, code) in sources() {
        let module = top_module(&path);
        let own = *layers
            .get(module.as_str())
            .unwrap_or_else(|| panic!("{module} is in no layer"));
        for imported in code.split("crate::").skip(1) {
            let name: String = imported
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let Some(&layer) = layers.get(name.as_str()) else {
                continue;
            };
            // Only the composing modules may start the simulator.
            let allowed = name == module || (layer < own && (name != "simulator" || own >= 7));
            if !allowed {
                upward.push(format!("{} imports {name}", path.display()));
            }
        }
    }
    upward.dedup();
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn storage_is_reached_only_through_store() {
    assert_eq!(
        files_containing("rusqlite", &["store"]),
        Vec::<PathBuf>::new()
    );
    // The closures of `Store::read`/`write` hand out a connection.
    for closure in [".read(move |", ".write(move |", ".read(|", ".write(|"] {
        assert_eq!(
            files_containing(closure, &["store", "simulator"]),
            Vec::<PathBuf>::new(),
            "{closure}"
        );
    }
    for statement in ["FROM jobs", "INTO jobs", "UPDATE jobs", "JOIN jobs"] {
        assert_eq!(
            files_containing(statement, &["store/jobs.rs"]),
            Vec::<PathBuf>::new(),
            "{statement}"
        );
    }
}

#[test]
fn time_comes_from_the_clock() {
    for wall_clock in ["Utc::now()", "SystemTime::now()", "Local::now()"] {
        assert_eq!(
            files_containing(wall_clock, &["model/clock.rs", "simulator/clock.rs"]),
            Vec::<PathBuf>::new(),
            "{wall_clock}"
        );
    }
}
