//! `strava-sync demo` end to end: the real binary starts the simulator and the
//! service, prints tokens; with one of them the read API lists activities, a
//! live rename shows its new name, and Ctrl-C stops everything cleanly.
//! Browser pages on this machine may call it, and a rerun on the same
//! database keeps the tokens it printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, LOCATION, ORIGIN,
};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{timeout, Instant};

use futures_util::StreamExt;

use crate::helpers::{eventually, within, ApiClient};
use crate::receiver::{Receiver, SECRET};

const PATIENCE: Duration = Duration::from_secs(60);
/// How long a read may take to show what the demo has done.
const READ_PATIENCE: Duration = Duration::from_secs(20);
/// What the demo would take from the test runner's environment: cleared, so
/// each test gives its own.
const INHERITED: [&str; 6] = [
    "CORS_ALLOWED_ORIGINS",
    "APP_REDIRECT_URL",
    "APP_WEBHOOK_URL",
    "APP_WEBHOOK_SECRET",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// A running demo and what its banner printed.
struct Demo {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    deadline: Instant,
    /// The service's routes; the admin helpers use the printed admin token.
    api: ApiClient,
    status_page: String,
    /// Each athlete's printed API token.
    tokens: Vec<(u64, String)>,
}

impl Demo {
    /// Starts `strava-sync demo` in `dir` with `args` and `env`, and reads
    /// its banner.
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strava-sync"));
        command
            .args(["demo", "--port", "0"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for key in INHERITED {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut demo = Demo {
            child,
            lines,
            deadline: Instant::now() + PATIENCE,
            api: ApiClient::new("", ""),
            status_page: String::new(),
            tokens: Vec::new(),
        };
        let (mut base, mut admin_token) = (String::new(), String::new());
        loop {
            let line = demo.next_line().await;
            let line = line.trim();
            if let Some(url) = line.strip_prefix("read API:") {
                base = url.trim().to_string();
            } else if let Some(token) = line.strip_prefix("admin token:") {
                admin_token = token.trim().to_string();
            } else if let Some(page) = line.strip_prefix("status page:") {
                demo.status_page = page.split_whitespace().next().unwrap().to_string();
            } else if let Some(rest) = line.strip_prefix("athlete ") {
                let (id, token) = rest
                    .split_once(" token ")
                    .expect("athlete line names a token");
                demo.tokens
                    .push((id.parse::<u64>().unwrap(), token.to_string()));
            } else if line.starts_with("live events:") {
                break;
            }
        }
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        // The demo prints the read API's base, `/api/v3` included.
        let address = base
            .strip_suffix("/api/v3")
            .expect("the base ends in /api/v3");
        assert_eq!(demo.status_page, format!("{address}/admin/status"));
        demo.api = ApiClient::new(address, admin_token);
        demo
    }

    /// The demo's next line of output, failing the test past the deadline.
    async fn next_line(&mut self) -> String {
        timeout(self.deadline - Instant::now(), self.lines.next_line())
            .await
            .expect("the demo keeps talking")
            .unwrap()
            .expect("the demo is still running")
    }

    /// Ctrl-C, and the demo stops cleanly.
    async fn stop(mut self) {
        // Its idle keep-alive connections would hold up the graceful stop.
        drop(self.api);
        let pid = self.child.id().unwrap().to_string();
        let signalled = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        assert!(signalled.success());
        let status = timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the demo stops after Ctrl-C")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// A CORS preflight for reading activities with a token, from `origin`.
    async fn preflight(&self, origin: &str) -> reqwest::Response {
        self.api
            .client
            .request(Method::OPTIONS, self.api.url("/api/v3/athlete/activities"))
            .header(ORIGIN, origin)
            .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .send()
            .await
            .unwrap()
    }
}

/// A preflight the demo allows for `origin`.
fn assert_allowed(res: &reqwest::Response, origin: &str) {
    assert_eq!(res.status(), 200, "{origin}");
    let header = |name| res.headers()[name].to_str().unwrap().to_ascii_lowercase();
    assert_eq!(header(ACCESS_CONTROL_ALLOW_ORIGIN), origin);
    assert!(header(ACCESS_CONTROL_ALLOW_METHODS).contains("get"));
    assert!(header(ACCESS_CONTROL_ALLOW_HEADERS).contains("authorization"));
}

/// A refusal in Strava's fault shape.
async fn assert_refused(res: reqwest::Response, origin: &str) {
    assert!([400, 403].contains(&res.status().as_u16()), "{origin}");
    assert!(res.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let fault: Value = res.json().await.unwrap();
    assert!(fault["message"].is_string(), "{fault}");
    assert!(fault["errors"][0]["code"].is_string(), "{fault}");
}

#[tokio::test]
async fn demo_serves_synced_activities_and_live_renames() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(
        dir.path(),
        &[
            "--interval-secs",
            "1",
            "--athletes",
            "2",
            "--activities",
            "60",
        ],
        &[],
    )
    .await;
    assert_eq!(demo.tokens.len(), 2);

    // The first page is fetched at connect: activities are there within seconds.
    let (_, token) = demo.tokens[0].clone();
    let listed = eventually("activities are listed", READ_PATIENCE, || async {
        let res = demo.api.list_activities(&token, "per_page=5").await;
        let page: Vec<Value> = res.json().await.ok()?;
        (!page.is_empty()).then_some(page)
    })
    .await;
    assert!(listed.len() <= 5);

    // A live rename reaches the local copy through its webhook event.
    let renamed = loop {
        let line = demo.next_line().await;
        let Some((id, athlete, name)) = parse_rename(&line) else {
            continue;
        };
        let token = demo
            .tokens
            .iter()
            .find(|(a, _)| *a == athlete)
            .unwrap()
            .1
            .clone();
        let seen = within(READ_PATIENCE, || async {
            let res = demo.api.get_activity(&token, id).await;
            let activity: Value = res.json().await.ok()?;
            (activity["name"] == name.as_str()).then_some(())
        })
        .await;
        if seen.is_some() {
            break name;
        }
    };
    assert!(renamed.starts_with("Renamed in the demo"));
    demo.stop().await;
}

#[tokio::test]
async fn the_demo_lets_pages_on_this_machine_call_it_and_opens_its_status_page() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), &["--athletes", "1", "--activities", "10"], &[]).await;
    for origin in ["http://localhost:3000", "http://127.0.0.1:5173"] {
        assert_allowed(&demo.preflight(origin).await, origin);
    }
    for origin in ["https://evil.example", "http://localhost.evil.example:3000"] {
        assert_refused(demo.preflight(origin).await, origin).await;
    }
    let (_, token) = &demo.tokens[0];
    let read = demo
        .api
        .client
        .get(demo.api.url("/api/v3/athlete"))
        .bearer_auth(token)
        .header(ORIGIN, "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://localhost:3000"
    );

    // The printed address, with the admin token as Basic password.
    let page = demo
        .api
        .client
        .get(&demo.status_page)
        .basic_auth("anyone", Some(&demo.api.admin_token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("strava-sync status"));
    demo.stop().await;
}

#[tokio::test]
async fn the_demo_posts_its_events_to_the_app_and_streams_its_change_feed() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(
        dir.path(),
        &["--athletes", "1", "--activities", "10"],
        &[
            ("APP_WEBHOOK_URL", receiver.url.as_str()),
            ("APP_WEBHOOK_SECRET", SECRET),
        ],
    )
    .await;
    let (athlete, token) = demo.tokens[0].clone();
    let told = eventually("the demo's events reach the app", READ_PATIENCE, || async {
        let accepted = receiver.accepted();
        (accepted.len() >= 2).then_some(accepted)
    })
    .await;
    assert_eq!(told[0]["type"], "athlete.connected");
    assert_eq!(told[0]["athlete_id"], athlete);
    assert!(receiver.received().iter().all(|r| r.signed()));

    // What the printed `curl -N` shows: the same events, as a stream.
    let res = demo.api.changes_stream(&token, "", None).await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let first = timeout(READ_PATIENCE, async {
        let mut text = String::new();
        while !text.contains("athlete.connected") {
            let chunk = stream.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    })
    .await
    .expect("the feed streams");
    assert!(first.contains("data: {"), "{first}");
    drop(stream);
    demo.stop().await;
}

#[tokio::test]
async fn a_rerun_on_the_same_database_keeps_the_printed_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--database",
        "demo.db",
        "--athletes",
        "2",
        "--activities",
        "10",
    ];
    let first = Demo::start(dir.path(), &args, &[]).await;
    let (tokens, admin_token) = (first.tokens.clone(), first.api.admin_token.clone());
    first.stop().await;

    // Run again with a frontend's settings, which the demo honours.
    let frontend = [
        ("CORS_ALLOWED_ORIGINS", "https://app.example"),
        ("APP_REDIRECT_URL", "http://localhost:3000/connected"),
    ];
    let again = Demo::start(dir.path(), &args, &frontend).await;
    assert_eq!(again.tokens, tokens);
    assert_eq!(again.api.admin_token, admin_token);
    for (athlete, token) in &tokens {
        let res = again.api.get_athlete(token).await;
        assert_eq!(res.status(), 200);
        let profile: Value = res.json().await.unwrap();
        assert_eq!(profile["id"], *athlete);
    }
    assert_eq!(again.api.admin_budget().await.status(), 200);
    assert_allowed(
        &again.preflight("https://app.example").await,
        "https://app.example",
    );
    assert_refused(again.preflight("http://localhost:3000").await, "localhost").await;

    // A browser connecting ends at the frontend, the token in the fragment.
    let mut next = again.api.url("/auth/strava");
    let landing = loop {
        let res = again.api.client.get(&next).send().await.unwrap();
        assert_eq!(res.status(), 302, "{next}");
        next = res.headers()[LOCATION].to_str().unwrap().to_string();
        if next.starts_with("http://localhost:3000") {
            break next;
        }
        assert!(next.starts_with("http://127.0.0.1:"), "{next}");
    };
    assert!(
        landing.starts_with("http://localhost:3000/connected#token="),
        "{landing}"
    );
    again.stop().await;
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
