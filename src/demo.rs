//! `woodpecker demo`: the whole loop on one machine, for a newcomer to watch.
//!
//! Starts the hub on the embedded store in a fresh temporary directory (a new
//! signing key and an empty record each run; removed on exit), then connects
//! a seeded population of simulated responders over real WebSockets from
//! this process: 2,000 by default, spread over a district 10 km across around
//! Jiaxing, in all three units. Each one says `hello`, shares a location that
//! drifts a little every 20–60 s, answers alerts the way people do (most
//! confirm receipt, about 30 % accept, some decline, most who accept arrive
//! later), and works any search cell it is assigned (`searching`, then
//! `cleared`). It issues nothing by itself: the police console does that
//! (`--example-alert` issues one after a short delay).
//!
//! The demo prints the three page URLs with sign-in tokens in the fragment
//! and serves `/demo-users.json` (one-click sign-in buttons on the pages)
//! from an overlay of the web directory inside the temporary directory, so
//! no token is ever written into the source tree.
//!
//! Memory stays small: each simulated responder is one task holding one
//! socket with a 4 KiB read buffer and a few dozen bytes of state;
//! connecting is bounded by a semaphore.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::alerts::IssueRequest;
use crate::app::{AppError, Running};
use crate::auth::AuthError;
use crate::config::Settings;
use crate::domain::{Principal, Role, Unit};

/// Jiaxing city centre, the middle of the simulated district.
pub const DISTRICT_CENTRE: (f64, f64) = (30.7522, 120.7585);
/// The district is a disc this wide (metres).
pub const DISTRICT_DIAMETER_M: f64 = 10_000.0;
/// How long the printed sign-in links are valid.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// Simulated responders connecting at once.
const CONNECT_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("demo directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding demo users: {0}")]
    Json(#[from] serde_json::Error),
    #[error("example alert: {0}")]
    Alert(String),
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated responders (default 2,000).
    pub responders: usize,
    /// Seed of the population and its behaviour (same seed, same people).
    pub seed: u64,
    /// Issue one example alert this long after start (none by default).
    pub example_alert_after: Option<Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            responders: 2000,
            seed: 7,
            example_alert_after: None,
        }
    }
}

/// A page link that signs its user in.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub label: &'static str,
    pub role: Role,
    pub sub: String,
    pub token: String,
    pub url: String,
}

/// Counts the simulation keeps (for the progress line and tests).
#[derive(Debug, Default)]
pub struct SimStats {
    pub connected: AtomicUsize,
    pub alerts_seen: AtomicUsize,
    pub acks_sent: AtomicUsize,
    pub cells_reported: AtomicUsize,
    pub reconnects: AtomicUsize,
}

/// A running demo: the hub, the simulated population and the links.
pub struct Demo {
    pub addr: SocketAddr,
    pub sign_ins: Vec<SignIn>,
    pub stats: Arc<SimStats>,
    pub dir: PathBuf,
    running: Running,
    stop: watch::Sender<bool>,
    sims: JoinSet<()>,
    extra: Vec<tokio::task::JoinHandle<()>>,
}

/// A person at a page: the demo signs them in with one click.
struct Human {
    label: &'static str,
    role: Role,
    unit: Option<Unit>,
    sub: &'static str,
    name: &'static str,
    page: &'static str,
}

const HUMANS: [Human; 5] = [
    Human {
        label: "Police officer Li 李警官",
        role: Role::Police,
        unit: None,
        sub: "demo-police",
        name: "李警官",
        page: "police.html",
    },
    Human {
        label: "Coordinator Chen 陈协调员",
        role: Role::Coordinator,
        unit: None,
        sub: "demo-coordinator",
        name: "陈协调员",
        page: "coordinator.html",
    },
    Human {
        label: "Volunteer (you) 志愿者（你）",
        role: Role::Responder,
        unit: Some(Unit::Volunteer),
        sub: "demo-you-volunteer",
        name: "你（志愿者）",
        page: "responder.html",
    },
    Human {
        label: "Patrol (you) 巡逻队（你）",
        role: Role::Responder,
        unit: Some(Unit::Patrol),
        sub: "demo-you-patrol",
        name: "你（巡逻队）",
        page: "responder.html",
    },
    Human {
        label: "Staff (you) 工作人员（你）",
        role: Role::Responder,
        unit: Some(Unit::Staff),
        sub: "demo-you-staff",
        name: "你（工作人员）",
        page: "responder.html",
    },
];

