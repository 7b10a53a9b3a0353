//! `strava-sync demo` end to end: the real binary starts the simulator and the
//! service, prints tokens; with one of them the read API lists activities, a
//! live rename shows its new name, and Ctrl-C stops everything cleanly.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::time::{timeout, Instant};

use crate::helpers::{eventually, within, ApiClient};

const PATIENCE: Duration = Duration::from_secs(60);
/// How long a read may take to show what the demo has done.
const READ_PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn demo_serves_synced_activities_and_live_renames() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strava-sync"))
        .args(["demo", "--port", "0", "--interval-secs", "1"])
        .args(["--athletes", "2", "--activities", "60"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + PATIENCE;

    let mut base = String::new();
    let mut tokens = Vec::new();
    loop {
        let line = next_line(&mut lines, deadline).await;
        if let Some(url) = line.trim().strip_prefix("read API:") {
            base = url.trim().to_string();
        } else if let Some(rest) = line.trim().strip_prefix("athlete ") {
            let (id, token) = rest
                .split_once(" token ")
                .expect("athlete line names a token");
            tokens.push((id.parse::<u64>().unwrap(), token.to_string()));
        } else if line.starts_with("live events:") {
            break;
        }
    }
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(tokens.len(), 2);

    // The demo prints the read API's base, `/api/v3` included; only athlete
    // routes are called, so no admin token.
    let address = base
        .strip_suffix("/api/v3")
        .expect("the base ends in /api/v3");
    let api = ApiClient::new(address, "");

    // The first page is fetched at connect: activities are there within seconds.
    let (_, token) = tokens[0].clone();
    let listed = eventually("activities are listed", READ_PATIENCE, || async {
        let res = api.list_activities(&token, "per_page=5").await;
        let page: Vec<Value> = res.json().await.ok()?;
        (!page.is_empty()).then_some(page)
    })
    .await;
    assert!(listed.len() <= 5);

    // A live rename reaches the local copy through its webhook event.
    let renamed = loop {
        let line = next_line(&mut lines, deadline).await;
        let Some((id, athlete, name)) = parse_rename(&line) else {
            continue;
        };
        let token = tokens
            .iter()
            .find(|(a, _)| *a == athlete)
            .unwrap()
            .1
            .clone();
        let seen = within(READ_PATIENCE, || async {
            let res = api.get_activity(&token, id).await;
            let activity: Value = res.json().await.ok()?;
            (activity["name"] == name.as_str()).then_some(())
        })
        .await;
        if seen.is_some() {
            break name;
        }
    };
    assert!(renamed.starts_with("Renamed in the demo"));

    let pid = child.id().unwrap().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the demo stops after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The demo's next line of output, failing the test past the deadline.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, deadline: Instant) -> String {
    timeout(deadline - Instant::now(), lines.next_line())
        .await
        .expect("the demo keeps talking")
        .unwrap()
        .expect("the demo is still running")
}

/// `renamed activity <id> of athlete <athlete> to "<name>"`.
fn parse_rename(line: &str) -> Option<(u64, u64, String)> {
    let rest = line.trim().strip_prefix("renamed activity ")?;
    let (id, rest) = rest.split_once(" of athlete ")?;
    let (athlete, name) = rest.split_once(" to ")?;
    Some((
        id.parse().ok()?,
        athlete.parse().ok()?,
        name.trim_matches('"').to_string(),
    ))
}
