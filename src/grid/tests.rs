//! Tests of the search grid: weights against the ring table, renormalization,
//! coverage, GeoJSON against h3o, widening, the assignment rule and its
//! index, timers, manual operations, undo and restore, and a property test
//! that random operation sequences never break the invariants.

use std::sync::Arc;

use h3o::CellIndex;
use proptest::prelude::*;

use super::*;
use crate::domain::LatLng;
use crate::geo;

fn jiaxing() -> LatLng {
    LatLng::new(30.7522, 120.7585).expect("valid")
}

fn table() -> RingTable {
    RingTable::builtin().expect("shipped table")
}

fn arc(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn police() -> Arc<str> {
    arc("police-1")
}

fn grid_with(radius_m: f64, category: &str, d0: f64) -> SearchGrid {
    let t = table();
    let spec = GridSpec {
        centre: jiaxing(),
        radius_m,
        resolution: geo::resolution(9).expect("res"),
        distance_scale_m: d0,
        max_cells: 20_000,
    };
    SearchGrid::new(spec, t.get(category).expect("category"), &police(), 1_000).expect("grid")
}

fn grid(radius_m: f64) -> SearchGrid {
    grid_with(radius_m, "child_7_12", 500.0)
}

/// A point `east_m` east and `north_m` north of Jiaxing (flat approximation).
fn offset(east_m: f64, north_m: f64) -> LatLng {
    let c = jiaxing();
    let lat = c.lat + north_m / 111_320.0;
    let lng = c.lng + east_m / (111_320.0 * c.lat.to_radians().cos());
    LatLng::new(lat, lng).expect("valid")
}

fn dist_to_centre(cell: CellIndex) -> f64 {
    geo::distance_m(geo::center(cell), jiaxing())
}

fn total_weight(g: &SearchGrid) -> f64 {
    g.records().iter().map(|r| r.weight).sum()
}

fn cells_by_distance(g: &SearchGrid) -> Vec<CellIndex> {
    let mut cells: Vec<CellIndex> = g.records().iter().map(|r| r.cell).collect();
    cells.sort_by(|a, b| dist_to_centre(*a).total_cmp(&dist_to_centre(*b)));
    cells
}

// ----- weights ---------------------------------------------------------------

#[test]
fn weights_sum_to_one_and_fall_with_distance_for_every_category() {
    let t = table();
    for name in t.names() {
        let g = grid_with(3_000.0, name, 500.0);
        assert!((total_weight(&g) - 1.0).abs() < 1e-9, "{name}");
        let cells = cells_by_distance(&g);
        // Per unit area the weight is a non-increasing function of distance.
        let per_area: Vec<f64> = cells
            .iter()
            .map(|c| g.weight(*c).expect("w") / c.area_m2())
            .collect();
        for (i, w) in per_area.windows(2).enumerate() {
            assert!(
                w[1] <= w[0] * (1.0 + 1e-12),
                "{name}: density rises from {} m to {} m",
                dist_to_centre(cells[i]),
                dist_to_centre(cells[i + 1])
            );
        }
        // And so do the weights themselves, up to the spread of cell areas.
        let areas: Vec<f64> = cells.iter().map(|c| c.area_m2()).collect();
        let spread = areas.iter().fold(0.0, |a: f64, b| a.max(*b))
            / areas.iter().fold(f64::INFINITY, |a: f64, b| a.min(*b));
        assert!(spread < 1.01, "areas differ by {spread}");
        let weights: Vec<f64> = cells.iter().map(|c| g.weight(*c).expect("w")).collect();
        for w in weights.windows(2) {
            assert!(w[1] <= w[0] * spread, "{name}: weight rises with distance");
        }
        assert!(
            weights[0] > weights[weights.len() - 1] * 2.0,
            "{name}: too flat"
        );
    }
}

#[test]
fn probability_within_each_ring_matches_the_table() {
    // A circle well beyond d95 holds nearly all the mass, so the weight of the
    // cells whose centres lie within d_k approaches P(d_k). Resolution 10
    // (cells ~65 m across) keeps the discretization error small.
    let t = table();
    let spec = GridSpec {
        centre: jiaxing(),
        radius_m: 8_000.0,
        resolution: geo::resolution(10).expect("res"),
        distance_scale_m: 500.0,
        max_cells: 50_000,
    };
    let rings = t.get("child_7_12").expect("category");
    let g = SearchGrid::new(spec, rings, &police(), 0).expect("grid");
    let in_circle = rings.cdf(8_000.0);
    let records = g.records();
    for (d, p) in rings.rings_m().iter().zip(rings::RING_PROBS) {
        let mass: f64 = records
            .iter()
            .filter(|r| dist_to_centre(r.cell) <= *d)
            .map(|r| r.weight)
            .sum();
        let expected = p / in_circle;
        assert!(
            (mass - expected).abs() < 0.03,
            "within {d} m: grid has {mass:.3}, table says {expected:.3}"
        );
    }
}

#[test]
fn the_subject_category_changes_the_spread() {
    let near = grid_with(3_000.0, "child_4_6", 500.0);
    let far = grid_with(3_000.0, "adult", 500.0);
    let within = |g: &SearchGrid| -> f64 {
        g.records()
            .iter()
            .filter(|r| dist_to_centre(r.cell) <= 500.0)
            .map(|r| r.weight)
            .sum()
    };
    assert!(within(&near) > within(&far) + 0.1);
}

#[test]
fn adjust_and_exclude_renormalize() {
    let mut g = grid(1_500.0);
    let cells = cells_by_distance(&g);
    let (a, b) = (cells[10], cells[11]);
    let ratio = g.weight(a).expect("a") / g.weight(b).expect("b");
    let e = g.adjust(&[a], 3.0, &police(), 2_000).expect("adjust");
    assert!(e.reweighted);
    assert_eq!(e.changed.len(), 1);
    assert_eq!(e.changed[0].factor, 3.0);
    assert_eq!(e.changed[0].reason, ChangeReason::Adjusted);
    assert!((total_weight(&g) - 1.0).abs() < 1e-9);
    let new_ratio = g.weight(a).expect("a") / g.weight(b).expect("b");
    assert!((new_ratio / ratio - 3.0).abs() < 1e-9);
    // The factor replaces, it does not compound.
    assert!(
        g.adjust(&[a], 3.0, &police(), 2_001)
            .expect("again")
            .is_empty()
    );
    g.adjust(&[a], 0.5, &police(), 2_002).expect("lower");
    let lowered = g.weight(a).expect("a") / g.weight(b).expect("b");
    assert!((lowered / ratio - 0.5).abs() < 1e-9);

    let lake = [cells[0], cells[1], cells[2]];
    let before_b = g.weight(b).expect("b");
    let e = g.exclude(&lake, &police(), 2_003).expect("exclude");
    assert_eq!(e.changed.len(), 3);
    for c in lake {
        assert_eq!(g.weight(c), Some(0.0));
        assert_eq!(g.record(c).expect("r").state, CellState::Excluded);
    }
    assert!((total_weight(&g) - 1.0).abs() < 1e-9);
    assert!(
        g.weight(b).expect("b") > before_b,
        "others gain the excluded mass"
    );
    assert_eq!(g.counts().excluded, 3);
    g.include(&lake, &police(), 2_004).expect("include");
    assert!((g.weight(b).expect("b") - before_b).abs() < 1e-15);
    assert!(matches!(
        g.adjust(&[a], 0.0, &police(), 2_005),
        Err(GridError::BadFactor(_))
    ));
    assert!(matches!(
        g.adjust(&[a], f64::NAN, &police(), 2_005),
        Err(GridError::BadFactor(_))
    ));
    let elsewhere = geo::cell_at(offset(50_000.0, 0.0), g.resolution()).expect("cell");
    assert!(matches!(
        g.exclude(&[a, elsewhere], &police(), 2_006),
        Err(GridError::UnknownCell(_))
    ));
    assert_eq!(
        g.record(a).expect("a").state,
        CellState::Unassigned,
        "all or nothing"
    );
}

// ----- coverage --------------------------------------------------------------

#[test]
fn coverage_ratios_by_count_and_by_probability() {
    let mut g = grid(1_000.0);
    assert_eq!(g.covered_ratio(), 0.0);
    assert_eq!(g.covered_ratio_weighted(), 0.0);
    let n = g.len();
    let mut cleared = Vec::new();
    for k in 0..4 {
        let r = arc(&format!("r{k}"));
        let (a, _) = g.assign_next(&r, None, 3_000).expect("assign");
        let a = a.expect("a cell");
        g.report(&r, a.cell, CellReport::Searching, 3_100)
            .expect("searching");
        let e = g
            .report(&r, a.cell, CellReport::Cleared, 3_200)
            .expect("cleared");
        assert_eq!(e.changed[0].state, CellState::Cleared);
        cleared.push(a.cell);
        g.release(&r, ReleaseReason::Left, 3_300);
    }
    let lake = cells_by_distance(&g)[n - 1];
    g.exclude(&[lake], &police(), 3_400).expect("exclude");
    let by_count = 4.0 / (n - 1) as f64;
    assert!((g.covered_ratio() - by_count).abs() < 1e-12);
    let by_weight: f64 = cleared.iter().map(|c| g.weight(*c).expect("w")).sum();
    assert!((g.covered_ratio_weighted() - by_weight).abs() < 1e-12);
    assert!(
        g.covered_ratio_weighted() > g.covered_ratio(),
        "best cells first"
    );
    let cov = g.coverage_all();
    assert_eq!(cov.cells.len(), n);
    assert_eq!(cov.counts.cleared, 4);
    let json = serde_json::to_value(&cov).expect("json");
    assert!(json["cells"][0]["cell"].is_string());
    assert!(json["covered_ratio"].is_number());
    assert!(json["covered_ratio_weighted"].is_number());
}

// ----- GeoJSON ---------------------------------------------------------------

#[test]
fn geojson_rings_are_closed_counter_clockwise_and_h3o_boundaries() {
    let mut g = grid(800.0);
    let r = arc("v-1");
    g.assign_next(&r, None, 5_000).expect("assign");
    let fc = g.to_geojson();
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().expect("features");
    assert_eq!(features.len(), g.len());
    let mut assigned = 0;
    for f in features {
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["geometry"]["type"], "Polygon");
        let rings = f["geometry"]["coordinates"].as_array().expect("rings");
        assert_eq!(rings.len(), 1, "one exterior ring, no holes");
        let ring: Vec<[f64; 2]> = serde_json::from_value(rings[0].clone()).expect("positions");
        assert!(ring.len() >= 4);
        assert_eq!(ring.first(), ring.last(), "closed");
        assert!(geojson::signed_area2(&ring) > 0.0, "counter-clockwise");
        let cell: CellIndex = f["properties"]["cell"]
            .as_str()
            .expect("cell")
            .parse()
            .expect("hex");
        let h3: Vec<[f64; 2]> = cell
            .boundary()
            .iter()
            .map(|ll| [ll.lng(), ll.lat()])
            .collect();
        let open = &ring[..ring.len() - 1];
        let mut reversed = h3.clone();
        reversed.reverse();
        assert!(
            open == h3.as_slice() || open == reversed.as_slice(),
            "boundary differs from h3o"
        );
        let p = &f["properties"];
        assert!(p["weight"].as_f64().expect("w") > 0.0);
        assert!(p["factor"].is_number());
        assert!(p["changed_by"].is_string());
        assert!(p["changed_at"].is_u64());
        if p["state"] == "assigned" {
            assigned += 1;
            assert_eq!(p["assignee"], "v-1");
        } else {
            assert!(p["assignee"].is_null());
        }
    }
    assert_eq!(assigned, 1);
    assert_eq!(fc["counts"]["assigned"], 1);
    let bytes: serde_json::Value =
        serde_json::from_slice(&g.to_geojson_bytes()).expect("bytes are JSON");
    let ids = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|f| (f["id"].to_string(), f["properties"]["state"].to_string()))
            .collect()
    };
    assert_eq!(ids(&bytes), ids(&fc));
    assert_eq!(bytes["counts"], fc["counts"]);
}

