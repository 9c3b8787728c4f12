//! Lost-person distance rings and the probability model built on them: the
//! ring table (`config/lost_person_rings.toml`), one category's cumulative
//! distribution of distance from the point last seen, and the per-area
//! density the grid's cell weights come from. Pure; loading a file is the
//! only I/O and happens at start-up.
//!
//! The model, for a category with rings `d25 < d50 < d75 < d95` (metres):
//!
//! - `P(d)` (probability that the subject is within `d`) is piecewise linear
//!   through `(0,0) (d25,.25) (d50,.5) (d75,.75) (d95,.95)`;
//! - beyond `d95` the remaining 5 % decay exponentially:
//!   `1 - P(d) = 0.05 · exp(-(d - d95) / (tail_scale · d95))`, so every
//!   distance keeps a small positive probability and a coordinator's raise of
//!   a far cell still means something;
//! - the per-area density is `f(d) = P'(d) / (2πd)`;
//! - [`Rings::annulus_density`] is the mean of `f` over an annulus, i.e. the
//!   ring's probability mass divided by its area. A cell at distance `d`
//!   with equivalent radius `h` gets `annulus_density(d-h, d+h) · area`,
//!   which is finite at the point last seen and, when `f` is non-increasing,
//!   non-increasing in `d`.
//!
//! `f` is non-increasing iff the slopes of `P` are (see
//! [`Rings::density_falls`]); [`RingTable::warnings`] names categories for
//! which that is false.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use super::GridError;

/// The probabilities of the four rings, in the order of `rings_m`.
pub const RING_PROBS: [f64; 4] = [0.25, 0.50, 0.75, 0.95];

/// The shipped table, compiled in: used when `grid.rings_file` is empty and
/// by tests.
pub const BUILTIN_TOML: &str = include_str!("../../config/lost_person_rings.toml");

const MIN_TAIL_SCALE: f64 = 0.25;
const MAX_RING_M: f64 = 1_000_000.0;

/// One category's distance distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Rings {
    name: String,
    label: String,
    basis: String,
    /// d25, d50, d75, d95 in metres, strictly increasing.
    d: [f64; 4],
    /// e-folding length of the tail beyond d95, metres.
    tail_m: f64,
}

