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

/// Every cell of resolution `res` whose centre lies within `radius_m` of
/// `centre`, sorted.
///
/// The search ring `k` comes from the *measured* spacing of neighbouring cell
/// centres around `centre` (with a margin for the distortion across the
/// disk), not from the average edge length: the average overestimates the
/// spacing by ~20 % and would miss cells at the rim.
pub fn cover(centre: LatLng, radius_m: f64, res: Resolution) -> Result<Vec<CellIndex>, GeoError> {
    let origin = cell_at(centre, res)?;
    let k = safe_ring(origin, radius_m);
    let mut cells: Vec<CellIndex> = origin
        .grid_disk::<Vec<_>>(k)
        .into_iter()
        .filter(|cell| distance_m(center(*cell), centre) <= radius_m)
        .collect();
    cells.sort_unstable();
    Ok(cells)
}

/// A grid distance large enough that every cell centre within `radius_m` of
/// any point of `origin` lies inside `origin.grid_disk(k)`.
fn safe_ring(origin: CellIndex, radius_m: f64) -> u32 {
    let here = center(origin);
    let min_spacing = origin
        .grid_disk::<Vec<_>>(1)
        .into_iter()
        .filter(|c| *c != origin)
        .map(|c| distance_m(center(c), here))
        .fold(f64::INFINITY, f64::min);
    // 0.8: H3 cell size varies by far less than 20 % over the largest disk
    // config allows (tens of km); +1 for the offset of the point within its cell.
    let spacing = (min_spacing * 0.8).max(0.5);
    ((radius_m / spacing).ceil() as u32).saturating_add(1)
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
        let cells = cover(jiaxing(), 2000.0, res).expect("cover");
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