#[test]
fn h3o_boundaries_are_counter_clockwise_already() {
    // geo::boundary documents H3's order as counter-clockwise; the
    // assignment sends it as is ([lat, lng]).
    let g = grid(500.0);
    for rec in g.records() {
        let b: Vec<[f64; 2]> = geo::boundary(rec.cell)
            .iter()
            .map(|p| [p[1], p[0]])
            .collect();
        assert!(geojson::signed_area2(&b) > 0.0);
    }
}

// ----- widen -----------------------------------------------------------------

#[test]
fn widen_adds_cells_and_keeps_every_state() {
    let mut g = grid(1_000.0);
    let r1 = arc("r1");
    let r2 = arc("r2");
    let (a1, _) = g.assign_next(&r1, None, 10).expect("a1");
    let a1 = a1.expect("cell");
    g.report(&r1, a1.cell, CellReport::Cleared, 20)
        .expect("cleared");
    let (a2, _) = g.assign_next(&r2, None, 30).expect("a2");
    let a2 = a2.expect("cell");
    let lake = cells_by_distance(&g)[5];
    g.exclude(&[lake], &police(), 40).expect("exclude");
    let before: Vec<CellRecord> = g.records();
    let n = g.len();

    let e = g.widen(2_000.0, &police(), 50).expect("widen");
    assert!(e.reweighted);
    assert!(g.len() > n);
    assert_eq!(e.changed.len(), g.len() - n);
    assert!(
        e.changed
            .iter()
            .all(|r| r.state == CellState::Unassigned && r.reason == ChangeReason::Added)
    );
    for old in &before {
        let now = g.record(old.cell).expect("kept");
        assert_eq!(now.state, old.state);
        assert_eq!(now.assignee, old.assignee);
        assert_eq!(now.changed_at, old.changed_at);
    }
    assert_eq!(g.cell_of("r2"), Some(a2.cell));
    assert!((total_weight(&g) - 1.0).abs() < 1e-9);
    let mut expected = geo::cover(jiaxing(), 2_000.0, g.resolution()).expect("cover");
    expected.sort();
    let mut have: Vec<CellIndex> = g.records().iter().map(|r| r.cell).collect();
    have.sort();
    assert!(expected.iter().all(|c| have.binary_search(c).is_ok()));
    // Narrowing never drops a cell.
    assert!(g.widen(500.0, &police(), 60).expect("narrow").is_empty());
    assert_eq!(g.radius_m(), 2_000.0);
}

