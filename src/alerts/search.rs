//! The search grid inside the alert lifecycle: building it on issue,
//! assigning cells on accept, taking them back on decline, timeout or
//! disconnect, cell reports, coordinators' moves, and the found state.
//!
//! Every grid mutation runs under the sequencer, like every other change
//! that emits sequenced events: mutate the grid in memory, commit the
//! changed cell records and the `assignment` / `assignment_revoked` /
//! stand-down frames, then deliver; if the commit fails the mutation is
//! undone (the grid's undo is only valid for its latest mutation, which the
//! sequencer guarantees).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::MutexGuard;

use super::{Alerts, not_found, store_err};
use crate::domain::{AckState, AlertId, AlertStatus, Principal, Role, now_ms};
use crate::geo;
use crate::grid::{
    Assignment, CellReport, Coverage, Effects, GridError, ReleaseReason, Revoked, SearchGrid,
};
use crate::hub::{Frame, Outgoing};
use crate::protocol::{AlertEventKind, ApiError, alert_frame, to_frame};
use crate::store::{EventRecord, Scope, Write};

/// `assignment`: the cell a responder is to search, drawable without H3.
pub fn assignment_frame(seq: u64, alert: &AlertId, a: &Assignment) -> Frame {
    #[derive(Serialize)]
    struct Msg<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        alert: &'a AlertId,
        #[serde(flatten)]
        assignment: &'a Assignment,
    }
    to_frame(&Msg {
        r#type: "assignment",
        seq: (seq > 0).then_some(seq),
        alert,
        assignment: a,
    })
}

/// `assignment_revoked`: stop searching this cell.
fn revoked_frame(seq: u64, alert: &AlertId, r: &Revoked) -> Frame {
    #[derive(Serialize)]
    struct Msg<'a> {
        r#type: &'static str,
        seq: u64,
        alert: &'a AlertId,
        cell: String,
        reason: crate::grid::ChangeReason,
    }
    to_frame(&Msg {
        r#type: "assignment_revoked",
        seq,
        alert,
        cell: r.cell.to_string(),
        reason: r.reason,
    })
}

/// `coverage`: changed cells and the covered ratios, to watchers.
pub fn coverage_frame(alert: &AlertId, c: &Coverage) -> Frame {
    #[derive(Serialize)]
    struct Msg<'a> {
        r#type: &'static str,
        alert: &'a AlertId,
        #[serde(flatten)]
        coverage: &'a Coverage,
    }
    to_frame(&Msg {
        r#type: "coverage",
        alert,
        coverage: c,
    })
}

fn grid_of<'a>(
    alerts: &'a mut std::collections::HashMap<AlertId, super::AlertEntry>,
    id: &AlertId,
) -> Result<&'a mut super::AlertEntry, ApiError> {
    let entry = alerts.get_mut(id).ok_or_else(|| not_found(id))?;
    if entry.grid.is_none() {
        return Err(ApiError::not_found(format!(
            "alert '{id}' has no search grid"
        )));
    }
    Ok(entry)
}

/// What a coordinator does to cells (`POST /api/v1/alerts/{id}/cells`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CellAction {
    Exclude,
    Include,
    Adjust(f64),
}

impl Alerts {
    /// Builds the grid of a searchable alert (or `None`).
    pub(super) fn build_grid(
        &self,
        alert: &crate::protocol::Alert,
        by: &Arc<str>,
        now: u64,
    ) -> Result<Option<SearchGrid>, ApiError> {
        let search = &self.inner.search;
        if !search.settings.is_searchable(&alert.kind) {
            return Ok(None);
        }
        let grid = search.settings.build(
            &search.rings,
            alert.center,
            alert.radius_m,
            alert.subject.as_deref(),
            by,
            now,
        )?;
        Ok(Some(grid))
    }

