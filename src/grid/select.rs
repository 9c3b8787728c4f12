//! Choosing the next cell for a responder: the score, its deterministic tie
//! rule, and the bucket index that makes the choice cost far less than one
//! evaluation per cell.
//!
//! **Score.** For an unassigned cell of weight `w` whose centre is `d`
//! metres from the responder, `score = w / (1 + d / D0)`, with `D0` =
//! `grid.distance_scale_m` (500 m by default): a cell `D0` away is worth half
//! of the same cell under the responder's feet, one `3·D0` away a quarter.
//! Without a known position `d = 0` and the most probable cell wins. Ties
//! (equal score) go to the higher weight, then the nearer cell, then the
//! smaller H3 index, so the choice never depends on iteration order.
//!
//! **Index.** Cells are grouped into buckets by their H3 parent two
//! resolutions up (about 49 cells each). A bucket keeps its centre, the
//! largest distance from that centre to a member's centre (`r`), and the
//! largest weight among its unassigned members. By the triangle inequality no
//! member scores more than `best / (1 + max(0, dist(p, centre) - r) / D0)`,
//! so buckets are visited in order of that bound and the search stops at
//! the first bucket whose bound is below the best score found: exact, and in
//! practice a handful of buckets instead of every cell.

use std::cmp::Ordering;
use std::collections::HashMap;

use h3o::{CellIndex, Resolution};

use crate::domain::LatLng;
use crate::geo;

use super::grid::Cell;
use super::wire::CellState;

/// The documented score: weight discounted by distance.
pub fn score(weight: f64, distance_m: f64, distance_scale_m: f64) -> f64 {
    weight / (1.0 + distance_m / distance_scale_m)
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f64,
    weight: f64,
    distance_m: f64,
    cell: u64,
    idx: usize,
}

impl Candidate {
    fn of(idx: usize, c: &Cell, at: Option<LatLng>, d0: f64) -> Self {
        let weight = c.raw();
        let distance_m = at.map_or(0.0, |p| geo::distance_m(p, c.centre));
        Self {
            score: score(weight, distance_m, d0),
            weight,
            distance_m,
            cell: u64::from(c.id),
            idx,
        }
    }

    /// The total order of the tie rule: higher score, higher weight, nearer,
    /// smaller index.
    fn beats(&self, other: &Candidate) -> bool {
        self.score
            .total_cmp(&other.score)
            .then(self.weight.total_cmp(&other.weight))
            .then(other.distance_m.total_cmp(&self.distance_m))
            .then(other.cell.cmp(&self.cell))
            == Ordering::Greater
    }
}

fn keep_best(best: &mut Option<Candidate>, cand: Candidate) {
    if best.as_ref().is_none_or(|b| cand.beats(b)) {
        *best = Some(cand);
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    centre: LatLng,
    radius_m: f64,
    members: Vec<u32>,
    /// Largest raw weight among unassigned members (0 when none).
    best_raw: f64,
    /// Unassigned members.
    pool: u32,
}

/// Cells grouped by coarse parent, with per-bucket upper bounds.
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    res: Resolution,
    by_parent: HashMap<CellIndex, u32>,
    list: Vec<Bucket>,
}

impl Buckets {
    pub(crate) fn new(cell_res: Resolution) -> Self {
        let coarse = u8::from(cell_res).saturating_sub(2);
        Self {
            res: Resolution::try_from(coarse).unwrap_or(cell_res),
            by_parent: HashMap::new(),
            list: Vec::new(),
        }
    }

    /// Files cell `idx` in its bucket and returns the bucket's number.
    pub(crate) fn place(&mut self, cell: CellIndex, centre: LatLng, idx: usize) -> u32 {
        let parent = cell.parent(self.res).unwrap_or(cell);
        let b = *self.by_parent.entry(parent).or_insert_with(|| {
            self.list.push(Bucket {
                centre: geo::center(parent),
                radius_m: 0.0,
                members: Vec::new(),
                best_raw: 0.0,
                pool: 0,
            });
            (self.list.len() - 1) as u32
        });
        let bucket = &mut self.list[b as usize];
        bucket.radius_m = bucket.radius_m.max(geo::distance_m(bucket.centre, centre));
        bucket.members.push(idx as u32);
        b
    }

    /// Recomputes one bucket's pool size and best weight.
    pub(crate) fn refresh(&mut self, b: u32, cells: &[Cell]) {
        let Some(bucket) = self.list.get_mut(b as usize) else {
            return;
        };
        let mut pool = 0;
        let mut best = 0.0_f64;
        for &m in &bucket.members {
            let c = &cells[m as usize];
            if c.state == CellState::Unassigned {
                pool += 1;
                best = best.max(c.raw());
            }
        }
        bucket.pool = pool;
        bucket.best_raw = best;
    }

    pub(crate) fn refresh_all(&mut self, cells: &[Cell]) {
        for b in 0..self.list.len() {
            self.refresh(b as u32, cells);
        }
    }

    /// Builds the index from scratch, renumbering each cell's bucket.
    pub(crate) fn rebuild(cell_res: Resolution, cells: &mut [Cell]) -> Self {
        let mut buckets = Self::new(cell_res);
        for (i, c) in cells.iter_mut().enumerate() {
            c.bucket = buckets.place(c.id, c.centre, i);
        }
        buckets.refresh_all(cells);
        buckets
    }