/// Runs the demo until `shutdown` resolves, printing the address first and
/// then the three page URLs with their sign-in links.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    options: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let demo = start(settings, listener, options.clone()).await?;
    println!("listening on http://{}", demo.addr);
    println!("{}", demo.banner(&options));
    shutdown.await;
    tracing::info!("stopping the demo");
    demo.stop().await;
    Ok(())
}

/// Starts the hub and the simulated population; returns once the hub
/// listens (the responders keep connecting in the background).
pub async fn start(
    mut settings: Settings,
    listener: TcpListener,
    options: DemoOptions,
) -> Result<Demo, DemoError> {
    let dir = fresh_dir()?;
    let web_source = settings.server.web_dir.clone();
    settings.server.data_dir = dir.join("data");
    let authority = crate::app::authority(&settings)?;
    let addr = listener.local_addr().map_err(AppError::Io)?;
    let base = page_base(addr);

    let mut sign_ins = Vec::with_capacity(HUMANS.len());
    for h in &HUMANS {
        let token = authority.mint(h.sub, h.role, h.unit, h.name, TOKEN_TTL)?;
        let url = format!("{base}/{}#token={token}", h.page);
        sign_ins.push(SignIn {
            label: h.label,
            role: h.role,
            sub: h.sub.to_string(),
            token,
            url,
        });
    }
    if let Some(overlay) = web_overlay(&dir, &web_source, &sign_ins)? {
        settings.server.web_dir = overlay;
    }

    let running = crate::app::start(settings, listener).await?;
    let stats = Arc::new(SimStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let sims = spawn_population(&authority, addr, &options, stats.clone(), stop_rx.clone())?;
    let mut extra = vec![tokio::spawn(progress(
        stats.clone(),
        options.responders,
        stop_rx.clone(),
    ))];
    if let Some(after) = options.example_alert_after {
        extra.push(tokio::spawn(example_alert(
            running.state.alerts.clone(),
            after,
            stop_rx,
        )));
    }
    Ok(Demo {
        addr,
        sign_ins,
        stats,
        dir,
        running,
        stop,
        sims,
        extra,
    })
}

impl Demo {
    /// The text printed under the `listening on` line.
    pub fn banner(&self, options: &DemoOptions) -> String {
        let (v, p, s) = unit_split(options.responders);
        let base = page_base(self.addr);
        let link = |role: Role| {
            self.sign_ins
                .iter()
                .find(|s| s.role == role)
                .map(|s| s.url.as_str())
                .unwrap_or("")
        };
        format!(
            "\nWoodpecker demo: {n} simulated responders ({v} volunteers, {p} patrol, {s} staff)\n\
             connecting over WebSocket, spread over a district {km} km across around Jiaxing.\n\
             Nothing is issued until you issue it from the police console.\n\n\
             Open these pages (each link signs you in; valid for {h} h):\n\
             \x20 Police console   {police}\n\
             \x20 Coordinator map  {coord}\n\
             \x20 Responder app    {resp}\n\
             \x20 (or start at {base}/ and sign in with one click)\n\n\
             Data: {dir} (removed on exit). Ctrl-C stops the demo.",
            n = options.responders,
            km = DISTRICT_DIAMETER_M / 1000.0,
            h = TOKEN_TTL.as_secs() / 3600,
            police = link(Role::Police),
            coord = link(Role::Coordinator),
            resp = link(Role::Responder),
            dir = self.dir.display(),
        )
    }

    /// The hub's shared state (tests issue alerts through it).
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Disconnects the population, stops the hub, removes the directory.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let drain = async { while self.sims.join_next().await.is_some() {} };
        if timeout(Duration::from_secs(5), drain).await.is_err() {
            self.sims.abort_all();
        }
        for task in self.extra {
            task.abort();
            let _ = task.await;
        }
        self.running.stop().await;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the demo directory");
        }
    }
}

