//! H3 geofence: which cells a circle covers, a point's cell, a cell's centre
//! and boundary. Pure functions, no I/O; the hub and the grid build on them.
//!
//! A cell is "inside" an alert when its centre lies within the radius of the
//! alert's centre (great-circle distance), as the wire contract says.

use geo::{Distance, Haversine, Point};
use h3o::{CellIndex, LatLng as H3LatLng, Resolution};

use crate::domain::LatLng;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("resolution {0} is not an H3 resolution (0..=15)")]
    BadResolution(u8),
    #[error("'{0}' is not an H3 cell index")]
    BadCell(String),
    #[error("coordinate out of range")]
    BadPoint,
}

/// Parses a resolution from config.
pub fn resolution(res: u8) -> Result<Resolution, GeoError> {
    Resolution::try_from(res).map_err(|_| GeoError::BadResolution(res))
}

/// The cell containing a point. Coordinates are validated at the edge, so
/// this cannot fail for a [`LatLng`]; the error path is kept for safety.
pub fn cell_at(point: LatLng, res: Resolution) -> Result<CellIndex, GeoError> {
    H3LatLng::new(point.lat, point.lng)
        .map(|ll| ll.to_cell(res))
        .map_err(|_| GeoError::BadPoint)
}

/// Parses a cell from its hex string (as clients send it).
pub fn parse_cell(s: &str) -> Result<CellIndex, GeoError> {
    s.parse::<CellIndex>()
        .map_err(|_| GeoError::BadCell(s.chars().take(32).collect()))
}

pub fn center(cell: CellIndex) -> LatLng {
    let ll = H3LatLng::from(cell);
    LatLng {
        lat: ll.lat(),
        lng: ll.lng(),
    }
}

/// Great-circle distance in metres.
pub fn distance_m(a: LatLng, b: LatLng) -> f64 {
    Haversine.distance(Point::new(a.lng, a.lat), Point::new(b.lng, b.lat))
}

/// The cell's boundary as `[lat, lng]` pairs, in H3's (counter-clockwise) order.
pub fn boundary(cell: CellIndex) -> Vec<[f64; 2]> {
    cell.boundary()
        .iter()
        .map(|ll| [ll.lat(), ll.lng()])
        .collect()
}

/// The cell's boundary as one closed GeoJSON ring: `[lng, lat]` positions,
/// first = last, counter-clockwise (RFC 7946 exterior ring).
pub fn ring_lng_lat(cell: CellIndex) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = cell
        .boundary()
        .iter()
        .map(|ll| [ll.lng(), ll.lat()])
        .collect();
    let signed_area: f64 = ring
        .iter()
        .zip(ring.iter().cycle().skip(1))
        .map(|(a, b)| a[0] * b[1] - b[0] * a[1])
        .sum();
    if signed_area < 0.0 {
        ring.reverse();
    }
    if let Some(first) = ring.first().copied() {
        ring.push(first);
    }
    ring
}

/// Every cell of resolution `res` whose centre lies within `radius_m` of
/// `centre` (in no particular order).
///
/// Works ring by ring out from the centre's cell, with bounds taken from the
/// *measured* spacing of neighbouring cell centres there (the average edge
/// length overestimates it by ~20 % and would miss cells at the rim):
/// - a cell `d` steps out is at most `d × widest step` away, so rings that
///   close are inside without computing a centre;
/// - it is at least `d × narrowest step × √3/2` away, so the walk stops at
///   the first ring that must lie outside.
///
/// Only the band between the two is checked exactly (great-circle distance
/// of the cell centre), which is what bounds the cost for large radii.
pub fn cover(centre: LatLng, radius_m: f64, res: Resolution) -> Result<Vec<CellIndex>, GeoError> {
    let origin = cell_at(centre, res)?;
    let here = self::center(origin);
    let (narrowest, widest) = neighbour_spacing(origin, here);
    let offset = distance_m(here, centre);
    // Margins: cell size drifts by a few per cent over the largest disk
    // config allows; 10 % either way keeps both bounds safe.
    let min_step = narrowest * 0.9 * (3f64.sqrt() / 2.0);
    let max_step = widest * 1.1;
    let outermost = ((radius_m + offset) / min_step).ceil() as u32 + 1;
    let surely_inside = if radius_m > offset {
        ((radius_m - offset) / max_step).floor() as u32
    } else {
        0
    };
    let cells = origin
        .grid_disk_distances::<Vec<(CellIndex, u32)>>(outermost)
        .into_iter()
        .filter(|(cell, d)| {
            (*d <= surely_inside && radius_m > offset)
                || distance_m(self::center(*cell), centre) <= radius_m
        })
        .map(|(cell, _)| cell)
        .collect();
    Ok(cells)
}

/// The shortest and longest distance from `origin`'s centre to a neighbour's.
fn neighbour_spacing(origin: CellIndex, here: LatLng) -> (f64, f64) {
    origin
        .grid_disk::<Vec<_>>(1)
        .into_iter()
        .filter(|c| *c != origin)
        .map(|c| distance_m(self::center(c), here))
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), d| {
            (lo.min(d), hi.max(d))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jiaxing() -> LatLng {
        LatLng::new(30.7522, 120.7585).expect("valid")
    }

    #[test]
    fn known_cell_for_jiaxing() {
        let res = resolution(9).expect("res");
        assert_eq!(
            cell_at(jiaxing(), res).expect("cell").to_string(),
            "89309aa71c3ffff"
        );
    }

    #[test]
    fn two_km_cover_matches_a_brute_force_scan() {
        let res = resolution(9).expect("res");
        let mut cells = cover(jiaxing(), 2000.0, res).expect("cover");
        cells.sort_unstable();
        // Brute force over a much larger disk.
        let origin = cell_at(jiaxing(), res).expect("cell");
        let mut brute: Vec<_> = origin
            .grid_disk::<Vec<_>>(20)
            .into_iter()
            .filter(|c| distance_m(center(*c), jiaxing()) <= 2000.0)
            .collect();
        brute.sort_unstable();
        assert_eq!(cells, brute);
        assert!(cells.len() >= 150, "got {}", cells.len());
    }

    #[test]
    fn tiny_radius_may_cover_nothing_or_the_centre_cell() {
        let res = resolution(9).expect("res");
        let cells = cover(jiaxing(), 1.0, res).expect("cover");
        assert!(cells.len() <= 1);
    }

    #[test]
    fn boundary_has_six_vertices_for_a_hexagon() {
        let res = resolution(9).expect("res");
        let cell = cell_at(jiaxing(), res).expect("cell");
        assert_eq!(boundary(cell).len(), 6);
        assert!(parse_cell("89309aa71c3ffff").is_ok());
        assert!(parse_cell("zz").is_err());
    }
}
