//! The durable record behind one trait: alerts, the sequenced event log,
//! who each alert targeted, acks with history, responders' last cells.
//!
//! [`Store::commit`] resolves only once the writes are on disk; callers send
//! `ok` after that and never before. Implementations group concurrent
//! commits into one transaction so a burst of acks shares each fsync.
//! `sqlite` is the embedded implementation; a Redis one slots in behind the
//! same trait without touching the hub or the handlers.

pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::domain::{AlertId, Unit};
use crate::hub::Frame;
use crate::protocol::{AckRecord, Alert};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store is shut down")]
    Closed,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Which of an alert's targets an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every target recorded at or before this event (updates).
    Targets,
    /// The targets recorded *by* this event (the first `alert` they get).
    NewTargets,
    /// One responder (e.g. a cell assignment).
    One(Arc<str>),
}

/// One sequenced event, stored as the exact frame that was sent.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub seq: u64,
    pub alert: AlertId,
    pub scope: Scope,
    /// Whether police and coordinators receive it too.
    pub staff: bool,
    pub at_ms: u64,
    pub frame: Frame,
}

#[derive(Debug, Clone)]
pub struct TargetRecord {
    pub sub: Arc<str>,
    pub unit: Unit,
}

/// One change to the record.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace the alert (by id).
    Alert(Alert),
    /// Responders first targeted by the event `first_seq`.
    Targets {
        alert: AlertId,
        first_seq: u64,
        targets: Vec<TargetRecord>,
    },
    Event(EventRecord),
    /// One reported ack; the latest state per responder is derived from the
    /// history on load (with [`crate::domain::AckState::merge`]), so an ack is one row.
    Ack(AckRecord),
    /// The latest record of these search cells (and their history).
    GridCells {
        alert: AlertId,
        records: Vec<crate::grid::CellRecord>,
    },
    /// A responder went off duty: forget its cell.
    ClearPlace {
        sub: Arc<str>,
    },
    /// A responder's last cell (never raw coordinates).
    Place {
        sub: Arc<str>,
        unit: Unit,
        cell: u64,
        at_ms: u64,
    },
}

/// Everything the hub rebuilds its memory from at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub alerts: Vec<Alert>,
    /// (alert, target, first seq)
    pub targets: Vec<(AlertId, TargetRecord, u64)>,
    /// Latest ack per (alert, responder).
    pub acks: Vec<AckRecord>,
    pub places: Vec<(Arc<str>, Unit, u64, u64)>,
    /// Latest record of every search cell, per alert.
    pub grid: Vec<(AlertId, crate::grid::CellRecord)>,
    pub last_seq: u64,
}

/// Which events a replay reads.
#[derive(Debug, Clone)]
pub enum EventFilter {
    /// Those police and coordinators see.
    Staff,
    /// Every event of these alerts (the caller filters by scope).
    Alerts(Vec<AlertId>),
}

/// An event as stored, with whom it is for.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub alert: AlertId,
    pub scope: Scope,
    pub frame: Frame,
}

pub trait Store: Send + Sync + 'static {
    /// Applies all writes atomically; resolves after they are durable.
    /// Implementations should hand the writes over on the call itself, so
    /// a caller can do other work while the disk syncs.
    fn commit(&self, writes: Vec<Write>) -> StoreFuture<()>;
    fn load(&self) -> StoreFuture<Snapshot>;
    /// Events after `since` that pass `filter`, in `seq` order.
    fn events_since(
        &self,
        since: u64,
        filter: EventFilter,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEvent>>;
    /// Every ack reported for an alert, oldest first.
    fn ack_history(&self, alert: AlertId) -> StoreFuture<Vec<AckRecord>>;
    /// Every change of an alert's search cells, oldest first.
    fn grid_history(&self, alert: AlertId) -> StoreFuture<Vec<crate::grid::CellRecord>>;
    /// Every event of an alert, oldest first (the alert's history).
    fn alert_events(&self, alert: AlertId) -> StoreFuture<Vec<(u64, u64, Frame)>>;
}