    /// The best unassigned cell for a responder at `at` (see the module doc).
    pub(crate) fn choose(&self, cells: &[Cell], at: Option<LatLng>, d0: f64) -> Option<usize> {
        let mut order: Vec<(f64, u32)> = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, b)| b.pool > 0)
            .map(|(i, b)| {
                // 1 m of slack absorbs rounding in the triangle inequality.
                let gap = at.map_or(0.0, |p| {
                    (geo::distance_m(p, b.centre) - b.radius_m - 1.0).max(0.0)
                });
                (score(b.best_raw, gap, d0), i as u32)
            })
            .collect();
        order.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
        let mut best: Option<Candidate> = None;
        for (bound, b) in order {
            if best.as_ref().is_some_and(|c| bound < c.score) {
                break;
            }
            for &m in &self.list[b as usize].members {
                let idx = m as usize;
                let c = &cells[idx];
                if c.state == CellState::Unassigned {
                    keep_best(&mut best, Candidate::of(idx, c, at, d0));
                }
            }
        }
        best.map(|c| c.idx)
    }

    /// Checks the cached pool sizes and maxima against the cells.
    pub(crate) fn check(&self, cells: &[Cell]) -> Result<(), String> {
        let mut seen = 0;
        for (b, bucket) in self.list.iter().enumerate() {
            let mut pool = 0;
            let mut best = 0.0_f64;
            for &m in &bucket.members {
                let c = cells
                    .get(m as usize)
                    .ok_or_else(|| format!("bucket {b} names missing cell {m}"))?;
                if c.bucket as usize != b {
                    return Err(format!(
                        "cell {} filed in bucket {b} but says {}",
                        c.id, c.bucket
                    ));
                }
                if c.state == CellState::Unassigned {
                    pool += 1;
                    best = best.max(c.raw());
                }
                seen += 1;
            }
            if pool != bucket.pool || best != bucket.best_raw {
                return Err(format!(
                    "bucket {b}: cached pool {} best {} but cells say {pool} {best}",
                    bucket.pool, bucket.best_raw
                ));
            }
        }
        if seen != cells.len() {
            return Err(format!(
                "buckets hold {seen} cells, grid has {}",
                cells.len()
            ));
        }
        Ok(())
    }
}

/// The reference: evaluate every unassigned cell.
pub(crate) fn choose_by_scan(cells: &[Cell], at: Option<LatLng>, d0: f64) -> Option<usize> {
    let mut best = None;
    for (idx, c) in cells.iter().enumerate() {
        if c.state == CellState::Unassigned {
            keep_best(&mut best, Candidate::of(idx, c, at, d0));
        }
    }
    best.map(|c| c.idx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::grid::wire::ChangeReason;

    fn cells(ids: &[CellIndex], raw: &[f64]) -> (Vec<Cell>, Buckets) {
        let res = ids[0].resolution();
        let mut cells: Vec<Cell> = ids
            .iter()
            .zip(raw)
            .map(|(id, w)| Cell {
                id: *id,
                centre: geo::center(*id),
                bucket: 0,
                prior: *w,
                factor: 1.0,
                state: CellState::Unassigned,
                assignee: None,
                assigned_at: None,
                changed_by: Arc::from("t"),
                changed_at: 0,
                reason: ChangeReason::Added,
                rank: 0,
            })
            .collect();
        let buckets = Buckets::rebuild(res, &mut cells);
        (cells, buckets)
    }

    fn ring() -> Vec<CellIndex> {
        let res = geo::resolution(9).expect("res");
        let origin = geo::cell_at(LatLng::new(30.7522, 120.7585).expect("ll"), res).expect("cell");
        let mut ids: Vec<CellIndex> = origin.grid_disk::<Vec<_>>(3);
        ids.sort();
        ids
    }

    #[test]
    fn exact_ties_go_to_the_smallest_index() {
        let ids = ring();
        let (cells, buckets) = cells(&ids, &vec![1.0; ids.len()]);
        assert_eq!(buckets.choose(&cells, None, 500.0), Some(0));
        assert_eq!(choose_by_scan(&cells, None, 500.0), Some(0));
    }

    #[test]
    fn equal_scores_go_to_the_higher_weight() {
        // The responder stands on cell 0 (weight 1); cell 1 (weight 2) is
        // exactly D0 away, so both score 1: the heavier one wins.
        let ids = ring();
        let at = geo::center(ids[0]);
        let d = geo::distance_m(at, geo::center(ids[1]));
        // score1 = 2 / (1 + d / d0) == 1 = score0 when d0 = d.
        let mut raw = vec![0.01; ids.len()];
        raw[0] = 1.0;
        raw[1] = 2.0;
        let (cells, buckets) = cells(&ids, &raw);
        assert_eq!(score(1.0, 0.0, d), score(2.0, d, d), "an exact tie");
        let want = Some(1);
        assert_eq!(buckets.choose(&cells, Some(at), d), want);
        assert_eq!(choose_by_scan(&cells, Some(at), d), want);
    }

    #[test]
    fn nothing_to_choose_from_an_empty_pool() {
        let ids = ring();
        let (mut cells, _) = cells(&ids, &vec![1.0; ids.len()]);
        for c in &mut cells {
            c.state = CellState::Cleared;
        }
        let buckets = Buckets::rebuild(ids[0].resolution(), &mut cells);
        assert_eq!(buckets.choose(&cells, None, 500.0), None);
        assert_eq!(choose_by_scan(&cells, None, 500.0), None);
        buckets.check(&cells).expect("consistent");
    }
}
