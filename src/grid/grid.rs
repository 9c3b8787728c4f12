//! One alert's search grid: its cells, their weights and states, who holds
//! what, who waits for a cell, and every operation the alert service
//! performs on it. Plain data; the caller serializes access (the alert
//! service's mutex) and supplies the clock (`now_ms`).
//!
//! Invariants (checked by [`SearchGrid::check_invariants`], exercised by a
//! property test):
//!
//! - a cell is `assigned`/`searching` iff it has an assignee, and then the
//!   responder → cell index names exactly that cell: no cell is ever held by
//!   two responders and no responder holds two cells;
//! - `unassigned` and `excluded` cells have no assignee;
//! - responders wait only while no cell is unassigned, and never while
//!   holding a cell;
//! - once closed (found, or stood down) nobody holds or waits;
//! - the weights of the non-excluded cells sum to 1.
//!
//! Every mutation runs as one transaction: either it fails with nothing
//! changed, or it returns [`Effects`] listing each changed cell once, the new
//! assignments and the revoked ones, and an [`Undo`] that puts the grid back
//! exactly as it was (for when the durable write fails).

use std::collections::{HashMap, HashSet, VecDeque};
use std::f64::consts::PI;
use std::sync::Arc;

use h3o::{CellIndex, Resolution};

use crate::domain::LatLng;
use crate::geo;

use super::rings::Rings;
use super::select::{self, Buckets};
use super::wire::{
    Assignment, CellRecord, CellReport, CellState, CellView, ChangeReason, Coverage, Effects,
    Found, ReleaseReason, Revoked, StateCounts,
};
use super::{GridError, MAX_FACTOR, MIN_FACTOR};

/// Who stamps changes nobody in particular made (timers, automatic assignment).
pub const SYSTEM: &str = "system";

/// Smallest prior a cell can have, so every cell stays comparable by distance.
const MIN_PRIOR: f64 = 1e-300;

/// What a grid is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    /// The alert centre, taken as the point last seen (the IPP of the rings).
    pub centre: LatLng,
    pub radius_m: f64,
    pub resolution: Resolution,
    /// `D0` of the assignment score, metres.
    pub distance_scale_m: f64,
    /// Refuse grids larger than this.
    pub max_cells: usize,
}

/// The timers of [`SearchGrid::tick`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A responder who does not report `searching` within this loses the cell.
    pub start_ms: u64,
    /// A disconnected responder keeps its cell (or place in line) this long.
    pub grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cell {
    pub(crate) id: CellIndex,
    pub(crate) centre: LatLng,
    pub(crate) bucket: u32,
    /// Unnormalized prior probability mass from the ring table.
    pub(crate) prior: f64,
    pub(crate) factor: f64,
    pub(crate) state: CellState,
    pub(crate) assignee: Option<Arc<str>>,
    pub(crate) assigned_at: Option<u64>,
    pub(crate) changed_by: Arc<str>,
    pub(crate) changed_at: u64,
    pub(crate) reason: ChangeReason,
    /// 1 = most probable non-excluded cell; 0 for excluded cells.
    pub(crate) rank: u32,
}

