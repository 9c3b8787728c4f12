//! The presence index: responder → current H3 cell, and cell → responders.
//!
//! Plain data, no locks and no I/O. Only the cell is kept, never raw
//! coordinates. Recipient selection ([`PresenceIndex::select_circle`]) walks
//! occupied *parent* cells (two resolutions coarser, 49 cells each) and, per
//! parent, knows how far its occupied cells' centres reach from its own: a
//! parent wholly inside the circle gives all its people without a distance
//! test, one wholly outside is skipped, only those on the rim test their
//! cells. The result is exactly the responders whose cell centre lies within
//! the radius (what [`geo::cover`] decides), at a cost that follows the
//! occupied parents near the circle and the recipients, never everyone.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use h3o::{CellIndex, Resolution};

use crate::domain::{LatLng, Unit, UnitSet};
use crate::geo;

/// Dense index of a responder inside one hub process; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResponderId(pub u32);

/// Where a responder was last seen: its cell and when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub cell: CellIndex,
    pub seen_at_ms: u64,
    /// Position of this responder's slot in its cell bucket (for O(1) moves).
    pos: u32,
}

#[derive(Debug)]
pub struct ResponderEntry {
    pub sub: Arc<str>,
    pub unit: Unit,
    pub place: Option<Place>,
}

/// One responder in a cell bucket. Unit and freshness are copied here so the
/// selection loop reads one contiguous array and nothing else.
#[derive(Debug, Clone, Copy)]
struct Slot {
    rid: ResponderId,
    unit: Unit,
    seen_at_ms: u64,
}

/// The responders in one cell, and the cell's centre (computed once, also
/// as a unit vector for the fast distance test).
#[derive(Debug)]
struct Bucket {
    slots: Vec<Slot>,
    centre: LatLng,
    xyz: [f64; 3],
}

/// An occupied parent cell: its occupied children and how far their centres
/// reach from its centre (never shrinks, so it stays an upper bound).
#[derive(Debug)]
struct Parent {
    centre: LatLng,
    xyz: [f64; 3],
    reach_m: f64,
    children: Vec<CellIndex>,
}

/// Great-circle distance tests as dot products of unit vectors (a few
/// multiplications instead of haversine's trigonometry), with a band of
/// `BAND_M` around each threshold inside which the exact
/// [`geo::distance_m`] decides, so results match it exactly: the float
/// error of the dot product is orders of magnitude inside the band.
struct Circle {
    centre: LatLng,
    xyz: [f64; 3],
    radius_m: f64,
    /// `dot ≥ sure_in` ⇒ within the radius; `dot < sure_out` ⇒ outside.
    sure_in: f64,
    sure_out: f64,
    /// `dot < skip` ⇒ no child of the parent can be within the radius;
    /// `dot ≥ whole` ⇒ every child is. Parents are judged against the
    /// largest reach (every parent's is at most that), plus the band.
    skip: f64,
    whole: f64,
    /// Parents whose centre is farther than this are skipped.
    parent_radius_m: f64,
}

/// The mean Earth radius `geo`'s haversine uses.
const EARTH_RADIUS_M: f64 = 6_371_008.8;
const BAND_M: f64 = 1.0;

