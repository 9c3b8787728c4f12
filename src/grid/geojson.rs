//! The grid as a GeoJSON FeatureCollection (RFC 7946) for
//! `GET /api/v1/alerts/{id}/grid`: one Polygon Feature per cell, its
//! boundary as a single closed linear ring in `[lng, lat]` order with a
//! counter-clockwise exterior (checked with a signed-area test, reversed if
//! needed).
//!
//! A cell that straddles the antimeridian is emitted with its longitudes
//! unwrapped into one continuous ring (some beyond ±180) rather than cut in
//! two as RFC 7946 §3.1.9 suggests; no alert of this hub is expected there.

use h3o::CellIndex;
use serde::Serialize;
use serde_json::Value;

use super::grid::SearchGrid;
use super::wire::{CellState, StateCounts};

/// Twice the signed area of a ring in the `[x, y]` plane (shoelace):
/// positive when counter-clockwise. The closing vertex may be present.
pub fn signed_area2(ring: &[[f64; 2]]) -> f64 {
    let n = ring.len();
    if n < 3 {
        return 0.0;
    }
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum()
}

/// The cell's boundary as an RFC 7946 exterior ring: `[lng, lat]`, closed
/// (first vertex repeated last), counter-clockwise.
pub fn cell_ring(cell: CellIndex) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = Vec::with_capacity(8);
    for ll in cell.boundary().iter() {
        let mut lng = ll.lng();
        if let Some(prev) = ring.last() {
            // Keep the ring continuous across the antimeridian.
            while lng - prev[0] > 180.0 {
                lng -= 360.0;
            }
            while lng - prev[0] < -180.0 {
                lng += 360.0;
            }
        }
        ring.push([lng, ll.lat()]);
    }
    if signed_area2(&ring) < 0.0 {
        ring.reverse();
    }
    if let Some(first) = ring.first().copied() {
        ring.push(first);
    }
    ring
}

#[derive(Serialize)]
struct Collection<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<Feature<'a>>,
    covered_ratio: f64,
    covered_ratio_weighted: f64,
    counts: StateCounts,
}

#[derive(Serialize)]
struct Feature<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    geometry: Polygon,
    properties: Properties<'a>,
}

#[derive(Serialize)]
struct Polygon {
    #[serde(rename = "type")]
    kind: &'static str,
    coordinates: [Vec<[f64; 2]>; 1],
}

#[derive(Serialize)]
struct Properties<'a> {
    cell: String,
    state: CellState,
    weight: f64,
    priority: u32,
    factor: f64,
    assignee: Option<&'a str>,
    changed_by: &'a str,
    changed_at: u64,
    assigned_at: Option<u64>,
}

impl SearchGrid {
    fn collection(&self) -> Collection<'_> {
        let features = self
            .cells_raw()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let hex = c.id.to_string();
                Feature {
                    kind: "Feature",
                    id: hex.clone(),
                    geometry: Polygon {
                        kind: "Polygon",
                        coordinates: [cell_ring(c.id)],
                    },
                    properties: Properties {
                        cell: hex,
                        state: c.state,
                        weight: self.weight_of_index(i),
                        priority: c.rank,
                        factor: c.factor,
                        assignee: c.assignee.as_deref(),
                        changed_by: &c.changed_by,
                        changed_at: c.changed_at,
                        assigned_at: c.assigned_at,
                    },
                }
            })
            .collect();
        Collection {
            kind: "FeatureCollection",
            features,
            covered_ratio: self.covered_ratio(),
            covered_ratio_weighted: self.covered_ratio_weighted(),
            counts: self.counts(),
        }
    }

    /// The grid as a FeatureCollection. Each Feature has `id` = the cell's
    /// hex index and properties `cell`, `state`, `weight`, `priority`
    /// (rank, 1 = most probable), `factor`, `assignee` (string or null),
    /// `changed_by`, `changed_at` (ms), `assigned_at` (ms or null). The
    /// collection carries `covered_ratio`, `covered_ratio_weighted` and
    /// `counts` as foreign members.
    pub fn to_geojson(&self) -> Value {
        serde_json::to_value(self.collection()).unwrap_or(Value::Null)
    }

    /// The same document serialized straight to JSON bytes (no intermediate
    /// `Value`): what the HTTP handler should send.
    pub fn to_geojson_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.collection()).unwrap_or_default()
    }
}
