//! Wiring: opens the store, rebuilds memory, binds the routes, runs tracked
//! background tasks, and shuts down in stages (stop accepting, tell
//! sessions, drain with a timeout, close the store).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::services::ServeDir;

use crate::alerts::{AlertLimits, Alerts};
use crate::auth::{AuthError, Authority};
use crate::bus::{Bus, BusMessage, LocalBus, NodeId};
use crate::config::{ConfigError, Settings};
use crate::control::{ControlError, ControlPlane};
use crate::hub::{Hub, Outgoing};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("search grid: {0}")]
    Grid(#[from] crate::grid::GridError),
    #[error("geo: {0}")]
    Geo(#[from] crate::geo::GeoError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Push(#[from] crate::push::PushError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub auth: Arc<Authority>,
    pub alerts: Alerts,
    pub hub: Arc<Hub>,
    pub connections: Arc<AtomicUsize>,
    pub shutdown: watch::Receiver<bool>,
    pub push: crate::push::PushService,
    /// Where issue, update and close run (see [`crate::control`]).
    pub control: Arc<ControlPlane>,
}

/// A running hub: its address and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    store: Arc<SqliteStore>,
}

impl Running {
    /// Stops accepting, closes every session (1001), waits up to the grace
    /// period for them to go, then flushes and closes the store.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let grace = Duration::from_secs(self.state.settings.server.shutdown_grace_s);
        let _ = tokio::time::timeout(grace, self.server).await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.state.connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
        self.state.push.shutdown(Duration::from_secs(1)).await;
        let control = self.state.control.clone();
        let _ = tokio::task::spawn_blocking(move || control.stop()).await;
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }

    /// Resolves when the server stops on its own (or never).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Builds the authority `serve` and `token` share.
pub fn authority(settings: &Settings) -> Result<Authority, AppError> {
    let secret = settings.jwt_secret()?;
    Ok(Authority::new(&settings.auth, &secret)?)
}

/// Starts the hub on an already-bound listener (tests bind `127.0.0.1:0`).
pub async fn start(settings: Settings, listener: TcpListener) -> Result<Running, AppError> {
    crate::install_crypto_provider();
    let settings = Arc::new(settings);
    let addr = listener.local_addr()?;
    let auth = Arc::new(authority(&settings)?);
    let store = Arc::new(SqliteStore::open(
        &settings.server.data_dir,
        settings.store.max_batch,
    )?);
    let snapshot = store.load().await?;
    let hub = Arc::new(Hub::new());
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(1024));
    let node = NodeId::random();
    let limits = AlertLimits {
        presence_resolution: crate::geo::resolution(settings.geo.presence_resolution)?,
        max_radius_m: settings.geo.max_radius_m,
        location_stale_ms: settings.geo.location_stale_s * 1000,
        default_expiry_s: settings.alerts.default_expiry_s,
        max_expiry_s: settings.alerts.max_expiry_s,
        max_title_chars: settings.alerts.max_title_chars,
        max_body_chars: settings.alerts.max_body_chars,
    };
    let store_dyn: Arc<dyn Store> = store.clone();
    let rings = settings.grid.load_rings()?;
    for w in rings.warnings() {
        tracing::warn!(warning = %w, "lost-person ring table");
    }
    let search = crate::alerts::SearchConfig {
        settings: settings.grid.clone(),
        rings,
    };
    let alerts = Alerts::new(limits, hub.clone(), store_dyn, bus.clone(), node, search);
    let restored = snapshot.alerts.len();
    alerts.restore(snapshot);
    let push = crate::push::PushService::start(
        &settings.push,
        &settings.server.data_dir,
        alerts.push_hook(),
    )?;
    alerts.set_push(push.clone());
    tracing::info!(restored, seq = alerts.last_seq(), "record loaded");

    alerts.set_delivery_runtime(
        tokio::runtime::Handle::current(),
        settings.server.control_busy_queue,
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        settings: settings.clone(),
        auth,
        alerts: alerts.clone(),
        hub: hub.clone(),
        connections: Arc::new(AtomicUsize::new(0)),
        shutdown: shutdown_rx.clone(),
        push: push.clone(),
        control: Arc::new(ControlPlane::start()?),
    };

    let router = crate::api::router(state.clone())
        .merge(push.router(state.auth.clone()))
        .fallback_service(ServeDir::new(&settings.server.web_dir))
        .layer(DefaultBodyLimit::max(settings.server.max_body_bytes))
        .with_state(state.clone());

    let background = vec![
        tokio::spawn(expiry_loop(alerts.clone(), shutdown_rx.clone())),
        tokio::spawn(bus_loop(bus, node, hub, shutdown_rx.clone())),
    ];

    let mut stop = shutdown_rx.clone();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    Ok(Running {
        addr,
        state,
        shutdown: shutdown_tx,
        server,
        background,
        store,
    })
}

async fn expiry_loop(alerts: Alerts, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                alerts.grid_tick().await;
                let n = alerts.expire_due().await;
                if n > 0 {
                    tracing::info!(expired = n, "alerts expired");
                }
            }
        }
    }
}

/// Delivers what other nodes publish to this node's sessions.
async fn bus_loop(
    bus: Arc<dyn Bus>,
    node: NodeId,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rx = bus.subscribe();
    loop {
        let msg = tokio::select! {
            _ = shutdown.changed() => return,
            msg = rx.recv() => msg,
        };
        match msg {
            Ok(msg) if msg.origin() == node => {}
            Ok(BusMessage::Deliver {
                seq,
                recipients,
                to_staff,
                frame,
                ..
            }) => {
                let rids: Vec<_> = recipients
                    .iter()
                    .filter_map(|s| hub.responder_id(s))
                    .collect();
                hub.deliver(&rids, &Outgoing::new(seq, frame), to_staff);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "bus subscriber lagged");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