fn unit_vector(p: LatLng) -> [f64; 3] {
    let (lat, lng) = (p.lat.to_radians(), p.lng.to_radians());
    [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// cos of the angle a great-circle distance subtends, clamped to [0, π];
/// a negative distance gives +∞ (nothing is that close).
fn cos_of(distance_m: f64) -> f64 {
    if distance_m < 0.0 {
        return f64::INFINITY;
    }
    (distance_m / EARTH_RADIUS_M)
        .min(std::f64::consts::PI)
        .cos()
}

impl Circle {
    fn new(centre: LatLng, radius_m: f64, max_reach_m: f64) -> Self {
        let exact_only = radius_m < 2.0 * BAND_M;
        let reach = max_reach_m + REACH_SLACK_M + BAND_M;
        Self {
            centre,
            xyz: unit_vector(centre),
            radius_m,
            sure_in: if exact_only {
                f64::INFINITY
            } else {
                cos_of(radius_m - BAND_M)
            },
            sure_out: if exact_only {
                f64::NEG_INFINITY
            } else {
                cos_of(radius_m + BAND_M)
            },
            skip: cos_of(radius_m + reach),
            whole: cos_of(radius_m - reach),
            parent_radius_m: radius_m + reach,
        }
    }

    fn contains(&self, xyz: &[f64; 3], centre: LatLng) -> bool {
        let d = dot(xyz, &self.xyz);
        if d >= self.sure_in {
            true
        } else if d < self.sure_out {
            false
        } else {
            geo::distance_m(centre, self.centre) <= self.radius_m
        }
    }
}

/// Slack for float error in the triangle-inequality shortcuts: a parent is
/// only taken whole or skipped whole when it is clear by this much.
const REACH_SLACK_M: f64 = 0.01;
/// A distance test on a parent costs about this many times less than one
/// cell of an H3 cover (a centre computation), which decides between
/// scanning every occupied parent and covering the circle at parent level.
const COVER_CELL_COST: usize = 8;

#[derive(Debug, Default)]
pub struct PresenceIndex {
    ids: FxHashMap<Arc<str>, ResponderId>,
    responders: Vec<ResponderEntry>,
    /// Fx hashing: keys are H3 indexes and ids from signed tokens, not
    /// attacker-chosen, and these maps are on the selection path.
    cells: FxHashMap<CellIndex, Bucket>,
    parents: FxHashMap<CellIndex, Parent>,
    /// The largest `reach_m` of any parent (bounds the parent-level cover).
    max_reach_m: f64,
    /// The parents' resolution, known from the first cell placed (the hub
    /// places every cell at one resolution); `None` until then, and for
    /// resolutions too coarse to have parents.
    parent_res: Option<Resolution>,
}

impl PresenceIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.responders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.responders.is_empty()
    }

    pub fn id_of(&self, sub: &str) -> Option<ResponderId> {
        self.ids.get(sub).copied()
    }

    pub fn get(&self, rid: ResponderId) -> Option<&ResponderEntry> {
        self.responders.get(rid.0 as usize)
    }

    /// The responder's id, registering it (without a place) on first sight.
    pub fn intern(&mut self, sub: &Arc<str>, unit: Unit) -> ResponderId {
        if let Some(rid) = self.ids.get(sub.as_ref()) {
            let rid = *rid;
            self.set_unit(rid, unit);
            return rid;
        }
        let rid = ResponderId(self.responders.len() as u32);
        self.responders.push(ResponderEntry {
            sub: sub.clone(),
            unit,
            place: None,
        });
        self.ids.insert(sub.clone(), rid);
        rid
    }

    fn set_unit(&mut self, rid: ResponderId, unit: Unit) {
        let Some(entry) = self.responders.get_mut(rid.0 as usize) else {
            return;
        };
        if entry.unit == unit {
            return;
        }
        entry.unit = unit;
        if let Some(place) = entry.place
            && let Some(slot) = self
                .cells
                .get_mut(&place.cell)
                .and_then(|b| b.slots.get_mut(place.pos as usize))
        {
            slot.unit = unit;
        }
    }

    /// Records that `sub` was in `cell` at `seen_at_ms`. Returns its id.
    pub fn set_place(
        &mut self,
        sub: &Arc<str>,
        unit: Unit,
        cell: CellIndex,
        seen_at_ms: u64,
    ) -> ResponderId {
        let rid = self.intern(sub, unit);
        let idx = rid.0 as usize;
        let old = self.responders[idx].place;
        match old {
            Some(place) if place.cell == cell => {
                if let Some(slot) = self
                    .cells
                    .get_mut(&cell)
                    .and_then(|b| b.slots.get_mut(place.pos as usize))
                {
                    slot.seen_at_ms = seen_at_ms;
                }
                self.responders[idx].place = Some(Place {
                    seen_at_ms,
                    ..place
                });
            }
            _ => {
                if let Some(place) = old {
                    self.remove_slot(place);
                }
                if !self.cells.contains_key(&cell) {
                    self.add_cell(cell);
                }
                let Some(bucket) = self.cells.get_mut(&cell) else {
                    return rid;
                };
                let slots = &mut bucket.slots;
                let pos = slots.len() as u32;
                slots.push(Slot {
                    rid,
                    unit,
                    seen_at_ms,
                });
                self.responders[idx].place = Some(Place {
                    cell,
                    seen_at_ms,
                    pos,
                });
            }
        }
        rid
    }

    /// A new occupied cell: its bucket, and its entry under its parent.
    fn add_cell(&mut self, cell: CellIndex) {
        let centre = geo::center(cell);
        self.cells.insert(
            cell,
            Bucket {
                slots: Vec::new(),
                centre,
                xyz: unit_vector(centre),
            },
        );
        let Some(parent) = parent_of(cell) else {
            return;
        };
        let entry = self.parents.entry(parent).or_insert_with(|| {
            let centre = geo::center(parent);
            Parent {
                centre,
                xyz: unit_vector(centre),
                reach_m: 0.0,
                children: Vec::new(),
            }
        });
        entry.reach_m = entry.reach_m.max(geo::distance_m(entry.centre, centre));
        entry.children.push(cell);
        self.max_reach_m = self.max_reach_m.max(entry.reach_m);
        self.parent_res = Some(parent.resolution());
    }

    fn remove_cell(&mut self, cell: CellIndex) {
        self.cells.remove(&cell);
        let Some(parent) = parent_of(cell) else {
            return;
        };
        if let Some(entry) = self.parents.get_mut(&parent) {
            entry.children.retain(|c| *c != cell);
            if entry.children.is_empty() {
                self.parents.remove(&parent);
            }
        }
    }

    fn remove_slot(&mut self, place: Place) {
        let Some(bucket) = self.cells.get_mut(&place.cell) else {
            return;
        };
        let slots = &mut bucket.slots;
        let pos = place.pos as usize;
        if pos >= slots.len() {
            return;
        }
        slots.swap_remove(pos);
        if let Some(moved) = slots.get(pos).copied()
            && let Some(p) = self.responders[moved.rid.0 as usize].place.as_mut()
        {
            p.pos = pos as u32;
        }
        if slots.is_empty() {
            self.remove_cell(place.cell);
        }
    }

    /// Forgets where the responder is (it went off duty).
    pub fn clear_place(&mut self, sub: &str) {
        let Some(rid) = self.id_of(sub) else { return };
        if let Some(place) = self.responders[rid.0 as usize].place.take() {
            self.remove_slot(place);
        }
    }

    /// Fresh responders per unit in each occupied cell among `cells`.
    pub fn unit_counts(
        &self,
        cells: &[CellIndex],
        fresh_after_ms: u64,
    ) -> Vec<(CellIndex, Vec<(Unit, usize)>)> {
        cells
            .iter()
            .filter_map(|cell| {
                let bucket = self.cells.get(cell)?;
                let mut counts = [0usize; 3];
                for s in bucket
                    .slots
                    .iter()
                    .filter(|s| s.seen_at_ms >= fresh_after_ms)
                {
                    counts[Unit::ALL.iter().position(|u| *u == s.unit).unwrap_or(0)] += 1;
                }
                let by_unit: Vec<(Unit, usize)> = Unit::ALL
                    .into_iter()
                    .zip(counts)
                    .filter(|(_, n)| *n > 0)
                    .collect();
                (!by_unit.is_empty()).then_some((*cell, by_unit))
            })
            .collect()
    }

    /// Appends to `out` every responder of `units` seen at or after
    /// `fresh_after_ms` in one of `cells`.
    pub fn select_into(
        &self,
        cells: &[CellIndex],
        units: UnitSet,
        fresh_after_ms: u64,
        out: &mut Vec<ResponderId>,
    ) {
        for cell in cells {
            if let Some(bucket) = self.cells.get(cell) {
                bucket.take_into(units, fresh_after_ms, out);
            }
        }
    }

    /// Appends to `out` every responder of `units` seen at or after
    /// `fresh_after_ms` whose cell centre lies within `radius_m` of
    /// `centre`: the same set as [`geo::cover`] then [`Self::select_into`],
    /// without computing the cover.
    pub fn select_circle(
        &self,
        centre: LatLng,
        radius_m: f64,
        units: UnitSet,
        fresh_after_ms: u64,
        out: &mut Vec<ResponderId>,
    ) {
        let Some(parent_res) = self.parent_res else {
            // No cell yet, or a presence resolution too coarse to have
            // parents: cover the circle at the cells' own resolution.
            if let Some(res) = self.cells.keys().next().map(|c| c.resolution())
                && let Ok(cells) = geo::cover(centre, radius_m, res)
            {
                self.select_into(&cells, units, fresh_after_ms, out);
            }
            return;
        };
        let circle = Circle::new(centre, radius_m, self.max_reach_m);
        let r = circle.parent_radius_m;
        let cover_cells = (std::f64::consts::PI * r * r / parent_res.area_m2()) as usize + 7;
        let scan_all = self.parents.len() <= cover_cells.saturating_mul(COVER_CELL_COST);
        self.select_circle_by(&circle, units, fresh_after_ms, scan_all, out);
    }

    /// [`Self::select_circle`] with the strategy chosen by the caller:
    /// `scan_all` tests every occupied parent, otherwise only those in the
    /// parent-level cover of the circle widened by the largest reach.
    fn select_circle_by(
        &self,
        circle: &Circle,
        units: UnitSet,
        fresh_after_ms: u64,
        scan_all: bool,
        out: &mut Vec<ResponderId>,
    ) {
        let mut visit = |parent: &Parent| {
            let d = dot(&parent.xyz, &circle.xyz);
            if d < circle.skip {
                return;
            }
            let whole = d >= circle.whole;
            for child in &parent.children {
                if let Some(bucket) = self.cells.get(child)
                    && (whole || circle.contains(&bucket.xyz, bucket.centre))
                {
                    bucket.take_into(units, fresh_after_ms, out);
                }
            }
        };
        if scan_all {
            self.parents.values().for_each(&mut visit);
            return;
        }
        let Some(parent_res) = self.parent_res else {
            return;
        };
        if let Ok(candidates) = geo::cover(circle.centre, circle.parent_radius_m, parent_res) {
            for p in candidates {
                if let Some(parent) = self.parents.get(&p) {
                    visit(parent);
                }
            }
        }
    }

    /// The naive design, kept as the reference for tests and the baseline
    /// for benches: look at every registered responder.
    pub fn select_by_scan(
        &self,
        centre: LatLng,
        radius_m: f64,
        units: UnitSet,
        fresh_after_ms: u64,
    ) -> Vec<ResponderId> {
        self.responders
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let place = r.place?;
                let inside = place.seen_at_ms >= fresh_after_ms
                    && units.contains(r.unit)
                    && geo::distance_m(geo::center(place.cell), centre) <= radius_m;
                inside.then_some(ResponderId(i as u32))
            })
            .collect()
    }

    pub fn cell_count(&self) -> usize {
        self.cells.len()
    }
}

