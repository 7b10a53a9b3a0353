//! The `strava-sync` command line.

use clap::{Parser, Subcommand};

use strava_sync::config::{ConfigError, Requirement, Settings};
use strava_sync::startup::{self, Application};
use strava_sync::store::Store;
use strava_sync::telemetry;
use strava_sync::webhook::subscription;

#[derive(Parser)]
#[command(name = "strava-sync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve HTTP and run the background workers (the default).
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// The whole system on one machine with no Strava account: the service plus
    /// the built-in simulator, athletes connected, live webhook events.
    Demo(strava_sync::demo::DemoArgs),
    /// Manage the application's Strava push subscription.
    Subscription {
        #[command(subcommand)]
        action: subscription::Action,
    },
    /// Run the built-in Strava simulator alone (frontend development).
    Simulator(strava_sync::simulator::SimulatorArgs),
}

fn main() {
    // Before the runtime starts its threads, so every thread sees it.
    memory::bound_arenas();
    start();
}

#[tokio::main]
async fn start() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("strava-sync: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    // Missing settings are reported with malformed ones, in one message.
    let (needs, uses_public_url): (&[Requirement], bool) = match command {
        Command::Serve => (
            &[
                Requirement::StravaApp,
                Requirement::Webhooks,
                Requirement::TokenKey,
            ],
            true,
        ),
        Command::Subscription { .. } => (&[Requirement::StravaApp, Requirement::Webhooks], true),
        _ => (&[], false),
    };
    let (settings, mut problems) = Settings::read(needs);
    if !matches!(command, Command::Demo(_) | Command::Simulator(_)) {
        let listens = matches!(command, Command::Serve);
        problems.extend(startup::preflight(&settings, &problems, listens));
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems }.into());
    }
    // The demo prints its own guide on stdout; keep its logs to warnings.
    let default_filter = match command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    telemetry::init(settings.log_format, default_filter);
    if uses_public_url {
        for warning in &settings.warnings {
            tracing::warn!("{warning}");
        }
    }
    match command {
        Command::Serve => {
            tokio::spawn(memory::trim_periodically());
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "listening");
            app.run().await
        }
        Command::Migrate => {
            let database = settings.database.clone();
            tokio::task::spawn_blocking(move || Store::migrate(&database)).await??;
            println!("migrations applied to {}", settings.database);
            Ok(())
        }
        Command::Demo(args) => strava_sync::demo::run(args).await,
        Command::Subscription { action } => {
            println!("{}", subscription::run(&settings, action).await?);
            Ok(())
        }
        Command::Simulator(args) => strava_sync::simulator::run_standalone(args).await,
    }
}

/// glibc's allocator keeps what a burst freed: each thread that allocated
/// (the blocking pool grows to the number of concurrent requests) may get
/// an arena of its own, and arenas are rarely handed back to the system.
mod memory {
    use std::time::Duration;

    /// Fewer arenas: threads share them, so one burst's freed memory is
    /// reused by the next instead of sitting in an arena nobody uses again.
    const ARENAS: i32 = 2;
    /// How often freed memory is handed back to the system.
    const TRIM_EVERY: Duration = Duration::from_secs(20);

    pub fn bound_arenas() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
    }

    /// Returns freed heap pages to the system every [`TRIM_EVERY`], so
    /// resident memory falls back after a burst (a pass costs well under a
    /// millisecond when there is little to give back).
    pub async fn trim_periodically() {
        loop {
            tokio::time::sleep(TRIM_EVERY).await;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim is safe to call from any thread.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
