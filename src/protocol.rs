//! The wire contract (`docs/protocol.md`): WebSocket message types, the alert
//! object, error codes and their close codes, and the encoders that turn a
//! server message into a [`Frame`] once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{AckState, AlertId, AlertStatus, LatLng, Principal, Unit};
use crate::hub::Frame;

/// Error codes shared by HTTP and WebSocket; clients branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    BadRequest,
    NotFound,
    Conflict,
    RateLimited,
    TooBig,
    Slow,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooBig => "too_big",
            ErrorCode::Slow => "slow",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// The WebSocket close code used when this error ends the connection.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 4000,
            ErrorCode::Unauthorized => 4001,
            ErrorCode::Forbidden => 4003,
            ErrorCode::NotFound => 4004,
            ErrorCode::Conflict => 4009,
            ErrorCode::RateLimited => 4008,
            ErrorCode::Slow => 4010,
            ErrorCode::TooBig => 1009,
            ErrorCode::Internal => 1011,
            ErrorCode::Unavailable => 1013,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooBig => 413,
            ErrorCode::RateLimited | ErrorCode::Slow => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// A client-facing error: a code and a message that never carries internals.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the request was not applied",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<crate::domain::DomainError> for ApiError {
    fn from(e: crate::domain::DomainError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// Client → server messages.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Hello {
        token: String,
        #[serde(default)]
        since_seq: Option<u64>,
    },
    Location {
        lat: f64,
        lng: f64,
        #[serde(default)]
        accuracy_m: Option<f64>,
        #[serde(default)]
        id: Option<Value>,
    },
    Ack {
        alert: String,
        state: AckState,
        #[serde(default)]
        id: Option<Value>,
    },
    Cell {
        alert: String,
        cell: String,
        state: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Watch {
        alert: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Unwatch {
        alert: String,
        #[serde(default)]
        id: Option<Value>,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
    /// A coordinator gives a search cell to a responder (or takes it back
    /// when `responder` is absent).
    Assign {
        alert: String,
        cell: String,
        #[serde(default)]
        responder: Option<String>,
        #[serde(default)]
        id: Option<Value>,
    },
    /// The responder goes off duty: its cell is forgotten at once.
    OffDuty {
        #[serde(default)]
        id: Option<Value>,
    },
}

pub const CLIENT_TYPES: &[&str] = &[
    "hello", "location", "ack", "cell", "watch", "unwatch", "ping", "off_duty", "assign",
];

impl ClientMessage {
    /// Parses one text frame. The fast path is one typed parse; only a frame
    /// that fails it is looked at again, to say precisely what is wrong.
    pub fn parse(text: &str) -> Result<Self, (Option<Value>, ApiError)> {
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(msg) => Ok(msg),
            Err(typed_err) => Err(diagnose(text, typed_err)),
        }
    }

    pub fn id(&self) -> Option<&Value> {
        match self {
            ClientMessage::Hello { .. } => None,
            ClientMessage::Location { id, .. }
            | ClientMessage::Ack { id, .. }
            | ClientMessage::Cell { id, .. }
            | ClientMessage::Watch { id, .. }
            | ClientMessage::Unwatch { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::OffDuty { id }
            | ClientMessage::Assign { id, .. } => id.as_ref(),
        }
    }
}

fn diagnose(text: &str, typed_err: serde_json::Error) -> (Option<Value>, ApiError) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, ApiError::bad_request(format!("malformed JSON: {e}"))),
    };
    let id = value.get("id").cloned();
    let Some(obj) = value.as_object() else {
        return (id, ApiError::bad_request("a message must be a JSON object"));
    };
    match obj.get("type").and_then(Value::as_str) {
        None => (id, ApiError::bad_request("missing string field 'type'")),
        Some(t) if !CLIENT_TYPES.contains(&t) => (
            id,
            ApiError::bad_request(format!(
                "unknown type '{}'",
                t.chars().take(40).collect::<String>()
            )),
        ),
        Some(t) => (
            id,
            ApiError::bad_request(format!("invalid '{t}' message: {typed_err}")),
        ),
    }
}

/// CAP urgency (`immediate`, `expected`, `future`, `past`, `unknown`).
pub const URGENCIES: &[&str] = &["immediate", "expected", "future", "past", "unknown"];
/// CAP severity (`extreme`, `severe`, `moderate`, `minor`, `unknown`).
pub const SEVERITIES: &[&str] = &["extreme", "severe", "moderate", "minor", "unknown"];

