//! Search-grid benches: assigning 1,000 accepting responders over a
//! 5,000-cell grid (the figure), the cell choice with the bucket
//! index against a full scan, building the grid, and its GeoJSON export.
//!
//! `cargo bench --bench grid`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use woodpecker::domain::LatLng;
use woodpecker::geo;
use woodpecker::grid::{GridSpec, RingTable, SearchGrid};

const CELLS: usize = 5_000;
const RESPONDERS: usize = 1_000;

fn jiaxing() -> LatLng {
    LatLng::new(30.7522, 120.7585).expect("valid")
}

fn spec(radius_m: f64) -> GridSpec {
    GridSpec {
        centre: jiaxing(),
        radius_m,
        resolution: geo::resolution(9).expect("res"),
        distance_scale_m: 500.0,
        max_cells: 50_000,
    }
}

/// The radius whose circle covers about `CELLS` resolution-9 cells.
fn radius_for_cells() -> f64 {
    let (mut lo, mut hi) = (1_000.0, 30_000.0);
    for _ in 0..30 {
        let mid = (lo + hi) / 2.0;
        let n = geo::cover(jiaxing(), mid, geo::resolution(9).expect("res"))
            .expect("cover")
            .len();
        if n < CELLS { lo = mid } else { hi = mid }
    }
    hi
}

/// Deterministic points spread uniformly over the circle.
fn points(n: usize, radius_m: f64) -> Vec<LatLng> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let c = jiaxing();
    (0..n)
        .map(|_| {
            let r = radius_m * next().sqrt();
            let a = next() * std::f64::consts::TAU;
            let lat = c.lat + r * a.sin() / 111_320.0;
            let lng = c.lng + r * a.cos() / (111_320.0 * c.lat.to_radians().cos());
            LatLng::new(lat, lng).expect("valid")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let table = RingTable::builtin().expect("rings");
    let rings = table.get("child_7_12").expect("category");
    let by: Arc<str> = Arc::from("police-1");
    let radius = radius_for_cells();
    let grid = SearchGrid::new(spec(radius), rings, &by, 0).expect("grid");
    let people: Vec<Arc<str>> = (0..RESPONDERS)
        .map(|k| Arc::from(format!("r{k:04}")))
        .collect();
    let at = points(RESPONDERS, radius);
    eprintln!(
        "grid: {} cells (radius {:.0} m), {} responders",
        grid.len(),
        radius,
        RESPONDERS
    );

    let mut g = c.benchmark_group("grid");
    g.sample_size(20);

    g.bench_function("assign_1000_responders_5000_cells", |b| {
        b.iter_batched(
            || grid.clone(),
            |mut grid| {
                for (k, r) in people.iter().enumerate() {
                    let (a, e) = grid.assign_next(r, Some(at[k]), k as u64).expect("assign");
                    black_box((a, e));
                }
                grid
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("assign_1000_responders_5000_cells_no_position", |b| {
        b.iter_batched(
            || grid.clone(),
            |mut grid| {
                for (k, r) in people.iter().enumerate() {
                    black_box(grid.assign_next(r, None, k as u64).expect("assign"));
                }
                grid
            },
            BatchSize::LargeInput,
        )
    });

    // The choice alone, on the full pool, 1000 positions: index vs scan.
    g.bench_function("choose_1000_index", |b| {
        b.iter(|| {
            for p in &at {
                black_box(grid.peek_best(Some(*p)));
            }
        })
    });
    g.bench_function("choose_1000_full_scan", |b| {
        b.iter(|| {
            for p in &at {
                black_box(grid.peek_best_by_scan(Some(*p)));
            }
        })
    });

    g.bench_function("build_5000_cells", |b| {
        b.iter(|| black_box(SearchGrid::new(spec(radius), rings, &by, 0).expect("grid")))
    });

    g.bench_function("geojson_bytes_5000_cells", |b| {
        b.iter(|| black_box(grid.to_geojson_bytes()))
    });
    g.bench_function("geojson_5000_cells", |b| {
        b.iter(|| black_box(grid.to_geojson()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