#[test]
fn widening_feeds_responders_in_line() {
    let mut g = grid(300.0);
    let n = g.len();
    for k in 0..n {
        g.assign_next(&arc(&format!("r{k}")), None, 1)
            .expect("assign");
    }
    let late = arc("late");
    let (got, _) = g.assign_next(&late, None, 2).expect("late");
    assert!(got.is_none());
    assert!(g.is_waiting("late"));
    let e = g.widen(800.0, &police(), 3).expect("widen");
    assert_eq!(e.assigned.len(), 1);
    assert_eq!(e.assigned[0].responder, late);
    assert!(!g.is_waiting("late"));
}

#[test]
fn too_large_grids_are_refused() {
    let t = table();
    let spec = GridSpec {
        centre: jiaxing(),
        radius_m: 5_000.0,
        resolution: geo::resolution(9).expect("res"),
        distance_scale_m: 500.0,
        max_cells: 100,
    };
    let err = SearchGrid::new(spec, t.default_rings(), &police(), 0).expect_err("too big");
    assert!(matches!(err, GridError::TooLarge { max: 100, .. }), "{err}");
    let mut g = grid(500.0);
    assert!(matches!(
        g.widen(f64::NAN, &police(), 0),
        Err(GridError::BadRadius(_))
    ));
}

#[test]
fn a_tiny_circle_still_has_the_cell_last_seen() {
    let g = grid(1.0);
    assert_eq!(g.len(), 1);
    assert_eq!(
        g.records()[0].cell,
        geo::cell_at(jiaxing(), g.resolution()).expect("cell")
    );
    assert!((total_weight(&g) - 1.0).abs() < 1e-12);
}

// ----- assignment ------------------------------------------------------------

#[test]
fn without_a_position_the_most_probable_cell_comes_first() {
    let mut g = grid(1_500.0);
    let mut last_weight = f64::INFINITY;
    for k in 0..20 {
        let (a, e) = g
            .assign_next(&arc(&format!("r{k}")), None, 100)
            .expect("assign");
        let a = a.expect("cell");
        assert_eq!(a.priority, k + 1, "in rank order");
        assert!(a.weight <= last_weight);
        last_weight = a.weight;
        assert_eq!(e.assigned, vec![a.clone()]);
        assert_eq!(e.changed.len(), 1);
        assert_eq!(
            e.changed[0].assignee.as_deref(),
            Some(format!("r{k}").as_str())
        );
        assert_eq!(e.changed[0].changed_by.as_ref(), SYSTEM);
        assert_eq!(a.boundary, geo::boundary(a.cell));
    }
}

