//! `strava-sync simulator`: the simulator alone, for frontend development
//! and manual testing against a Strava that needs no account.

use super::{SimConfig, Simulator};

#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Seed for the generated athletes and activities.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 3)]
    pub athletes: usize,
    /// Activities per athlete.
    #[arg(long, default_value_t = 300)]
    pub activities: usize,
    #[arg(long, default_value_t = 1234)]
    pub client_id: u64,
    #[arg(long, default_value = "test-client-secret")]
    pub client_secret: String,
}

/// Starts the simulator, prints where it listens, and runs until Ctrl-C.
pub async fn run_standalone(args: SimulatorArgs) -> anyhow::Result<()> {
    let sim = Simulator::start(SimConfig {
        port: args.port,
        seed: args.seed,
        athletes: args.athletes,
        activities_per_athlete: args.activities,
        client_id: args.client_id,
        client_secret: args.client_secret,
        ..SimConfig::default()
    })
    .await?;
    println!("Strava simulator on {}", sim.base_url());
    println!("  STRAVA_API_URL={}", sim.api_url());
    println!("  STRAVA_OAUTH_URL={}", sim.oauth_url());
    println!("  STRAVA_CLIENT_ID={}", sim.client_id());
    println!(
        "  control: {}/athletes, /calls, /usage, /settings ...",
        sim.control_url()
    );
    let ids = sim.athlete_ids();
    let shown: Vec<String> = ids.iter().take(5).map(u64::to_string).collect();
    let more = if ids.len() > shown.len() { ", ..." } else { "" };
    println!("  {} athletes: {}{more}", ids.len(), shown.join(", "));
    tokio::signal::ctrl_c().await?;
    sim.stop().await;
    Ok(())
}
