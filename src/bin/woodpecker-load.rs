//! `woodpecker-load`: a load tool that drives a real hub over its real wire
//! protocol and measures what the issue asks of it.
//!
//! What it does, in order, every step bounded in count and in time (a global
//! `--max-seconds` deadline, 120 s by default):
//!
//! 1. Reaches a hub: by default it spawns the `woodpecker` binary next to its
//!    own executable (`serve --listen 127.0.0.1:0 --data-dir <tempdir>`, a
//!    random 64-hex JWT secret and generous per-socket rate limits and outbox,
//!    all overridable) and reads the bound address from the hub's first
//!    stdout line; or it targets a running hub with `--url`, `--secret` and
//!    (for memory) `--hub-pid`. Only loopback is ever targeted.
//! 2. Places `--clients` responders at seeded random points, uniform within
//!    the district (default: 10 km around Jiaxing 30.7522, 120.7585), mints
//!    each a volunteer token in-process, and opens one WebSocket per client
//!    with bounded concurrency and bounded retries. Each sends `hello`, waits
//!    for `welcome`, sends `location` with an `id` and waits for its `ok`.
//!    Past `--spread-threshold` clients (or with `--spread-sources`) the
//!    client sockets are bound round-robin to 127.0.0.2–127.0.0.9 so no
//!    single source address runs out of ephemeral ports (spreading also makes
//!    `connect` cheaper for the kernel well before that: pass
//!    `--spread-sources` for big runs). Client sockets close with RST so no
//!    run leaves TIME_WAIT sockets that starve the next one of ports.
//! 3. Reads the hub's VmRSS before and after connecting, so memory per idle
//!    connection is `(after - before) / connected`.
//! 4. Issues `--alerts` alerts through `POST /api/v1/alerts` with a police
//!    token, at `--rate` per second (or back to back with `--flat-out`), each
//!    with a nonce in its title (`wpl-<run>-<k>`). The centre is a seeded
//!    random point in the district, or the district centre
//!    (`--center-mode center`).
//! 5. Computes, independently of the hub, who should get each alert: a client
//!    is expected iff the centre of its resolution-9 H3 cell is within
//!    `radius_m` of the alert centre (haversine) — the geofence rule of the
//!    wire contract. Every client task stamps the `Instant` it read each
//!    `alert` frame; per alert the tool reports expected, delivered, missing
//!    (expected but not delivered within `--timeout-ms`), unexpected,
//!    per-recipient latency (from the instant just before the POST was sent
//!    to the client's receipt; both ends are in this process) and the time
//!    to the last recipient.
//! 6. `--flat-out` reports deliveries per second: alerts covering every
//!    client issued back to back, total frames received over the time from
//!    the first POST to the last frame. `--ack` makes every recipient answer
//!    `ack` (`received`, with an `id`) and reports durable acks per second:
//!    `ok`s received over the time from the first ack sent to the last `ok`
//!    (with several alerts spaced by `--rate` that span includes the gaps:
//!    measure acks with one alert, or with `--flat-out`).
//!
//! The table also shows the mean time of each setup step, the time to the
//! first recipient (commit and selection before any fan-out), the POST round
//! trip, and the CPU seconds the hub and the tool spent in each phase, since
//! both share the machine's cores.
//!
//! Typical runs (`cargo build --release --bins` first):
//!
//! ```text
//! woodpecker-load --clients 19000 --alerts 0 --spread-sources        # connect, memory
//! woodpecker-load --clients 15000 --alerts 50 --radius-m 2000 --spread-sources
//! woodpecker-load --clients 10000 --alerts 20 --rate 2 --radius-m 15000 --center-mode center
//! woodpecker-load --clients 15000 --alerts 40 --flat-out --spread-sources
//! woodpecker-load --clients 15000 --alerts 1 --radius-m 15000 --center-mode center --ack
//! ```
//!
//! Output: a human table on stderr and exactly one JSON line on stdout,
//! `{"tool":"woodpecker-load",...}`, so `> results.jsonl` collects runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use geo::{Destination, Distance, Haversine, Point};
use h3o::{LatLng, Resolution};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use woodpecker::auth::Authority;
use woodpecker::config::{AuthSettings, Secret};
use woodpecker::domain::{Role, Unit};

