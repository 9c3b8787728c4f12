//! The grid's serializable values: cell states and why they changed, the
//! durable per-cell record, the `coverage` delta, the `assignment` a
//! responder receives, and what a mutation did ([`Effects`]).
//!
//! Cells travel as H3 hex strings (`"89309aa71c3ffff"`), boundaries as
//! `[lat, lng]` pairs like every other coordinate pair of the wire contract;
//! only the GeoJSON export uses `[lng, lat]` (RFC 7946).

use std::fmt;
use std::sync::Arc;

use h3o::CellIndex;
use serde::{Deserialize, Serialize};

use crate::domain::LatLng;

/// Where a search cell is in its life. The transitions:
///
/// - `unassigned → assigned`: [`super::SearchGrid::assign_next`], automatic
///   assignment, or a coordinator ([`super::SearchGrid::manual_assign`]);
/// - `assigned → searching` (the holder starts), `assigned | searching →
///   cleared | found` (the holder reports);
/// - `assigned | searching → unassigned`: release (declined, disconnected
///   past grace, start timeout), a coordinator's unassign, stand-down;
/// - `cleared → assigned | unassigned`: a coordinator sends it to be searched again;
/// - any state but `found` `→ excluded`, and `excluded → unassigned` (include);
/// - any cell `→ found` when a searcher finds the person there; `found →
///   unassigned` only by reopening the search.
///
/// `assigned` and `searching` are *active*: the cell is held by exactly one
/// responder. `cleared` and `found` keep the responder who did it as
/// `assignee`, but nobody holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    Unassigned,
    Assigned,
    Searching,
    Cleared,
    Found,
    Excluded,
}

impl CellState {
    pub const ALL: [CellState; 6] = [
        CellState::Unassigned,
        CellState::Assigned,
        CellState::Searching,
        CellState::Cleared,
        CellState::Found,
        CellState::Excluded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Unassigned => "unassigned",
            CellState::Assigned => "assigned",
            CellState::Searching => "searching",
            CellState::Cleared => "cleared",
            CellState::Found => "found",
            CellState::Excluded => "excluded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Held by a responder.
    pub fn is_active(self) -> bool {
        matches!(self, CellState::Assigned | CellState::Searching)
    }

    /// Counts towards coverage.
    pub fn is_covered(self) -> bool {
        matches!(self, CellState::Cleared | CellState::Found)
    }

    pub(crate) fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CellState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a responder may report about its cell (the `cell` message's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellReport {
    Searching,
    Cleared,
    Found,
}

impl CellReport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "searching" => Some(CellReport::Searching),
            "cleared" => Some(CellReport::Cleared),
            "found" => Some(CellReport::Found),
            _ => None,
        }
    }

    pub fn state(self) -> CellState {
        match self {
            CellReport::Searching => CellState::Searching,
            CellReport::Cleared => CellState::Cleared,
            CellReport::Found => CellState::Found,
        }
    }
}

/// Why a responder gave up (or lost) its cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The responder declined after accepting (stamped with the responder).
    Declined,
    /// Disconnected for longer than the grace period (stamped `system`).
    Disconnected,
    /// Did not report `searching` within the start timeout (stamped `system`).
    StartTimeout,
    /// The responder left the search for another reason (stamped with the responder).
    Left,
}

/// Why a cell's record changed: kept on the durable record with who and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    /// Part of the grid since it was built or widened.
    Added,
    /// Given to a responder by [`super::SearchGrid::assign_next`] (or automatically).
    Assigned,
    /// Given to a responder by a coordinator.
    ManualAssigned,
    /// Its responder reported `searching`.
    Started,
    Cleared,
    Found,
    Declined,
    Disconnected,
    StartTimeout,
    Left,
    /// A coordinator took it from its responder (back to the pool).
    Unassigned,
    /// A coordinator gave it (or the responder's previous cell) to someone else.
    Reassigned,
    Excluded,
    Included,
    /// Its manual priority factor changed.
    Adjusted,
    /// The search ended (found elsewhere, or the alert closed): back to the pool.
    StandDown,
    /// The search was reopened after a `found` that was not.
    Reopened,
    /// Repaired while restoring an inconsistent record.
    Restored,
}

impl From<ReleaseReason> for ChangeReason {
    fn from(r: ReleaseReason) -> Self {
        match r {
            ReleaseReason::Declined => ChangeReason::Declined,
            ReleaseReason::Disconnected => ChangeReason::Disconnected,
            ReleaseReason::StartTimeout => ChangeReason::StartTimeout,
            ReleaseReason::Left => ChangeReason::Left,
        }
    }
}

/// Serde for an H3 cell as its hex string.
pub mod cell_hex {
    use h3o::CellIndex;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cell: &CellIndex, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(cell)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CellIndex, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<CellIndex>()
            .map_err(|_| serde::de::Error::custom("not an H3 cell index"))
    }
}

