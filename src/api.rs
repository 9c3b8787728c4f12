//! HTTP API (`/api/v1`), health and metrics: thin handlers over the alert
//! service. The one place that maps [`ApiError`] to a status and the JSON
//! error body; role checks on every route.

use std::future::Future;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::alerts::{IssueRequest, UpdateRequest};
use crate::app::AppState;
use crate::auth::require;
use crate::control::ControlError;
use crate::domain::{AlertId, AlertStatus, Principal, Role};
use crate::protocol::{ApiError, ErrorCode};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        (status, Json(body)).into_response()
    }
}

/// The verified caller, from `Authorization: Bearer <JWT>`.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
        let value = value
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("Authorization must be 'Bearer <token>'"))?;
        app.auth
            .verify(token.trim())
            .map(Caller)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))
    }
}

/// A JSON body whose every problem becomes a `bad_request` with the reason.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, app)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorCode::TooBig, "request body too large")
                } else {
                    ApiError::bad_request(format!("could not read body: {e}"))
                }
            })?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        serde_json::from_slice(bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn alert_id(raw: &str) -> Result<AlertId, ApiError> {
    AlertId::parse(raw).map_err(|_| {
        ApiError::not_found(format!(
            "no alert '{}'",
            raw.chars().take(64).collect::<String>()
        ))
    })
}

const STAFF: &[Role] = &[Role::Police, Role::Coordinator];

pub fn router(app: AppState) -> Router<AppState> {
    let _ = app;
    let api = Router::new()
        .route("/alerts", post(issue).get(list))
        .route("/alerts/preview", post(preview))
        .route("/alerts/{id}", get(get_alert))
        .route("/alerts/{id}/update", post(update))
        .route("/alerts/{id}/cancel", post(cancel))
        .route("/alerts/{id}/resolve", post(resolve))
        .route("/alerts/{id}/acks", get(acks))
        .route("/alerts/{id}/history", get(history))
        .route("/alerts/{id}/presence", get(presence))
        .route("/alerts/{id}/grid", get(grid))
        .route("/alerts/{id}/assign", post(assign))
        .route("/alerts/{id}/cells", post(cells))
        .route("/me", get(me))
        .fallback(|| async { ApiError::not_found("no such API route") });
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws", get(crate::ws::upgrade))
}

/// Runs police work on the control plane, so a fan-out in progress does
/// not queue ahead of it (see [`crate::control`]).
async fn on_control<T: Send + 'static>(
    app: &AppState,
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    match app.control.run(work).await {
        Ok(done) => done,
        Err(ControlError::Panicked) => Err(ApiError::internal()),
        Err(_) => Err(ApiError::new(
            ErrorCode::Unavailable,
            "the hub is shutting down; try again",
        )),
    }
}

async fn me(Caller(who): Caller) -> Json<Principal> {
    Json(who)
}

async fn issue(
    State(app): State<AppState>,
    Caller(who): Caller,
    Body(req): Body<IssueRequest>,
) -> Result<Response, ApiError> {
    require(&who, &[Role::Police], "issue alerts")?;
    let draft = req.validate(app.alerts.limits())?;
    let alerts = app.alerts.clone();
    let outcome = on_control(&app, async move { alerts.issue(&who, draft).await }).await?;
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}

async fn preview(
    State(app): State<AppState>,
    Caller(who): Caller,
    Body(req): Body<IssueRequest>,
) -> Result<Response, ApiError> {
    require(&who, &[Role::Police], "preview alerts")?;
    let draft = req.validate(app.alerts.limits())?;
    Ok(Json(app.alerts.preview(&draft)?).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(
    State(app): State<AppState>,
    Caller(who): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "list alerts")?;
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(AlertStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be active, cancelled, resolved, expired or all")
        })?),
    };
    Ok(Json(json!({"alerts": app.alerts.list(status)})).into_response())
}

async fn get_alert(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "read alerts")?;
    Ok(Json(app.alerts.get(&alert_id(&id)?)?).into_response())
}