    /// Builds a new alert's grid (the caller holds the sequencer). Its
    /// initial state is not written: it follows from the alert (centre,
    /// radius, subject) and the ring table, and is rebuilt the same way on
    /// restart; only changes to cells go on the record. A failure leaves the
    /// alert without a grid and is logged: the alert itself has gone out.
    pub(super) fn attach_grid(&self, alert: &crate::protocol::Alert, by: &Arc<str>, now: u64) {
        let grid = match self.build_grid(alert, by, now) {
            Ok(Some(g)) => g,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(alert = %alert.id, error = %e, "search grid not built");
                return;
            }
        };
        if let Some(entry) = self.inner.alerts.lock().get_mut(&alert.id) {
            entry.grid = Some(grid);
        }
    }

    /// Takes the sequencer and applies `op` to the alert's grid.
    pub(super) async fn apply_grid(
        &self,
        id: &AlertId,
        op: impl FnOnce(&mut SearchGrid, u64) -> Result<Effects, GridError>,
    ) -> Result<(), ApiError> {
        let turn = self.inner.sequencer.lock().await;
        self.apply_grid_locked(&turn, id, op).await
    }

    /// Applies `op` to the alert's grid, commits what changed, delivers the
    /// resulting events and streams `coverage`. The caller holds the sequencer.
    pub(super) async fn apply_grid_locked(
        &self,
        _turn: &MutexGuard<'_, ()>,
        id: &AlertId,
        op: impl FnOnce(&mut SearchGrid, u64) -> Result<Effects, GridError>,
    ) -> Result<(), ApiError> {
        let inner = &self.inner;
        let now = now_ms();
        let (effects, coverage, found_alert, target_rids, watchers) = {
            let mut alerts = inner.alerts.lock();
            let entry = grid_of(&mut alerts, id)?;
            let Some(grid) = entry.grid.as_mut() else {
                return Ok(());
            };
            let effects = op(grid, now)?;
            if effects.is_empty() {
                return Ok(());
            }
            let coverage = coverage_frame(id, &grid.coverage(&effects));
            let found_alert =
                (effects.found.is_some() && entry.alert.status == AlertStatus::Active).then(|| {
                    let mut a = entry.alert.clone();
                    a.status = AlertStatus::Found;
                    a.version += 1;
                    a.updated_at = now;
                    a
                });
            (
                effects,
                coverage,
                found_alert,
                entry.target_rids.clone(),
                entry.watchers.iter().copied().collect::<Vec<_>>(),
            )
        };

        let mut seq = self.last_seq();
        let mut writes = vec![Write::GridCells {
            alert: id.clone(),
            records: effects.changed.clone(),
        }];
        let mut personal: Vec<(u64, Arc<str>, Frame)> = Vec::new();
        let event = |seq: u64, scope: Scope, staff: bool, frame: &Frame| {
            Write::Event(EventRecord {
                seq,
                alert: id.clone(),
                scope,
                staff,
                at_ms: now,
                frame: frame.clone(),
            })
        };
        for a in &effects.assigned {
            seq += 1;
            let frame = assignment_frame(seq, id, a);
            writes.push(event(seq, Scope::One(a.responder.clone()), false, &frame));
            personal.push((seq, a.responder.clone(), frame));
        }
        for r in &effects.revoked {
            seq += 1;
            let frame = revoked_frame(seq, id, r);
            writes.push(event(seq, Scope::One(r.responder.clone()), false, &frame));
            personal.push((seq, r.responder.clone(), frame));
        }
        let stand_down = found_alert.as_ref().map(|a| {
            seq += 1;
            let frame = alert_frame(AlertEventKind::Update, seq, a);
            writes.push(Write::Alert(a.clone()));
            writes.push(event(seq, Scope::Targets, true, &frame));
            (seq, frame)
        });

        if let Err(e) = inner.store.commit(writes).await {
            if let Some(grid) = inner
                .alerts
                .lock()
                .get_mut(id)
                .and_then(|e| e.grid.as_mut())
            {
                grid.undo(effects.undo);
            }
            return Err(store_err(e));
        }
        if let Some(a) = &found_alert
            && let Some(entry) = inner.alerts.lock().get_mut(id)
        {
            entry.alert = a.clone();
        }
        for (seq, sub, frame) in personal {
            let rids: Vec<_> = inner.hub.responder_id(&sub).into_iter().collect();
            self.fan_out(seq, &rids, &frame, false);
            self.publish_remote(seq, vec![sub], false, frame);
        }
        if let Some((seq, frame)) = stand_down {
            self.fan_out(seq, &target_rids, &frame, true);
            self.publish_remote(seq, self.target_subs(id), true, frame);
            if let Some(a) = &found_alert {
                tracing::info!(alert = %id, "subject reported found; searchers stand down");
                self.push_offline(a, self.target_subs(id));
            }
        }
        if !watchers.is_empty() {
            inner.hub.send_to(&watchers, &Outgoing::new(0, coverage));
        }
        Ok(())
    }

    /// After a committed ack: accepting takes a cell, declining gives it back.
    pub(super) async fn grid_after_ack(&self, by: &Principal, id: &AlertId, state: AckState) {
        if !matches!(state, AckState::Accepted | AckState::Declined) {
            return;
        }
        // By kind, not by grid: the grid of a brand-new alert may still be
        // being built; `apply_grid` waits for it behind the sequencer.
        let searchable = self.inner.alerts.lock().get(id).is_some_and(|e| {
            e.alert.status == AlertStatus::Active
                && self.inner.search.settings.is_searchable(&e.alert.kind)
        });
        if !searchable {
            return;
        }
        let sub = by.sub.clone();
        let at = self
            .inner
            .hub
            .place_of(&sub)
            .map(|(cell, _)| geo::center(cell));
        let result = match state {
            AckState::Accepted => {
                self.apply_grid(id, |g, now| g.assign_next(&sub, at, now).map(|(_, e)| e))
                    .await
            }
            AckState::Declined => {
                self.apply_grid(id, |g, now| {
                    Ok(g.release(&sub, ReleaseReason::Declined, now))
                })
                .await
            }
            AckState::Received | AckState::Arrived => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(alert = %id, responder = %sub, error = %e, "grid update after ack failed");
        }
    }

    /// A responder's `cell` report: `searching`, `cleared` (then the next
    /// cell follows) or `found`.
    pub async fn report_cell(
        &self,
        by: &Principal,
        alert: &str,
        cell: &str,
        state: &str,
    ) -> Result<(), ApiError> {
        let id = AlertId::parse(alert)?;
        let cell = geo::parse_cell(cell).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let report = CellReport::parse(state)
            .ok_or_else(|| ApiError::bad_request("state must be searching, cleared or found"))?;
        {
            let alerts = self.inner.alerts.lock();
            let entry = alerts.get(&id).ok_or_else(|| not_found(&id))?;
            if !entry.targets.contains_key(&*by.sub) {
                return Err(ApiError::forbidden("this alert was not sent to you"));
            }
        }
        let sub = by.sub.clone();
        self.apply_grid(&id, |g, now| g.report(&sub, cell, report, now))
            .await
    }

    /// A coordinator gives `cell` to `responder`, or takes it back (`None`).
    pub async fn assign_cell(
        &self,
        by: &Principal,
        alert: &str,
        cell: &str,
        responder: Option<&str>,
    ) -> Result<(), ApiError> {
        crate::auth::require(
            by,
            &[Role::Coordinator, Role::Police],
            "assign search cells",
        )?;
        let id = AlertId::parse(alert)?;
        let cell = geo::parse_cell(cell).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let who = by.sub.clone();
        match responder {
            Some(r) => {
                let target: Arc<str> = {
                    let alerts = self.inner.alerts.lock();
                    let entry = alerts.get(&id).ok_or_else(|| not_found(&id))?;
                    let (sub, _) = entry.targets.get_key_value(r).ok_or_else(|| {
                        ApiError::not_found(format!("responder '{r}' was not sent this alert"))
                    })?;
                    sub.clone()
                };
                self.apply_grid(&id, |g, now| {
                    g.manual_assign(cell, &target, &who, now).map(|(_, e)| e)
                })
                .await
            }
            None => {
                self.apply_grid(&id, |g, now| g.unassign(cell, &who, now))
                    .await
            }
        }
    }

    /// A coordinator raises / lowers or excludes / includes cells.
    pub async fn cells_action(
        &self,
        by: &Principal,
        alert: &str,
        cells: &[String],
        action: CellAction,
    ) -> Result<(), ApiError> {
        crate::auth::require(
            by,
            &[Role::Coordinator, Role::Police],
            "change search cells",
        )?;
        let id = AlertId::parse(alert)?;
        if cells.is_empty() || cells.len() > 10_000 {
            return Err(ApiError::bad_request("'cells' must list 1 to 10000 cells"));
        }
        let cells = cells
            .iter()
            .map(|c| geo::parse_cell(c).map_err(|e| ApiError::bad_request(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let who = by.sub.clone();
        self.apply_grid(&id, |g, now| match action {
            CellAction::Exclude => g.exclude(&cells, &who, now),
            CellAction::Include => g.include(&cells, &who, now),
            CellAction::Adjust(f) => g.adjust(&cells, f, &who, now),
        })
        .await
    }

    /// Releases cells whose holder never started or stayed away too long.
    pub async fn grid_tick(&self) {
        let now = now_ms();
        let timeouts = self.inner.search.settings.timeouts();
        let due: Vec<AlertId> = self
            .inner
            .alerts
            .lock()
            .values()
            .filter(|e| {
                e.grid
                    .as_ref()
                    .and_then(|g| g.next_deadline(timeouts))
                    .is_some_and(|d| d <= now)
            })
            .map(|e| e.alert.id.clone())
            .collect();
        for id in due {
            if let Err(e) = self
                .apply_grid(&id, |g, now| Ok(g.tick(now, timeouts)))
                .await
            {
                tracing::warn!(alert = %id, error = %e, "grid timer failed");
            }
        }
    }

    /// The responder's last session closed: its grace period starts.
    pub fn responder_offline(&self, sub: &Arc<str>) {
        let now = now_ms();
        for entry in self.inner.alerts.lock().values_mut() {
            if let Some(g) = entry.grid.as_mut() {
                g.disconnected(sub, now);
            }
        }
    }

    /// The responder is back: its grace timer stops; returns the cells it
    /// still holds (as `assignment` frames without `seq`) to send again.
    pub fn responder_online(&self, sub: &Arc<str>) -> Vec<Frame> {
        let mut frames = Vec::new();
        for entry in self.inner.alerts.lock().values_mut() {
            if let Some(g) = entry.grid.as_mut() {
                g.connected(sub);
                if let Some(a) = g.current_assignment(sub) {
                    frames.push(assignment_frame(0, &entry.alert.id, &a));
                }
            }
        }
        frames
    }

    /// The grid as an RFC 7946 FeatureCollection (bytes).
    pub async fn grid_geojson(&self, id: &AlertId) -> Result<Vec<u8>, ApiError> {
        self.grid_ready(id).await;
        let mut alerts = self.inner.alerts.lock();
        let entry = grid_of(&mut alerts, id)?;
        Ok(entry
            .grid
            .as_ref()
            .map(|g| g.to_geojson_bytes())
            .unwrap_or_default())
    }

    /// A new alert is delivered before its grid is built (the grid is built
    /// right after, still under the sequencer). Readers that see the alert
    /// and ask for its grid at once wait for that turn to end instead of
    /// being told there is none.
    pub(super) async fn grid_ready(&self, id: &AlertId) {
        let pending = self.inner.alerts.lock().get(id).is_some_and(|e| {
            e.grid.is_none()
                && e.alert.status.is_open()
                && self.inner.search.settings.is_searchable(&e.alert.kind)
        });
        if pending {
            drop(self.inner.sequencer.lock().await);
        }
    }

    /// The whole grid as one `coverage` frame (for a new watcher).
    pub(super) fn coverage_all(&self, id: &AlertId) -> Option<Frame> {
        let alerts = self.inner.alerts.lock();
        let g = alerts.get(id)?.grid.as_ref()?;
        Some(coverage_frame(id, &g.coverage_all()))
    }
}