/// The address pages are reached at (an unspecified bind address is not one
/// a browser can open).
fn page_base(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

fn fresh_dir() -> Result<PathBuf, DemoError> {
    let path = std::env::temp_dir().join(format!(
        "woodpecker-demo-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&path).map_err(|source| DemoError::Dir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Builds `<dir>/web`: a link to every entry of the real web directory plus
/// `demo-users.json`. Returns `None` (serve the real directory, no one-click
/// sign-in) where symbolic links are not available.
fn web_overlay(
    dir: &Path,
    web_source: &Path,
    sign_ins: &[SignIn],
) -> Result<Option<PathBuf>, DemoError> {
    #[cfg(unix)]
    {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DemoError::Dir { path, source }
        };
        let source = std::fs::canonicalize(web_source).map_err(io(web_source))?;
        let overlay = dir.join("web");
        std::fs::create_dir_all(&overlay).map_err(io(&overlay))?;
        for entry in std::fs::read_dir(&source).map_err(io(&source))? {
            let entry = entry.map_err(io(&source))?;
            let name = entry.file_name();
            if name == "demo-users.json" {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), overlay.join(&name)).map_err(io(&overlay))?;
        }
        let users: Vec<Value> = sign_ins
            .iter()
            .map(|s| {
                json!({
                    "label": s.label,
                    "role": crate::auth::role_name(s.role),
                    "sub": s.sub,
                    "token": s.token,
                })
            })
            .collect();
        let file = overlay.join("demo-users.json");
        std::fs::write(
            &file,
            serde_json::to_vec_pretty(&json!({ "users": users }))?,
        )
        .map_err(io(&file))?;
        Ok(Some(overlay))
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, web_source, sign_ins);
        Ok(None)
    }
}

/// How a population of `n` splits into volunteers, patrol and staff.
pub fn unit_split(n: usize) -> (usize, usize, usize) {
    let patrol = n * 12 / 100;
    let staff = n * 8 / 100;
    (n - patrol - staff, patrol, staff)
}

// ------------------------------------------------------------ randomness

/// SplitMix64: eight bytes of state per responder, deterministic per seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.range(lo, hi))
    }
}

const M_PER_DEG_LAT: f64 = 111_320.0;

/// Moves `(lat, lng)` by `dn` metres north and `de` metres east.
fn offset(p: (f64, f64), dn: f64, de: f64) -> (f64, f64) {
    let lat = p.0 + dn / M_PER_DEG_LAT;
    let lng = p.1 + de / (M_PER_DEG_LAT * p.0.to_radians().cos());
    (lat, lng)
}

/// Approximate metres north and east from `a` to `b` (fine at city scale).
fn delta_m(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let dn = (b.0 - a.0) * M_PER_DEG_LAT;
    let de = (b.1 - a.1) * M_PER_DEG_LAT * a.0.to_radians().cos();
    (dn, de)
}

/// A uniformly random point in the district disc.
pub fn home_in_district(rng: &mut Rng) -> (f64, f64) {
    let r = DISTRICT_DIAMETER_M / 2.0 * rng.unit().sqrt();
    let theta = rng.range(0.0, std::f64::consts::TAU);
    offset(DISTRICT_CENTRE, r * theta.cos(), r * theta.sin())
}

const SURNAMES: [&str; 20] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "高", "沈",
];
const GIVEN: [&str; 20] = [
    "伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明", "超",
    "秀英", "华", "建国", "丽",
];

// ------------------------------------------------------------ population

/// One simulated responder's identity.
struct Person {
    token: String,
    home: (f64, f64),
    rng: Rng,
}

