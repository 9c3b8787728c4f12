//! Alert lifecycle and acknowledgements: issue, preview, update (a wider
//! radius targets only the newly covered), cancel, resolve, expire; who each
//! alert targeted, their latest ack state and the live counts; watchers.
//!
//! Every change that clients see as a sequenced event follows one path,
//! under the *sequencer* (an async mutex, so alert changes are totally
//! ordered; they happen at human rate): take the next `seq`, commit the
//! writes and the exact frame to the store, update memory, then fan out.
//! Delivery therefore only ever carries committed events, in `seq` order.
//! Acks and locations do not take the sequencer; they go straight to the
//! store's group commit.

mod search;

pub use search::CellAction;

use std::collections::{HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use h3o::{CellIndex, Resolution};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::bus::{Bus, BusMessage, NodeId};
use crate::domain::{
    AckState, AlertId, AlertStatus, LatLng, Principal, Role, Unit, UnitSet, now_ms, validate_radius,
};
use crate::geo;
use crate::hub::{Delivery, Frame, Hub, Outgoing, ResponderId, SessionId};
use crate::protocol::{
    AckCounts, AckRecord, Alert, AlertEventKind, ApiError, SEVERITIES, URGENCIES, ack_frame,
    ack_summary_frame, alert_frame,
};
use crate::store::{
    EventFilter, EventRecord, Scope, Snapshot, Store, StoreError, TargetRecord, Write,
};

/// The limits alerts are validated against (from config).
#[derive(Debug, Clone)]
pub struct AlertLimits {
    pub presence_resolution: Resolution,
    pub max_radius_m: f64,
    pub location_stale_ms: u64,
    pub default_expiry_s: u64,
    pub max_expiry_s: u64,
    pub max_title_chars: usize,
    pub max_body_chars: usize,
}

/// `POST /api/v1/alerts` body, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub kind: String,
    pub title: String,
    #[serde(default)]
    pub body: String,
    pub lat: f64,
    pub lng: f64,
    pub radius_m: f64,
    pub audience: Vec<Unit>,
    #[serde(default)]
    pub urgency: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub expires_in_s: Option<u64>,
    /// Lost-person category (e.g. `child_7_12`), used by the search grid.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A validated alert request.
#[derive(Debug, Clone)]
pub struct AlertDraft {
    pub kind: String,
    pub title: String,
    pub body: String,
    pub center: LatLng,
    pub radius_m: f64,
    pub audience: UnitSet,
    pub urgency: String,
    pub severity: String,
    pub expires_in_s: u64,
    pub subject: Option<String>,
}

/// `POST /api/v1/alerts/{id}/update` body: any subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub radius_m: Option<f64>,
    #[serde(default)]
    pub urgency: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssueOutcome {
    pub alert: Alert,
    pub targeted: usize,
    pub delivered_live: usize,
    pub push_queued: usize,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateOutcome {
    pub alert: Alert,
    /// Responders targeted by this update (newly covered).
    pub newly_targeted: usize,
    pub targeted: usize,
    pub delivered_live: usize,
    pub push_queued: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub targeted: usize,
    pub live: usize,
    pub by_unit: HashMap<&'static str, usize>,
    pub cells: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertWithCounts {
    pub alert: Alert,
    pub counts: AckCounts,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if required && trimmed.is_empty() {
        return Err(bad(format!("'{field}' must not be empty")));
    }
    if trimmed.chars().count() > max {
        return Err(bad(format!("'{field}' is longer than {max} characters")));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(bad(format!("'{field}' contains control characters")));
    }
    Ok(trimmed.to_string())
}

fn check_choice(
    field: &str,
    value: Option<&str>,
    allowed: &[&str],
    default: &str,
) -> Result<String, ApiError> {
    match value {
        None => Ok(default.to_string()),
        Some(v) if allowed.contains(&v) => Ok(v.to_string()),
        Some(v) => Err(bad(format!(
            "'{field}' must be one of {}, got '{}'",
            allowed.join(", "),
            v.chars().take(40).collect::<String>()
        ))),
    }
}

impl IssueRequest {
    pub fn validate(&self, limits: &AlertLimits) -> Result<AlertDraft, ApiError> {
        let kind_ok = !self.kind.is_empty()
            && self.kind.len() <= 40
            && self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if !kind_ok {
            return Err(bad(
                "'kind' must be 1-40 characters of a-z and _ (e.g. missing_person)",
            ));
        }
        let center = LatLng::new(self.lat, self.lng)?;
        let radius_m = validate_radius(self.radius_m, limits.max_radius_m)?;
        let audience: UnitSet = self.audience.iter().copied().collect();
        if audience.is_empty() {
            return Err(bad(
                "'audience' must name at least one unit (volunteer, patrol, staff)",
            ));
        }
        let expires_in_s = self.expires_in_s.unwrap_or(limits.default_expiry_s);
        if expires_in_s == 0 || expires_in_s > limits.max_expiry_s {
            return Err(bad(format!(
                "'expires_in_s' must be between 1 and {}",
                limits.max_expiry_s
            )));
        }
        let subject = match &self.subject {
            None => None,
            Some(s) => Some(check_text("subject", s, 40, true)?),
        };
        Ok(AlertDraft {
            kind: self.kind.clone(),
            title: check_text("title", &self.title, limits.max_title_chars, true)?,
            body: check_text("body", &self.body, limits.max_body_chars, false)?,
            center,
            radius_m,
            audience,
            urgency: check_choice("urgency", self.urgency.as_deref(), URGENCIES, "immediate")?,
            severity: check_choice("severity", self.severity.as_deref(), SEVERITIES, "severe")?,
            expires_in_s,
            subject,
        })
    }
}

/// Per-alert state kept in memory (rebuilt from the store at start-up).
struct AlertEntry {
    alert: Alert,
    /// Every responder targeted: its unit and the `seq` of the event that
    /// first targeted it (what a replay sends it starts there).
    targets: FxHashMap<Arc<str>, (Unit, u64)>,
    target_rids: Vec<ResponderId>,
    acks: FxHashMap<Arc<str>, AckState>,
    reached: FxHashSet<Arc<str>>,
    /// Display names responders gave in their tokens (learnt from acks).
    names: FxHashMap<Arc<str>, String>,
    /// Responders at least one of whose devices accepted a push.
    pushed: FxHashSet<Arc<str>>,
    counts: AckCounts,
    watchers: HashSet<SessionId>,
    /// The search grid, for searchable kinds.
    grid: Option<crate::grid::SearchGrid>,
}

impl AlertEntry {
    fn new(alert: Alert) -> Self {
        Self {
            alert,
            targets: FxHashMap::default(),
            target_rids: Vec::new(),
            acks: FxHashMap::default(),
            reached: FxHashSet::default(),
            names: FxHashMap::default(),
            pushed: FxHashSet::default(),
            counts: AckCounts::default(),
            watchers: HashSet::new(),
            grid: None,
        }
    }

    fn add_target(&mut self, sub: Arc<str>, unit: Unit, rid: ResponderId, first_seq: u64) {
        if self.targets.insert(sub, (unit, first_seq)).is_none() {
            self.target_rids.push(rid);
            self.counts.targeted += 1;
        }
    }

    fn mark_reached(&mut self, sub: &Arc<str>) {
        if self.reached.insert(sub.clone()) {
            self.counts.delivered = self.reached.len();
        }
    }

    fn apply_ack(&mut self, sub: &Arc<str>, latest: AckState, name: &str) {
        if !name.is_empty() {
            self.names.insert(sub.clone(), name.to_string());
        }
        let old = self.acks.insert(sub.clone(), latest);
        count_ack(&mut self.counts, old, -1);
        count_ack(&mut self.counts, Some(latest), 1);
        self.mark_reached(sub);
    }
}

/// Adds (`sign` 1) or removes (-1) one responder's latest state from counts.
/// `received` counts everyone who acknowledged at all; `accepted` includes
/// those who have since arrived.
fn count_ack(c: &mut AckCounts, state: Option<AckState>, sign: isize) {
    let Some(state) = state else { return };
    let bump = |v: &mut usize| *v = v.saturating_add_signed(sign);
    bump(&mut c.received);
    match state {
        AckState::Received => {}
        AckState::Accepted => bump(&mut c.accepted),
        AckState::Declined => bump(&mut c.declined),
        AckState::Arrived => {
            bump(&mut c.accepted);
            bump(&mut c.arrived);
        }
    }
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store write failed");
    ApiError::new(
        crate::protocol::ErrorCode::Internal,
        "could not record the change; nothing was applied",
    )
}

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct AlertMetrics {
    pub alerts_issued: AtomicU64,
    pub events: AtomicU64,
    pub frames_fanned_out: AtomicU64,
    /// Sessions closed because they could not keep up (counted by the transport).
    pub slow_sessions: AtomicU64,
    pub acks: AtomicU64,
    pub locations: AtomicU64,
}

/// The alert service: business logic shared by the HTTP and WS adapters.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    limits: AlertLimits,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    node: NodeId,
    last_seq: AtomicU64,
    sequencer: tokio::sync::Mutex<()>,
    alerts: Mutex<HashMap<AlertId, AlertEntry>>,
    metrics: AlertMetrics,
    push: std::sync::OnceLock<crate::push::PushService>,
    search: SearchConfig,
    /// The runtime whose workers wake sessions most cheaply, and the queue
    /// depth above which it is too busy to hand a fan-out to.
    delivery: std::sync::OnceLock<(tokio::runtime::Handle, usize)>,
}

/// How search grids are built: the `[grid]` settings and the ring table.
pub struct SearchConfig {
    pub settings: crate::grid::GridSettings,
    pub rings: crate::grid::RingTable,
}

impl Alerts {
    pub fn new(
        limits: AlertLimits,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        node: NodeId,
        search: SearchConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                hub,
                store,
                bus,
                node,
                last_seq: AtomicU64::new(0),
                sequencer: tokio::sync::Mutex::new(()),
                alerts: Mutex::new(HashMap::new()),
                metrics: AlertMetrics::default(),
                push: std::sync::OnceLock::new(),
                search,
                delivery: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn limits(&self) -> &AlertLimits {
        &self.inner.limits
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Hands offline targets to Web Push from now on.
    pub fn set_push(&self, push: crate::push::PushService) {
        let _ = self.inner.push.set(push);
    }

    /// The hook for [`crate::push::PushService::start`]: counts `push_sent`
    /// (responders with a device that accepted a push) and streams the new
    /// `ack_summary`. Holds the service weakly, so no reference cycle.
    pub fn push_hook(&self) -> crate::push::OutcomeHook {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |o: crate::push::PushOutcome| {
            let Some(inner) = weak.upgrade() else { return };
            if o.result != crate::push::PushResult::Sent {
                return;
            }
            let changed = inner.alerts.lock().get_mut(&o.alert_id).is_some_and(|e| {
                let new = e.pushed.insert(o.sub.clone());
                e.counts.push_sent = e.pushed.len();
                new
            });
            if changed {
                Alerts { inner }.notify_summary(&o.alert_id);
            }
        })
    }

    /// Queues a push of `alert`'s current state to those of `subs` without
    /// a live session; returns the deliveries queued.
    fn push_offline(&self, alert: &Alert, subs: impl IntoIterator<Item = Arc<str>>) -> usize {
        let Some(push) = self.inner.push.get() else {
            return 0;
        };
        let offline = self.inner.hub.offline(subs);
        if offline.is_empty() {
            return 0;
        }
        push.notify(&offline, push.notification_for(alert))
    }

    /// Fan-outs started on the control thread are handed to `runtime`'s
    /// workers while fewer than `busy_queue` tasks wait in its shared queue
    /// (see [`crate::control::on_control_thread`]); past that the workers
    /// are saturated anyway and a handoff would wait a pass over the queue,
    /// so the control thread offers the frames itself.
    pub fn set_delivery_runtime(&self, runtime: tokio::runtime::Handle, busy_queue: usize) {
        let _ = self.inner.delivery.set((runtime, busy_queue));
    }

    pub fn metrics(&self) -> &AlertMetrics {
        &self.inner.metrics
    }

    /// The highest `seq` committed and delivered.
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// Rebuilds memory from the durable record.
    pub fn restore(&self, snap: Snapshot) {
        let hub = &self.inner.hub;
        for (sub, unit, cell, at) in &snap.places {
            if let Ok(cell) = CellIndex::try_from(*cell) {
                hub.set_place(sub, *unit, cell, *at);
            }
        }
        let mut alerts = self.inner.alerts.lock();
        for alert in snap.alerts {
            alerts.insert(alert.id.clone(), AlertEntry::new(alert));
        }
        for (alert, t, first_seq) in snap.targets {
            if let Some(entry) = alerts.get_mut(&alert) {
                let rid = hub.intern(&t.sub, t.unit);
                entry.add_target(t.sub, t.unit, rid, first_seq);
            }
        }
        for ack in snap.acks {
            if let Some(entry) = alerts.get_mut(&ack.alert) {
                let sub: Arc<str> = ack.responder.as_str().into();
                entry.apply_ack(&sub, ack.state, &ack.name);
            }
        }
        let mut cells: HashMap<AlertId, Vec<crate::grid::CellRecord>> = HashMap::new();
        for (alert, record) in snap.grid {
            cells.entry(alert).or_default().push(record);
        }
        let now = now_ms();
        for entry in alerts.values_mut() {
            let by: Arc<str> = entry.alert.issued_by.as_str().into();
            match self.build_grid(&entry.alert, &by, entry.alert.issued_at) {
                Ok(Some(mut grid)) => {
                    let skipped = grid.restore(cells.remove(&entry.alert.id).unwrap_or_default());
                    if skipped > 0 {
                        tracing::warn!(alert = %entry.alert.id, skipped, "grid records not restored");
                    }
                    grid.mark_all_disconnected(now);
                    if !entry.alert.status.is_open() || entry.alert.status == AlertStatus::Found {
                        let _ = grid.close(&by, now);
                    }
                    entry.grid = Some(grid);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(alert = %entry.alert.id, error = %e, "grid not rebuilt"),
            }
        }
        self.inner.last_seq.store(snap.last_seq, Ordering::Release);
    }

    fn fresh_after(&self, now: u64) -> u64 {
        now.saturating_sub(self.inner.limits.location_stale_ms)
    }

    /// Dry run: who an alert with this draft would reach.
    pub fn preview(&self, draft: &AlertDraft) -> Result<Preview, ApiError> {
        let cells = geo::cover(
            draft.center,
            draft.radius_m,
            self.inner.limits.presence_resolution,
        )
        .map_err(|e| bad(e.to_string()))?;
        let targets = self.inner.hub.select_circle(
            draft.center,
            draft.radius_m,
            draft.audience,
            self.fresh_after(now_ms()),
        );
        let mut by_unit: HashMap<&'static str, usize> = draft
            .audience
            .units()
            .into_iter()
            .map(|u| (u.as_str(), 0))
            .collect();
        for t in &targets {
            *by_unit.entry(t.unit.as_str()).or_default() += 1;
        }
        Ok(Preview {
            targeted: targets.len(),
            live: targets.iter().filter(|t| t.live).count(),
            by_unit,
            cells: cells.len(),
        })
    }

    /// Issues an alert: select, commit, fan out. Resolves after the commit.
    pub async fn issue(&self, by: &Principal, draft: AlertDraft) -> Result<IssueOutcome, ApiError> {
        let inner = &self.inner;
        let now = now_ms();
        let _turn = inner.sequencer.lock().await;
        let seq = self.last_seq() + 1;
        let targets = inner.hub.select_circle(
            draft.center,
            draft.radius_m,
            draft.audience,
            self.fresh_after(now),
        );
        let alert = Alert {
            id: AlertId::generate(),
            kind: draft.kind,
            status: AlertStatus::Active,
            title: draft.title,
            body: draft.body,
            center: draft.center,
            radius_m: draft.radius_m,
            audience: draft.audience.units(),
            urgency: draft.urgency,
            severity: draft.severity,
            issued_at: now,
            issued_by: by.sub.to_string(),
            expires_at: now + draft.expires_in_s * 1000,
            version: 1,
            subject: draft.subject,
            outcome: None,
            updated_at: now,
        };
        // A searchable alert's grid is built after the fan-out (it can be
        // thousands of cells); only the subject is checked before.
        let searchable = inner.search.settings.is_searchable(&alert.kind);
        if searchable {
            inner.search.rings.resolve(alert.subject.as_deref())?;
        }
        let frame = alert_frame(AlertEventKind::Alert, seq, &alert);
        let writes = vec![
            Write::Alert(alert.clone()),
            Write::Targets {
                alert: alert.id.clone(),
                first_seq: seq,
                targets: targets
                    .iter()
                    .map(|t| TargetRecord {
                        sub: t.sub.clone(),
                        unit: t.unit,
                    })
                    .collect(),
            },
            Write::Event(EventRecord {
                seq,
                alert: alert.id.clone(),
                scope: Scope::NewTargets,
                staff: true,
                at_ms: now,
                frame: frame.clone(),
            }),
        ];
        // The commit is handed to the writer now; the alert's memory entry
        // is built while the disk syncs, and published only once it has.
        let committed = inner.store.commit(writes);
        let mut entry = AlertEntry::new(alert.clone());
        entry.targets.reserve(targets.len());
        entry.reached.reserve(targets.len());
        for t in &targets {
            entry.add_target(t.sub.clone(), t.unit, t.rid, seq);
            if t.live {
                entry.mark_reached(&t.sub);
            }
        }
        let rids: Vec<ResponderId> = targets.iter().map(|t| t.rid).collect();
        committed.await.map_err(store_err)?;
        inner.alerts.lock().insert(alert.id.clone(), entry);
        let delivery = self.fan_out_handoff(seq, rids, &frame, true).await;
        inner.metrics.alerts_issued.fetch_add(1, Ordering::Relaxed);
        self.publish_remote(
            seq,
            targets.iter().map(|t| t.sub.clone()).collect(),
            true,
            frame,
        );
        let push_queued = self.push_offline(
            &alert,
            targets.iter().filter(|t| !t.live).map(|t| t.sub.clone()),
        );
        tracing::info!(alert = %alert.id, seq, targeted = targets.len(), live = delivery.responders_live, push_queued, "alert issued");
        if searchable {
            // Still under the sequencer: an accept that races this waits for
            // the grid in `apply_grid`.
            self.attach_grid(&alert, &by.sub, now);
        }
        Ok(IssueOutcome {
            alert,
            targeted: targets.len(),
            delivered_live: delivery.responders_live,
            push_queued,
            seq,
        })
    }

    /// Marks `seq` delivered and offers the frame to the recipients' sessions.
    fn fan_out(&self, seq: u64, rids: &[ResponderId], frame: &Frame, to_staff: bool) -> Delivery {
        let inner = &self.inner;
        inner.last_seq.store(seq, Ordering::Release);
        let d = inner
            .hub
            .deliver(rids, &Outgoing::new(seq, frame.clone()), to_staff);
        self.count_fan_out(d)
    }

    fn count_fan_out(&self, d: Delivery) -> Delivery {
        let metrics = &self.inner.metrics;
        metrics.events.fetch_add(1, Ordering::Relaxed);
        metrics
            .frames_fanned_out
            .fetch_add(d.frames as u64, Ordering::Relaxed);
        d
    }

    /// [`Self::fan_out`] for the big fan-outs of police actions: from the
    /// control thread, handed to a runtime worker when one is free enough.
    /// Called under the sequencer, so order is kept either way.
    async fn fan_out_handoff(
        &self,
        seq: u64,
        rids: Vec<ResponderId>,
        frame: &Frame,
        to_staff: bool,
    ) -> Delivery {
        let inner = &self.inner;
        let runtime = inner
            .delivery
            .get()
            .filter(|(rt, busy)| {
                crate::control::on_control_thread() && rt.metrics().global_queue_depth() < *busy
            })
            .map(|(rt, _)| rt.clone());
        let Some(runtime) = runtime else {
            return self.fan_out(seq, &rids, frame, to_staff);
        };
        let rids = Arc::new(rids);
        let (hub, out, them) = (
            inner.hub.clone(),
            Outgoing::new(seq, frame.clone()),
            rids.clone(),
        );
        inner.last_seq.store(seq, Ordering::Release);
        let handed = runtime
            .spawn(async move { hub.deliver(&them, &out, to_staff) })
            .await;
        match handed {
            Ok(d) => self.count_fan_out(d),
            // The runtime is shutting down: offer the frames from here.
            Err(e) if e.is_cancelled() => self.fan_out(seq, &rids, frame, to_staff),
            Err(e) => {
                tracing::error!(seq, error = %e, "fan-out task failed");
                Delivery::default()
            }
        }
    }

    fn publish_remote(&self, seq: u64, recipients: Vec<Arc<str>>, to_staff: bool, frame: Frame) {
        let msg = BusMessage::Deliver {
            origin: self.inner.node,
            seq,
            recipients: recipients.into(),
            to_staff,
            frame,
        };
        if let Err(e) = self.inner.bus.publish(msg) {
            tracing::warn!(error = %e, "bus publish failed");
        }
    }

    /// Changes text, radius, urgency, severity or expiry of an active alert.
    /// A wider radius targets only responders it newly covers; everyone
    /// already targeted gets an `alert_update`.
    pub async fn update(
        &self,
        by: &Principal,
        id: &AlertId,
        req: UpdateRequest,
    ) -> Result<UpdateOutcome, ApiError> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let turn = inner.sequencer.lock().await;
        let now = now_ms();
        let (mut alert, old_rids, old_subs) = {
            let alerts = inner.alerts.lock();
            let entry = alerts.get(id).ok_or_else(|| not_found(id))?;
            let subs: Vec<Arc<str>> = entry.targets.keys().cloned().collect();
            (entry.alert.clone(), entry.target_rids.clone(), subs)
        };
        if alert.status != AlertStatus::Active {
            return Err(ApiError::conflict(format!(
                "alert is {}",
                alert.status.as_str()
            )));
        }
        if let Some(t) = &req.title {
            alert.title = check_text("title", t, limits.max_title_chars, true)?;
        }
        if let Some(b) = &req.body {
            alert.body = check_text("body", b, limits.max_body_chars, false)?;
        }
        if let Some(r) = req.radius_m {
            alert.radius_m = validate_radius(r, limits.max_radius_m)?;
        }
        if req.urgency.is_some() {
            alert.urgency = check_choice("urgency", req.urgency.as_deref(), URGENCIES, "")?;
        }
        if req.severity.is_some() {
            alert.severity = check_choice("severity", req.severity.as_deref(), SEVERITIES, "")?;
        }
        if let Some(e) = req.expires_in_s {
            if e == 0 || e > limits.max_expiry_s {
                return Err(bad(format!(
                    "'expires_in_s' must be between 1 and {}",
                    limits.max_expiry_s
                )));
            }
            alert.expires_at = now + e * 1000;
        }
        alert.version += 1;
        alert.updated_at = now;
        tracing::info!(alert = %id, by = %by.sub, version = alert.version, "alert updated");

        // Newly covered responders (only if the radius grew).
        let units: UnitSet = alert.audience.iter().copied().collect();
        let new_targets: Vec<_> = {
            let candidates =
                inner
                    .hub
                    .select_circle(alert.center, alert.radius_m, units, self.fresh_after(now));
            let alerts = inner.alerts.lock();
            let entry = alerts.get(id).ok_or_else(|| not_found(id))?;
            candidates
                .into_iter()
                .filter(|t| !entry.targets.contains_key(&t.sub))
                .collect()
        };
        let update_seq = self.last_seq() + 1;
        let new_seq = update_seq + 1;
        let update_frame = alert_frame(AlertEventKind::Update, update_seq, &alert);
        let mut writes = vec![
            Write::Alert(alert.clone()),
            Write::Event(EventRecord {
                seq: update_seq,
                alert: id.clone(),
                scope: Scope::Targets,
                staff: true,
                at_ms: now,
                frame: update_frame.clone(),
            }),
        ];
        let new_frame =
            (!new_targets.is_empty()).then(|| alert_frame(AlertEventKind::Alert, new_seq, &alert));
        if let Some(frame) = &new_frame {
            writes.push(Write::Targets {
                alert: id.clone(),
                first_seq: new_seq,
                targets: new_targets
                    .iter()
                    .map(|t| TargetRecord {
                        sub: t.sub.clone(),
                        unit: t.unit,
                    })
                    .collect(),
            });
            writes.push(Write::Event(EventRecord {
                seq: new_seq,
                alert: id.clone(),
                scope: Scope::NewTargets,
                staff: false,
                at_ms: now,
                frame: frame.clone(),
            }));
        }
        inner.store.commit(writes).await.map_err(store_err)?;
        let targeted = {
            let mut alerts = inner.alerts.lock();
            let entry = alerts.get_mut(id).ok_or_else(|| not_found(id))?;
            entry.alert = alert.clone();
            for t in &new_targets {
                entry.add_target(t.sub.clone(), t.unit, t.rid, new_seq);
                if t.live {
                    entry.mark_reached(&t.sub);
                }
            }
            entry.counts.targeted
        };
        self.fan_out_handoff(update_seq, old_rids, &update_frame, true)
            .await;
        self.publish_remote(update_seq, old_subs, true, update_frame);
        let mut delivered_live = 0;
        if let Some(frame) = new_frame {
            let rids: Vec<ResponderId> = new_targets.iter().map(|t| t.rid).collect();
            delivered_live = self
                .fan_out_handoff(new_seq, rids, &frame, false)
                .await
                .responders_live;
            self.publish_remote(
                new_seq,
                new_targets.iter().map(|t| t.sub.clone()).collect(),
                false,
                frame,
            );
        }
        let push_queued = self.push_offline(&alert, self.target_subs(id));
        if req.radius_m.is_some() {
            let (by, radius) = (by.sub.clone(), alert.radius_m);
            let widened = self
                .apply_grid_locked(&turn, id, |g, now| {
                    if radius > g.radius_m() {
                        g.widen(radius, &by, now)
                    } else {
                        Ok(crate::grid::Effects::default())
                    }
                })
                .await;
            if let Err(e) = widened
                && e.code != crate::protocol::ErrorCode::NotFound
            {
                tracing::warn!(alert = %id, error = %e, "search grid not widened");
            }
        }
        self.notify_summary(id);
        Ok(UpdateOutcome {
            alert,
            newly_targeted: new_targets.len(),
            targeted,
            delivered_live,
            push_queued,
        })
    }

    /// Every responder an alert has targeted (for peers on the bus).
    fn target_subs(&self, id: &AlertId) -> Vec<Arc<str>> {
        self.inner
            .alerts
            .lock()
            .get(id)
            .map(|e| e.targets.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Cancels, resolves or expires an active alert; everyone targeted and
    /// every staff session gets the `alert_update`.
    pub async fn close(
        &self,
        by: &Principal,
        id: &AlertId,
        status: AlertStatus,
        outcome: Option<String>,
    ) -> Result<Alert, ApiError> {
        let inner = &self.inner;
        let outcome = match outcome {
            Some(o) => Some(check_text(
                "outcome",
                &o,
                inner.limits.max_body_chars,
                false,
            )?),
            None => None,
        };
        let turn = inner.sequencer.lock().await;
        let now = now_ms();
        let (mut alert, rids) = {
            let alerts = inner.alerts.lock();
            let entry = alerts.get(id).ok_or_else(|| not_found(id))?;
            (entry.alert.clone(), entry.target_rids.clone())
        };
        if !alert.status.is_open() {
            return Err(ApiError::conflict(format!(
                "alert is already {}",
                alert.status.as_str()
            )));
        }
        alert.status = status;
        alert.outcome = outcome;
        alert.version += 1;
        alert.updated_at = now;
        let seq = self.last_seq() + 1;
        let frame = alert_frame(AlertEventKind::Update, seq, &alert);
        inner
            .store
            .commit(vec![
                Write::Alert(alert.clone()),
                Write::Event(EventRecord {
                    seq,
                    alert: id.clone(),
                    scope: Scope::Targets,
                    staff: true,
                    at_ms: now,
                    frame: frame.clone(),
                }),
            ])
            .await
            .map_err(store_err)?;
        if let Some(entry) = inner.alerts.lock().get_mut(id) {
            entry.alert = alert.clone();
        }
        self.fan_out_handoff(seq, rids, &frame, true).await;
        let subs = self.target_subs(id);
        if status != AlertStatus::Expired {
            self.push_offline(&alert, subs.iter().cloned());
        }
        self.publish_remote(seq, subs, true, frame);
        let closer = by.sub.clone();
        let closed = self
            .apply_grid_locked(&turn, id, |g, now| Ok(g.close(&closer, now)))
            .await;
        if let Err(e) = closed
            && e.code != crate::protocol::ErrorCode::NotFound
        {
            tracing::warn!(alert = %id, error = %e, "search grid not closed");
        }
        tracing::info!(alert = %id, by = %by.sub, status = status.as_str(), "alert closed");
        Ok(alert)
    }

    /// Expires every active alert whose time has passed. Returns how many.
    pub async fn expire_due(&self) -> usize {
        let now = now_ms();
        let due: Vec<AlertId> = self
            .inner
            .alerts
            .lock()
            .values()
            .filter(|e| e.alert.status.is_open() && e.alert.expires_at <= now)
            .map(|e| e.alert.id.clone())
            .collect();
        let system = Principal {
            sub: "system".into(),
            role: Role::Police,
            unit: None,
            name: String::new(),
        };
        let mut n = 0;
        for id in due {
            if self
                .close(&system, &id, AlertStatus::Expired, None)
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Records a responder's ack; resolves after it is durable, then streams
    /// `ack` and `ack_summary` to the alert's watchers.
    pub async fn ack(&self, by: &Principal, alert: &str, state: AckState) -> Result<(), ApiError> {
        let inner = &self.inner;
        let id = AlertId::parse(alert)?;
        let unit = by
            .unit
            .ok_or_else(|| ApiError::forbidden("only responders acknowledge alerts"))?;
        let latest = {
            let alerts = inner.alerts.lock();
            let entry = alerts.get(&id).ok_or_else(|| not_found(&id))?;
            if !entry.targets.contains_key(&*by.sub) {
                return Err(ApiError::forbidden("this alert was not sent to you"));
            }
            if entry.alert.status != AlertStatus::Active
                && matches!(state, AckState::Accepted | AckState::Arrived)
            {
                return Err(ApiError::conflict(format!(
                    "alert is {}",
                    entry.alert.status.as_str()
                )));
            }
            AckState::merge(entry.acks.get(&*by.sub).copied(), state)
        };
        let record = AckRecord {
            alert: id.clone(),
            responder: by.sub.to_string(),
            name: by.name.clone(),
            unit,
            state,
            at: now_ms(),
        };
        inner
            .store
            .commit(vec![Write::Ack(record.clone())])
            .await
            .map_err(store_err)?;
        let (watchers, counts) = {
            let mut alerts = inner.alerts.lock();
            let Some(entry) = alerts.get_mut(&id) else {
                return Ok(());
            };
            entry.apply_ack(&by.sub, latest, &by.name);
            (
                entry.watchers.iter().copied().collect::<Vec<_>>(),
                entry.counts,
            )
        };
        inner.metrics.acks.fetch_add(1, Ordering::Relaxed);
        if !watchers.is_empty() {
            let hub = &inner.hub;
            hub.send_to(&watchers, &Outgoing::new(0, ack_frame(&record)));
            hub.send_to(
                &watchers,
                &Outgoing::new(0, ack_summary_frame(&id, &counts)),
            );
        }
        self.grid_after_ack(by, &id, state).await;
        Ok(())
    }

    fn notify_summary(&self, id: &AlertId) {
        let (watchers, counts) = {
            let alerts = self.inner.alerts.lock();
            let Some(entry) = alerts.get(id) else { return };
            (
                entry.watchers.iter().copied().collect::<Vec<_>>(),
                entry.counts,
            )
        };
        if !watchers.is_empty() {
            self.inner
                .hub
                .send_to(&watchers, &Outgoing::new(0, ack_summary_frame(id, &counts)));
        }
    }

    /// Records a responder's location as its H3 cell (the coordinates are
    /// dropped here), then targets it for any active alert it has moved into.
    pub async fn location(&self, by: &Principal, lat: f64, lng: f64) -> Result<(), ApiError> {
        let inner = &self.inner;
        let unit = by
            .unit
            .ok_or_else(|| ApiError::forbidden("only responders share a location"))?;
        let point = LatLng::new(lat, lng)?;
        let cell = geo::cell_at(point, inner.limits.presence_resolution)
            .map_err(|e| bad(e.to_string()))?;
        let now = now_ms();
        inner
            .store
            .commit(vec![Write::Place {
                sub: by.sub.clone(),
                unit,
                cell: u64::from(cell),
                at_ms: now,
            }])
            .await
            .map_err(store_err)?;
        let rid = inner.hub.set_place(&by.sub, unit, cell, now);
        inner.metrics.locations.fetch_add(1, Ordering::Relaxed);
        self.target_late_joiner(&by.sub, unit, rid, cell).await
    }

    /// Goes off duty: the responder's cell is forgotten (durably), so no
    /// new alert targets it until it shares a location again.
    pub async fn off_duty(&self, by: &Principal) -> Result<(), ApiError> {
        by.unit
            .ok_or_else(|| ApiError::forbidden("only responders go off duty"))?;
        self.inner
            .store
            .commit(vec![Write::ClearPlace {
                sub: by.sub.clone(),
            }])
            .await
            .map_err(store_err)?;
        self.inner.hub.clear_place(&by.sub);
        Ok(())
    }

    /// Responders per occupied presence cell inside an alert's circle, as
    /// counts per unit (never identities): for the coordinator map.
    pub fn presence(&self, id: &AlertId) -> Result<serde_json::Value, ApiError> {
        let alert = self.get(id)?.alert;
        let res = self.inner.limits.presence_resolution;
        let cells =
            geo::cover(alert.center, alert.radius_m, res).map_err(|e| bad(e.to_string()))?;
        let fresh_after = self.fresh_after(now_ms());
        let counts = self
            .inner
            .hub
            .with_presence(|p| p.unit_counts(&cells, fresh_after));
        let features: Vec<serde_json::Value> = counts
            .into_iter()
            .map(|(cell, by_unit)| {
                let total: usize = by_unit.iter().map(|(_, n)| n).sum();
                let by_unit: serde_json::Map<String, serde_json::Value> = by_unit
                    .into_iter()
                    .map(|(u, n)| (u.as_str().to_string(), n.into()))
                    .collect();
                let c = geo::center(cell);
                serde_json::json!({
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [geo::ring_lng_lat(cell)]},
                    "properties": {"cell": cell.to_string(), "count": total, "by_unit": by_unit,
                                   "center": {"lat": c.lat, "lng": c.lng}},
                })
            })
            .collect();
        Ok(serde_json::json!({"type": "FeatureCollection", "features": features}))
    }

    /// A responder who comes on duty (or walks) into an active alert's area
    /// after it was issued gets it too.
    async fn target_late_joiner(
        &self,
        sub: &Arc<str>,
        unit: Unit,
        rid: ResponderId,
        cell: CellIndex,
    ) -> Result<(), ApiError> {
        let inner = &self.inner;
        let here = geo::center(cell);
        let due = |alerts: &HashMap<AlertId, AlertEntry>| -> Vec<AlertId> {
            alerts
                .values()
                .filter(|e| {
                    e.alert.status == AlertStatus::Active
                        && e.alert.audience.contains(&unit)
                        && !e.targets.contains_key(sub)
                        && geo::distance_m(here, e.alert.center) <= e.alert.radius_m
                })
                .map(|e| e.alert.id.clone())
                .collect()
        };
        if due(&inner.alerts.lock()).is_empty() {
            return Ok(());
        }
        let _turn = inner.sequencer.lock().await;
        let candidates = due(&inner.alerts.lock());
        for id in candidates {
            let now = now_ms();
            let seq = self.last_seq() + 1;
            let Some(alert) = inner.alerts.lock().get(&id).map(|e| e.alert.clone()) else {
                continue;
            };
            let frame = alert_frame(AlertEventKind::Alert, seq, &alert);
            inner
                .store
                .commit(vec![
                    Write::Targets {
                        alert: id.clone(),
                        first_seq: seq,
                        targets: vec![TargetRecord {
                            sub: sub.clone(),
                            unit,
                        }],
                    },
                    Write::Event(EventRecord {
                        seq,
                        alert: id.clone(),
                        scope: Scope::NewTargets,
                        staff: false,
                        at_ms: now,
                        frame: frame.clone(),
                    }),
                ])
                .await
                .map_err(store_err)?;
            let live = inner.hub.is_live(sub);
            if let Some(entry) = inner.alerts.lock().get_mut(&id) {
                entry.add_target(sub.clone(), unit, rid, seq);
                if live {
                    entry.mark_reached(sub);
                }
            }
            self.fan_out(seq, &[rid], &frame, false);
            self.publish_remote(seq, vec![sub.clone()], false, frame);
            self.notify_summary(&id);
        }
        Ok(())
    }

    /// Adds a staff session as a watcher; returns the frames that bring it
    /// up to date at once (the ack summary, and the whole grid's coverage).
    pub async fn watch(
        &self,
        sid: SessionId,
        by: &Principal,
        alert: &str,
    ) -> Result<Vec<Frame>, ApiError> {
        crate::auth::require(by, &[Role::Police, Role::Coordinator], "watch alerts")?;
        let id = AlertId::parse(alert)?;
        self.grid_ready(&id).await;
        let summary = {
            let mut alerts = self.inner.alerts.lock();
            let entry = alerts.get_mut(&id).ok_or_else(|| not_found(&id))?;
            entry.watchers.insert(sid);
            ack_summary_frame(&id, &entry.counts)
        };
        let mut frames = vec![summary];
        frames.extend(self.coverage_all(&id));
        Ok(frames)
    }

    pub fn unwatch(&self, sid: SessionId, by: &Principal, alert: &str) -> Result<(), ApiError> {
        crate::auth::require(by, &[Role::Police, Role::Coordinator], "watch alerts")?;
        let id = AlertId::parse(alert)?;
        let mut alerts = self.inner.alerts.lock();
        let entry = alerts.get_mut(&id).ok_or_else(|| not_found(&id))?;
        entry.watchers.remove(&sid);
        Ok(())
    }

    /// Forgets a closed session everywhere it watched.
    pub fn session_closed(&self, sid: SessionId) {
        for entry in self.inner.alerts.lock().values_mut() {
            entry.watchers.remove(&sid);
        }
    }

    pub fn list(&self, status: Option<AlertStatus>) -> Vec<AlertWithCounts> {
        let alerts = self.inner.alerts.lock();
        let mut out: Vec<_> = alerts
            .values()
            .filter(|e| status.is_none_or(|s| e.alert.status == s))
            .map(|e| AlertWithCounts {
                alert: e.alert.clone(),
                counts: e.counts,
            })
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.alert.issued_at));
        out
    }

    pub fn get(&self, id: &AlertId) -> Result<AlertWithCounts, ApiError> {
        let alerts = self.inner.alerts.lock();
        let e = alerts.get(id).ok_or_else(|| not_found(id))?;
        Ok(AlertWithCounts {
            alert: e.alert.clone(),
            counts: e.counts,
        })
    }

    /// Every targeted responder's latest state (`pending` if none yet).
    pub fn acks(&self, id: &AlertId) -> Result<Vec<ResponderState>, ApiError> {
        let alerts = self.inner.alerts.lock();
        let e = alerts.get(id).ok_or_else(|| not_found(id))?;
        let mut out: Vec<_> = e
            .targets
            .iter()
            .map(|(sub, (unit, _))| ResponderState {
                responder: sub.to_string(),
                name: e.names.get(sub).cloned().unwrap_or_default(),
                unit: *unit,
                state: e.acks.get(sub).map(|s| s.as_str()).unwrap_or("pending"),
                delivered: e.reached.contains(sub),
            })
            .collect();
        out.sort_unstable_by(|a, b| a.responder.cmp(&b.responder));
        Ok(out)
    }

    /// Events a reconnecting client missed, from the durable log.
    pub async fn replay(
        &self,
        who: &Principal,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Frame)>, ApiError> {
        if who.role.is_staff() {
            let rows = self
                .inner
                .store
                .events_since(since, EventFilter::Staff, limit)
                .await
                .map_err(store_err)?;
            return Ok(rows.into_iter().map(|e| (e.seq, e.frame)).collect());
        }
        // The alerts that targeted this responder, and from which event on.
        let first: HashMap<AlertId, u64> = self
            .inner
            .alerts
            .lock()
            .values()
            .filter_map(|e| Some((e.alert.id.clone(), e.targets.get(&*who.sub)?.1)))
            .collect();
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let alerts: Vec<AlertId> = first.keys().cloned().collect();
        let rows = self
            .inner
            .store
            .events_since(since, EventFilter::Alerts(alerts), usize::MAX)
            .await
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .filter(|e| {
                let from = first.get(&e.alert).copied().unwrap_or(u64::MAX);
                match &e.scope {
                    Scope::Targets => e.seq >= from,
                    Scope::NewTargets => e.seq == from,
                    Scope::One(sub) => **sub == *who.sub,
                }
            })
            .take(limit)
            .map(|e| (e.seq, e.frame))
            .collect())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponderState {
    pub responder: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub unit: Unit,
    pub state: &'static str,
    pub delivered: bool,
}

fn not_found(id: &AlertId) -> ApiError {
    ApiError::not_found(format!("no alert '{id}'"))
}