/// Source addresses used when spreading client sockets.
const SPREAD_SOURCES: [Ipv4Addr; 8] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
    Ipv4Addr::new(127, 0, 0, 7),
    Ipv4Addr::new(127, 0, 0, 8),
    Ipv4Addr::new(127, 0, 0, 9),
];
/// Upper bound on `alerts × clients` receipt slots (8 bytes each).
const MAX_SLOTS: usize = 32 * 1024 * 1024;
/// Frames a client reads while waiting for one specific reply.
const MAX_SETUP_FRAMES: usize = 16;
/// Per-alert entries kept in the JSON line.
const MAX_PER_ALERT_JSON: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CenterMode {
    /// A seeded random point in the district for each alert.
    Random,
    /// The district centre for every alert.
    Center,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "woodpecker-load",
    about = "Load tool for the woodpecker hub: connections, fan-out latency, throughput, acks"
)]
struct Args {
    /// WebSocket clients (responders) to connect.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Alerts to issue.
    #[arg(long, default_value_t = 50)]
    alerts: usize,
    /// Alerts issued per second (ignored with --flat-out).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Alert radius in metres (default 2000; with --flat-out, enough to cover
    /// the whole district).
    #[arg(long)]
    radius_m: Option<f64>,
    /// Where alerts are centred.
    #[arg(long, value_enum, default_value_t = CenterMode::Random)]
    center_mode: CenterMode,
    /// Seed for client positions and alert centres.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// District centre latitude.
    #[arg(long, default_value_t = 30.7522)]
    district_lat: f64,
    /// District centre longitude.
    #[arg(long, default_value_t = 120.7585)]
    district_lng: f64,
    /// District radius in metres (clients are uniform within it).
    #[arg(long, default_value_t = 10_000.0)]
    district_radius_m: f64,
    /// An expected recipient not reached within this many ms is missing.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Throughput mode: alerts covering every client, issued back to back.
    #[arg(long)]
    flat_out: bool,
    /// POSTs in flight at once.
    #[arg(long, default_value_t = 2)]
    post_concurrency: usize,
    /// Every recipient acks `received`; report durable acks per second.
    #[arg(long)]
    ack: bool,
    /// Client connections being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Attempts per client connection.
    #[arg(long, default_value_t = 3)]
    connect_attempts: u32,
    /// Bind client sockets round-robin to 127.0.0.2–127.0.0.9.
    #[arg(long)]
    spread_sources: bool,
    /// Spread source addresses automatically above this many clients.
    #[arg(long, default_value_t = 25_000)]
    spread_threshold: usize,
    /// Global deadline for the whole run, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Target a running hub (loopback only), e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "secret")]
    url: Option<String>,
    /// PID of the running hub given by --url (for its RSS and CPU).
    #[arg(long)]
    hub_pid: Option<u32>,
    /// The running hub's JWT secret (`auth.jwt_secret`).
    #[arg(long)]
    secret: Option<String>,
    /// The hub binary to spawn (default: `woodpecker` next to this tool).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Spawned hub: client messages per second per socket.
    #[arg(long, env = "WOODPECKER__WS__RATE_PER_S", default_value_t = 1000.0)]
    hub_rate_per_s: f64,
    /// Spawned hub: burst of client messages per socket.
    #[arg(long, env = "WOODPECKER__WS__RATE_BURST", default_value_t = 1000.0)]
    hub_rate_burst: f64,
    /// Spawned hub: frames queued per session before it counts as slow.
    #[arg(long, env = "WOODPECKER__WS__OUTBOX_CAPACITY", default_value_t = 4096)]
    hub_outbox_capacity: usize,
    /// Extra KEY=VALUE environment for the spawned hub (repeatable).
    #[arg(long = "hub-env")]
    hub_env: Vec<String>,
    /// Client WebSocket read buffer in bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Pause after connecting, before reading the hub's RSS, in ms.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Tokio worker threads for the tool (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

impl Args {
    fn radius(&self) -> f64 {
        match self.radius_m {
            Some(r) => r,
            None if self.flat_out => (self.district_radius_m + 1000.0).min(20_000.0),
            None => 2000.0,
        }
    }

    fn center_mode(&self) -> CenterMode {
        if self.flat_out && self.radius_m.is_none() {
            CenterMode::Center
        } else {
            self.center_mode
        }
    }

    fn spread(&self) -> bool {
        self.spread_sources || self.clients > self.spread_threshold
    }

    fn check(&self) -> Result<()> {
        if self.clients == 0 || self.clients > 200_000 {
            bail!("--clients must be 1..=200000");
        }
        if self.alerts > 100_000 {
            bail!("--alerts must be at most 100000");
        }
        if self.alerts.saturating_mul(self.clients) > MAX_SLOTS {
            bail!("--alerts × --clients must be at most {MAX_SLOTS}");
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000.0) {
            bail!("--rate must be in (0, 10000]");
        }
        let r = self.radius();
        if !(r.is_finite() && (1.0..=200_000.0).contains(&r)) {
            bail!("--radius-m must be 1..=200000");
        }
        if !(self.district_radius_m.is_finite() && self.district_radius_m >= 0.0) {
            bail!("--district-radius-m must be non-negative");
        }
        if self.post_concurrency == 0 || self.connect_concurrency == 0 {
            bail!("concurrency flags must be at least 1");
        }
        if self.connect_attempts == 0 || self.connect_attempts > 20 {
            bail!("--connect-attempts must be 1..=20");
        }
        if self.max_seconds == 0 || self.max_seconds > 3600 {
            bail!("--max-seconds must be 1..=3600");
        }
        if self.read_buffer < 256 {
            bail!("--read-buffer must be at least 256");
        }
        Ok(())
    }
}

/// The hub under test.
struct Target {
    http: String,
    addr: SocketAddr,
    pid: Option<u32>,
    secret: String,
}

/// A hub this tool spawned; killed (and its data dir removed) on drop.
struct HubProcess {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl HubProcess {
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

async fn spawn_hub(args: &Args) -> Result<(HubProcess, Target)> {
    let bin = match &args.hub_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("woodpecker"),
    };
    if !bin.exists() {
        bail!(
            "hub binary {} not found (build it with `cargo build --release --bins`, or pass --hub-bin / --url)",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "woodpecker-load-{}-{}",
        std::process::id(),
        random_hex(4)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret = random_hex(32);
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&dir)
        .current_dir(&dir)
        .env("WOODPECKER__AUTH__JWT_SECRET", &secret)
        .env(
            "WOODPECKER__WS__RATE_PER_S",
            args.hub_rate_per_s.to_string(),
        )
        .env(
            "WOODPECKER__WS__RATE_BURST",
            args.hub_rate_burst.to_string(),
        )
        .env(
            "WOODPECKER__WS__OUTBOX_CAPACITY",
            args.hub_outbox_capacity.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if std::env::var_os("WOODPECKER_LOG").is_none() {
        cmd.env("WOODPECKER_LOG", "warn");
    }
    for kv in &args.hub_env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--hub-env wants KEY=VALUE, got '{kv}'"))?;
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("hub stdout not captured"))?;
    let proc = HubProcess { child, dir };
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the hub did not print its address within 30 s")?
        .context("reading the hub's stdout")?
        .ok_or_else(|| anyhow!("the hub exited before printing its address"))?;
    // Keep draining so the hub never blocks on a full pipe.
    tokio::spawn(async move {
        for _ in 0..1_000_000u32 {
            match lines.next_line().await {
                Ok(Some(line)) => eprintln!("hub: {line}"),
                _ => return,
            }
        }
    });
    let http = first
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected first hub line: {first}"))?
        .to_string();
    let addr = loopback_addr(&http)?;
    Ok((
        proc,
        Target {
            http: format!("http://{addr}"),
            addr,
            pid,
            secret,
        },
    ))
}

/// Parses `http://HOST:PORT` and refuses anything but loopback.
fn loopback_addr(url: &str) -> Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing URL '{url}'"))?;
    if parsed.scheme() != "http" {
        bail!("only http:// URLs are supported, got '{url}'");
    }
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| anyhow!("no port in '{url}'"))?;
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| anyhow!("refusing '{url}': the load tool only targets loopback"))?
    };
    if !ip.is_loopback() {
        bail!("refusing '{url}': the load tool only targets loopback");
    }
    Ok(SocketAddr::new(ip, port))
}