fn spawn_population(
    authority: &crate::auth::Authority,
    addr: SocketAddr,
    options: &DemoOptions,
    stats: Arc<SimStats>,
    stop: watch::Receiver<bool>,
) -> Result<JoinSet<()>, DemoError> {
    let url: Arc<str> = format!("ws://{}/ws", local_target(addr)).into();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (_, patrol, staff) = unit_split(options.responders);
    let mut sims = JoinSet::new();
    let mut seeds = Rng::new(options.seed);
    for i in 0..options.responders {
        let (unit, tag) = if i < patrol {
            (Unit::Patrol, 'p')
        } else if i < patrol + staff {
            (Unit::Staff, 's')
        } else {
            (Unit::Volunteer, 'v')
        };
        let mut rng = Rng::new(seeds.next_u64());
        let name = format!(
            "{}{} {:04}",
            SURNAMES[(rng.next_u64() % SURNAMES.len() as u64) as usize],
            GIVEN[(rng.next_u64() % GIVEN.len() as u64) as usize],
            i + 1
        );
        let sub = format!("sim-{tag}-{:04}", i + 1);
        let token = authority.mint(&sub, Role::Responder, Some(unit), &name, TOKEN_TTL)?;
        let home = home_in_district(&mut rng);
        let person = Person { token, home, rng };
        sims.spawn(simulate(
            person,
            url.clone(),
            gate.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    Ok(sims)
}

/// Where this process reaches its own listener.
fn local_target(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

async fn progress(stats: Arc<SimStats>, total: usize, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    let mut reported = usize::MAX;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let n = stats.connected.load(Ordering::Relaxed);
        if n != reported {
            tracing::info!(connected = n, of = total, "simulated responders online");
            reported = n;
        }
    }
}

async fn example_alert(
    alerts: crate::alerts::Alerts,
    after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = stop.changed() => return,
        _ = tokio::time::sleep(after) => {}
    }
    let police = Principal {
        sub: "demo-police".into(),
        role: Role::Police,
        unit: None,
        name: "李警官".into(),
    };
    let request = IssueRequest {
        kind: "missing_person".into(),
        title: "走失儿童：男孩，7岁，蓝色外套 / Missing boy, 7, blue jacket".into(),
        body: "最后出现在南湖公园东门附近。Last seen near the east gate of South Lake park.".into(),
        lat: DISTRICT_CENTRE.0,
        lng: DISTRICT_CENTRE.1,
        radius_m: 1500.0,
        audience: Unit::ALL.to_vec(),
        urgency: None,
        severity: None,
        expires_in_s: Some(6 * 3600),
        subject: Some("child_7_12".into()),
    };
    let result = match request.validate(alerts.limits()) {
        Ok(draft) => alerts
            .issue(&police, draft)
            .await
            .map_err(|e| DemoError::Alert(e.to_string())),
        Err(e) => Err(DemoError::Alert(e.to_string())),
    };
    match result {
        Ok(out) => {
            tracing::info!(alert = %out.alert.id, targeted = out.targeted, "example alert issued")
        }
        Err(e) => tracing::warn!(error = %e, "example alert not issued"),
    }
}

// ------------------------------------------------------------ one responder

/// What a simulated responder will do, and when.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Ack {
        alert: String,
        state: &'static str,
    },
    Cell {
        alert: String,
        cell: String,
        state: &'static str,
    },
}

/// An alert the responder is working (kept small: id, centre, its answer).
#[derive(Debug, Clone)]
struct Working {
    alert: String,
    centre: (f64, f64),
    going: bool,
}

/// The state that survives reconnects.
struct Sim {
    person: Person,
    pos: (f64, f64),
    seq: Option<u64>,
    seen: VecDeque<String>,
    working: Option<Working>,
    cell_target: Option<(f64, f64)>,
    plan: Vec<(Instant, Action)>,
}

enum Ended {
    Stop,
    Dropped,
}

const SEEN_KEPT: usize = 16;