/// The alert object of the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    pub kind: String,
    pub status: AlertStatus,
    pub title: String,
    pub body: String,
    pub center: LatLng,
    pub radius_m: f64,
    pub audience: Vec<Unit>,
    pub urgency: String,
    pub severity: String,
    /// Unix milliseconds.
    pub issued_at: u64,
    pub issued_by: String,
    /// Unix milliseconds.
    pub expires_at: u64,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckCounts {
    pub targeted: usize,
    pub delivered: usize,
    pub push_sent: usize,
    pub received: usize,
    pub accepted: usize,
    pub declined: usize,
    pub arrived: usize,
}

#[derive(Serialize)]
struct SeqAlert<'a> {
    r#type: &'a str,
    seq: u64,
    alert: &'a Alert,
}

/// Encodes a server message once into a shareable frame.
pub fn to_frame<T: Serialize>(value: &T) -> Frame {
    // Serializing our own types to a Vec cannot fail (no maps with non-string
    // keys, no failing Serialize impls); fall back to an internal error frame.
    match serde_json::to_vec(value) {
        Ok(v) => Frame::from(v),
        Err(_) => {
            Frame::from_static(br#"{"type":"error","code":"internal","message":"encoding failed"}"#)
        }
    }
}

/// `alert` (new to the recipient) or `alert_update` (a change to one it has).
pub fn alert_frame(kind: AlertEventKind, seq: u64, alert: &Alert) -> Frame {
    to_frame(&SeqAlert {
        r#type: kind.as_str(),
        seq,
        alert,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEventKind {
    Alert,
    Update,
}

impl AlertEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventKind::Alert => "alert",
            AlertEventKind::Update => "alert_update",
        }
    }
}

pub fn welcome_frame(user: &Principal, seq: u64, heartbeat_s: u64) -> Frame {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        user: &'a Principal,
        seq: u64,
        heartbeat_s: u64,
    }
    to_frame(&Welcome {
        r#type: "welcome",
        user,
        seq,
        heartbeat_s,
    })
}

pub fn ok_frame(id: Option<&Value>) -> Frame {
    #[derive(Serialize)]
    struct Ok<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    }
    to_frame(&Ok { r#type: "ok", id })
}

pub fn error_frame(id: Option<&Value>, err: &ApiError) -> Frame {
    #[derive(Serialize)]
    struct Err<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        code: &'static str,
        message: &'a str,
    }
    to_frame(&Err {
        r#type: "error",
        id,
        code: err.code.as_str(),
        message: &err.message,
    })
}

pub fn pong_frame(id: Option<&Value>) -> Frame {
    #[derive(Serialize)]
    struct Pong<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    }
    to_frame(&Pong { r#type: "pong", id })
}

/// One responder's ack as watchers see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AckRecord {
    pub alert: AlertId,
    pub responder: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub unit: Unit,
    pub state: AckState,
    /// Unix milliseconds.
    pub at: u64,
}

pub fn ack_frame(ack: &AckRecord) -> Frame {
    #[derive(Serialize)]
    struct AckMsg<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        ack: &'a AckRecord,
    }
    to_frame(&AckMsg { r#type: "ack", ack })
}

pub fn ack_summary_frame(alert: &AlertId, counts: &AckCounts) -> Frame {
    #[derive(Serialize)]
    struct Summary<'a> {
        r#type: &'static str,
        alert: &'a AlertId,
        counts: &'a AckCounts,
    }
    to_frame(&Summary {
        r#type: "ack_summary",
        alert,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> String {
        match ClientMessage::parse(text) {
            Ok(_) => "ok".into(),
            Err((_, e)) => e.message,
        }
    }

    #[test]
    fn parse_errors_are_specific() {
        assert!(code_of("{not json").starts_with("malformed JSON"));
        assert_eq!(code_of("[1]"), "a message must be a JSON object");
        assert_eq!(code_of(r#"{"a":1}"#), "missing string field 'type'");
        assert_eq!(code_of(r#"{"type":"dance"}"#), "unknown type 'dance'");
        assert!(code_of(r#"{"type":"ack","alert":"x"}"#).contains("missing field `state`"));
        assert_eq!(code_of(r#"{"type":"ping"}"#), "ok");
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers (a message or an error)
        /// and never panics.
        #[test]
        fn parsing_never_panics(raw in ".{0,200}", ty in "(hello|location|ack|cell|watch|ping|off_duty|assign|x)",
                                field in "[a-z_]{1,10}", value in proptest::prelude::any::<f64>()) {
            let _ = ClientMessage::parse(&raw);
            let shaped = format!(r#"{{"type":"{ty}","{field}":{value},"id":{value}}}"#);
            let _ = ClientMessage::parse(&shaped);
        }
    }

    #[test]
    fn id_is_recovered_from_a_bad_message() {
        let Err((id, _)) = ClientMessage::parse(r#"{"type":"ack","id":7}"#) else {
            panic!("should fail");
        };
        assert_eq!(id, Some(Value::from(7)));
    }
}