#[test]
fn the_score_trades_weight_against_distance() {
    let mut g = grid(2_500.0);
    let top = cells_by_distance(&g)[0];
    assert_eq!(g.peek_best(Some(jiaxing())), Some(top));
    // Take the best cells; from each side the choice is the formula's best.
    for k in 0..12 {
        g.assign_next(&arc(&format!("r{k}")), None, 0)
            .expect("assign");
    }
    let east = offset(1_500.0, 0.0);
    let west = offset(-1_500.0, 0.0);
    let best_by_formula = |at: LatLng| {
        g.records()
            .iter()
            .filter(|r| r.state == CellState::Unassigned)
            .max_by(|a, b| {
                let s = |c: CellIndex| {
                    select::score(
                        g.weight(c).expect("w"),
                        geo::distance_m(at, geo::center(c)),
                        500.0,
                    )
                };
                s(a.cell).total_cmp(&s(b.cell))
            })
            .map(|r| r.cell)
    };
    let (e, w) = (g.peek_best(Some(east)), g.peek_best(Some(west)));
    assert_eq!(e, best_by_formula(east));
    assert_eq!(w, best_by_formula(west));
    assert_ne!(e, w, "the responder's side of the ring decides");
    let (ec, wc) = (e.expect("e"), w.expect("w"));
    assert!(geo::center(ec).lng > jiaxing().lng && geo::center(wc).lng < jiaxing().lng);
    // Without a position, or with a huge distance scale, weight alone decides.
    let mut rank_order = g.clone();
    let (next, _) = rank_order.assign_next(&arc("x"), None, 0).expect("x");
    assert_eq!(next.expect("cell").priority, 13);
    let flat_d0 = grid_with(2_500.0, "child_7_12", 1e12);
    assert_eq!(flat_d0.peek_best(Some(east)), Some(top));
    // With a tiny distance scale the cell under the responder wins.
    let near = grid_with(2_500.0, "child_7_12", 1.0);
    let own = geo::cell_at(east, near.resolution()).expect("cell");
    let on_it = geo::center(own);
    assert_eq!(near.peek_best(Some(on_it)), Some(own));
    assert_eq!(near.peek_best_by_scan(Some(on_it)), Some(own));
}

#[test]
fn one_active_cell_per_responder() {
    let mut g = grid(1_000.0);
    let r = arc("v-7");
    let (first, e1) = g
        .assign_next(&r, Some(offset(300.0, 0.0)), 10)
        .expect("first");
    let first = first.expect("cell");
    assert_eq!(e1.assigned.len(), 1);
    let (again, e2) = g
        .assign_next(&r, Some(offset(-900.0, 0.0)), 20)
        .expect("again");
    assert_eq!(again.expect("cell").cell, first.cell);
    assert!(e2.is_empty(), "asking again changes nothing");
    assert_eq!(g.holders_len(), 1);
    assert_eq!(g.current_assignment(&r).expect("held").cell, first.cell);
}