async fn update(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateRequest>,
) -> Result<Response, ApiError> {
    require(&who, &[Role::Police], "update alerts")?;
    let (id, alerts) = (alert_id(&id)?, app.alerts.clone());
    let updated = on_control(&app, async move { alerts.update(&who, &id, req).await }).await?;
    Ok(Json(updated).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseRequest {
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn cancel(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<CloseRequest>,
) -> Result<Response, ApiError> {
    require(&who, &[Role::Police], "cancel alerts")?;
    let (id, alerts) = (alert_id(&id)?, app.alerts.clone());
    let why = req.reason.or(req.outcome);
    let alert = on_control(&app, async move {
        alerts.close(&who, &id, AlertStatus::Cancelled, why).await
    })
    .await?;
    Ok(Json(json!({"alert": alert})).into_response())
}

async fn resolve(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<CloseRequest>,
) -> Result<Response, ApiError> {
    require(&who, &[Role::Police], "resolve alerts")?;
    let (id, alerts) = (alert_id(&id)?, app.alerts.clone());
    let why = req.outcome.or(req.reason);
    let alert = on_control(&app, async move {
        alerts.close(&who, &id, AlertStatus::Resolved, why).await
    })
    .await?;
    Ok(Json(json!({"alert": alert})).into_response())
}

async fn acks(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "read acknowledgements")?;
    let id = alert_id(&id)?;
    let with = app.alerts.get(&id)?;
    Ok(
        Json(json!({"alert": id, "counts": with.counts, "responders": app.alerts.acks(&id)?}))
            .into_response(),
    )
}

async fn history(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "read alert history")?;
    let id = alert_id(&id)?;
    app.alerts.get(&id)?;
    let store = app.alerts.store().clone();
    let internal = |e| {
        tracing::error!(error = %e, "history read failed");
        ApiError::internal()
    };
    let events = store.alert_events(id.clone()).await.map_err(internal)?;
    let acks = store.ack_history(id.clone()).await.map_err(internal)?;
    let cells = store.grid_history(id.clone()).await.map_err(internal)?;
    let events: Vec<Value> = events
        .into_iter()
        .map(|(seq, at, frame)| {
            let event: Value = serde_json::from_slice(&frame).unwrap_or(Value::Null);
            json!({"seq": seq, "at": at, "event": event})
        })
        .collect();
    Ok(Json(json!({"alert": id, "events": events, "acks": acks, "cells": cells})).into_response())
}

async fn grid(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "see the search grid")?;
    let bytes = app.alerts.grid_geojson(&alert_id(&id)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/geo+json")], bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    cell: String,
    /// Absent or null: take the cell back.
    #[serde(default)]
    responder: Option<String>,
}

async fn assign(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<AssignRequest>,
) -> Result<Response, ApiError> {
    require(
        &who,
        &[Role::Coordinator, Role::Police],
        "assign search cells",
    )?;
    let id = alert_id(&id)?;
    app.alerts
        .assign_cell(&who, id.as_str(), &req.cell, req.responder.as_deref())
        .await?;
    Ok(Json(json!({"alert": id, "cell": req.cell, "responder": req.responder})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CellsRequest {
    cells: Vec<String>,
    /// `exclude`, `include` or `adjust` (with `factor`).
    action: String,
    #[serde(default)]
    factor: Option<f64>,
}

async fn cells(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(req): Body<CellsRequest>,
) -> Result<Response, ApiError> {
    require(
        &who,
        &[Role::Coordinator, Role::Police],
        "change search cells",
    )?;
    let action = match (req.action.as_str(), req.factor) {
        ("exclude", _) => crate::alerts::CellAction::Exclude,
        ("include", _) => crate::alerts::CellAction::Include,
        ("adjust", Some(f)) => crate::alerts::CellAction::Adjust(f),
        ("adjust", None) => return Err(ApiError::bad_request("'adjust' needs a 'factor'")),
        _ => {
            return Err(ApiError::bad_request(
                "action must be exclude, include or adjust",
            ));
        }
    };
    let id = alert_id(&id)?;
    app.alerts
        .cells_action(&who, id.as_str(), &req.cells, action)
        .await?;
    Ok(Json(json!({"alert": id, "cells": req.cells.len()})).into_response())
}

async fn presence(
    State(app): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&who, STAFF, "see responder counts")?;
    Ok(Json(app.alerts.presence(&alert_id(&id)?)?).into_response())
}

async fn healthz(State(app): State<AppState>) -> Response {
    let stats = app.hub.stats();
    Json(json!({"status": "ok", "sessions": stats.sessions, "seq": app.alerts.last_seq()}))
        .into_response()
}

async fn metrics(
    State(app): State<AppState>,
    caller: Option<Caller>,
) -> Result<Response, ApiError> {
    if !app.settings.server.metrics_public {
        let Some(Caller(who)) = caller else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "metrics need a staff token",
            ));
        };
        require(&who, STAFF, "read metrics")?;
    }
    let s = app.hub.stats();
    let m = app.alerts.metrics();
    let rows: [(&str, &str, u64); 11] = [
        (
            "woodpecker_connections",
            "gauge",
            app.connections.load(Ordering::Relaxed) as u64,
        ),
        ("woodpecker_sessions", "gauge", s.sessions as u64),
        (
            "woodpecker_staff_sessions",
            "gauge",
            s.staff_sessions as u64,
        ),
        ("woodpecker_responders_known", "gauge", s.responders as u64),
        (
            "woodpecker_occupied_cells",
            "gauge",
            s.occupied_cells as u64,
        ),
        (
            "woodpecker_alerts_issued_total",
            "counter",
            m.alerts_issued.load(Ordering::Relaxed),
        ),
        (
            "woodpecker_events_total",
            "counter",
            m.events.load(Ordering::Relaxed),
        ),
        (
            "woodpecker_frames_fanned_out_total",
            "counter",
            m.frames_fanned_out.load(Ordering::Relaxed),
        ),
        (
            "woodpecker_slow_sessions_total",
            "counter",
            m.slow_sessions.load(Ordering::Relaxed),
        ),
        (
            "woodpecker_acks_total",
            "counter",
            m.acks.load(Ordering::Relaxed),
        ),
        (
            "woodpecker_locations_total",
            "counter",
            m.locations.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, kind, value) in rows {
        out.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out.push_str(&app.push.prometheus());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

impl axum::extract::OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            <Caller as FromRequestParts<AppState>>::from_request_parts(parts, app)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}