/// The full state of one cell: what the durable record keeps (upsert by
/// `(alert, cell)`, and append to the history), and what
/// [`super::SearchGrid::restore`] takes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    #[serde(with = "cell_hex")]
    pub cell: CellIndex,
    pub state: CellState,
    /// The holder while active; who cleared / found it afterwards.
    pub assignee: Option<Arc<str>>,
    /// Manual priority multiplier (1 = as the ring table says).
    pub factor: f64,
    /// Normalized probability at the time of the change (informational;
    /// recomputed on restore).
    pub weight: f64,
    pub changed_by: Arc<str>,
    /// Milliseconds since the epoch.
    pub changed_at: u64,
    pub reason: ChangeReason,
    /// When the current holder got it (drives the start timeout).
    pub assigned_at: Option<u64>,
}

/// One cell in a `coverage` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellView {
    #[serde(with = "cell_hex")]
    pub cell: CellIndex,
    pub state: CellState,
    pub assignee: Option<Arc<str>>,
    pub weight: f64,
}

impl From<&CellRecord> for CellView {
    fn from(r: &CellRecord) -> Self {
        Self {
            cell: r.cell,
            state: r.state,
            assignee: r.assignee.clone(),
            weight: r.weight,
        }
    }
}

/// How many cells are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub unassigned: usize,
    pub assigned: usize,
    pub searching: usize,
    pub cleared: usize,
    pub found: usize,
    pub excluded: usize,
}

impl StateCounts {
    pub(crate) fn from_slots(s: [usize; 6]) -> Self {
        Self {
            unassigned: s[0],
            assigned: s[1],
            searching: s[2],
            cleared: s[3],
            found: s[4],
            excluded: s[5],
        }
    }

    pub fn total(&self) -> usize {
        self.unassigned + self.assigned + self.searching + self.cleared + self.found + self.excluded
    }
}

/// The body of a `coverage` message, without `type`, `seq` and `alert`
/// (the transport adds those): `{"cells":[...],"covered_ratio":..,...}`.
///
/// `covered_ratio` is by count: (cleared + found) / (cells − excluded).
/// `covered_ratio_weighted` is by probability: the weight of cleared and
/// found cells (weights of non-excluded cells sum to 1). Both are 0 for a
/// grid with no searchable cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    pub cells: Vec<CellView>,
    pub covered_ratio: f64,
    pub covered_ratio_weighted: f64,
    pub counts: StateCounts,
    /// Every weight changed (renormalization): refresh the whole grid view.
    pub reweighted: bool,
}

/// What a responder receives as `assignment` (the transport adds `type`,
/// `seq`, `alert`). The boundary is H3's, counter-clockwise, as `[lat, lng]`
/// pairs, the first vertex not repeated at the end, so a phone can draw it
/// without H3 code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    /// Who it is for (routing only; not serialized).
    #[serde(skip)]
    pub responder: Arc<str>,
    #[serde(with = "cell_hex")]
    pub cell: CellIndex,
    pub boundary: Vec<[f64; 2]>,
    pub center: LatLng,
    /// Rank of the cell by weight in the grid: 1 is the most probable cell.
    pub priority: u32,
    /// The cell's normalized probability.
    pub weight: f64,
}

/// A responder who lost its active cell without asking for it (or by
/// declining): tell it to stop searching that cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revoked {
    pub responder: Arc<str>,
    #[serde(with = "cell_hex")]
    pub cell: CellIndex,
    pub reason: ChangeReason,
}

/// The subject was reported found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    #[serde(with = "cell_hex")]
    pub cell: CellIndex,
    pub by: Arc<str>,
    pub at: u64,
}

/// What one mutation did, in the order it happened. The caller persists
/// `changed`, streams them as a `coverage` delta, sends each `assigned` to
/// its responder, tells each `revoked` responder, and on `found` moves the
/// alert to its found state. If persisting fails, hand `undo` back to
/// [`super::SearchGrid::undo`] and nothing happened.
#[derive(Debug, Default)]
pub struct Effects {
    /// The new record of every cell that changed (once per cell).
    pub changed: Vec<CellRecord>,
    /// New assignments, including automatic ones (a waiting responder got a
    /// returned cell; a cleared responder got its next cell).
    pub assigned: Vec<Assignment>,
    pub revoked: Vec<Revoked>,
    /// Every cell's weight changed (adjust, exclude, include, widen).
    pub reweighted: bool,
    pub found: Option<Found>,
    /// The grid stopped assigning in this mutation (found, or closed).
    pub closed: bool,
    pub undo: super::grid::Undo,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && self.assigned.is_empty()
            && self.revoked.is_empty()
            && !self.reweighted
            && self.found.is_none()
            && !self.closed
    }

    /// The `coverage` views of the changed cells.
    pub fn views(&self) -> Vec<CellView> {
        self.changed.iter().map(CellView::from).collect()
    }
}