#[test]
fn many_accepts_get_distinct_cells_then_wait_in_line() {
    let mut g = grid(2_000.0);
    let n = g.len();
    let mut seen = std::collections::HashSet::new();
    let people: Vec<Arc<str>> = (0..n + 50).map(|k| arc(&format!("r{k:04}"))).collect();
    for (k, r) in people.iter().enumerate() {
        let at = Some(offset(
            (k % 37) as f64 * 90.0 - 1_600.0,
            (k % 23) as f64 * 130.0 - 1_500.0,
        ));
        let (a, _) = g.assign_next(r, at, 1_000 + k as u64).expect("assign");
        match a {
            Some(a) => assert!(seen.insert(a.cell), "{} given twice", a.cell),
            None => assert!(k >= n, "waited while cells were free"),
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(g.waiting().count(), 50);
    assert_eq!(g.counts().unassigned, 0);
    // A decline hands the cell to the first in line.
    let quitter = &people[3];
    let cell = g.cell_of(quitter).expect("held");
    let e = g.release(quitter, ReleaseReason::Declined, 9_000);
    assert_eq!(e.revoked[0].reason, ChangeReason::Declined);
    assert_eq!(e.assigned.len(), 1);
    assert_eq!(e.assigned[0].responder, people[n]);
    assert_eq!(e.assigned[0].cell, cell);
    assert_eq!(g.holder(cell), Some(&people[n]));
    assert_eq!(e.changed.len(), 1, "one cell, changed once");
    assert_eq!(e.changed[0].assignee.as_ref(), Some(&people[n]));
    g.check_invariants().expect("invariants");
}

#[test]
fn the_index_agrees_with_a_full_scan() {
    let mut g = grid(3_000.0);
    let mut k = 0u64;
    // Take cells away as we go so the pool is ragged.
    for i in 0..400 {
        let east = ((i * 7919) % 8_000) as f64 - 4_000.0;
        let north = ((i * 104_729) % 8_000) as f64 - 4_000.0;
        let at = if i % 5 == 0 {
            None
        } else {
            Some(offset(east, north))
        };
        assert_eq!(g.peek_best(at), g.peek_best_by_scan(at), "at {at:?}");
        if i % 2 == 0 {
            k += 1;
            g.assign_next(&arc(&format!("r{k}")), at, k)
                .expect("assign");
        }
    }
}

// ----- reports ---------------------------------------------------------------

#[test]
fn reports_follow_the_state_machine() {
    let mut g = grid(1_000.0);
    let r = arc("r");
    let other = arc("other");
    let (a, _) = g.assign_next(&r, None, 0).expect("a");
    let cell = a.expect("cell").cell;
    let not_mine = g.report(&other, cell, CellReport::Searching, 1);
    assert!(matches!(not_mine, Err(GridError::NotAssignee(_))));
    let e = g
        .report(&r, cell, CellReport::Searching, 2)
        .expect("searching");
    assert_eq!(e.changed[0].state, CellState::Searching);
    assert_eq!(e.changed[0].reason, ChangeReason::Started);
    assert_eq!(
        e.changed[0].assigned_at,
        Some(0),
        "the assignment time stays"
    );
    assert!(
        g.report(&r, cell, CellReport::Searching, 3)
            .expect("again")
            .is_empty()
    );
    let e = g.report(&r, cell, CellReport::Cleared, 4).expect("cleared");
    assert_eq!(e.changed.len(), 2, "the cleared cell and the next one");
    assert_eq!(e.changed[0].state, CellState::Cleared);
    assert_eq!(e.changed[0].assignee.as_ref(), Some(&r), "who cleared it");
    assert_eq!(e.assigned.len(), 1, "the next cell comes at once");
    let next = e.assigned[0].cell;
    assert_ne!(next, cell);
    assert!(
        g.report(&r, cell, CellReport::Cleared, 5)
            .expect("retry")
            .is_empty()
    );
    assert!(matches!(
        g.report(&r, cell, CellReport::Searching, 6),
        Err(GridError::BadTransition {
            from: CellState::Cleared,
            ..
        })
    ));
    // Cleared straight from assigned is allowed.
    let e = g
        .report(&r, next, CellReport::Cleared, 7)
        .expect("quick clear");
    assert_eq!(e.changed[0].state, CellState::Cleared);
    let stranger = geo::cell_at(offset(40_000.0, 0.0), g.resolution()).expect("cell");
    assert!(matches!(
        g.report(&r, stranger, CellReport::Searching, 8),
        Err(GridError::UnknownCell(_))
    ));
}

#[test]
fn found_closes_the_search_and_stands_everyone_down() {
    let mut g = grid(1_000.0);
    let people: Vec<Arc<str>> = (0..5).map(|k| arc(&format!("r{k}"))).collect();
    for r in &people {
        g.assign_next(r, None, 0).expect("assign");
    }
    let finder = &people[2];
    let cell = g.cell_of(finder).expect("held");
    g.report(finder, cell, CellReport::Searching, 1)
        .expect("searching");
    let outsider = arc("outsider");
    assert!(matches!(
        g.report(&outsider, cell, CellReport::Found, 2),
        Err(GridError::NotAssignee(_))
    ));
    let e = g.report(finder, cell, CellReport::Found, 3).expect("found");
    let found = e.found.as_ref().expect("found");
    assert_eq!(
        (found.cell, found.by.clone(), found.at),
        (cell, finder.clone(), 3)
    );
    assert!(e.closed);
    assert_eq!(e.revoked.len(), 4, "everyone else stands down");
    assert!(
        e.revoked
            .iter()
            .all(|v| v.reason == ChangeReason::StandDown)
    );
    assert!(g.is_closed());
    assert_eq!(g.holders_len(), 0);
    assert_eq!(g.record(cell).expect("r").state, CellState::Found);
    assert_eq!(g.counts().found, 1);
    let (none, _) = g.assign_next(&arc("late"), None, 4).expect("closed");
    assert!(none.is_none());
    assert!(!g.is_waiting("late"));
    assert!(
        g.report(finder, cell, CellReport::Found, 5)
            .expect("retry")
            .is_empty()
    );
    assert!(matches!(
        g.manual_assign(cell, &people[0], &police(), 6),
        Err(GridError::Closed)
    ));
    // Reopening (the find was not) puts the cell back in the pool.
    let e = g.reopen(&police(), 7);
    assert_eq!(e.changed[0].reason, ChangeReason::Reopened);
    assert!(!g.is_closed());
    assert_eq!(g.counts().found, 0);
}

#[test]
fn a_searcher_may_report_found_in_another_cell() {
    let mut g = grid(1_000.0);
    let a = arc("a");
    let b = arc("b");
    g.assign_next(&a, None, 0).expect("a");
    g.assign_next(&b, None, 0).expect("b");
    let b_cell = g.cell_of("b").expect("b holds");
    let lake = cells_by_distance(&g)[g.len() - 1];
    g.exclude(&[lake], &police(), 1).expect("exclude");
    // a finds the person in the excluded lake cell.
    let e = g.report(&a, lake, CellReport::Found, 2).expect("found");
    assert_eq!(e.found.expect("found").cell, lake);
    assert!(
        e.revoked
            .iter()
            .any(|v| v.responder == b && v.cell == b_cell)
    );
    assert_eq!(g.record(lake).expect("lake").assignee.as_ref(), Some(&a));
}

// ----- timers ----------------------------------------------------------------

#[test]
fn unstarted_cells_expire_and_go_to_the_line() {
    let mut g = grid(300.0);
    let n = g.len();
    let people: Vec<Arc<str>> = (0..n + 2).map(|k| arc(&format!("r{k}"))).collect();
    for (k, r) in people.iter().enumerate() {
        g.assign_next(r, None, 1_000 + k as u64).expect("assign");
    }
    // r0 starts; everyone else does not.
    let c0 = g.cell_of("r0").expect("r0");
    g.report(&people[0], c0, CellReport::Searching, 2_000)
        .expect("searching");
    let t = Timeouts {
        start_ms: 300_000,
        grace_ms: 120_000,
    };
    assert_eq!(g.next_deadline(t), Some(1_001 + 300_000));
    assert!(
        g.tick(1_000 + 300_000, t).is_empty(),
        "r1 assigned at 1001 is not late yet"
    );
    let e = g.expire_unstarted(1_001 + 300_000, 300_000);
    assert_eq!(e.revoked.len(), 1);
    assert_eq!(e.revoked[0].responder, people[1]);
    assert_eq!(e.revoked[0].reason, ChangeReason::StartTimeout);
    assert_eq!(e.assigned.len(), 1, "the line gets it");
    assert_eq!(e.assigned[0].responder, people[n]);
    let rec = e
        .changed
        .iter()
        .find(|r| r.cell == e.revoked[0].cell)
        .expect("rec");
    assert_eq!(rec.assignee.as_ref(), Some(&people[n]));
    assert_eq!(g.cell_of("r1"), None);
    assert!(!g.is_waiting("r1"), "a late starter is not re-queued");
    // Much later, every remaining unstarted cell expires; r0 keeps its cell.
    let e = g.expire_unstarted(10_000_000, 300_000);
    assert!(e.revoked.iter().all(|v| v.responder != people[0]));
    assert_eq!(g.cell_of("r0"), Some(c0));
    assert!(
        e.revoked
            .iter()
            .all(|v| v.reason == ChangeReason::StartTimeout)
    );
    assert!(e.changed.iter().all(|r| r.changed_by.as_ref() == SYSTEM));
}

#[test]
fn a_disconnected_holder_keeps_its_cell_for_the_grace_period() {
    let mut g = grid(500.0);
    let r = arc("r");
    let (a, _) = g.assign_next(&r, None, 0).expect("a");
    let cell = a.expect("cell").cell;
    g.report(&r, cell, CellReport::Searching, 10)
        .expect("searching");
    let t = Timeouts {
        start_ms: 300_000,
        grace_ms: 120_000,
    };
    g.disconnected(&r, 1_000);
    assert_eq!(g.next_deadline(t), Some(121_000));
    assert!(g.tick(120_999, t).is_empty());
    g.connected("r");
    assert_eq!(g.next_deadline(t), None, "searching, connected: no timer");
    assert!(g.tick(500_000, t).is_empty());
    g.disconnected(&r, 600_000);
    let e = g.expire_disconnected(720_000, 120_000);
    assert_eq!(e.revoked.len(), 1);
    assert_eq!(e.revoked[0].reason, ChangeReason::Disconnected);
    assert_eq!(g.record(cell).expect("r").state, CellState::Unassigned);
    assert_eq!(g.next_deadline(t), None);
    // Untracked responders are ignored.
    g.disconnected(&arc("nobody"), 1);
    g.check_invariants().expect("invariants");
}

// ----- coordinators ----------------------------------------------------------

#[test]
fn coordinators_assign_unassign_and_reassign() {
    let mut g = grid(1_000.0);
    let coord = arc("coord-1");
    let a = arc("a");
    let b = arc("b");
    let cells = cells_by_distance(&g);
    let canal = cells[7];
    let (asg, e) = g.manual_assign(canal, &a, &coord, 10).expect("assign");
    assert_eq!(asg.cell, canal);
    assert_eq!(e.changed[0].reason, ChangeReason::ManualAssigned);
    assert_eq!(e.changed[0].changed_by, coord);
    // Again: no-op.
    assert!(
        g.manual_assign(canal, &a, &coord, 11)
            .expect("again")
            .1
            .is_empty()
    );
    // Reassign to b: a loses it and gets another.
    let (_, e) = g.manual_assign(canal, &b, &coord, 12).expect("reassign");
    assert_eq!(g.holder(canal), Some(&b));
    assert_eq!(e.revoked.len(), 1);
    assert_eq!(e.revoked[0].responder, a);
    assert_eq!(e.revoked[0].reason, ChangeReason::Reassigned);
    let a_next = e
        .assigned
        .iter()
        .find(|x| x.responder == a)
        .expect("a re-assigned");
    assert_ne!(a_next.cell, canal);
    // Moving b to another cell frees the canal.
    let (_, e) = g.manual_assign(cells[0], &b, &coord, 13).expect("move b");
    assert_eq!(g.record(canal).expect("canal").state, CellState::Unassigned);
    assert!(
        e.changed
            .iter()
            .any(|r| r.cell == canal && r.reason == ChangeReason::Reassigned)
    );
    // Unassign: b loses it, no replacement.
    let e = g.unassign(cells[0], &coord, 14).expect("unassign");
    assert_eq!(e.revoked[0].responder, b);
    assert!(e.assigned.is_empty());
    assert_eq!(g.cell_of("b"), None);
    assert!(g.unassign(cells[0], &coord, 15).expect("again").is_empty());
    // A cleared cell can be reopened and reassigned.
    let a_cell = g.cell_of("a").expect("a holds");
    g.report(&a, a_cell, CellReport::Cleared, 16)
        .expect("cleared");
    let (_, _) = g.manual_assign(a_cell, &b, &coord, 17).expect("re-search");
    assert_eq!(g.record(a_cell).expect("r").state, CellState::Assigned);
    // Excluded cells cannot be assigned; excluding a held cell moves its holder.
    let held_by_b = a_cell;
    let e = g.exclude(&[held_by_b], &coord, 18).expect("exclude");
    assert_eq!(e.revoked[0].responder, b);
    assert!(e.assigned.iter().any(|x| x.responder == b));
    assert!(matches!(
        g.manual_assign(held_by_b, &a, &coord, 19),
        Err(GridError::Excluded(_))
    ));
    assert!(matches!(
        g.unassign(held_by_b, &coord, 20),
        Err(GridError::BadTransition { .. })
    ));
}

// ----- undo and restore ------------------------------------------------------

#[test]
fn undo_puts_the_grid_back_exactly() {
    let mut g = grid(600.0);
    let n = g.len();
    for k in 0..n + 3 {
        g.assign_next(&arc(&format!("r{k}")), None, k as u64)
            .expect("assign");
    }
    let before = g.fingerprint();
    let e = g.release(&arc("r0"), ReleaseReason::Declined, 100);
    assert_eq!(e.assigned.len(), 1);
    assert_ne!(g.fingerprint(), before);
    assert!(g.undo(e.undo));
    assert_eq!(g.fingerprint(), before);
    g.check_invariants().expect("invariants");

    let before = g.fingerprint();
    let e = g.widen(1_200.0, &police(), 200).expect("widen");
    assert!(!e.changed.is_empty());
    assert!(g.undo(e.undo));
    assert_eq!(g.fingerprint(), before);

    // Two mutations undo in reverse order; a stale undo is refused.
    let s0 = g.fingerprint();
    let c = cells_by_distance(&g)[3];
    let e1 = g.adjust(&[c], 4.0, &police(), 300).expect("adjust");
    let s1 = g.fingerprint();
    let e2 = g.exclude(&[c], &police(), 301).expect("exclude");
    assert!(!g.undo(e1.undo.clone()), "not the latest");
    assert!(g.undo(e2.undo));
    assert_eq!(g.fingerprint(), s1);
    assert!(g.undo(e1.undo));
    assert_eq!(g.fingerprint(), s0);
    assert!(!g.undo(Undo::default()));
}

#[test]
fn restore_rebuilds_the_state_from_records() {
    let mut g = grid(1_000.0);
    let people: Vec<Arc<str>> = (0..6).map(|k| arc(&format!("r{k}"))).collect();
    for r in &people {
        g.assign_next(r, None, 5).expect("assign");
    }
    let c0 = g.cell_of("r0").expect("r0");
    g.report(&people[0], c0, CellReport::Cleared, 6)
        .expect("clear");
    let c1 = g.cell_of("r1").expect("r1");
    g.report(&people[1], c1, CellReport::Searching, 7)
        .expect("search");
    let far = cells_by_distance(&g)[g.len() - 1];
    g.adjust(&[far], 5.0, &police(), 8).expect("adjust");
    // The durable record: every change's latest record, JSON round trip.
    let records: Vec<CellRecord> = g
        .records()
        .into_iter()
        .filter(|r| r.reason != ChangeReason::Added)
        .map(|r| serde_json::from_value(serde_json::to_value(&r).expect("ser")).expect("de"))
        .collect();
    let mut fresh = grid(1_000.0);
    assert_eq!(fresh.restore(records), 0);
    fresh.check_invariants().expect("invariants");
    for r in g.records() {
        let f = fresh.record(r.cell).expect("cell");
        assert_eq!(
            (f.state, &f.assignee, f.factor),
            (r.state, &r.assignee, r.factor)
        );
        assert!((f.weight - r.weight).abs() < 1e-12);
    }
    assert_eq!(fresh.cell_of("r1"), Some(c1));
    assert_eq!(fresh.holders_len(), g.holders_len());
    // Restart: every holder's grace timer starts.
    fresh.mark_all_disconnected(100);
    let e = fresh.expire_disconnected(100 + 120_000, 120_000);
    assert_eq!(e.revoked.len(), g.holders_len());

    // A corrupt record naming one responder on two active cells is repaired.
    let mut twice = grid(1_000.0);
    let cells = cells_by_distance(&twice);
    let rec = |cell, at| CellRecord {
        cell,
        state: CellState::Searching,
        assignee: Some(arc("dup")),
        factor: 1.0,
        weight: 0.0,
        changed_by: arc("dup"),
        changed_at: at,
        reason: ChangeReason::Started,
        assigned_at: Some(at),
    };
    twice.restore([rec(cells[0], 10), rec(cells[1], 20)]);
    twice.check_invariants().expect("repaired");
    assert_eq!(twice.cell_of("dup"), Some(cells[1]));
    assert_eq!(
        twice.record(cells[0]).expect("r").reason,
        ChangeReason::Restored
    );
}

#[test]
fn restore_adds_cells_beyond_the_rebuilt_radius() {
    let mut big = grid(1_500.0);
    let far = cells_by_distance(&big)[big.len() - 1];
    big.exclude(&[far], &police(), 1).expect("exclude");
    let mut small = grid(500.0);
    assert!(!small.contains(far));
    small.restore(big.record(far));
    assert!(small.contains(far));
    assert_eq!(small.record(far).expect("r").state, CellState::Excluded);
    small.check_invariants().expect("invariants");
}

// ----- settings and wire -----------------------------------------------------

#[test]
fn settings_defaults_validate_and_build() {
    let s = GridSettings::default();
    s.validate().expect("defaults are valid");
    assert!(s.is_searchable("missing_person"));
    assert!(!s.is_searchable("flood"));
    assert_eq!(s.timeouts().start_ms, 300_000);
    let parsed: GridSettings = serde_json::from_value(serde_json::json!({
        "resolution": 8,
        "searchable_kinds": ["missing_person", "dementia_wander"],
    }))
    .expect("partial section");
    assert_eq!(parsed.resolution, 8);
    assert_eq!(parsed.start_timeout_s, 300);
    let bad = GridSettings {
        distance_scale_m: 0.0,
        ..GridSettings::default()
    };
    assert_eq!(
        bad.validate().expect_err("bad").setting,
        "grid.distance_scale_m"
    );
    let t = GridSettings {
        rings_file: std::path::PathBuf::new(),
        ..GridSettings::default()
    }
    .load_rings()
    .expect("builtin");
    let file = GridSettings {
        rings_file: concat!(env!("CARGO_MANIFEST_DIR"), "/config/lost_person_rings.toml").into(),
        ..GridSettings::default()
    }
    .load_rings()
    .expect("file");
    assert_eq!(t, file);
    let g = s
        .build(&t, jiaxing(), 1_000.0, Some("elder_dementia"), &police(), 0)
        .expect("grid");
    assert_eq!(g.rings().name(), "elder_dementia");
    let err = s
        .build(&t, jiaxing(), 1_000.0, Some("robot"), &police(), 0)
        .expect_err("unknown");
    let api: crate::protocol::ApiError = err.into();
    assert_eq!(api.code, crate::protocol::ErrorCode::BadRequest);
}

#[test]
fn assignment_and_records_serialize_as_the_wire_expects() {
    let mut g = grid(500.0);
    let (a, e) = g.assign_next(&arc("v-1"), None, 42).expect("a");
    let a = a.expect("cell");
    let json = serde_json::to_value(&a).expect("json");
    assert_eq!(json["cell"], a.cell.to_string());
    assert!(json.get("responder").is_none(), "routing only");
    let b = json["boundary"].as_array().expect("boundary");
    assert_eq!(b.len(), 6);
    assert_eq!(b[0][0].as_f64(), Some(a.boundary[0][0]), "[lat, lng]");
    assert_eq!(json["priority"], 1);
    assert!(json["center"]["lat"].is_number());
    let rec = serde_json::to_value(&e.changed[0]).expect("record");
    assert_eq!(rec["state"], "assigned");
    assert_eq!(rec["reason"], "assigned");
    assert_eq!(rec["assignee"], "v-1");
    let cov = serde_json::to_value(g.coverage(&e)).expect("coverage");
    assert_eq!(cov["cells"].as_array().expect("cells").len(), 1);
    assert_eq!(cov["cells"][0]["state"], "assigned");
    assert_eq!(CellState::parse("searching"), Some(CellState::Searching));
    assert_eq!(CellReport::parse("found"), Some(CellReport::Found));
    assert_eq!(CellReport::parse("excluded"), None);
}

// ----- the property test -----------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Accept(u8, Option<(i16, i16)>),
    Report(u8, u8, u8),
    Release(u8, u8),
    Manual(u8, u8),
    Unassign(u8),
    Exclude(u8),
    Include(u8),
    Adjust(u8, u8),
    Widen(u16),
    Tick(u32),
    Disconnect(u8),
    Connect(u8),
    Close,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..10u8, proptest::option::of((-15i16..15, -15i16..15))).prop_map(|(r, p)| Op::Accept(r, p)),
        6 => (0..10u8, any::<u8>(), 0..3u8).prop_map(|(r, c, s)| Op::Report(r, c, s)),
        2 => (0..10u8, 0..4u8).prop_map(|(r, w)| Op::Release(r, w)),
        2 => (any::<u8>(), 0..10u8).prop_map(|(c, r)| Op::Manual(c, r)),
        1 => any::<u8>().prop_map(Op::Unassign),
        1 => any::<u8>().prop_map(Op::Exclude),
        1 => any::<u8>().prop_map(Op::Include),
        1 => (any::<u8>(), 0..4u8).prop_map(|(c, f)| Op::Adjust(c, f)),
        1 => (400..1_200u16).prop_map(Op::Widen),
        2 => (0..400_000u32).prop_map(Op::Tick),
        1 => (0..10u8).prop_map(Op::Disconnect),
        1 => (0..10u8).prop_map(Op::Connect),
        1 => Just(Op::Close),
        1 => Just(Op::Reopen),
    ]
}