fn read_status_kib(pid: Option<u32>, key: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of a process (clock ticks assumed 100/s).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-minute load average: other work on the machine skews every number.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What every client task records into; read by the main task at the end.
struct Shared {
    base: Instant,
    run: u32,
    clients: usize,
    alerts: usize,
    ack: bool,
    /// `alerts × clients`: nanos since `base` + 1 of the first receipt, 0 = none.
    recv: Vec<AtomicU64>,
    /// Same shape, with `--ack`: when the ack's `ok` came back.
    acked: Vec<AtomicU64>,
    delivered: Vec<AtomicU32>,
    duplicates: AtomicU64,
    foreign: AtomicU64,
    acks_sent: AtomicU64,
    acks_ok: AtomicU64,
    acks_err: AtomicU64,
    first_ack_ns: AtomicU64,
    last_ok_ns: AtomicU64,
    error_frames: AtomicU64,
    other_frames: AtomicU64,
    disconnects: AtomicU64,
    slow_closes: AtomicU64,
    welcomed: AtomicUsize,
    ready: AtomicUsize,
    failed: AtomicUsize,
    retries: AtomicU64,
    last_welcome_ns: AtomicU64,
    last_ready_ns: AtomicU64,
    /// Summed over successful setups: TCP connect, WebSocket upgrade,
    /// hello → welcome, location → ok (nanoseconds).
    phase_ns: [AtomicU64; 4],
    first_error: Mutex<Option<String>>,
    first_close: Mutex<Option<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn note_error(&self, msg: String) {
        if let Ok(mut slot) = self.first_error.lock()
            && slot.is_none()
        {
            *slot = Some(msg);
        }
    }
}

/// Everything a client task needs besides its own identity.
struct ClientCtx {
    addr: SocketAddr,
    ws_url: String,
    config: WebSocketConfig,
    attempts: u32,
    shared: Arc<Shared>,
    permits: Semaphore,
}

type Ws = WebSocketStream<TcpStream>;

/// Waits for a text frame starting with `prefix`; an `error` frame fails.
async fn expect_frame(ws: &mut Ws, prefix: &str) -> Result<()> {
    for _ in 0..MAX_SETUP_FRAMES {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| anyhow!("no reply within 10 s (waiting for {prefix})"))?
            .ok_or_else(|| anyhow!("closed while waiting for {prefix}"))??;
        match msg {
            Message::Text(t) if t.as_str().starts_with(prefix) => return Ok(()),
            Message::Text(t) if t.as_str().starts_with(r#"{"type":"error""#) => {
                bail!("hub replied {}", t.as_str())
            }
            Message::Close(f) => bail!("closed while waiting for {prefix}: {f:?}"),
            _ => {}
        }
    }
    bail!("no {prefix} within {MAX_SETUP_FRAMES} frames")
}