impl Rings {
    /// Validates and builds a category. `tail_scale` is the tail length as a
    /// fraction of `d95` (at least 0.25).
    pub fn new(name: &str, rings_m: [f64; 4], tail_scale: f64) -> Result<Self, GridError> {
        let bad = |why: String| GridError::Rings(format!("category '{name}': {why}"));
        let name_ok = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(bad("names must be 1-40 characters of a-z, 0-9 and _".into()));
        }
        let mut prev = 0.0;
        for (d, p) in rings_m.iter().zip(RING_PROBS) {
            if !d.is_finite() || *d <= prev || *d > MAX_RING_M {
                return Err(bad(format!(
                    "the {:.0} % ring must be a distance in metres greater than the previous ring \
                     ({prev}) and at most {MAX_RING_M}, got {d}",
                    p * 100.0
                )));
            }
            prev = *d;
        }
        if !tail_scale.is_finite() || !(MIN_TAIL_SCALE..=10.0).contains(&tail_scale) {
            return Err(bad(format!(
                "tail_scale must be between {MIN_TAIL_SCALE} and 10, got {tail_scale}"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            label: name.to_string(),
            basis: String::new(),
            d: rings_m,
            tail_m: tail_scale * rings_m[3],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where the numbers come from, as the table states it.
    pub fn basis(&self) -> &str {
        &self.basis
    }

    /// d25, d50, d75, d95 in metres.
    pub fn rings_m(&self) -> [f64; 4] {
        self.d
    }

    /// The knots of the piecewise-linear part: (distance, cumulative probability).
    fn knots(&self) -> [(f64, f64); 5] {
        [
            (0.0, 0.0),
            (self.d[0], RING_PROBS[0]),
            (self.d[1], RING_PROBS[1]),
            (self.d[2], RING_PROBS[2]),
            (self.d[3], RING_PROBS[3]),
        ]
    }

    /// `1 - P(d)`: the probability that the subject is further than `d`.
    /// Computed directly (not as `1 - cdf`) so far-away masses do not cancel
    /// to zero.
    pub fn survival(&self, d: f64) -> f64 {
        let d = if d.is_finite() { d.max(0.0) } else { f64::MAX };
        let k = self.knots();
        for w in k.windows(2) {
            let ((x0, p0), (x1, p1)) = (w[0], w[1]);
            if d <= x1 {
                return 1.0 - (p0 + (p1 - p0) * (d - x0) / (x1 - x0));
            }
        }
        (1.0 - RING_PROBS[3]) * (-(d - self.d[3]) / self.tail_m).exp()
    }

    /// `P(d)`: the probability that the subject is within `d` metres.
    pub fn cdf(&self, d: f64) -> f64 {
        1.0 - self.survival(d)
    }

    /// Slope of `P` (probability per metre of radius) on each of the five
    /// pieces: four linear segments and the start of the tail.
    fn slopes(&self) -> [f64; 5] {
        let k = self.knots();
        let mut s = [0.0; 5];
        for (i, w) in k.windows(2).enumerate() {
            s[i] = (w[1].1 - w[0].1) / (w[1].0 - w[0].0);
        }
        s[4] = (1.0 - RING_PROBS[3]) / self.tail_m;
        s
    }

    /// Per-area density `P'(d) / (2πd)` (probability per m²); infinite at 0.
    pub fn density(&self, d: f64) -> f64 {
        let d = d.max(0.0);
        let slope = if d <= self.d[3] {
            let i = self.d.iter().position(|x| d <= *x).unwrap_or(3);
            self.slopes()[i]
        } else {
            (1.0 - RING_PROBS[3]) / self.tail_m * (-(d - self.d[3]) / self.tail_m).exp()
        };
        slope / (2.0 * PI * d)
    }

    /// Mean per-area density over the annulus `a..b` (metres, `a < b`; `a`
    /// is clamped to 0): the annulus's probability mass divided by its area.
    pub fn annulus_density(&self, a: f64, b: f64) -> f64 {
        let a = a.max(0.0);
        if b <= a {
            return self.density(a);
        }
        let mass = (self.survival(a) - self.survival(b)).max(0.0);
        mass / (PI * (b * b - a * a))
    }

    /// True when the per-area density never rises with distance, i.e. the
    /// slopes of `P` are non-increasing. Then cell weights fall with
    /// distance from the point last seen.
    pub fn density_falls(&self) -> bool {
        self.slopes().windows(2).all(|w| w[1] <= w[0])
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    default: String,
    #[serde(default = "default_tail_scale")]
    tail_scale: f64,
    categories: BTreeMap<String, RawRings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRings {
    #[serde(default)]
    label: String,
    rings_m: [f64; 4],
    #[serde(default)]
    basis: String,
    #[serde(default)]
    tail_scale: Option<f64>,
}

fn default_tail_scale() -> f64 {
    0.5
}

/// Every category of the ring table, and the one used when an alert names none.
#[derive(Debug, Clone, PartialEq)]
pub struct RingTable {
    categories: BTreeMap<String, Rings>,
    default: Rings,
}

impl RingTable {
    /// Parses a table in the format of `config/lost_person_rings.toml`.
    pub fn from_toml_str(text: &str) -> Result<Self, GridError> {
        let raw: RawTable = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| GridError::Rings(e.to_string()))?;
        let mut categories = BTreeMap::new();
        for (name, r) in raw.categories {
            let mut rings = Rings::new(&name, r.rings_m, r.tail_scale.unwrap_or(raw.tail_scale))?;
            if !r.label.trim().is_empty() {
                rings.label = r.label.trim().to_string();
            }
            rings.basis = r.basis.trim().to_string();
            categories.insert(name, rings);
        }
        let Some(default) = categories.get(&raw.default).cloned() else {
            return Err(GridError::Rings(format!(
                "default category '{}' is not in [categories]",
                raw.default
            )));
        };
        Ok(Self {
            categories,
            default,
        })
    }

    /// Reads and parses a table file.
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GridError::Rings(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text).map_err(|e| GridError::Rings(format!("{}: {e}", path.display())))
    }

    /// The table shipped in `config/lost_person_rings.toml`, compiled in.
    pub fn builtin() -> Result<Self, GridError> {
        Self::from_toml_str(BUILTIN_TOML)
    }

    pub fn get(&self, name: &str) -> Option<&Rings> {
        self.categories.get(name)
    }

    /// The category used when an alert names none.
    pub fn default_rings(&self) -> &Rings {
        &self.default
    }

    /// The category for an alert's `subject`: the default when none is
    /// given, an error (safe to show) when the name is unknown.
    pub fn resolve(&self, subject: Option<&str>) -> Result<&Rings, GridError> {
        match subject {
            None => Ok(self.default_rings()),
            Some(name) => self.get(name).ok_or_else(|| GridError::UnknownCategory {
                got: name.chars().take(40).collect(),
                known: self.names().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.categories.keys().map(String::as_str)
    }

    /// Categories whose density rises somewhere (to log at start-up).
    pub fn warnings(&self) -> Vec<String> {
        self.categories
            .values()
            .filter(|r| !r.density_falls())
            .map(|r| {
                format!(
                    "lost-person category '{}': the probability per area rises at a ring boundary \
                     (a ring further out is denser than the one inside it); cells are weighted as \
                     the table says, so the most likely cells are not simply the nearest",
                    r.name
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RingTable {
        RingTable::builtin().expect("the shipped table parses")
    }

    #[test]
    fn shipped_table_has_the_categories_and_no_warnings() {
        let t = table();
        for name in [
            "child_4_6",
            "child_7_12",
            "child_13_15",
            "adult",
            "elder_dementia",
            "default",
        ] {
            let r = t.get(name).expect(name);
            assert!(!r.basis().is_empty(), "{name} cites no basis");
        }
        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
        assert_eq!(t.resolve(None).expect("default").name(), "default");
        assert!(matches!(
            t.resolve(Some("martian")),
            Err(GridError::UnknownCategory { .. })
        ));
    }

    #[test]
    fn cdf_passes_through_the_rings_and_tends_to_one() {
        for r in table().categories.values() {
            for (d, p) in r.rings_m().iter().zip(RING_PROBS) {
                assert!((r.cdf(*d) - p).abs() < 1e-12, "{} at {d}", r.name());
            }
            assert_eq!(r.cdf(0.0), 0.0);
            let mid = (r.rings_m()[0] + r.rings_m()[1]) / 2.0;
            assert!((r.cdf(mid) - 0.375).abs() < 1e-12, "linear between rings");
            assert!(r.cdf(r.rings_m()[3] * 20.0) > 0.999_999);
            assert!(
                r.survival(r.rings_m()[3] * 50.0) > 0.0,
                "tail stays positive"
            );
        }
    }

    #[test]
    fn density_falls_with_distance_for_every_shipped_category() {
        for r in table().categories.values() {
            assert!(r.density_falls(), "{}", r.name());
            let mut last = f64::INFINITY;
            let mut d = 10.0;
            while d < r.rings_m()[3] * 3.0 {
                let f = r.annulus_density(d - 80.0, d + 80.0);
                assert!(f <= last * (1.0 + 1e-12), "{} rises at {d}", r.name());
                assert!(f > 0.0);
                last = f;
                d += 37.0;
            }
        }
    }

    #[test]
    fn annulus_mass_matches_the_cdf() {
        let t = table();
        let r = t.get("child_7_12").expect("cat");
        let (a, b) = (500.0, 1200.0);
        let mass = r.annulus_density(a, b) * PI * (b * b - a * a);
        assert!((mass - (r.cdf(b) - r.cdf(a))).abs() < 1e-12);
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        let cases = [
            (
                "default = \"x\"\n[categories.x]\nrings_m = [100, 100, 200, 300]",
                "greater",
            ),
            (
                "default = \"y\"\n[categories.x]\nrings_m = [100, 200, 300, 400]",
                "default",
            ),
            (
                "default = \"X\"\n[categories.X]\nrings_m = [100, 200, 300, 400]",
                "a-z",
            ),
            (
                "default = \"x\"\ntail_scale = 0.1\n[categories.x]\nrings_m = [1, 2, 3, 4]",
                "tail",
            ),
            ("default = \"x\"\n[categories.x]\nrings_m = [1, 2, 3]", ""),
        ];
        for (text, needle) in cases {
            let err = RingTable::from_toml_str(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_rising_density_is_reported() {
        let t = RingTable::from_toml_str(
            "default = \"x\"\n[categories.x]\nrings_m = [300, 400, 900, 2000]",
        )
        .expect("parses");
        assert_eq!(t.warnings().len(), 1);
    }
}