/// Applies one operation; returns its effects (errors are fine: they must
/// change nothing).
fn apply(g: &mut SearchGrid, op: &Op, now: u64, people: &[Arc<str>]) -> Option<Effects> {
    let cells: Vec<CellIndex> = g.records().iter().map(|r| r.cell).collect();
    let cell = |c: u8| cells[c as usize % cells.len()];
    let coord = arc("coord");
    let t = Timeouts {
        start_ms: 300_000,
        grace_ms: 120_000,
    };
    let result = match op {
        Op::Accept(r, p) => {
            let at = p.map(|(e, n)| offset(e as f64 * 60.0, n as f64 * 60.0));
            g.assign_next(&people[*r as usize], at, now).map(|(_, e)| e)
        }
        Op::Report(r, c, s) => {
            let who = &people[*r as usize];
            // Half the time report on the responder's own cell.
            let target = match g.cell_of(who) {
                Some(own) if c % 2 == 0 => own,
                _ => cell(*c),
            };
            let report = [
                CellReport::Searching,
                CellReport::Cleared,
                CellReport::Found,
            ][*s as usize];
            g.report(who, target, report, now)
        }
        Op::Release(r, w) => {
            let reason = [
                ReleaseReason::Declined,
                ReleaseReason::Disconnected,
                ReleaseReason::StartTimeout,
                ReleaseReason::Left,
            ][*w as usize];
            Ok(g.release(&people[*r as usize], reason, now))
        }
        Op::Manual(c, r) => g
            .manual_assign(cell(*c), &people[*r as usize], &coord, now)
            .map(|(_, e)| e),
        Op::Unassign(c) => g.unassign(cell(*c), &coord, now),
        Op::Exclude(c) => g.exclude(&[cell(*c)], &coord, now),
        Op::Include(c) => g.include(&[cell(*c)], &coord, now),
        Op::Adjust(c, f) => g.adjust(&[cell(*c)], [0.5, 1.0, 2.0, 10.0][*f as usize], &coord, now),
        Op::Widen(r) => g.widen(*r as f64, &coord, now),
        Op::Tick(_) => Ok(g.tick(now, t)),
        Op::Disconnect(r) => {
            g.disconnected(&people[*r as usize], now);
            return None;
        }
        Op::Connect(r) => {
            g.connected(&people[*r as usize]);
            return None;
        }
        Op::Close => Ok(g.close(&coord, now)),
        Op::Reopen => Ok(g.reopen(&coord, now)),
    };
    result.ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_never_break_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut g = grid(350.0);
        let people: Vec<Arc<str>> = (0..10).map(|k| arc(&format!("p{k}"))).collect();
        let mut now = 1_000u64;
        for (k, op) in ops.iter().enumerate() {
            now += match op { Op::Tick(dt) => *dt as u64, _ => 1_000 };
            let before = g.fingerprint();
            let effects = apply(&mut g, op, now, &people);
            if let Err(e) = g.check_invariants() {
                prop_assert!(false, "after {op:?}: {e}");
            }
            match effects {
                None => {
                    if !matches!(op, Op::Disconnect(_) | Op::Connect(_)) {
                        prop_assert_eq!(&g.fingerprint(), &before, "a refused {:?} changed the grid", op);
                    }
                }
                Some(e) => {
                    // Each cell appears once in a delta and matches the grid.
                    let mut seen = std::collections::HashSet::new();
                    for r in &e.changed {
                        prop_assert!(seen.insert(r.cell));
                        prop_assert_eq!(Some(r.clone()), g.record(r.cell));
                    }
                    for a in &e.assigned {
                        prop_assert_eq!(g.cell_of(&a.responder), Some(a.cell));
                    }
                    // Every other mutation is undone and redone: undo is exact.
                    if k % 2 == 0 && !e.is_empty() {
                        prop_assert!(g.undo(e.undo));
                        prop_assert_eq!(&g.fingerprint(), &before, "undo of {:?}", op);
                        apply(&mut g, op, now, &people);
                        g.check_invariants().map_err(TestCaseError::fail)?;
                    }
                }
            }
            // The index always agrees with a full scan.
            let at = Some(offset((k as f64 * 97.0) % 700.0 - 350.0, (k as f64 * 61.0) % 700.0 - 350.0));
            prop_assert_eq!(g.peek_best(at), g.peek_best_by_scan(at));
            prop_assert_eq!(g.peek_best(None), g.peek_best_by_scan(None));
        }
    }
}
