//! Domain types parsed once at the edge (HTTP body, WebSocket frame, token),
//! so the core never re-checks them: roles, units, validated coordinates,
//! alert ids and the ack / alert state machines.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why an input value was refused; the message is safe to show to a client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DomainError {
    #[error("latitude must be a finite number between -90 and 90, got {0}")]
    BadLatitude(f64),
    #[error("longitude must be a finite number between -180 and 180, got {0}")]
    BadLongitude(f64),
    #[error("radius_m must be a finite number between 1 and {max}, got {got}")]
    BadRadius { got: f64, max: f64 },
    #[error("{0}")]
    Invalid(String),
}

/// What a caller may do; carried in the token's `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Police,
    Coordinator,
    Responder,
}

impl Role {
    /// Police and coordinators see every alert and may watch acks and coverage.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Police | Role::Coordinator)
    }
}

impl std::str::FromStr for Role {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "police" => Ok(Role::Police),
            "coordinator" => Ok(Role::Coordinator),
            "responder" => Ok(Role::Responder),
            other => Err(DomainError::Invalid(format!(
                "unknown role '{other}' (police, coordinator, responder)"
            ))),
        }
    }
}

/// The kind of responder; an alert's `audience` is a set of units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Volunteer,
    Patrol,
    Staff,
}

impl Unit {
    pub const ALL: [Unit; 3] = [Unit::Volunteer, Unit::Patrol, Unit::Staff];

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Volunteer => "volunteer",
            Unit::Patrol => "patrol",
            Unit::Staff => "staff",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Unit::Volunteer => 1,
            Unit::Patrol => 2,
            Unit::Staff => 4,
        }
    }
}

impl std::str::FromStr for Unit {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "volunteer" => Ok(Unit::Volunteer),
            "patrol" => Ok(Unit::Patrol),
            "staff" => Ok(Unit::Staff),
            other => Err(DomainError::Invalid(format!(
                "unknown unit '{other}' (volunteer, patrol, staff)"
            ))),
        }
    }
}

/// A set of units as a bit mask, so the fan-out filter is one AND per responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitSet(u8);

impl UnitSet {
    pub fn all() -> Self {
        Self(7)
    }
    pub fn contains(self, unit: Unit) -> bool {
        self.0 & unit.bit() != 0
    }
    pub fn insert(&mut self, unit: Unit) {
        self.0 |= unit.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn units(self) -> Vec<Unit> {
        Unit::ALL
            .into_iter()
            .filter(|u| self.contains(*u))
            .collect()
    }
}

impl FromIterator<Unit> for UnitSet {
    fn from_iter<I: IntoIterator<Item = Unit>>(iter: I) -> Self {
        let mut set = UnitSet::default();
        for unit in iter {
            set.insert(unit);
        }
        set
    }
}

/// A WGS84 point that is known to be finite and in range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatLng {
    pub lat: f64,
    pub lng: f64,
}

impl LatLng {
    pub fn new(lat: f64, lng: f64) -> Result<Self, DomainError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(DomainError::BadLatitude(lat));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(DomainError::BadLongitude(lng));
        }
        Ok(Self { lat, lng })
    }
}

impl<'de> Deserialize<'de> for LatLng {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            lat: f64,
            lng: f64,
        }
        let raw = Raw::deserialize(d)?;
        LatLng::new(raw.lat, raw.lng).map_err(serde::de::Error::custom)
    }
}

/// Validates a search radius against the configured cap.
pub fn validate_radius(radius_m: f64, max_m: f64) -> Result<f64, DomainError> {
    if !radius_m.is_finite() || radius_m < 1.0 || radius_m > max_m {
        return Err(DomainError::BadRadius {
            got: radius_m,
            max: max_m,
        });
    }
    Ok(radius_m)
}

/// Opaque alert id: `al_` and 16 hex digits; cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(Arc<str>);

impl AlertId {
    pub fn generate() -> Self {
        Self(format!("al_{:016x}", rand::random::<u64>()).into())
    }
    /// Accepts what a client sends; anything else can never name an alert.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(DomainError::Invalid(format!("'{s}' is not an alert id")))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A responder's answer to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckState {
    Received,
    Accepted,
    Declined,
    Arrived,
}

impl AckState {
    pub fn as_str(self) -> &'static str {
        match self {
            AckState::Received => "received",
            AckState::Accepted => "accepted",
            AckState::Declined => "declined",
            AckState::Arrived => "arrived",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "received" => Some(AckState::Received),
            "accepted" => Some(AckState::Accepted),
            "declined" => Some(AckState::Declined),
            "arrived" => Some(AckState::Arrived),
            _ => None,
        }
    }
    /// The latest state after `next` is reported on top of `current`.
    /// A late delivery receipt (`received`) never undoes a decision; every
    /// report is still kept in the history.
    pub fn merge(current: Option<AckState>, next: AckState) -> AckState {
        match (current, next) {
            (Some(cur), AckState::Received) => cur,
            (_, next) => next,
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Active,
    /// A searcher reported the subject found; searchers stand down and
    /// police resolve it.
    Found,
    Cancelled,
    Resolved,
    Expired,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Active => "active",
            AlertStatus::Found => "found",
            AlertStatus::Cancelled => "cancelled",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Expired => "expired",
        }
    }
    /// Still open: not yet cancelled, resolved or expired.
    pub fn is_open(self) -> bool {
        matches!(self, AlertStatus::Active | AlertStatus::Found)
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AlertStatus::Active),
            "found" => Some(AlertStatus::Found),
            "cancelled" => Some(AlertStatus::Cancelled),
            "resolved" => Some(AlertStatus::Resolved),
            "expired" => Some(AlertStatus::Expired),
            _ => None,
        }
    }
}

/// Who is calling, as proven by a verified token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    pub sub: Arc<str>,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Milliseconds since the Unix epoch: the one clock of the record.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_are_validated() {
        assert!(LatLng::new(30.75, 120.75).is_ok());
        assert!(matches!(
            LatLng::new(f64::NAN, 0.0),
            Err(DomainError::BadLatitude(_))
        ));
        assert!(matches!(
            LatLng::new(91.0, 0.0),
            Err(DomainError::BadLatitude(_))
        ));
        assert!(matches!(
            LatLng::new(0.0, 180.5),
            Err(DomainError::BadLongitude(_))
        ));
        assert!(validate_radius(0.0, 100.0).is_err());
        assert!(validate_radius(f64::INFINITY, 100.0).is_err());
        assert!(validate_radius(101.0, 100.0).is_err());
    }

    #[test]
    fn late_receipt_never_undoes_a_decision() {
        use AckState::*;
        assert_eq!(AckState::merge(None, Received), Received);
        assert_eq!(AckState::merge(Some(Accepted), Received), Accepted);
        assert_eq!(AckState::merge(Some(Accepted), Declined), Declined);
        assert_eq!(AckState::merge(Some(Accepted), Arrived), Arrived);
    }

    #[test]
    fn alert_ids_are_checked() {
        assert!(AlertId::parse("al_00ff").is_ok());
        assert!(AlertId::parse("").is_err());
        assert!(AlertId::parse("../etc").is_err());
        assert!(AlertId::generate().as_str().starts_with("al_"));
    }
}
