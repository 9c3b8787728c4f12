//! The search grid of a missing-person alert: the pure core (no I/O, no
//! locks, no clock) that the alert service holds behind its own mutex.
//!
//! Issuing an alert of a searchable kind derives its cells: the H3 cells of
//! `grid.resolution` (independent of the presence resolution) whose centres
//! lie in the search circle. Each cell gets a probability weight from the
//! lost-person distance rings of the subject's category ([`rings`]),
//! multiplied by manual factors, renormalized to sum 1 over the cells not
//! excluded. Accepting responders are assigned one cell each, the best by a
//! documented score ([`select`]), never two responders to one cell; cells
//! return to the pool on decline, disconnect past grace or start timeout, and
//! coverage is counted by cells and by probability. See [`SearchGrid`].
//!
//! - [`rings`]: the ring table and the distance → probability model.
//! - [`grid`]: [`SearchGrid`], its operations, transactions and invariants.
//! - [`select`]: the assignment score and the index that makes it fast.
//! - [`wire`]: states, durable records, `coverage` / `assignment` bodies, [`Effects`].
//! - [`geojson`]: the RFC 7946 FeatureCollection.
//! - [`GridSettings`]: the `[grid]` config section.
//!
//! # Integration (what the alert service calls)
//!
//! - start-up: [`GridSettings::load_rings`] once (log [`RingTable::warnings`]);
//!   per searchable alert rebuild with [`GridSettings::build`], then
//!   [`SearchGrid::restore`] the latest record of each cell and
//!   [`SearchGrid::mark_all_disconnected`].
//! - issue (kind in `searchable_kinds`): [`GridSettings::build`] with the
//!   alert's centre, radius and `subject`; an unknown subject is a 400.
//! - radius update: [`SearchGrid::widen`]. Cancel / resolve: [`SearchGrid::close`].
//! - ack `accepted`: [`SearchGrid::assign_next`] with the responder's last
//!   known position (e.g. the centre of its presence cell); `declined`:
//!   [`SearchGrid::release`] with [`ReleaseReason::Declined`].
//! - `cell` message: [`SearchGrid::report`]; `Effects::found` set → the
//!   alert's found state, tell police and coordinators, `alert_update`
//!   stand-down to every searcher.
//! - session closed / reopened: [`SearchGrid::disconnected`] /
//!   [`SearchGrid::connected`] (and resend [`SearchGrid::current_assignment`]).
//! - timer at [`SearchGrid::next_deadline`]: [`SearchGrid::tick`].
//! - coordinators: [`SearchGrid::manual_assign`], [`SearchGrid::unassign`],
//!   [`SearchGrid::adjust`], [`SearchGrid::exclude`], [`SearchGrid::include`].
//!
//! Every mutation returns [`Effects`]: persist `changed` (upsert by alert
//! and cell, append to the history), send [`SearchGrid::coverage`] to
//! watchers, each `assigned` to its responder, tell each `revoked`
//! responder; if the write fails, [`SearchGrid::undo`] with `undo` — while
//! still holding the lock or sequencer under which the mutation ran, since
//! an undo applies only to the latest mutation.
//!
//! Resolution 9 by default: a cell is about 0.1 km² (≈ 330 m across, edges
//! ≈ 170–190 m around Jiaxing), a street block or two — what one searcher on
//! foot can check in well under an hour. A 2 km circle is about 185 cells.

pub mod geojson;
#[allow(clippy::module_inception)]
pub mod grid;
pub mod rings;
pub mod select;
pub mod wire;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::LatLng;
use crate::protocol::{ApiError, ErrorCode};

pub use grid::{GridSpec, SYSTEM, SearchGrid, Timeouts, Undo};
pub use rings::{RingTable, Rings};
pub use wire::{
    Assignment, CellRecord, CellReport, CellState, CellView, ChangeReason, Coverage, Effects,
    Found, ReleaseReason, Revoked, StateCounts,
};

/// Smallest manual factor ([`SearchGrid::adjust`]).
pub const MIN_FACTOR: f64 = 0.01;
/// Largest manual factor.
pub const MAX_FACTOR: f64 = 100.0;

/// Why a grid operation was refused. Messages are safe to show to clients
/// (they name only cells and values the client sent); `Rings` is a
/// configuration error for operators.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GridError {
    #[error("cell {0} is not part of this alert's search grid")]
    UnknownCell(String),
    #[error("cell {0} is not assigned to you")]
    NotAssignee(String),
    #[error("cell {cell} is {from}; it cannot become {to}")]
    BadTransition {
        cell: String,
        from: CellState,
        to: CellState,
    },
    #[error("cell {0} is excluded from the search")]
    Excluded(String),
    #[error("the search has ended")]
    Closed,
    #[error("unknown subject category '{got}' (known: {known})")]
    UnknownCategory { got: String, known: String },
    #[error("factor must be a number between {MIN_FACTOR} and {MAX_FACTOR}, got {0}")]
    BadFactor(f64),
    #[error(
        "the search circle covers {cells} cells at resolution {res}, more than the {max} a grid may have"
    )]
    TooLarge { cells: usize, max: usize, res: u8 },
    #[error("search radius must be a positive number of metres, got {0}")]
    BadRadius(f64),
    #[error("{0}")]
    Geo(String),
    #[error("lost-person ring table: {0}")]
    Rings(String),
}