impl Cell {
    /// Unnormalized weight: prior × factor, 0 when excluded.
    pub(crate) fn raw(&self) -> f64 {
        if self.state == CellState::Excluded {
            0.0
        } else {
            self.prior * self.factor
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Waiter {
    responder: Arc<str>,
    at: Option<LatLng>,
}

/// Puts the grid back as it was before one mutation. Apply it (with
/// [`SearchGrid::undo`]) before any later mutation, or in reverse order.
#[derive(Debug, Default, Clone)]
pub struct Undo {
    /// Version the grid had after the mutation; 0 = nothing to undo.
    version_after: u64,
    version_before: u64,
    cells: Vec<(usize, Cell)>,
    len_before: usize,
    radius_before: f64,
    waiting_before: Option<VecDeque<Waiter>>,
    /// Offline marks the mutation removed (only removals happen in one).
    offline_removed: Vec<(Arc<str>, u64)>,
    closed_before: bool,
}

#[derive(Debug, Clone, Default)]
struct Tx {
    active: bool,
    seen: HashSet<usize>,
    touched: Vec<usize>,
    before: Vec<(usize, Cell)>,
    len_before: usize,
    radius_before: f64,
    waiting_before: Option<VecDeque<Waiter>>,
    /// Offline marks the mutation removed (only removals happen in one).
    offline_removed: Vec<(Arc<str>, u64)>,
    closed_before: bool,
    assigned: Vec<(Arc<str>, usize)>,
    revoked: Vec<Revoked>,
    reweighted: bool,
    /// A cell entered or left `excluded`: renormalize before finishing.
    needs_reweight: bool,
    found: Option<Found>,
    closed: bool,
}

/// The search grid of one alert. See the module documentation.
#[derive(Debug, Clone)]
pub struct SearchGrid {
    centre: LatLng,
    radius_m: f64,
    res: Resolution,
    rings: Rings,
    distance_scale_m: f64,
    max_cells: usize,
    /// Equivalent radius of one cell (√(area/π)), for the annulus a cell spans.
    cell_radius_m: f64,
    cells: Vec<Cell>,
    index: HashMap<CellIndex, usize>,
    buckets: Buckets,
    holders: HashMap<Arc<str>, usize>,
    waiting: VecDeque<Waiter>,
    offline: HashMap<Arc<str>, u64>,
    counts: [usize; 6],
    total_raw: f64,
    closed: bool,
    version: u64,
    tx: Tx,
}

fn geo_err(e: geo::GeoError) -> GridError {
    GridError::Geo(e.to_string())
}

impl SearchGrid {
    /// Builds the grid: every cell of `spec.resolution` whose centre lies
    /// within the circle (as [`geo::cover`] decides), plus always the cell
    /// containing the centre, each weighted from `rings` and renormalized.
    /// Cells start `unassigned`, stamped `(by, now_ms)`.
    pub fn new(
        spec: GridSpec,
        rings: &Rings,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Self, GridError> {
        if !spec.radius_m.is_finite() || spec.radius_m <= 0.0 {
            return Err(GridError::BadRadius(spec.radius_m));
        }
        if !spec.distance_scale_m.is_finite() || spec.distance_scale_m <= 0.0 {
            return Err(GridError::Geo(format!(
                "distance_scale_m must be a positive number of metres, got {}",
                spec.distance_scale_m
            )));
        }
        let origin = geo::cell_at(spec.centre, spec.resolution).map_err(geo_err)?;
        let mut ids = geo::cover(spec.centre, spec.radius_m, spec.resolution).map_err(geo_err)?;
        ids.push(origin);
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > spec.max_cells {
            return Err(GridError::TooLarge {
                cells: ids.len(),
                max: spec.max_cells,
                res: u8::from(spec.resolution),
            });
        }
        let mut grid = Self {
            centre: spec.centre,
            radius_m: spec.radius_m,
            res: spec.resolution,
            rings: rings.clone(),
            distance_scale_m: spec.distance_scale_m,
            max_cells: spec.max_cells,
            cell_radius_m: (origin.area_m2() / PI).sqrt(),
            cells: Vec::with_capacity(ids.len()),
            index: HashMap::with_capacity(ids.len()),
            buckets: Buckets::new(spec.resolution),
            holders: HashMap::new(),
            waiting: VecDeque::new(),
            offline: HashMap::new(),
            counts: [0; 6],
            total_raw: 0.0,
            closed: false,
            version: 0,
            tx: Tx::default(),
        };
        for id in ids {
            grid.push_cell(id, by, now_ms);
        }
        grid.reweight();
        Ok(grid)
    }

    /// Prior mass of a cell whose centre is `d` metres from the point last
    /// seen: mean ring density over the annulus it spans × its area.
    fn prior(&self, id: CellIndex, d: f64) -> f64 {
        let h = self.cell_radius_m;
        let p = self.rings.annulus_density(d - h, d + h) * id.area_m2();
        if p.is_finite() {
            p.max(MIN_PRIOR)
        } else {
            MIN_PRIOR
        }
    }

    fn push_cell(&mut self, id: CellIndex, by: &Arc<str>, now_ms: u64) -> usize {
        let centre = geo::center(id);
        let prior = self.prior(id, geo::distance_m(centre, self.centre));
        let idx = self.cells.len();
        let bucket = self.buckets.place(id, centre, idx);
        self.cells.push(Cell {
            id,
            centre,
            bucket,
            prior,
            factor: 1.0,
            state: CellState::Unassigned,
            assignee: None,
            assigned_at: None,
            changed_by: by.clone(),
            changed_at: now_ms,
            reason: ChangeReason::Added,
            rank: 0,
        });
        self.index.insert(id, idx);
        self.counts[CellState::Unassigned.slot()] += 1;
        idx
    }

    /// Recomputes the normalizer, the ranks and the bucket maxima.
    fn reweight(&mut self) {
        self.total_raw = self.cells.iter().map(Cell::raw).sum();
        let mut order: Vec<usize> = (0..self.cells.len())
            .filter(|&i| self.cells[i].state != CellState::Excluded)
            .collect();
        order.sort_unstable_by(|&a, &b| {
            let (ca, cb) = (&self.cells[a], &self.cells[b]);
            cb.raw().total_cmp(&ca.raw()).then(ca.id.cmp(&cb.id))
        });
        for c in &mut self.cells {
            c.rank = 0;
        }
        for (rank, &i) in order.iter().enumerate() {
            self.cells[i].rank = (rank + 1) as u32;
        }
        self.buckets.refresh_all(&self.cells);
    }

    // ----- transactions ---------------------------------------------------

    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, GridError>,
    ) -> Result<(T, Effects), GridError> {
        debug_assert!(!self.tx.active, "grid mutations do not nest");
        self.tx = Tx {
            active: true,
            len_before: self.cells.len(),
            radius_before: self.radius_m,
            closed_before: self.closed,
            ..Tx::default()
        };
        match f(self) {
            Ok(v) => Ok((v, self.finish(true))),
            Err(e) => {
                let undo = self.finish(false).undo;
                self.undo(undo);
                Err(e)
            }
        }
    }

    fn finish(&mut self, check: bool) -> Effects {
        // Only responders taking part are tracked offline.
        let stale: Vec<Arc<str>> = self
            .offline
            .keys()
            .filter(|r| {
                !self.holders.contains_key(*r) && !self.waiting.iter().any(|w| &w.responder == *r)
            })
            .cloned()
            .collect();
        for r in stale {
            self.offline_remove(&r);
        }
        let mut tx = std::mem::take(&mut self.tx);
        if tx.needs_reweight {
            self.reweight();
            tx.reweighted = true;
        }
        let version_before = self.version;
        self.version += 1;
        let changed = tx.touched.iter().map(|&i| self.record_at(i)).collect();
        let assigned = tx
            .assigned
            .iter()
            .filter(|(r, i)| self.holders.get(r) == Some(i))
            .map(|(r, i)| self.assignment_at(r, *i))
            .collect();
        #[cfg(test)]
        if check && let Err(e) = self.check_invariants() {
            panic!("grid invariant broken: {e}");
        }
        #[cfg(not(test))]
        let _ = check;
        Effects {
            changed,
            assigned,
            revoked: tx.revoked,
            reweighted: tx.reweighted,
            found: tx.found,
            closed: tx.closed,
            undo: Undo {
                version_after: self.version,
                version_before,
                cells: tx.before,
                len_before: tx.len_before,
                radius_before: tx.radius_before,
                waiting_before: tx.waiting_before,
                offline_removed: tx.offline_removed,
                closed_before: tx.closed_before,
            },
        }
    }

    /// Reverts the mutation that returned `undo`, if it is the latest one
    /// still applied. Returns whether anything was reverted. Undos of several
    /// mutations apply in reverse order.
    pub fn undo(&mut self, undo: Undo) -> bool {
        if undo.version_after == 0 || undo.version_after != self.version {
            return false;
        }
        for (i, cell) in undo.cells {
            if let Some(slot) = self.cells.get_mut(i) {
                *slot = cell;
            }
        }
        if self.cells.len() > undo.len_before {
            for c in self.cells.drain(undo.len_before..) {
                self.index.remove(&c.id);
            }
        }
        self.radius_m = undo.radius_before;
        if let Some(w) = undo.waiting_before {
            self.waiting = w;
        }
        for (r, at) in undo.offline_removed {
            self.offline.entry(r).or_insert(at);
        }
        self.closed = undo.closed_before;
        self.version = undo.version_before;
        self.rebuild_derived();
        true
    }

    /// Recomputes holders, counts, buckets, weights and ranks from the cells.
    fn rebuild_derived(&mut self) {
        self.holders.clear();
        self.counts = [0; 6];
        for (i, c) in self.cells.iter().enumerate() {
            self.counts[c.state.slot()] += 1;
            if c.state.is_active()
                && let Some(a) = &c.assignee
            {
                self.holders.insert(a.clone(), i);
            }
        }
        self.buckets = Buckets::rebuild(self.res, &mut self.cells);
        let holders = &self.holders;
        self.waiting.retain(|w| !holders.contains_key(&w.responder));
        self.reweight();
    }

    fn touch(&mut self, i: usize) {
        if self.tx.active && self.tx.seen.insert(i) {
            self.tx.touched.push(i);
            if i < self.tx.len_before {
                self.tx.before.push((i, self.cells[i].clone()));
            }
        }
    }

    fn waiting_mut(&mut self) -> &mut VecDeque<Waiter> {
        if self.tx.active && self.tx.waiting_before.is_none() {
            self.tx.waiting_before = Some(self.waiting.clone());
        }
        &mut self.waiting
    }

    /// Forgets an offline mark, remembering it for undo. Marks are set
    /// outside mutations ([`Self::disconnected`]), so an undo restores only
    /// what its mutation removed and leaves later marks alone.
    fn offline_remove(&mut self, responder: &Arc<str>) {
        if let Some(at) = self.offline.remove(responder)
            && self.tx.active
        {
            self.tx.offline_removed.push((responder.clone(), at));
        }
    }

    /// The one place a cell's state or assignee changes; keeps the holder
    /// index, the counts and the bucket index in step.
    fn set(
        &mut self,
        i: usize,
        state: CellState,
        assignee: Option<Arc<str>>,
        by: &Arc<str>,
        now_ms: u64,
        reason: ChangeReason,
    ) {
        self.touch(i);
        let (old_state, old_assignee, old_assigned_at) = {
            let c = &self.cells[i];
            (c.state, c.assignee.clone(), c.assigned_at)
        };
        if old_state.is_active()
            && let Some(a) = &old_assignee
        {
            let removed = self.holders.remove(a);
            debug_assert_eq!(removed, Some(i), "holder index out of step for {a}");
        }
        let assignee = match state {
            CellState::Unassigned | CellState::Excluded => None,
            _ => assignee,
        };
        if state.is_active() {
            debug_assert!(assignee.is_some(), "an active cell needs a holder");
            if let Some(a) = &assignee {
                let prev = self.holders.insert(a.clone(), i);
                debug_assert!(prev.is_none(), "{a} would hold two cells");
            }
        }
        let same_holder = old_state.is_active() && old_assignee == assignee;
        let assigned_at = match state {
            CellState::Assigned | CellState::Searching if same_holder => {
                old_assigned_at.or(Some(now_ms))
            }
            CellState::Assigned | CellState::Searching => Some(now_ms),
            _ => None,
        };
        self.counts[old_state.slot()] -= 1;
        self.counts[state.slot()] += 1;
        if (old_state == CellState::Excluded) != (state == CellState::Excluded) {
            self.tx.needs_reweight = true;
        }
        let c = &mut self.cells[i];
        c.state = state;
        c.assignee = assignee;
        c.assigned_at = assigned_at;
        c.changed_by = by.clone();
        c.changed_at = now_ms;
        c.reason = reason;
        let bucket = c.bucket;
        if (old_state == CellState::Unassigned) != (state == CellState::Unassigned) {
            self.buckets.refresh(bucket, &self.cells);
        }
    }

    fn assign_to(
        &mut self,
        i: usize,
        responder: &Arc<str>,
        by: &Arc<str>,
        now_ms: u64,
        reason: ChangeReason,
    ) {
        self.set(
            i,
            CellState::Assigned,
            Some(responder.clone()),
            by,
            now_ms,
            reason,
        );
        self.tx.assigned.push((responder.clone(), i));
        if self.waiting.iter().any(|w| &w.responder == responder) {
            self.waiting_mut().retain(|w| &w.responder != responder);
        }
    }

    /// Gives `responder` the best cell for `at`, or puts it in line.
    fn assign_or_wait(&mut self, responder: &Arc<str>, at: Option<LatLng>, now_ms: u64) {
        if self.closed || self.holders.contains_key(responder) {
            return;
        }
        match self.buckets.choose(&self.cells, at, self.distance_scale_m) {
            Some(i) => {
                let system: Arc<str> = SYSTEM.into();
                self.assign_to(i, responder, &system, now_ms, ChangeReason::Assigned);
            }
            None => {
                if !self.waiting.iter().any(|w| &w.responder == responder) {
                    self.waiting_mut().push_back(Waiter {
                        responder: responder.clone(),
                        at,
                    });
                }
            }
        }
    }

    /// Hands returned cells to responders in line, first come first served.
    fn serve_waiting(&mut self, now_ms: u64) {
        while !self.closed && self.counts[CellState::Unassigned.slot()] > 0 {
            let Some(w) = self.waiting_mut().pop_front() else {
                break;
            };
            if self.holders.contains_key(&w.responder) {
                continue;
            }
            self.assign_or_wait(&w.responder, w.at, now_ms);
        }
    }

    fn release_inner(&mut self, responder: &Arc<str>, reason: ReleaseReason, now_ms: u64) {
        let by: Arc<str> = match reason {
            ReleaseReason::Declined | ReleaseReason::Left => responder.clone(),
            ReleaseReason::Disconnected | ReleaseReason::StartTimeout => SYSTEM.into(),
        };
        if let Some(&i) = self.holders.get(responder) {
            self.set(i, CellState::Unassigned, None, &by, now_ms, reason.into());
            self.tx.revoked.push(Revoked {
                responder: responder.clone(),
                cell: self.cells[i].id,
                reason: reason.into(),
            });
        }
        if self.waiting.iter().any(|w| &w.responder == responder) {
            self.waiting_mut().retain(|w| &w.responder != responder);
        }
        if self.offline.contains_key(responder) {
            self.offline_remove(responder);
        }
        self.serve_waiting(now_ms);
    }

    /// Releases every holder, empties the line and stops assigning.
    fn stand_down_all(&mut self, by: &Arc<str>, now_ms: u64) {
        let mut held: Vec<(Arc<str>, usize)> =
            self.holders.iter().map(|(r, i)| (r.clone(), *i)).collect();
        held.sort_unstable();
        for (r, i) in held {
            self.set(
                i,
                CellState::Unassigned,
                None,
                by,
                now_ms,
                ChangeReason::StandDown,
            );
            self.tx.revoked.push(Revoked {
                responder: r,
                cell: self.cells[i].id,
                reason: ChangeReason::StandDown,
            });
        }
        if !self.waiting.is_empty() {
            self.waiting_mut().clear();
        }
        let offline: Vec<Arc<str>> = self.offline.keys().cloned().collect();
        for r in offline {
            self.offline_remove(&r);
        }
        self.closed = true;
        self.tx.closed = true;
    }

    fn idx(&self, cell: CellIndex) -> Result<usize, GridError> {
        self.index
            .get(&cell)
            .copied()
            .ok_or_else(|| GridError::UnknownCell(cell.to_string()))
    }

    // ----- the operations -------------------------------------------------

    /// An accepting responder asks for a cell. Returns its current
    /// assignment: the cell it already holds (nothing changes), or the best
    /// unassigned cell by the score of [`super::select`] for a responder at
    /// `at` (its last known position, if any). When every cell is taken the
    /// responder waits in line and gets the next cell that returns to the
    /// pool (it then appears in some later `Effects::assigned`); when the
    /// search is closed it gets nothing. A new assignment is also listed in
    /// the returned `Effects::assigned`.
    pub fn assign_next(
        &mut self,
        responder: &Arc<str>,
        at: Option<LatLng>,
        now_ms: u64,
    ) -> Result<(Option<Assignment>, Effects), GridError> {
        if let Some(&i) = self.holders.get(responder) {
            return Ok((Some(self.assignment_at(responder, i)), Effects::default()));
        }
        if self.closed {
            return Ok((None, Effects::default()));
        }
        let (held, effects) = self.run(|g| {
            if g.offline.contains_key(responder) {
                g.offline_remove(responder);
            }
            g.assign_or_wait(responder, at, now_ms);
            Ok(g.holders.get(responder).copied())
        })?;
        Ok((held.map(|i| self.assignment_at(responder, i)), effects))
    }

    /// A responder reports on a cell.
    ///
    /// - `searching`: only the holder, from `assigned` (again while
    ///   `searching` is a no-op). Stops the start timer.
    /// - `cleared`: only the holder, from `assigned` or `searching` (a small
    ///   cell may be cleared without a `searching` first). The responder
    ///   keeps its name on the cell and is at once given its next cell, the
    ///   best one as seen from the cleared cell's centre (or waits in line).
    ///   Repeating it is a no-op.
    /// - `found`: from the holder of that cell, or from any responder who
    ///   holds or waits for a cell of this grid (a searcher may find the
    ///   person outside its own cell), on any cell of the grid, excluded ones
    ///   included. The cell becomes `found`, every holder is stood down
    ///   (`revoked`, reason `stand_down`), the line is emptied, the grid
    ///   closes and `Effects::found` is set.
    pub fn report(
        &mut self,
        responder: &Arc<str>,
        cell: CellIndex,
        report: CellReport,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        let i = self.idx(cell)?;
        let c = &self.cells[i];
        let holds = self.holders.get(responder) == Some(&i);
        let mine = c.assignee.as_deref() == Some(responder.as_ref());
        let bad = |from: CellState, to: CellState| GridError::BadTransition {
            cell: cell.to_string(),
            from,
            to,
        };
        match report {
            CellReport::Searching => {
                if holds && c.state == CellState::Searching {
                    return Ok(Effects::default());
                }
                if self.closed {
                    return Err(GridError::Closed);
                }
                if !holds {
                    return Err(if mine {
                        bad(c.state, CellState::Searching)
                    } else {
                        GridError::NotAssignee(cell.to_string())
                    });
                }
                self.run(|g| {
                    g.set(
                        i,
                        CellState::Searching,
                        Some(responder.clone()),
                        responder,
                        now_ms,
                        ChangeReason::Started,
                    );
                    Ok(())
                })
                .map(|(_, e)| e)
            }
            CellReport::Cleared => {
                if mine && c.state == CellState::Cleared {
                    return Ok(Effects::default());
                }
                if self.closed {
                    return Err(GridError::Closed);
                }
                if !holds {
                    return Err(if mine {
                        bad(c.state, CellState::Cleared)
                    } else {
                        GridError::NotAssignee(cell.to_string())
                    });
                }
                let from = c.centre;
                self.run(|g| {
                    g.set(
                        i,
                        CellState::Cleared,
                        Some(responder.clone()),
                        responder,
                        now_ms,
                        ChangeReason::Cleared,
                    );
                    g.assign_or_wait(responder, Some(from), now_ms);
                    Ok(())
                })
                .map(|(_, e)| e)
            }
            CellReport::Found => {
                if mine && c.state == CellState::Found {
                    return Ok(Effects::default());
                }
                if self.closed {
                    return Err(GridError::Closed);
                }
                let taking_part =
                    holds || self.holders.contains_key(responder) || self.is_waiting(responder);
                if !taking_part {
                    return Err(GridError::NotAssignee(cell.to_string()));
                }
                self.run(|g| {
                    if let Some(&j) = g.holders.get(responder)
                        && j != i
                    {
                        g.set(
                            j,
                            CellState::Unassigned,
                            None,
                            responder,
                            now_ms,
                            ChangeReason::StandDown,
                        );
                    }
                    let other = g.cells[i]
                        .assignee
                        .clone()
                        .filter(|a| g.cells[i].state.is_active() && a != responder);
                    g.set(
                        i,
                        CellState::Found,
                        Some(responder.clone()),
                        responder,
                        now_ms,
                        ChangeReason::Found,
                    );
                    if let Some(a) = other {
                        g.tx.revoked.push(Revoked {
                            responder: a,
                            cell,
                            reason: ChangeReason::StandDown,
                        });
                    }
                    g.tx.found = Some(Found {
                        cell,
                        by: responder.clone(),
                        at: now_ms,
                    });
                    g.stand_down_all(responder, now_ms);
                    Ok(())
                })
                .map(|(_, e)| e)
            }
        }
    }

    /// The responder gives up its cell (declined, left) or loses it
    /// (disconnected past grace, start timeout): the cell returns to the
    /// pool and goes to the first responder in line; the responder leaves
    /// the line. Stamped with the responder for `declined`/`left`, `system`
    /// otherwise. A no-op for a responder holding nothing.
    pub fn release(&mut self, responder: &Arc<str>, reason: ReleaseReason, now_ms: u64) -> Effects {
        let holds = self.holders.contains_key(responder);
        if !holds && !self.is_waiting(responder) && !self.offline.contains_key(responder) {
            return Effects::default();
        }
        self.run(|g| {
            g.release_inner(responder, reason, now_ms);
            Ok(())
        })
        .map(|(_, e)| e)
        .unwrap_or_default()
    }

    /// Releases every cell assigned at least `start_timeout_ms` ago whose
    /// holder has not reported `searching` (reason `start_timeout`); the
    /// cells go to responders in line. The released responders do not get
    /// another cell.
    pub fn expire_unstarted(&mut self, now_ms: u64, start_timeout_ms: u64) -> Effects {
        self.tick(
            now_ms,
            Timeouts {
                start_ms: start_timeout_ms,
                grace_ms: u64::MAX,
            },
        )
    }

    /// Releases responders disconnected for at least `grace_ms` (see
    /// [`Self::disconnected`]): their cells and their places in line.
    pub fn expire_disconnected(&mut self, now_ms: u64, grace_ms: u64) -> Effects {
        self.tick(
            now_ms,
            Timeouts {
                start_ms: u64::MAX,
                grace_ms,
            },
        )
    }

    /// Both timers at once: what a periodic (or [`Self::next_deadline`]
    /// scheduled) timer calls.
    pub fn tick(&mut self, now_ms: u64, t: Timeouts) -> Effects {
        let mut due: Vec<(u64, Arc<str>, ReleaseReason)> = Vec::new();
        for (r, &i) in &self.holders {
            let c = &self.cells[i];
            if c.state == CellState::Assigned
                && let Some(at) = c.assigned_at
                && now_ms.saturating_sub(at) >= t.start_ms
            {
                due.push((at, r.clone(), ReleaseReason::StartTimeout));
            }
        }
        for (r, &at) in &self.offline {
            if now_ms.saturating_sub(at) >= t.grace_ms && !due.iter().any(|(_, d, _)| d == r) {
                due.push((at, r.clone(), ReleaseReason::Disconnected));
            }
        }
        if due.is_empty() {
            return Effects::default();
        }
        due.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        self.run(|g| {
            for (_, r, reason) in &due {
                g.release_inner(r, *reason, now_ms);
            }
            Ok(())
        })
        .map(|(_, e)| e)
        .unwrap_or_default()
    }

    /// When [`Self::tick`] next has something to do, if ever.
    pub fn next_deadline(&self, t: Timeouts) -> Option<u64> {
        let starts = self.holders.values().filter_map(|&i| {
            let c = &self.cells[i];
            (c.state == CellState::Assigned)
                .then_some(c.assigned_at)
                .flatten()
                .map(|at| at.saturating_add(t.start_ms))
        });
        let graces = self
            .offline
            .values()
            .map(|at| at.saturating_add(t.grace_ms));
        starts.chain(graces).min()
    }

    /// The responder's connection dropped: its cell (or place in line) is
    /// kept until [`Self::expire_disconnected`] passes the grace period.
    /// Only responders taking part are tracked. Not part of the durable
    /// record.
    pub fn disconnected(&mut self, responder: &Arc<str>, now_ms: u64) {
        if self.holders.contains_key(responder) || self.is_waiting(responder) {
            self.offline.entry(responder.clone()).or_insert(now_ms);
        }
    }

    /// The responder is back: the grace timer stops.
    pub fn connected(&mut self, responder: &str) {
        self.offline.remove(responder);
    }

    /// After a restart no responder is connected: start every grace timer.
    pub fn mark_all_disconnected(&mut self, now_ms: u64) {
        let people: Vec<Arc<str>> = self.holders.keys().cloned().collect();
        for r in people {
            self.offline.entry(r).or_insert(now_ms);
        }
    }

    /// A coordinator assigns `cell` to `responder` by hand. If someone else
    /// holds the cell, that responder loses it (`revoked`, reason
    /// `reassigned`) and is given its next cell as seen from this cell. If
    /// `responder` held another cell, that cell returns to the pool. A
    /// cleared cell may be assigned again (to be searched again); excluded
    /// and found cells may not. Assigning a responder the cell it holds is a
    /// no-op.
    pub fn manual_assign(
        &mut self,
        cell: CellIndex,
        responder: &Arc<str>,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<(Assignment, Effects), GridError> {
        let i = self.idx(cell)?;
        if self.closed {
            return Err(GridError::Closed);
        }
        match self.cells[i].state {
            CellState::Excluded => return Err(GridError::Excluded(cell.to_string())),
            CellState::Found => {
                return Err(GridError::BadTransition {
                    cell: cell.to_string(),
                    from: CellState::Found,
                    to: CellState::Assigned,
                });
            }
            _ => {}
        }
        if self.holders.get(responder) == Some(&i) {
            return Ok((self.assignment_at(responder, i), Effects::default()));
        }
        let ((), effects) = self.run(|g| {
            if let Some(&j) = g.holders.get(responder) {
                g.set(
                    j,
                    CellState::Unassigned,
                    None,
                    by,
                    now_ms,
                    ChangeReason::Reassigned,
                );
            }
            let c = &g.cells[i];
            let displaced = c.assignee.clone().filter(|_| c.state.is_active());
            let from = c.centre;
            g.assign_to(i, responder, by, now_ms, ChangeReason::ManualAssigned);
            if let Some(a) = displaced {
                g.tx.revoked.push(Revoked {
                    responder: a.clone(),
                    cell,
                    reason: ChangeReason::Reassigned,
                });
                g.assign_or_wait(&a, Some(from), now_ms);
            }
            g.serve_waiting(now_ms);
            Ok(())
        })?;
        Ok((self.assignment_at(responder, i), effects))
    }

    /// A coordinator returns a cell to the pool: an active cell's holder
    /// loses it (`revoked`, reason `unassigned`) and is *not* given another
    /// (the coordinator took it off the search; it can ask again or be
    /// assigned by hand); a cleared cell is reopened to be searched again.
    /// The cell goes to the first responder in line. Excluded and found cells
    /// cannot be unassigned (use [`Self::include`] / [`Self::reopen`]).
    pub fn unassign(
        &mut self,
        cell: CellIndex,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        let i = self.idx(cell)?;
        let c = &self.cells[i];
        match c.state {
            CellState::Unassigned => Ok(Effects::default()),
            CellState::Excluded | CellState::Found => Err(GridError::BadTransition {
                cell: cell.to_string(),
                from: c.state,
                to: CellState::Unassigned,
            }),
            _ => self
                .run(|g| {
                    let c = &g.cells[i];
                    let holder = c.assignee.clone().filter(|_| c.state.is_active());
                    g.set(
                        i,
                        CellState::Unassigned,
                        None,
                        by,
                        now_ms,
                        ChangeReason::Unassigned,
                    );
                    if let Some(r) = holder {
                        g.tx.revoked.push(Revoked {
                            responder: r,
                            cell,
                            reason: ChangeReason::Unassigned,
                        });
                    }
                    g.serve_waiting(now_ms);
                    Ok(())
                })
                .map(|(_, e)| e),
        }
    }

    /// Police or coordinators take cells out of the search (a lake). Holders
    /// lose them (`revoked`, reason `excluded`) and get their next cell.
    /// Weights renormalize over the remaining cells. Found cells cannot be
    /// excluded; unknown cells fail the whole call.
    pub fn exclude(
        &mut self,
        cells: &[CellIndex],
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        let idx = self.indices(cells)?;
        for &i in &idx {
            if self.cells[i].state == CellState::Found {
                return Err(GridError::BadTransition {
                    cell: self.cells[i].id.to_string(),
                    from: CellState::Found,
                    to: CellState::Excluded,
                });
            }
        }
        if idx
            .iter()
            .all(|&i| self.cells[i].state == CellState::Excluded)
        {
            return Ok(Effects::default());
        }
        self.run(|g| {
            let mut displaced = Vec::new();
            for &i in &idx {
                let c = &g.cells[i];
                if c.state == CellState::Excluded {
                    continue;
                }
                if c.state.is_active()
                    && let Some(a) = c.assignee.clone()
                {
                    displaced.push((a.clone(), c.centre));
                    g.tx.revoked.push(Revoked {
                        responder: a,
                        cell: c.id,
                        reason: ChangeReason::Excluded,
                    });
                }
                g.set(
                    i,
                    CellState::Excluded,
                    None,
                    by,
                    now_ms,
                    ChangeReason::Excluded,
                );
            }
            for (a, from) in displaced {
                g.assign_or_wait(&a, Some(from), now_ms);
            }
            Ok(())
        })
        .map(|(_, e)| e)
    }

    /// Undoes [`Self::exclude`]: the cells return to the pool (and to
    /// responders in line). Cells not excluded are left alone.
    pub fn include(
        &mut self,
        cells: &[CellIndex],
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        let idx = self.indices(cells)?;
        if !idx
            .iter()
            .any(|&i| self.cells[i].state == CellState::Excluded)
        {
            return Ok(Effects::default());
        }
        self.run(|g| {
            for &i in &idx {
                if g.cells[i].state == CellState::Excluded {
                    g.set(
                        i,
                        CellState::Unassigned,
                        None,
                        by,
                        now_ms,
                        ChangeReason::Included,
                    );
                }
            }
            g.serve_waiting(now_ms);
            Ok(())
        })
        .map(|(_, e)| e)
    }

    /// Police or coordinators raise (`factor > 1`: the canal) or lower
    /// (`factor < 1`) cells: the ring-table prior is multiplied by `factor`,
    /// which *replaces* any earlier factor (so a repeated request is
    /// harmless; 1 restores the prior). `factor` must lie in
    /// [`MIN_FACTOR`]..=[`MAX_FACTOR`]; to remove a cell, exclude it.
    /// Weights renormalize to sum 1.
    pub fn adjust(
        &mut self,
        cells: &[CellIndex],
        factor: f64,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        if !factor.is_finite() || !(MIN_FACTOR..=MAX_FACTOR).contains(&factor) {
            return Err(GridError::BadFactor(factor));
        }
        let idx = self.indices(cells)?;
        if idx.iter().all(|&i| self.cells[i].factor == factor) {
            return Ok(Effects::default());
        }
        self.run(|g| {
            for &i in &idx {
                if g.cells[i].factor != factor {
                    g.touch(i);
                    let c = &mut g.cells[i];
                    c.factor = factor;
                    c.changed_by = by.clone();
                    c.changed_at = now_ms;
                    c.reason = ChangeReason::Adjusted;
                }
            }
            g.reweight();
            g.tx.reweighted = true;
            Ok(())
        })
        .map(|(_, e)| e)
    }

    /// The alert's radius grew: adds the newly covered cells (unassigned,
    /// weighted from the rings, stamped `added`) and keeps every existing
    /// cell and its state. A radius not larger than the grid's is a no-op:
    /// cells already worked are never dropped. New cells go to responders in
    /// line. Fails (changing nothing) if the grid would exceed `max_cells`.
    pub fn widen(
        &mut self,
        radius_m: f64,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<Effects, GridError> {
        if !radius_m.is_finite() || radius_m <= 0.0 {
            return Err(GridError::BadRadius(radius_m));
        }
        if radius_m <= self.radius_m {
            return Ok(Effects::default());
        }
        let mut fresh: Vec<CellIndex> = geo::cover(self.centre, radius_m, self.res)
            .map_err(geo_err)?
            .into_iter()
            .filter(|c| !self.index.contains_key(c))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if self.cells.len() + fresh.len() > self.max_cells {
            return Err(GridError::TooLarge {
                cells: self.cells.len() + fresh.len(),
                max: self.max_cells,
                res: u8::from(self.res),
            });
        }
        self.run(|g| {
            for id in fresh {
                let i = g.push_cell(id, by, now_ms);
                g.touch(i);
            }
            g.radius_m = radius_m;
            g.reweight();
            g.tx.reweighted = true;
            g.serve_waiting(now_ms);
            Ok(())
        })
        .map(|(_, e)| e)
    }

    /// The search ends without a find here (alert cancelled or resolved):
    /// every holder is stood down, the line emptied, and no cell is assigned
    /// any more.
    pub fn close(&mut self, by: &Arc<str>, now_ms: u64) -> Effects {
        if self.closed {
            return Effects::default();
        }
        self.run(|g| {
            g.stand_down_all(by, now_ms);
            Ok(())
        })
        .map(|(_, e)| e)
        .unwrap_or_default()
    }

    /// The `found` was a mistake (or the alert is reactivated): the grid
    /// assigns again, and found cells return to the pool (reason
    /// `reopened`) to be searched again. Responders must ask again
    /// (re-accept → [`Self::assign_next`]).
    pub fn reopen(&mut self, by: &Arc<str>, now_ms: u64) -> Effects {
        if !self.closed {
            return Effects::default();
        }
        self.run(|g| {
            g.closed = false;
            for i in 0..g.cells.len() {
                if g.cells[i].state == CellState::Found {
                    g.set(
                        i,
                        CellState::Unassigned,
                        None,
                        by,
                        now_ms,
                        ChangeReason::Reopened,
                    );
                }
            }
            Ok(())
        })
        .map(|(_, e)| e)
        .unwrap_or_default()
    }

    /// Rebuilds cell states from the durable record (the latest record of
    /// each cell, in any order; later records of the same cell win). Cells
    /// recorded but not in the grid are added (the grid may have been built
    /// with a smaller radius than it once had); records of another
    /// resolution are skipped. Inconsistent records are repaired: an active
    /// cell without an assignee becomes unassigned, and a responder recorded
    /// as holding two cells keeps the most recently changed one. The grid is
    /// closed if a cell is found. Nobody is in line afterwards. Returns the
    /// number of records skipped.
    pub fn restore(&mut self, records: impl IntoIterator<Item = CellRecord>) -> usize {
        let mut skipped = 0;
        for r in records {
            if r.cell.resolution() != self.res {
                skipped += 1;
                continue;
            }
            let i = match self.index.get(&r.cell) {
                Some(&i) => i,
                None => self.push_cell(r.cell, &r.changed_by, r.changed_at),
            };
            let c = &mut self.cells[i];
            c.state = r.state;
            c.assignee = match r.state {
                CellState::Unassigned | CellState::Excluded => None,
                _ => r.assignee,
            };
            if c.state.is_active() && c.assignee.is_none() {
                c.state = CellState::Unassigned;
            }
            c.assigned_at = if c.state.is_active() {
                r.assigned_at.or(Some(r.changed_at))
            } else {
                None
            };
            c.factor = if r.factor.is_finite() && (MIN_FACTOR..=MAX_FACTOR).contains(&r.factor) {
                r.factor
            } else {
                1.0
            };
            c.changed_by = r.changed_by;
            c.changed_at = r.changed_at;
            c.reason = r.reason;
        }
        // One active cell per responder: keep the latest.
        let mut keep: HashMap<Arc<str>, usize> = HashMap::new();
        let mut drop = Vec::new();
        for (i, c) in self.cells.iter().enumerate() {
            if !c.state.is_active() {
                continue;
            }
            let Some(a) = &c.assignee else { continue };
            match keep.get(a) {
                Some(&j)
                    if (self.cells[j].changed_at, self.cells[j].id) >= (c.changed_at, c.id) =>
                {
                    drop.push(i);
                }
                Some(&j) => {
                    drop.push(j);
                    keep.insert(a.clone(), i);
                }
                None => {
                    keep.insert(a.clone(), i);
                }
            }
        }
        for i in drop {
            let c = &mut self.cells[i];
            c.state = CellState::Unassigned;
            c.assignee = None;
            c.assigned_at = None;
            c.changed_by = SYSTEM.into();
            c.reason = ChangeReason::Restored;
        }
        self.closed = self.cells.iter().any(|c| c.state == CellState::Found);
        self.waiting.clear();
        self.offline.clear();
        self.version += 1;
        if self.closed {
            for c in &mut self.cells {
                if c.state.is_active() {
                    c.state = CellState::Unassigned;
                    c.assignee = None;
                    c.assigned_at = None;
                    c.reason = ChangeReason::StandDown;
                }
            }
        }
        self.rebuild_derived();
        skipped
    }

    fn indices(&self, cells: &[CellIndex]) -> Result<Vec<usize>, GridError> {
        let mut idx: Vec<usize> = cells
            .iter()
            .map(|c| self.idx(*c))
            .collect::<Result<_, _>>()?;
        idx.sort_unstable();
        idx.dedup();
        Ok(idx)
    }

    // ----- reading --------------------------------------------------------

    fn weight_at(&self, i: usize) -> f64 {
        if self.total_raw > 0.0 {
            self.cells[i].raw() / self.total_raw
        } else {
            0.0
        }
    }

    fn record_at(&self, i: usize) -> CellRecord {
        let c = &self.cells[i];
        CellRecord {
            cell: c.id,
            state: c.state,
            assignee: c.assignee.clone(),
            factor: c.factor,
            weight: self.weight_at(i),
            changed_by: c.changed_by.clone(),
            changed_at: c.changed_at,
            reason: c.reason,
            assigned_at: c.assigned_at,
        }
    }

    fn assignment_at(&self, responder: &Arc<str>, i: usize) -> Assignment {
        let c = &self.cells[i];
        Assignment {
            responder: responder.clone(),
            cell: c.id,
            boundary: geo::boundary(c.id),
            center: c.centre,
            priority: c.rank,
            weight: self.weight_at(i),
        }
    }

    pub(crate) fn cells_raw(&self) -> &[Cell] {
        &self.cells
    }

    pub(crate) fn weight_of_index(&self, i: usize) -> f64 {
        self.weight_at(i)
    }

    pub fn centre(&self) -> LatLng {
        self.centre
    }

    /// The largest radius the grid has been built or widened to.
    pub fn radius_m(&self) -> f64 {
        self.radius_m
    }

    pub fn resolution(&self) -> Resolution {
        self.res
    }

    pub fn rings(&self) -> &Rings {
        &self.rings
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn contains(&self, cell: CellIndex) -> bool {
        self.index.contains_key(&cell)
    }

    /// No more assignments: found, or closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The cell a responder holds (assigned or searching).
    pub fn cell_of(&self, responder: &str) -> Option<CellIndex> {
        self.holders.get(responder).map(|&i| self.cells[i].id)
    }

    /// The responder's current assignment (to resend after a reconnect).
    pub fn current_assignment(&self, responder: &Arc<str>) -> Option<Assignment> {
        self.holders
            .get(responder)
            .map(|&i| self.assignment_at(responder, i))
    }

    /// The responder holding `cell`, if it is active.
    pub fn holder(&self, cell: CellIndex) -> Option<&Arc<str>> {
        let c = &self.cells[*self.index.get(&cell)?];
        c.assignee.as_ref().filter(|_| c.state.is_active())
    }

    pub fn is_waiting(&self, responder: &str) -> bool {
        self.waiting
            .iter()
            .any(|w| w.responder.as_ref() == responder)
    }

    /// Responders in line for a cell, first first.
    pub fn waiting(&self) -> impl Iterator<Item = &Arc<str>> {
        self.waiting.iter().map(|w| &w.responder)
    }

    /// How many responders hold a cell.
    pub fn holders_len(&self) -> usize {
        self.holders.len()
    }

    pub fn counts(&self) -> StateCounts {
        StateCounts::from_slots(self.counts)
    }

    /// The normalized weight of a cell (0 when excluded), if it is in the grid.
    pub fn weight(&self, cell: CellIndex) -> Option<f64> {
        self.index.get(&cell).map(|&i| self.weight_at(i))
    }

    pub fn record(&self, cell: CellIndex) -> Option<CellRecord> {
        self.index.get(&cell).map(|&i| self.record_at(i))
    }

    /// Every cell's record, in grid order.
    pub fn records(&self) -> Vec<CellRecord> {
        (0..self.cells.len()).map(|i| self.record_at(i)).collect()
    }

    /// Coverage by count: (cleared + found) / (cells − excluded); 0 when no
    /// cell is searchable.
    pub fn covered_ratio(&self) -> f64 {
        let c = self.counts();
        let denom = c.total() - c.excluded;
        if denom == 0 {
            0.0
        } else {
            (c.cleared + c.found) as f64 / denom as f64
        }
    }

    /// Coverage by probability: the summed weight of cleared and found cells
    /// (the weights of non-excluded cells sum to 1).
    pub fn covered_ratio_weighted(&self) -> f64 {
        if self.total_raw <= 0.0 {
            return 0.0;
        }
        let covered: f64 = self
            .cells
            .iter()
            .filter(|c| c.state.is_covered())
            .map(Cell::raw)
            .sum();
        (covered / self.total_raw).clamp(0.0, 1.0)
    }

    /// The `coverage` body for a mutation's changes.
    pub fn coverage(&self, effects: &Effects) -> Coverage {
        self.coverage_of(effects.views(), effects.reweighted)
    }

    /// The `coverage` body listing every cell (for a new watcher).
    pub fn coverage_all(&self) -> Coverage {
        let cells = (0..self.cells.len())
            .map(|i| CellView::from(&self.record_at(i)))
            .collect();
        self.coverage_of(cells, true)
    }

    fn coverage_of(&self, cells: Vec<CellView>, reweighted: bool) -> Coverage {
        Coverage {
            cells,
            covered_ratio: self.covered_ratio(),
            covered_ratio_weighted: self.covered_ratio_weighted(),
            counts: self.counts(),
            reweighted,
        }
    }

    /// The cell [`Self::assign_next`] would give a responder at `at`, without
    /// assigning it.
    pub fn peek_best(&self, at: Option<LatLng>) -> Option<CellIndex> {
        self.buckets
            .choose(&self.cells, at, self.distance_scale_m)
            .map(|i| self.cells[i].id)
    }

    /// The same choice by evaluating every cell: the reference for tests and
    /// the baseline for benches.
    pub fn peek_best_by_scan(&self, at: Option<LatLng>) -> Option<CellIndex> {
        select::choose_by_scan(&self.cells, at, self.distance_scale_m).map(|i| self.cells[i].id)
    }

    /// Everything observable about the grid, in a canonical order (tests
    /// compare it before a mutation and after its undo).
    #[cfg(test)]
    pub(crate) fn fingerprint(&self) -> String {
        let cells: Vec<String> = self
            .cells
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} {:?} f={} p={} at={:?} by={} t={} {:?} r={}",
                    c.id,
                    c.state,
                    c.assignee,
                    c.factor,
                    c.prior,
                    c.assigned_at,
                    c.changed_by,
                    c.changed_at,
                    c.reason,
                    c.rank
                )
            })
            .collect();
        let mut holders: Vec<_> = self.holders.iter().collect();
        holders.sort();
        let mut offline: Vec<_> = self.offline.iter().collect();
        offline.sort();
        format!(
            "{cells:#?}\nholders {holders:?}\nwaiting {:?}\noffline {offline:?}\nclosed {} radius {} total {} counts {:?} version {}",
            self.waiting, self.closed, self.radius_m, self.total_raw, self.counts, self.version
        )
    }

    /// Checks every invariant of the module documentation (O(cells)).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = [0; 6];
        let mut active = 0;
        for (i, c) in self.cells.iter().enumerate() {
            counts[c.state.slot()] += 1;
            if self.index.get(&c.id) != Some(&i) {
                return Err(format!("cell {} is not indexed at {i}", c.id));
            }
            match (c.state.is_active(), &c.assignee) {
                (true, None) => return Err(format!("{} is {} without holder", c.id, c.state)),
                (true, Some(a)) => {
                    active += 1;
                    if self.holders.get(a) != Some(&i) {
                        return Err(format!("{} is held by {a} but the index disagrees", c.id));
                    }
                    if c.assigned_at.is_none() {
                        return Err(format!("{} is active without assigned_at", c.id));
                    }
                }
                (false, Some(a))
                    if matches!(c.state, CellState::Unassigned | CellState::Excluded) =>
                {
                    return Err(format!("{} is {} but names {a}", c.id, c.state));
                }
                _ => {}
            }
        }
        if active != self.holders.len() {
            return Err(format!(
                "{active} active cells but {} holders: someone holds two or none",
                self.holders.len()
            ));
        }
        if counts != self.counts {
            return Err(format!("counts {:?} but cells say {counts:?}", self.counts));
        }
        if self.index.len() != self.cells.len() {
            return Err("index and cells differ in length".into());
        }
        let mut seen = HashSet::new();
        for w in &self.waiting {
            if !seen.insert(&w.responder) {
                return Err(format!("{} waits twice", w.responder));
            }
            if self.holders.contains_key(&w.responder) {
                return Err(format!("{} waits while holding a cell", w.responder));
            }
        }
        if !self.waiting.is_empty() && self.counts[CellState::Unassigned.slot()] > 0 {
            return Err("responders wait while cells are unassigned".into());
        }
        if self.closed && (!self.holders.is_empty() || !self.waiting.is_empty()) {
            return Err("closed grid still has holders or a line".into());
        }
        for r in self.offline.keys() {
            if !self.holders.contains_key(r) && !seen.contains(r) {
                return Err(format!("{r} is tracked offline but takes no part"));
            }
        }
        let sum: f64 = (0..self.cells.len()).map(|i| self.weight_at(i)).sum();
        if self.total_raw > 0.0 && (sum - 1.0).abs() > 1e-9 {
            return Err(format!("weights sum to {sum}"));
        }
        self.buckets.check(&self.cells)
    }
}
