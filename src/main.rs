//! The `woodpecker` command: parses flags, loads config, sets up logging and
//! hands over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use woodpecker::config::{Overrides, Settings};
use woodpecker::domain::{Role, Unit};

#[derive(Parser)]
#[command(
    name = "woodpecker",
    version,
    about = "Real-time emergency mobilization hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Config file (default: config/woodpecker.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the embedded store and the generated keys live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        #[command(flatten)]
        common: Common,
        /// ADDR:PORT to listen on (`127.0.0.1:0` picks a free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print a token signed with the hub's key.
    Token {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 90s, 30m, 12h, 7d (default from config).
        #[arg(long)]
        ttl: Option<String>,
    },
}

fn load(common: &Common, listen: Option<String>) -> anyhow::Result<Settings> {
    let overrides = Overrides {
        listen,
        data_dir: common.data_dir.clone(),
    };
    Ok(Settings::load(common.config.as_deref(), &overrides)?)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WOODPECKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { common, listen } => {
            let settings = load(&common, listen)?;
            init_tracing();
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(settings))
        }
        Command::Token {
            common,
            sub,
            role,
            unit,
            name,
            ttl,
        } => {
            let settings = load(&common, None)?;
            let role: Role = role.parse()?;
            let unit: Option<Unit> = unit.as_deref().map(str::parse).transpose()?;
            let ttl = woodpecker::auth::parse_duration(
                ttl.as_deref().unwrap_or(&settings.auth.default_ttl),
            )?;
            let authority = woodpecker::app::authority(&settings)?;
            println!("{}", authority.mint(&sub, role, unit, &name, ttl)?);
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let addr = settings.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let running = woodpecker::app::start(settings, listener).await?;
    println!("listening on http://{}", running.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