impl GridError {
    /// The wire error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            GridError::UnknownCell(_) => ErrorCode::NotFound,
            GridError::NotAssignee(_) => ErrorCode::Forbidden,
            GridError::BadTransition { .. } | GridError::Excluded(_) | GridError::Closed => {
                ErrorCode::Conflict
            }
            GridError::UnknownCategory { .. }
            | GridError::BadFactor(_)
            | GridError::TooLarge { .. }
            | GridError::BadRadius(_)
            | GridError::Geo(_) => ErrorCode::BadRequest,
            GridError::Rings(_) => ErrorCode::Internal,
        }
    }
}

impl From<GridError> for ApiError {
    fn from(e: GridError) -> Self {
        match e.code() {
            ErrorCode::Internal => ApiError::internal(),
            code => ApiError::new(code, e.to_string()),
        }
    }
}

/// The `[grid]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridSettings {
    /// H3 resolution of search cells (9: ≈ 0.1 km², one searcher's unit).
    pub resolution: u8,
    /// Alert kinds that get a search grid.
    pub searchable_kinds: Vec<String>,
    /// Seconds an assigned responder has to report `searching`.
    pub start_timeout_s: u64,
    /// Seconds a disconnected responder keeps its cell.
    pub disconnect_grace_s: u64,
    /// `D0` of the assignment score, metres.
    pub distance_scale_m: f64,
    /// The ring table; empty = the copy compiled into the binary.
    pub rings_file: PathBuf,
    /// Largest grid an alert may have (cells).
    pub max_cells: usize,
}

impl Default for GridSettings {
    fn default() -> Self {
        Self {
            resolution: 9,
            searchable_kinds: vec!["missing_person".to_string()],
            start_timeout_s: 300,
            disconnect_grace_s: 120,
            distance_scale_m: 500.0,
            rings_file: PathBuf::new(),
            max_cells: 20_000,
        }
    }
}

/// A setting that is wrong and why, for `ConfigError::Invalid`.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingProblem {
    pub setting: &'static str,
    pub problem: String,
}

impl GridSettings {
    pub fn validate(&self) -> Result<(), SettingProblem> {
        let bad = |setting: &'static str, problem: &str| {
            Err(SettingProblem {
                setting,
                problem: problem.to_string(),
            })
        };
        if self.resolution > 15 {
            return bad("grid.resolution", "must be 0..=15");
        }
        if self.searchable_kinds.iter().any(|k| {
            k.is_empty() || k.len() > 40 || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        }) {
            return bad(
                "grid.searchable_kinds",
                "must be alert kinds of 1-40 characters of a-z and _",
            );
        }
        if self.start_timeout_s == 0 || self.start_timeout_s > 86_400 {
            return bad("grid.start_timeout_s", "must be between 1 and 86400");
        }
        if self.disconnect_grace_s > 86_400 {
            return bad("grid.disconnect_grace_s", "must be at most 86400");
        }
        if !self.distance_scale_m.is_finite()
            || !(1.0..=1_000_000.0).contains(&self.distance_scale_m)
        {
            return bad("grid.distance_scale_m", "must be between 1 and 1000000");
        }
        if self.max_cells == 0 || self.max_cells > 1_000_000 {
            return bad("grid.max_cells", "must be between 1 and 1000000");
        }
        Ok(())
    }

    pub fn is_searchable(&self, kind: &str) -> bool {
        self.searchable_kinds.iter().any(|k| k == kind)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            start_ms: self.start_timeout_s.saturating_mul(1000),
            grace_ms: self.disconnect_grace_s.saturating_mul(1000),
        }
    }

    /// Loads the ring table named by `rings_file` (the built-in copy when empty).
    pub fn load_rings(&self) -> Result<RingTable, GridError> {
        if self.rings_file.as_os_str().is_empty() {
            RingTable::builtin()
        } else {
            RingTable::load(&self.rings_file)
        }
    }

    /// The spec of a grid for an alert centred at `centre`.
    pub fn spec(&self, centre: LatLng, radius_m: f64) -> Result<GridSpec, GridError> {
        Ok(GridSpec {
            centre,
            radius_m,
            resolution: crate::geo::resolution(self.resolution)
                .map_err(|e| GridError::Geo(e.to_string()))?,
            distance_scale_m: self.distance_scale_m,
            max_cells: self.max_cells,
        })
    }

    /// Builds the grid of a searchable alert: resolves the subject's category
    /// (`None` = the table's default) and covers the circle.
    pub fn build(
        &self,
        rings: &RingTable,
        centre: LatLng,
        radius_m: f64,
        subject: Option<&str>,
        by: &Arc<str>,
        now_ms: u64,
    ) -> Result<SearchGrid, GridError> {
        let category = rings.resolve(subject)?;
        SearchGrid::new(self.spec(centre, radius_m)?, category, by, now_ms)
    }
}