async fn open_client(
    ctx: &ClientCtx,
    token: &str,
    lat: f64,
    lng: f64,
    source: Option<IpAddr>,
) -> Result<Ws> {
    let socket = match ctx.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Close with RST: a FIN close would leave ~N TIME_WAIT sockets on the
    // tool's ports for a minute, and the next run would find no free
    // ephemeral port.
    socket.set_zero_linger()?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .with_context(|| format!("binding {src}"))?;
    }
    let t0 = Instant::now();
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(ctx.addr))
        .await
        .map_err(|_| anyhow!("TCP connect timed out"))?
        .context("TCP connect")?;
    stream.set_nodelay(true)?;
    let t1 = Instant::now();
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async_with_config(ctx.ws_url.as_str(), stream, Some(ctx.config)),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))?
    .context("WebSocket handshake")?;
    let t2 = Instant::now();
    let hello = json!({"type": "hello", "token": token}).to_string();
    ws.send(Message::Text(hello.into())).await?;
    expect_frame(&mut ws, r#"{"type":"welcome""#).await?;
    let t3 = Instant::now();
    let shared = &ctx.shared;
    shared.welcomed.fetch_add(1, Ordering::Relaxed);
    shared
        .last_welcome_ns
        .fetch_max(shared.now_ns(), Ordering::Relaxed);
    let location = json!({"type": "location", "lat": lat, "lng": lng, "id": 0}).to_string();
    ws.send(Message::Text(location.into())).await?;
    expect_frame(&mut ws, r#"{"type":"ok""#).await?;
    let t4 = Instant::now();
    for (slot, (a, b)) in shared
        .phase_ns
        .iter()
        .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
    {
        let d = u64::try_from(b.duration_since(a).as_nanos()).unwrap_or(u64::MAX);
        slot.fetch_add(d, Ordering::Relaxed);
    }
    Ok(ws)
}

/// `(run, k, alert id)` from an alert frame whose title is `wpl-<run>-<k>`.
fn parse_alert(t: &str) -> Option<(u32, usize, &str)> {
    const ID: &str = r#""alert":{"id":""#;
    const TITLE: &str = r#""title":"wpl-"#;
    let id_start = t.find(ID)? + ID.len();
    let id_len = t[id_start..].find('"')?;
    let id = &t[id_start..id_start + id_len];
    let title = t.find(TITLE)? + TITLE.len();
    let rest = &t[title..];
    let dash = rest.find('-')?;
    let run = u32::from_str_radix(&rest[..dash], 16).ok()?;
    let rest = &rest[dash + 1..];
    let end = rest.find('"')?;
    let k = rest[..end].parse().ok()?;
    Some((run, k, id))
}

/// The numeric `id` of an `ok` / `error` frame.
fn frame_id(t: &str) -> Option<u64> {
    const ID: &str = r#""id":"#;
    let start = t.find(ID)? + ID.len();
    let rest = &t[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn client_task(
    i: usize,
    token: String,
    lat: f64,
    lng: f64,
    source: Option<IpAddr>,
    ctx: Arc<ClientCtx>,
) {
    let shared = ctx.shared.clone();
    let mut ws = {
        let Ok(_permit) = ctx.permits.acquire().await else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut opened = None;
        for attempt in 0..ctx.attempts {
            match open_client(&ctx, &token, lat, lng, source).await {
                Ok(ws) => {
                    opened = Some(ws);
                    break;
                }
                Err(e) => {
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("client {i} attempt {}: {e:#}", attempt + 1));
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await;
                }
            }
        }
        match opened {
            Some(ws) => ws,
            None => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    drop(token);
    shared.ready.fetch_add(1, Ordering::Relaxed);
    shared
        .last_ready_ns
        .fetch_max(shared.now_ns(), Ordering::Relaxed);

    // Each alert frame is one read; everything below is bounded by the
    // connection's life, which the main task ends by aborting this task.
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => {
                if let Some(f) = &frame
                    && u16::from(f.code) == 4010
                {
                    shared.slow_closes.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut slot) = shared.first_close.lock()
                    && slot.is_none()
                {
                    *slot = Some(format!("client {i}: {frame:?}"));
                }
                break;
            }
            Ok(_) => continue,
            Err(e) => {
                shared.note_error(format!("client {i} read: {e}"));
                break;
            }
        };
        let t = text.as_str();
        if t.starts_with(r#"{"type":"alert","#) {
            let now = shared.now_ns();
            let Some((run, k, id)) = parse_alert(t) else {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if run != shared.run || k >= shared.alerts {
                shared.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let slot = &shared.recv[k * shared.clients + i];
            if slot
                .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                shared.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            shared.delivered[k].fetch_add(1, Ordering::Relaxed);
            if shared.ack {
                let ack = format!(
                    r#"{{"type":"ack","alert":"{id}","state":"received","id":{}}}"#,
                    k + 1
                );
                shared.first_ack_ns.fetch_min(now, Ordering::Relaxed);
                shared.acks_sent.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = ws.send(Message::Text(ack.into())).await {
                    shared.note_error(format!("client {i} ack send: {e}"));
                    break;
                }
            }
        } else if t.starts_with(r#"{"type":"ok""#) {
            if let Some(n) = frame_id(t)
                && n >= 1
                && (n as usize) <= shared.alerts
                && shared.ack
            {
                let now = shared.now_ns();
                shared.acked[(n as usize - 1) * shared.clients + i]
                    .store(now + 1, Ordering::Relaxed);
                shared.acks_ok.fetch_add(1, Ordering::Relaxed);
                shared.last_ok_ns.fetch_max(now, Ordering::Relaxed);
            }
        } else if t.starts_with(r#"{"type":"error""#) {
            if frame_id(t).is_some_and(|n| n >= 1) {
                shared.acks_err.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.error_frames.fetch_add(1, Ordering::Relaxed);
            }
            shared.note_error(format!("client {i} got {t}"));
        } else {
            shared.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.disconnects.fetch_add(1, Ordering::Relaxed);
}

/// A seeded point uniform (by area) within `radius_m` of `center`.
fn random_point(rng: &mut StdRng, center: Point, radius_m: f64) -> Point {
    let r = radius_m * rng.random::<f64>().sqrt();
    let bearing = rng.random::<f64>() * 360.0;
    Haversine.destination(center, bearing, r)
}

/// The centre of the point's resolution-9 H3 cell (what the hub keeps).
fn cell_centre(p: Point) -> Result<Point> {
    let cell = LatLng::new(p.y(), p.x())
        .context("client position")?
        .to_cell(Resolution::Nine);
    let c = LatLng::from(cell);
    Ok(Point::new(c.lng(), c.lat()))
}

#[derive(Debug, Default, Clone)]
struct PostResult {
    send_ns: u64,
    done_ns: u64,
    ok: bool,
    targeted: Option<u64>,
    error: Option<String>,
}

async fn post_alert(
    http: reqwest::Client,
    url: String,
    police: Arc<str>,
    body: Value,
    shared: Arc<Shared>,
) -> PostResult {
    let req = match http.post(&url).bearer_auth(&*police).json(&body).build() {
        Ok(r) => r,
        Err(e) => {
            return PostResult {
                error: Some(format!("building request: {e}")),
                ..Default::default()
            };
        }
    };
    let send_ns = shared.now_ns();
    let resp = http.execute(req).await;
    let mut out = PostResult {
        send_ns,
        ..Default::default()
    };
    match resp {
        Err(e) => out.error = Some(format!("POST failed: {e}")),
        Ok(r) => {
            let status = r.status();
            let body: Result<Value, _> = r.json().await;
            out.done_ns = shared.now_ns();
            match body {
                Ok(v) if status.as_u16() == 201 => {
                    out.ok = true;
                    out.targeted = v.get("targeted").and_then(Value::as_u64);
                }
                Ok(v) => out.error = Some(format!("POST {status}: {v}")),
                Err(e) => out.error = Some(format!("POST {status}: unreadable body: {e}")),
            }
        }
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| (n as f64 / 1e6 * 1000.0).round() / 1000.0)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.3} ms"))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    // Bounded: one check per 2 ms until the deadline.
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn raise_nofile() -> Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).context("getrlimit")?;
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(rlimit::getrlimit(rlimit::Resource::NOFILE)
        .context("getrlimit")?
        .0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;
    let nofile = raise_nofile()?;
    if (args.clients as u64) + 64 > nofile {
        bail!(
            "--clients {} needs more open files than RLIMIT_NOFILE allows ({nofile})",
            args.clients
        );
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.build().context("starting the runtime")?;
    let limit = Duration::from_secs(args.max_seconds + 15);
    let result = runtime.block_on(async {
        match tokio::time::timeout(limit, run(args, nofile)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("the run overran its deadline")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let mut report = result?;
    // One line, `tool` first, so the line is recognisable by its prefix.
    if let Some(obj) = report.as_object_mut() {
        obj.remove("tool");
    }
    let rest = report.to_string();
    let rest = rest.strip_prefix('{').unwrap_or(&rest);
    let sep = if rest == "}" { "" } else { "," };
    println!("{{\"tool\":\"woodpecker-load\"{sep}{rest}");
    Ok(())
}

async fn run(args: Args, nofile: u64) -> Result<Value> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let (hub_proc, target) = match &args.url {
        Some(url) => {
            let addr = loopback_addr(url)?;
            let secret = args
                .secret
                .clone()
                .ok_or_else(|| anyhow!("--url needs --secret"))?;
            (
                None,
                Target {
                    http: format!("http://{addr}"),
                    addr,
                    pid: args.hub_pid,
                    secret,
                },
            )
        }
        None => {
            let (p, t) = spawn_hub(&args).await?;
            (Some(p), t)
        }
    };
    let outcome = measure(&args, &target, nofile, deadline, started).await;
    if let Some(p) = hub_proc {
        p.stop().await;
    }
    outcome
}

async fn measure(
    args: &Args,
    target: &Target,
    nofile: u64,
    deadline: Instant,
    started: Instant,
) -> Result<Value> {
    let loadavg_start = loadavg();
    let n = args.clients;
    let n_alerts = args.alerts;
    let radius = args.radius();
    let center_mode = args.center_mode();
    let authority = Authority::new(
        &AuthSettings::default(),
        &Secret::new(target.secret.clone()),
    )
    .map_err(|e| anyhow!("authority: {e}"))?;
    let run_id: u32 = rand::random();
    let ttl = Duration::from_secs(3600);
    let police: Arc<str> = authority
        .mint(
            &format!("wpl-police-{run_id:08x}"),
            Role::Police,
            None,
            "",
            ttl,
        )
        .map_err(|e| anyhow!("minting: {e}"))?
        .into();

    // Positions, cells and alert centres, all from the seed.
    let district = Point::new(args.district_lng, args.district_lat);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut positions = Vec::with_capacity(n);
    let mut centres = Vec::with_capacity(n);
    for _ in 0..n {
        let p = random_point(&mut rng, district, args.district_radius_m);
        centres.push(cell_centre(p)?);
        positions.push(p);
    }
    let mut alert_rng = StdRng::seed_from_u64(args.seed ^ 0x9e37_79b9_7f4a_7c15);
    let alert_centres: Vec<Point> = (0..n_alerts)
        .map(|_| match center_mode {
            CenterMode::Center => district,
            CenterMode::Random => random_point(&mut alert_rng, district, args.district_radius_m),
        })
        .collect();
    let mut expected = vec![false; n_alerts * n];
    let mut expected_count = vec![0usize; n_alerts];
    for (k, c) in alert_centres.iter().enumerate() {
        for (i, cc) in centres.iter().enumerate() {
            if Haversine.distance(*cc, *c) <= radius {
                expected[k * n + i] = true;
                expected_count[k] += 1;
            }
        }
    }

    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(
            authority
                .mint(
                    &format!("wpl-{run_id:08x}-{i}"),
                    Role::Responder,
                    Some(Unit::Volunteer),
                    "",
                    ttl,
                )
                .map_err(|e| anyhow!("minting: {e}"))?,
        );
    }

    woodpecker::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.post_concurrency.max(4))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let health = format!("{}/healthz", target.http);
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(&health).send().await
            && r.status().is_success()
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !healthy {
        bail!("{health} did not answer");
    }
    // Warm the pool so the first alert does not pay for a TCP connect.
    for _ in 0..args.post_concurrency.min(8) {
        let _ = http.get(&health).send().await;
    }

    let shared = Arc::new(Shared {
        base: Instant::now(),
        run: run_id,
        clients: n,
        alerts: n_alerts,
        ack: args.ack,
        recv: (0..n_alerts * n).map(|_| AtomicU64::new(0)).collect(),
        acked: if args.ack {
            (0..n_alerts * n).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        },
        delivered: (0..n_alerts).map(|_| AtomicU32::new(0)).collect(),
        duplicates: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        acks_sent: AtomicU64::new(0),
        acks_ok: AtomicU64::new(0),
        acks_err: AtomicU64::new(0),
        first_ack_ns: AtomicU64::new(u64::MAX),
        last_ok_ns: AtomicU64::new(0),
        error_frames: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        slow_closes: AtomicU64::new(0),
        welcomed: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        retries: AtomicU64::new(0),
        last_welcome_ns: AtomicU64::new(0),
        last_ready_ns: AtomicU64::new(0),
        phase_ns: Default::default(),
        first_error: Mutex::new(None),
        first_close: Mutex::new(None),
    });

    tokio::time::sleep(Duration::from_millis(args.settle_ms.min(5000))).await;
    let rss_before = read_status_kib(target.pid, "VmRSS:");

    // Connect.
    let spread = args.spread();
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let ctx = Arc::new(ClientCtx {
        addr: target.addr,
        ws_url: format!("ws://{}/ws", target.addr),
        config,
        attempts: args.connect_attempts,
        shared: shared.clone(),
        permits: Semaphore::new(args.connect_concurrency),
    });
    let hub_cpu_c0 = cpu_seconds(target.pid);
    let tool_cpu_c0 = cpu_seconds(None);
    let connect_start_ns = shared.now_ns();
    let mut set = JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let source = spread.then(|| IpAddr::V4(SPREAD_SOURCES[i % SPREAD_SOURCES.len()]));
        let p = positions[i];
        set.spawn(client_task(i, token, p.y(), p.x(), source, ctx.clone()));
    }
    let connect_deadline = deadline.min(Instant::now() + Duration::from_secs(90));
    wait_until(connect_deadline, || {
        shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= n
    })
    .await;
    let hub_cpu_connect = hub_cpu_c0.zip(cpu_seconds(target.pid)).map(|(a, b)| b - a);
    let tool_cpu_connect = tool_cpu_c0.zip(cpu_seconds(None)).map(|(a, b)| b - a);
    let ready = shared.ready.load(Ordering::Relaxed);
    let welcomed = shared.welcomed.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let connect_s = (shared.last_welcome_ns.load(Ordering::Relaxed))
        .saturating_sub(connect_start_ns) as f64
        / 1e9;
    let ready_s = (shared.last_ready_ns.load(Ordering::Relaxed)).saturating_sub(connect_start_ns)
        as f64
        / 1e9;
    tokio::time::sleep(Duration::from_millis(args.settle_ms.min(5000))).await;
    let rss_after = read_status_kib(target.pid, "VmRSS:");
    let tool_rss = read_status_kib(None, "VmRSS:");
    eprintln!(
        "connected {ready}/{n} (failed {failed}) in {ready_s:.3} s; hub RSS {rss_before:?} -> {rss_after:?} KiB"
    );

    // Alerts.
    let hub_cpu0 = cpu_seconds(target.pid);
    let tool_cpu0 = cpu_seconds(None);
    let url = format!("{}/api/v1/alerts", target.http);
    let posts = Arc::new(Semaphore::new(args.post_concurrency));
    let mut post_set: JoinSet<(usize, PostResult)> = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut issued = 0;
    if ready > 0 {
        for (k, c) in alert_centres.iter().enumerate() {
            if Instant::now() >= deadline {
                break;
            }
            if !args.flat_out {
                ticker.tick().await;
            }
            let Ok(permit) = posts.clone().acquire_owned().await else {
                break;
            };
            let body = json!({
                "kind": "missing_person",
                "title": format!("wpl-{run_id:08x}-{k}"),
                "body": "woodpecker-load",
                "lat": c.y(),
                "lng": c.x(),
                "radius_m": radius,
                "audience": ["volunteer"],
            });
            let (http, url, police, shared) =
                (http.clone(), url.clone(), police.clone(), shared.clone());
            post_set.spawn(async move {
                let r = post_alert(http, url, police, body, shared).await;
                drop(permit);
                (k, r)
            });
            issued += 1;
        }
    }
    let mut results: Vec<Option<PostResult>> = vec![None; n_alerts];
    let post_deadline = deadline.min(Instant::now() + Duration::from_secs(60));
    while let Ok(Some(joined)) =
        tokio::time::timeout_at(post_deadline.into(), post_set.join_next()).await
    {
        if let Ok((k, r)) = joined {
            results[k] = Some(r);
        }
    }
    post_set.abort_all();

    // Wait for every expected delivery (and ack) or the timeout.
    let last_send = results
        .iter()
        .flatten()
        .map(|r| r.send_ns)
        .max()
        .unwrap_or(0);
    let wait_deadline = deadline.min(
        shared.base + Duration::from_nanos(last_send) + Duration::from_millis(args.timeout_ms),
    );
    let posted: Vec<usize> = (0..n_alerts)
        .filter(|k| results[*k].as_ref().is_some_and(|r| r.ok))
        .collect();
    wait_until(wait_deadline, || {
        posted
            .iter()
            .all(|k| shared.delivered[*k].load(Ordering::Relaxed) as usize >= expected_count[*k])
            && (!args.ack
                || shared.acks_ok.load(Ordering::Relaxed) + shared.acks_err.load(Ordering::Relaxed)
                    >= shared.acks_sent.load(Ordering::Relaxed))
    })
    .await;
    // A short grace so late or unexpected frames are seen too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hub_cpu = hub_cpu0.zip(cpu_seconds(target.pid)).map(|(a, b)| b - a);
    let tool_cpu = tool_cpu0.zip(cpu_seconds(None)).map(|(a, b)| b - a);
    let disconnects_before_end = shared.disconnects.load(Ordering::Relaxed);
    let deadline_hit = Instant::now() >= deadline;

    // Stop the clients before the hub goes.
    set.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;

    // Analysis.
    let timeout_ns = args.timeout_ms * 1_000_000;
    let mut lat_all: Vec<u64> = Vec::new();
    let mut last_per_alert: Vec<u64> = Vec::new();
    let mut first_per_alert: Vec<u64> = Vec::new();
    let mut post_ms: Vec<u64> = Vec::new();
    let mut ack_lat: Vec<u64> = Vec::new();
    let (mut exp_total, mut delivered_total, mut missing, mut unexpected, mut late) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut targeted_mismatch = 0u64;
    let mut post_failed = 0u64;
    let mut first_post_error = None;
    let mut first_send = u64::MAX;
    let mut last_recv = 0u64;
    let mut per_alert = Vec::new();
    for k in 0..n_alerts {
        let Some(r) = &results[k] else { continue };
        if !r.ok {
            post_failed += 1;
            if first_post_error.is_none() {
                first_post_error = r.error.clone();
            }
            continue;
        }
        first_send = first_send.min(r.send_ns);
        post_ms.push(r.done_ns.saturating_sub(r.send_ns));
        if r.targeted != Some(expected_count[k] as u64) {
            targeted_mismatch += 1;
        }
        let mut last = None::<u64>;
        let mut first = None::<u64>;
        let (mut d, mut miss, mut unexp) = (0u64, 0u64, 0u64);
        for i in 0..n {
            let at = shared.recv[k * n + i].load(Ordering::Relaxed);
            let exp = expected[k * n + i];
            if at == 0 {
                if exp {
                    miss += 1;
                }
                continue;
            }
            let t = at - 1;
            last_recv = last_recv.max(t);
            let lat = t.saturating_sub(r.send_ns);
            d += 1;
            if !exp {
                unexp += 1;
            } else if lat > timeout_ns {
                miss += 1;
                late += 1;
            }
            lat_all.push(lat);
            last = Some(last.map_or(lat, |l| l.max(lat)));
            first = Some(first.map_or(lat, |f| f.min(lat)));
            if args.ack {
                let ok_at = shared.acked[k * n + i].load(Ordering::Relaxed);
                if ok_at != 0 {
                    ack_lat.push((ok_at - 1).saturating_sub(t));
                }
            }
        }
        exp_total += expected_count[k] as u64;
        delivered_total += d;
        missing += miss;
        unexpected += unexp;
        if let Some(l) = last {
            last_per_alert.push(l);
        }
        if let Some(f) = first {
            first_per_alert.push(f);
        }
        if per_alert.len() < MAX_PER_ALERT_JSON {
            per_alert.push(json!({
                "k": k,
                "expected": expected_count[k],
                "targeted": r.targeted,
                "delivered": d,
                "missing": miss,
                "unexpected": unexp,
                "first_ms": ms(first),
                "last_ms": ms(last),
                "post_ms": ms(Some(r.done_ns.saturating_sub(r.send_ns))),
            }));
        }
    }
    lat_all.sort_unstable();
    let mut last_sorted = last_per_alert.clone();
    last_sorted.sort_unstable();
    first_per_alert.sort_unstable();
    post_ms.sort_unstable();
    ack_lat.sort_unstable();
    let ok_alerts = posted.len();
    let duplicates = shared.duplicates.load(Ordering::Relaxed);
    let frames = delivered_total + duplicates;
    let flat_elapsed_s = if first_send < last_recv {
        (last_recv - first_send) as f64 / 1e9
    } else {
        0.0
    };
    let deliveries_per_s = if flat_elapsed_s > 0.0 {
        frames as f64 / flat_elapsed_s
    } else {
        0.0
    };
    let acks_sent = shared.acks_sent.load(Ordering::Relaxed);
    let acks_ok = shared.acks_ok.load(Ordering::Relaxed);
    let acks_err = shared.acks_err.load(Ordering::Relaxed);
    let first_ack = shared.first_ack_ns.load(Ordering::Relaxed);
    let last_ok = shared.last_ok_ns.load(Ordering::Relaxed);
    let ack_span_s = if first_ack < last_ok {
        (last_ok - first_ack) as f64 / 1e9
    } else {
        0.0
    };
    let acks_per_s = if ack_span_s > 0.0 {
        acks_ok as f64 / ack_span_s
    } else {
        0.0
    };
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ready > 0 => Some(round3((a as f64 - b as f64) / ready as f64)),
        _ => None,
    };
    let exp_min = expected_count.iter().min().copied().unwrap_or(0);
    let exp_max = expected_count.iter().max().copied().unwrap_or(0);
    let exp_mean = if n_alerts > 0 {
        expected_count.iter().sum::<usize>() as f64 / n_alerts as f64
    } else {
        0.0
    };
    let first_error = shared.first_error.lock().ok().and_then(|g| g.clone());
    let first_close = shared.first_close.lock().ok().and_then(|g| g.clone());
    let phase_mean = |p: usize| -> f64 {
        if ready == 0 {
            return 0.0;
        }
        round3(shared.phase_ns[p].load(Ordering::Relaxed) as f64 / ready as f64 / 1e6)
    };
    let mode = if args.flat_out { "flat_out" } else { "latency" };
    let elapsed_s = started.elapsed().as_secs_f64();

    let report = json!({
        "tool": "woodpecker-load",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "params": {
            "clients": n,
            "alerts": n_alerts,
            "rate": if args.flat_out { Value::Null } else { json!(args.rate) },
            "post_concurrency": args.post_concurrency,
            "radius_m": radius,
            "center_mode": format!("{center_mode:?}").to_lowercase(),
            "seed": args.seed,
            "district": {"lat": args.district_lat, "lng": args.district_lng, "radius_m": args.district_radius_m},
            "ack": args.ack,
            "spread_sources": spread,
            "timeout_ms": args.timeout_ms,
            "connect_concurrency": args.connect_concurrency,
            "hub_spawned": args.url.is_none(),
            "nofile": nofile,
        },
        "connect": {
            "ready": ready,
            "welcomed": welcomed,
            "failed": failed,
            "retries": shared.retries.load(Ordering::Relaxed),
            "connect_s": round3(connect_s),
            "ready_s": round3(ready_s),
            "mean_phase_ms": {
                "tcp": phase_mean(0),
                "upgrade": phase_mean(1),
                "hello_welcome": phase_mean(2),
                "location_ok": phase_mean(3),
            },
            "per_s": if ready_s > 0.0 { round3(ready as f64 / ready_s) } else { 0.0 },
        },
        "memory": {
            "hub_rss_before_kib": rss_before,
            "hub_rss_after_kib": rss_after,
            "hub_kib_per_conn": rss_per_conn,
            "tool_rss_kib": tool_rss,
        },
        "alerts": {
            "issued": issued,
            "ok": ok_alerts,
            "post_failed": post_failed,
            "expected_total": exp_total,
            "expected_per_alert": {"min": exp_min, "mean": round3(exp_mean), "max": exp_max},
            "delivered": delivered_total,
            "missing": missing,
            "late": late,
            "unexpected": unexpected,
            "duplicates": duplicates,
            "foreign": shared.foreign.load(Ordering::Relaxed),
            "hub_targeted_mismatch": targeted_mismatch,
            "latency_ms": {"p50": ms(pct(&lat_all, 0.50)), "p99": ms(pct(&lat_all, 0.99)), "max": ms(lat_all.last().copied())},
            "first_ms": {"median": ms(pct(&first_per_alert, 0.50)), "max": ms(first_per_alert.last().copied())},
            "last_ms": {"median": ms(pct(&last_sorted, 0.50)), "p90": ms(pct(&last_sorted, 0.90)), "max": ms(last_sorted.last().copied())},
            "post_ms": {"p50": ms(pct(&post_ms, 0.50)), "p99": ms(pct(&post_ms, 0.99)), "max": ms(post_ms.last().copied())},
            "per_alert": per_alert,
        },
        "throughput": {
            "frames": frames,
            "elapsed_s": round3(flat_elapsed_s),
            "deliveries_per_s": deliveries_per_s.round(),
        },
        "acks": {
            "sent": acks_sent,
            "ok": acks_ok,
            "err": acks_err,
            "span_s": round3(ack_span_s),
            "acks_per_s": acks_per_s.round(),
            "latency_ms": {"p50": ms(pct(&ack_lat, 0.50)), "p99": ms(pct(&ack_lat, 0.99)), "max": ms(ack_lat.last().copied())},
        },
        "cpu_s_alert_phase": {"hub": hub_cpu.map(round3), "tool": tool_cpu.map(round3)},
        "cpu_s_connect_phase": {"hub": hub_cpu_connect.map(round3), "tool": tool_cpu_connect.map(round3)},
        "errors": {
            "disconnects": disconnects_before_end,
            "slow_closes": shared.slow_closes.load(Ordering::Relaxed),
            "error_frames": shared.error_frames.load(Ordering::Relaxed),
            "other_frames": shared.other_frames.load(Ordering::Relaxed),
            "first_error": first_error,
            "first_close": first_close,
            "first_post_error": first_post_error,
        },
        "loadavg_at_start": loadavg_start,
        "deadline_hit": deadline_hit,
        "elapsed_s": round3(elapsed_s),
    });
    print_table(&report);
    Ok(report)
}

fn print_table(r: &Value) {
    let g = |path: &str| -> String {
        let mut v = r;
        for part in path.split('.') {
            v = &v[part];
        }
        match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let gm = |path: &str| -> String {
        let mut v = r;
        for part in path.split('.') {
            v = &v[part];
        }
        fmt_ms(v.as_f64())
    };
    let mut rows: Vec<(String, String)> = vec![
        ("mode".into(), g("mode")),
        ("load average at start".into(), g("loadavg_at_start")),
        ("hit --max-seconds".into(), g("deadline_hit")),
        (
            "clients / alerts / radius".into(),
            format!(
                "{} / {} / {} m ({})",
                g("params.clients"),
                g("params.alerts"),
                g("params.radius_m"),
                g("params.center_mode")
            ),
        ),
        (
            "connected (failed, retries)".into(),
            format!(
                "{} ({}, {})",
                g("connect.ready"),
                g("connect.failed"),
                g("connect.retries")
            ),
        ),
        (
            "time to connect all / ready all".into(),
            format!("{} s / {} s", g("connect.connect_s"), g("connect.ready_s")),
        ),
        (
            "mean setup tcp/upgrade/hello/location".into(),
            format!(
                "{} / {} / {} / {}",
                gm("connect.mean_phase_ms.tcp"),
                gm("connect.mean_phase_ms.upgrade"),
                gm("connect.mean_phase_ms.hello_welcome"),
                gm("connect.mean_phase_ms.location_ok")
            ),
        ),
        (
            "hub RSS before → after".into(),
            format!(
                "{} → {} KiB",
                g("memory.hub_rss_before_kib"),
                g("memory.hub_rss_after_kib")
            ),
        ),
        (
            "hub RSS per connection".into(),
            format!("{} KiB", g("memory.hub_kib_per_conn")),
        ),
        (
            "alerts ok / failed".into(),
            format!("{} / {}", g("alerts.ok"), g("alerts.post_failed")),
        ),
        (
            "expected per alert min/mean/max".into(),
            format!(
                "{} / {} / {}",
                g("alerts.expected_per_alert.min"),
                g("alerts.expected_per_alert.mean"),
                g("alerts.expected_per_alert.max")
            ),
        ),
        (
            "expected / delivered".into(),
            format!("{} / {}", g("alerts.expected_total"), g("alerts.delivered")),
        ),
        (
            "missing / unexpected / dup".into(),
            format!(
                "{} / {} / {}",
                g("alerts.missing"),
                g("alerts.unexpected"),
                g("alerts.duplicates")
            ),
        ),
        (
            "hub `targeted` ≠ expected (alerts)".into(),
            g("alerts.hub_targeted_mismatch"),
        ),
        (
            "per-recipient latency p50/p99/max".into(),
            format!(
                "{} / {} / {}",
                gm("alerts.latency_ms.p50"),
                gm("alerts.latency_ms.p99"),
                gm("alerts.latency_ms.max")
            ),
        ),
        (
            "first recipient median/max".into(),
            format!(
                "{} / {}",
                gm("alerts.first_ms.median"),
                gm("alerts.first_ms.max")
            ),
        ),
        (
            "last recipient median/p90/max".into(),
            format!(
                "{} / {} / {}",
                gm("alerts.last_ms.median"),
                gm("alerts.last_ms.p90"),
                gm("alerts.last_ms.max")
            ),
        ),
        (
            "POST round trip p50/p99/max".into(),
            format!(
                "{} / {} / {}",
                gm("alerts.post_ms.p50"),
                gm("alerts.post_ms.p99"),
                gm("alerts.post_ms.max")
            ),
        ),
        (
            "frames received / span".into(),
            format!(
                "{} / {} s",
                g("throughput.frames"),
                g("throughput.elapsed_s")
            ),
        ),
        (
            "deliveries per second".into(),
            g("throughput.deliveries_per_s"),
        ),
    ];
    if r["params"]["ack"].as_bool() == Some(true) {
        rows.push((
            "acks sent / ok / err".into(),
            format!("{} / {} / {}", g("acks.sent"), g("acks.ok"), g("acks.err")),
        ));
        rows.push((
            "durable acks per second".into(),
            format!("{} (over {} s)", g("acks.acks_per_s"), g("acks.span_s")),
        ));
        rows.push((
            "ack → ok p50/p99/max".into(),
            format!(
                "{} / {} / {}",
                gm("acks.latency_ms.p50"),
                gm("acks.latency_ms.p99"),
                gm("acks.latency_ms.max")
            ),
        ));
    }
    rows.push((
        "CPU in connect phase hub / tool".into(),
        format!(
            "{} s / {} s",
            g("cpu_s_connect_phase.hub"),
            g("cpu_s_connect_phase.tool")
        ),
    ));
    rows.push((
        "CPU in alert phase hub / tool".into(),
        format!(
            "{} s / {} s",
            g("cpu_s_alert_phase.hub"),
            g("cpu_s_alert_phase.tool")
        ),
    ));
    rows.push((
        "disconnects / slow closes / error frames".into(),
        format!(
            "{} / {} / {}",
            g("errors.disconnects"),
            g("errors.slow_closes"),
            g("errors.error_frames")
        ),
    ));
    for key in ["first_error", "first_close", "first_post_error"] {
        let v = g(&format!("errors.{key}"));
        if v != "-" {
            rows.push((key.into(), v.chars().take(160).collect()));
        }
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    eprintln!("{}", "-".repeat(width + 40));
    for (k, v) in rows {
        eprintln!("{k:<width$}  {v}");
    }
    eprintln!("{}", "-".repeat(width + 40));
}