async fn simulate(
    person: Person,
    url: Arc<str>,
    gate: Arc<Semaphore>,
    stats: Arc<SimStats>,
    mut stop: watch::Receiver<bool>,
) {
    let pos = person.home;
    let mut sim = Sim {
        person,
        pos,
        seq: None,
        seen: VecDeque::new(),
        working: None,
        cell_target: None,
        plan: Vec::new(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let ended = {
            let permit = tokio::select! {
                _ = stop.changed() => return,
                p = gate.clone().acquire_owned() => p,
            };
            let Ok(permit) = permit else { return };
            session(&mut sim, &url, permit, &stats, &mut stop).await
        };
        match ended {
            Ended::Stop => return,
            Ended::Dropped => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.mul_f64(sim.person.rng.range(0.5, 1.0));
                backoff = (backoff * 2).min(Duration::from_secs(60));
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// One connection: hello, welcome, then location, answers and cell reports
/// until the socket drops or the demo stops.
async fn session(
    sim: &mut Sim,
    url: &str,
    permit: tokio::sync::OwnedSemaphorePermit,
    stats: &SimStats,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
    let mut ws = match timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => ws,
        _ => return Ended::Dropped,
    };
    let mut hello = json!({"type": "hello", "token": sim.person.token});
    if let Some(seq) = sim.seq {
        hello["since_seq"] = json!(seq);
    }
    if ws.send(Message::text(hello.to_string())).await.is_err() {
        return Ended::Dropped;
    }
    let welcomed = timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "welcome" {
                        return v["seq"].as_u64();
                    }
                    if v["type"] == "error" {
                        return None;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    })
    .await;
    let Ok(Some(welcome_seq)) = welcomed else {
        return Ended::Dropped;
    };
    drop(permit);
    if sim.seq.is_none() {
        sim.seq = Some(welcome_seq);
    }
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let ended = live(sim, &mut ws, stats, stop).await;
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    if matches!(ended, Ended::Stop) {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    ended
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn live(
    sim: &mut Sim,
    ws: &mut Socket,
    stats: &SimStats,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    // The first location goes out at once; later ones every 20-60 s.
    let mut next_location = Instant::now();
    loop {
        let next_action = sim.plan.iter().map(|(at, _)| *at).min();
        let wake = next_action.map_or(next_location, |a| a.min(next_location));
        tokio::select! {
            _ = stop.changed() => return Ended::Stop,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        on_message(sim, &v, stats);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Dropped,
                Some(Ok(_)) => {}
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_location {
                    step(sim);
                    let msg = json!({"type": "location", "lat": sim.pos.0, "lng": sim.pos.1, "accuracy_m": 15});
                    if ws.send(Message::text(msg.to_string())).await.is_err() {
                        return Ended::Dropped;
                    }
                    next_location = now + sim.person.rng.secs(20.0, 60.0);
                }
                let due: Vec<Action> = {
                    let (due, later): (Vec<_>, Vec<_>) =
                        sim.plan.drain(..).partition(|(at, _)| *at <= now);
                    sim.plan = later;
                    due.into_iter().map(|(_, a)| a).collect()
                };
                for action in due {
                    let msg = match &action {
                        Action::Ack { alert, state } => {
                            stats.acks_sent.fetch_add(1, Ordering::Relaxed);
                            json!({"type": "ack", "alert": alert, "state": state})
                        }
                        Action::Cell { alert, cell, state } => {
                            stats.cells_reported.fetch_add(1, Ordering::Relaxed);
                            json!({"type": "cell", "alert": alert, "cell": cell, "state": state})
                        }
                    };
                    if ws.send(Message::text(msg.to_string())).await.is_err() {
                        return Ended::Dropped;
                    }
                }
            }
        }
    }
}

/// Moves a little: a random walk near home, or towards the alert (or the
/// assigned cell) when going.
fn step(sim: &mut Sim) {
    let rng = &mut sim.person.rng;
    let target = sim
        .cell_target
        .or_else(|| sim.working.as_ref().filter(|w| w.going).map(|w| w.centre));
    match target {
        Some(t) => {
            let (dn, de) = delta_m(sim.pos, t);
            let dist = (dn * dn + de * de).sqrt();
            // Walking pace over ~40 s, a bit of jitter; stop near the target.
            let stride = rng.range(40.0, 90.0).min(dist);
            if dist > 30.0 {
                sim.pos = offset(sim.pos, dn / dist * stride, de / dist * stride);
            }
        }
        None => {
            let (dn, de) = delta_m(sim.pos, sim.person.home);
            let away = (dn * dn + de * de).sqrt();
            let (mut n, mut e) = (rng.range(-30.0, 30.0), rng.range(-30.0, 30.0));
            if away > 400.0 {
                n += dn / away * 60.0;
                e += de / away * 60.0;
            }
            sim.pos = offset(sim.pos, n, e);
        }
    }
}

fn on_message(sim: &mut Sim, v: &Value, stats: &SimStats) {
    if let Some(seq) = v["seq"].as_u64() {
        sim.seq = Some(sim.seq.map_or(seq, |s| s.max(seq)));
    }
    match v["type"].as_str() {
        Some("alert") | Some("alert_update") => on_alert(sim, &v["alert"], stats),
        Some("assignment") => on_assignment(sim, v),
        Some("revoked") | Some("assignment_revoked") | Some("unassigned") => {
            sim.cell_target = None;
            sim.plan.retain(|(_, a)| !matches!(a, Action::Cell { .. }));
        }
        _ => {}
    }
}

fn on_alert(sim: &mut Sim, alert: &Value, stats: &SimStats) {
    let (Some(id), Some(status)) = (alert["id"].as_str(), alert["status"].as_str()) else {
        return;
    };
    if status != "active" {
        sim.plan.retain(|(_, a)| match a {
            Action::Ack { alert, .. } | Action::Cell { alert, .. } => alert != id,
        });
        if sim.working.as_ref().is_some_and(|w| w.alert == id) {
            sim.working = None;
            sim.cell_target = None;
        }
        return;
    }
    if sim.seen.iter().any(|s| s == id) {
        return;
    }
    sim.seen.push_back(id.to_string());
    if sim.seen.len() > SEEN_KEPT {
        sim.seen.pop_front();
    }
    stats.alerts_seen.fetch_add(1, Ordering::Relaxed);
    let centre = (
        alert["center"]["lat"].as_f64().unwrap_or(sim.pos.0),
        alert["center"]["lng"].as_f64().unwrap_or(sim.pos.1),
    );
    let now = Instant::now();
    let rng = &mut sim.person.rng;
    let ack = |state| Action::Ack {
        alert: id.to_string(),
        state,
    };
    // Most phones confirm receipt within seconds.
    if rng.unit() < 0.9 {
        sim.plan.push((now + rng.secs(1.0, 6.0), ack("received")));
    }
    let roll = rng.unit();
    let busy = sim.working.is_some();
    if roll < 0.3 && !busy {
        let accept_at = now + rng.secs(8.0, 60.0);
        sim.plan.push((accept_at, ack("accepted")));
        if rng.unit() < 0.7 {
            sim.plan
                .push((accept_at + rng.secs(60.0, 300.0), ack("arrived")));
        }
        sim.working = Some(Working {
            alert: id.to_string(),
            centre,
            going: true,
        });
    } else if roll < 0.45 {
        sim.plan.push((now + rng.secs(8.0, 60.0), ack("declined")));
    }
}

fn on_assignment(sim: &mut Sim, v: &Value) {
    let (Some(alert), Some(cell)) = (v["alert"].as_str(), v["cell"].as_str()) else {
        return;
    };
    let centre = match (v["center"]["lat"].as_f64(), v["center"]["lng"].as_f64()) {
        (Some(lat), Some(lng)) => Some((lat, lng)),
        _ => boundary_centre(&v["boundary"]),
    };
    sim.cell_target = centre;
    let now = Instant::now();
    let rng = &mut sim.person.rng;
    let start = now + rng.secs(5.0, 30.0);
    let cell_action = |state| Action::Cell {
        alert: alert.to_string(),
        cell: cell.to_string(),
        state,
    };
    sim.plan.push((start, cell_action("searching")));
    sim.plan
        .push((start + rng.secs(60.0, 240.0), cell_action("cleared")));
}

fn boundary_centre(boundary: &Value) -> Option<(f64, f64)> {
    let points = boundary.as_array()?;
    let mut n = 0.0;
    let (mut lat, mut lng) = (0.0, 0.0);
    for p in points {
        if let (Some(a), Some(b)) = (p[0].as_f64(), p[1].as_f64()) {
            lat += a;
            lng += b;
            n += 1.0;
        }
    }
    (n > 0.0).then(|| (lat / n, lng / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_splits_into_all_three_units() {
        assert_eq!(unit_split(2000), (1600, 240, 160));
        let (v, p, s) = unit_split(7);
        assert_eq!(v + p + s, 7);
    }

    #[test]
    fn homes_lie_in_the_district() {
        let mut rng = Rng::new(1);
        for _ in 0..2000 {
            let home = home_in_district(&mut rng);
            let (dn, de) = delta_m(DISTRICT_CENTRE, home);
            assert!((dn * dn + de * de).sqrt() <= DISTRICT_DIAMETER_M / 2.0 + 1.0);
        }
    }

    #[test]
    fn same_seed_same_people() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let u = Rng::new(3).unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn boundary_centre_averages_vertices() {
        let b = json!([[30.0, 120.0], [30.2, 120.2], [30.1, 120.1]]);
        let (lat, lng) = boundary_centre(&b).expect("centre");
        assert!((lat - 30.1).abs() < 1e-9 && (lng - 120.1).abs() < 1e-9);
        assert!(boundary_centre(&json!("nope")).is_none());
    }

    fn demo_settings() -> Settings {
        let mut settings = Settings::default();
        settings.auth.jwt_secret =
            crate::config::Secret::new("demo-test-secret-demo-test-secret-0123");
        settings.server.listen = "127.0.0.1:0".into();
        settings.server.web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web");
        settings
    }

    /// The loop in miniature: simulated responders connect, share
    /// locations, get an alert and answer it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simulated_responders_receive_and_answer_an_alert() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let options = DemoOptions {
            responders: 40,
            seed: 11,
            example_alert_after: None,
        };
        let demo = start(demo_settings(), listener, options.clone())
            .await
            .expect("demo starts");
        assert_eq!(demo.sign_ins.len(), 5);
        assert!(demo.banner(&options).contains("/police.html#token="));
        let deadline = Instant::now() + Duration::from_secs(20);
        while demo.stats.connected.load(Ordering::Relaxed) < 40 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(demo.stats.connected.load(Ordering::Relaxed), 40);
        let alerts = demo.running().state.alerts.clone();
        // Wait until every first location is recorded.
        let police = Principal {
            sub: "t-police".into(),
            role: Role::Police,
            unit: None,
            name: String::new(),
        };
        let request = IssueRequest {
            kind: "missing_person".into(),
            title: "test".into(),
            body: String::new(),
            lat: DISTRICT_CENTRE.0,
            lng: DISTRICT_CENTRE.1,
            radius_m: 6000.0,
            audience: Unit::ALL.to_vec(),
            urgency: None,
            severity: None,
            expires_in_s: None,
            subject: None,
        };
        let draft = request.validate(alerts.limits()).expect("valid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alerts.preview(&draft).expect("preview").targeted < 40 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = alerts.issue(&police, draft).await.expect("issued");
        assert_eq!(out.targeted, 40);
        assert_eq!(out.delivered_live, 40);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let counts = alerts.get(&out.alert.id).expect("alert").counts;
            if counts.received >= 20 || Instant::now() > deadline {
                assert!(counts.received >= 20, "{counts:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(demo.stats.alerts_seen.load(Ordering::Relaxed) >= 40);
        let dir = demo.dir.clone();
        assert!(dir.join("web/demo-users.json").exists());
        demo.stop().await;
        assert!(!dir.exists());
    }
}
