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
    /// Print the hub's VAPID public key, creating `<data_dir>/vapid.key` as
    /// `serve` would when no key is configured.
    VapidKeys {
        #[command(flatten)]
        common: Common,
        /// Print a fresh key pair instead and store nothing (for
        /// `WOODPECKER__PUSH__VAPID_PRIVATE_KEY` or a secret manager).
        #[arg(long)]
        generate: bool,
    },
    /// Run the hub with simulated responders, and print the pages to open.
    Demo {
        /// Config file (default: config/woodpecker.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// ADDR:PORT to listen on (`127.0.0.1:0` picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Simulated responders to connect.
        #[arg(long, default_value_t = 2000)]
        responders: usize,
        /// Seed of the simulated population.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Issue one example alert this many seconds after start.
        #[arg(long)]
        example_alert: Option<u64>,
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

/// jemalloc instead of glibc malloc. In the ack run glibc spent ~7 % of hub
/// CPU in its chunk bookkeeping (`_int_malloc`, `unlink_chunk`,
/// `malloc_consolidate`) for allocations freed on another thread. With
/// jemalloc durable acks went from ~19k to ~27k/s (median of 5,
/// BENCHMARKS.md) for 0.7 KiB more RSS per idle connection; mimalloc did
/// about as well on acks but cost over 8 KiB per connection.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Command::VapidKeys { common, generate } => {
            if generate {
                let (private_key, public_key) = woodpecker::push::vapid::generate();
                println!("public_key={public_key}");
                println!("private_key={private_key}");
                return Ok(());
            }
            let settings = load(&common, None)?;
            let (key, source) =
                woodpecker::push::vapid::load_or_create(&settings.push, &settings.server.data_dir)?;
            println!("public_key={}", key.public_key());
            println!("private_key_source={source}");
            Ok(())
        }
        Command::Demo {
            config,
            listen,
            responders,
            seed,
            example_alert,
        } => {
            let common = Common {
                config,
                data_dir: None,
            };
            let settings = load(&common, listen)?;
            init_tracing();
            let options = woodpecker::demo::DemoOptions {
                responders,
                seed,
                example_alert_after: example_alert.map(std::time::Duration::from_secs),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let addr = settings.listen_addr()?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                woodpecker::demo::run(settings, listener, options, shutdown_signal()).await?;
                anyhow::Ok(())
            })
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