impl Bucket {
    fn take_into(&self, units: UnitSet, fresh_after_ms: u64, out: &mut Vec<ResponderId>) {
        out.extend(
            self.slots
                .iter()
                .filter(|s| s.seen_at_ms >= fresh_after_ms && units.contains(s.unit))
                .map(|s| s.rid),
        );
    }
}

/// The cell two resolutions coarser (49 cells of ours), if there is one.
fn parent_of(cell: CellIndex) -> Option<CellIndex> {
    let res = cell.resolution().pred()?.pred()?;
    cell.parent(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{cell_at, resolution};

    fn sub(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn moving_keeps_buckets_consistent() {
        let res = resolution(9).expect("res");
        let a = cell_at(LatLng::new(30.75, 120.75).expect("ll"), res).expect("cell");
        let b = cell_at(LatLng::new(30.76, 120.76).expect("ll"), res).expect("cell");
        let mut idx = PresenceIndex::new();
        for i in 0..10 {
            idx.set_place(&sub(&format!("r{i}")), Unit::Volunteer, a, 100);
        }
        // Move a middle one, then the last one, and check every place is right.
        idx.set_place(&sub("r3"), Unit::Volunteer, b, 200);
        idx.set_place(&sub("r9"), Unit::Volunteer, b, 200);
        let mut got = Vec::new();
        idx.select_into(&[a], UnitSet::all(), 0, &mut got);
        assert_eq!(got.len(), 8);
        got.clear();
        idx.select_into(&[b], UnitSet::all(), 0, &mut got);
        got.sort();
        assert_eq!(got, vec![ResponderId(3), ResponderId(9)]);
        for (cell, bucket) in &idx.cells {
            for (pos, slot) in bucket.slots.iter().enumerate() {
                let place = idx.responders[slot.rid.0 as usize].place.expect("place");
                assert_eq!((place.cell, place.pos as usize), (*cell, pos));
            }
        }
    }

    #[test]
    fn a_cell_centre_exactly_on_the_rim_is_decided_by_the_exact_distance() {
        let res = resolution(9).expect("res");
        let centre = LatLng::new(30.7522, 120.7585).expect("ll");
        let mut idx = PresenceIndex::new();
        let far = cell_at(LatLng::new(30.7822, 120.7885).expect("ll"), res).expect("cell");
        idx.set_place(&sub("rim"), Unit::Volunteer, far, 1);
        let d = geo::distance_m(geo::center(far), centre);
        for (radius, expected) in [(d, 1), (d * (1.0 - 1e-12), 0), (d + 0.5, 1), (d - 0.5, 0)] {
            for scan_all in [true, false] {
                let mut got = Vec::new();
                let circle = Circle::new(centre, radius, idx.max_reach_m);
                idx.select_circle_by(&circle, UnitSet::all(), 0, scan_all, &mut got);
                assert_eq!(
                    got.len(),
                    expected,
                    "radius {radius} (d = {d}), scan_all {scan_all}"
                );
            }
        }
    }

    #[test]
    fn stale_and_wrong_unit_are_filtered() {
        let res = resolution(9).expect("res");
        let a = cell_at(LatLng::new(30.75, 120.75).expect("ll"), res).expect("cell");
        let mut idx = PresenceIndex::new();
        idx.set_place(&sub("fresh"), Unit::Volunteer, a, 1_000);
        idx.set_place(&sub("stale"), Unit::Volunteer, a, 10);
        idx.set_place(&sub("patrol"), Unit::Patrol, a, 1_000);
        let mut got = Vec::new();
        idx.select_into(&[a], [Unit::Volunteer].into_iter().collect(), 500, &mut got);
        assert_eq!(got, vec![ResponderId(0)]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::geo::{cell_at, cover, resolution};
    use proptest::prelude::*;

    fn point(north_m: f64, east_m: f64) -> LatLng {
        let lat = 30.7522 + north_m / 111_320.0;
        let lng = 120.7585 + east_m / (111_320.0 * 30.7522_f64.to_radians().cos());
        LatLng { lat, lng }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Selection through the cell buckets equals a scan of everyone.
        #[test]
        fn selection_equals_brute_force(
            people in prop::collection::vec((-6000.0..6000.0f64, -6000.0..6000.0f64, 0u8..3, 0u64..1000), 1..300),
            moves in prop::collection::vec((0usize..300, -6000.0..6000.0f64, -6000.0..6000.0f64), 0..50),
            centre in (-3000.0..3000.0f64, -3000.0..3000.0f64),
            radius in 50.0..5000.0f64,
            units_mask in 1u8..8,
            fresh_after in 0u64..1000,
        ) {
            let res = resolution(9).expect("res");
            let mut idx = PresenceIndex::new();
            let unit_of = |u: u8| Unit::ALL[u as usize];
            for (i, (n, e, u, seen)) in people.iter().enumerate() {
                let sub: Arc<str> = format!("r{i}").into();
                let cell = cell_at(point(*n, *e), res).expect("cell");
                idx.set_place(&sub, unit_of(*u), cell, *seen);
            }
            for (who, n, e) in moves {
                let i = who % people.len();
                let sub: Arc<str> = format!("r{i}").into();
                let cell = cell_at(point(n, e), res).expect("cell");
                idx.set_place(&sub, unit_of(people[i].2), cell, people[i].3 + 1);
            }
            let units: UnitSet = Unit::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| units_mask & (1 << i) != 0)
                .map(|(_, u)| u)
                .collect();
            let c = point(centre.0, centre.1);
            let cells = cover(c, radius, res).expect("cover");
            let mut fast = Vec::new();
            idx.select_into(&cells, units, fresh_after, &mut fast);
            fast.sort();
            let mut slow = idx.select_by_scan(c, radius, units, fresh_after);
            slow.sort();
            prop_assert_eq!(&fast, &slow);
            for scan_all in [true, false] {
                let mut by_parents = Vec::new();
                let circle = Circle::new(c, radius, idx.max_reach_m);
                idx.select_circle_by(&circle, units, fresh_after, scan_all, &mut by_parents);
                by_parents.sort();
                prop_assert_eq!(&by_parents, &slow, "scan_all = {}", scan_all);
            }
            let mut chosen = Vec::new();
            idx.select_circle(c, radius, units, fresh_after, &mut chosen);
            chosen.sort();
            prop_assert_eq!(&chosen, &slow);
        }
    }
}
