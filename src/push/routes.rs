//! HTTP routes of the push subsystem, with their own state so they merge
//! into any router:
//!
//! - `GET /api/v1/push/vapid-public-key` (anyone) → `{"public_key": "..."}`
//! - `POST /api/v1/push/subscriptions` (responder) → 201 `{"id", "created": true}`
//!   for a new device, 200 `{"id", "created": false}` for a known endpoint
//! - `GET /api/v1/push/subscriptions` (responder) → the caller's devices
//! - `DELETE /api/v1/push/subscriptions` (responder), body `{"endpoint"}` → 204
//! - `DELETE /api/v1/push/subscriptions/{id}` (responder) → 204
//!
//! Errors are the API's `{"error":{"code","message"}}`; with push disabled
//! every route answers 503 `unavailable`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::subscription::{self, SubscriptionJson};
use super::{PushError, PushService};
use crate::auth::{Authority, require};
use crate::domain::{Principal, Role, now_ms};
use crate::protocol::{ApiError, ErrorCode};

/// Largest subscription body accepted.
const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
struct PushApi {
    push: PushService,
    auth: Arc<Authority>,
}

pub(super) fn router<S: Clone + Send + Sync + 'static>(
    push: PushService,
    auth: Arc<Authority>,
) -> Router<S> {
    Router::new()
        .route("/api/v1/push/vapid-public-key", get(public_key))
        .route(
            "/api/v1/push/subscriptions",
            get(list).post(subscribe).delete(unsubscribe),
        )
        .route("/api/v1/push/subscriptions/{id}", delete(unsubscribe_id))
        .with_state(PushApi { push, auth })
}

fn unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "push notifications are disabled on this hub",
    )
}

fn internal(e: PushError) -> ApiError {
    match e {
        PushError::Disabled => unavailable(),
        e => {
            tracing::error!(error = %e, "push subscription store failed");
            ApiError::internal()
        }
    }
}

/// The verified responder behind `Authorization: Bearer <JWT>`.
fn responder(api: &PushApi, headers: &HeaderMap) -> Result<Principal, ApiError> {
    if !api.push.enabled() {
        return Err(unavailable());
    }
    let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("Authorization must be 'Bearer <token>'"))?;
    let who = api
        .auth
        .verify(token.trim())
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    require(&who, &[Role::Responder], "manage push subscriptions")?;
    Ok(who)
}

fn json_body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::new(ErrorCode::TooBig, "request body too large"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn public_key(State(api): State<PushApi>) -> Result<Response, ApiError> {
    let key = api.push.public_key().ok_or_else(unavailable)?;
    Ok(Json(json!({"public_key": key})).into_response())
}

async fn subscribe(
    State(api): State<PushApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = responder(&api, &headers)?;
    let posted: SubscriptionJson = json_body(&body)?;
    let valid = subscription::validate(&posted, api.push.settings().allow_http_loopback)
        .map_err(ApiError::bad_request)?;
    let sub = who.sub.clone();
    let done = api
        .push
        .blocking(move |r| r.subscribe(&sub, &valid, now_ms()))
        .await
        .map_err(internal)?;
    tracing::info!(responder = %who.sub, subscription = %done.id, created = done.created, "push subscription stored");
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"id": done.id, "created": done.created})),
    )
        .into_response())
}

async fn list(State(api): State<PushApi>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = responder(&api, &headers)?;
    let sub = who.sub.clone();
    let rows = api
        .push
        .blocking(move |r| r.list(&sub))
        .await
        .map_err(internal)?;
    let subscriptions: Vec<_> = rows
        .into_iter()
        .map(|s| {
            json!({"id": s.id, "endpoint": s.endpoint, "created_at": s.created_at, "updated_at": s.updated_at})
        })
        .collect();
    Ok(Json(json!({"subscriptions": subscriptions})).into_response())
}

#[derive(Deserialize)]
struct EndpointBody {
    endpoint: String,
}

async fn unsubscribe(
    State(api): State<PushApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = responder(&api, &headers)?;
    let EndpointBody { endpoint } = json_body(&body)?;
    // Stored endpoints are normalized by URL parsing; match the same form.
    let endpoint = reqwest::Url::parse(endpoint.trim())
        .map(|u| u.to_string())
        .unwrap_or(endpoint);
    let sub = who.sub.clone();
    let deleted = api
        .push
        .blocking(move |r| r.unsubscribe_endpoint(&sub, &endpoint))
        .await
        .map_err(internal)?;
    if deleted {
        tracing::info!(responder = %who.sub, "push subscription deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("no such subscription of yours"))
    }
}

async fn unsubscribe_id(
    State(api): State<PushApi>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = responder(&api, &headers)?;
    let sub = who.sub.clone();
    let deleted = api
        .push
        .blocking(move |r| r.unsubscribe_id(&id, Some(&sub)))
        .await
        .map_err(internal)?;
    if deleted {
        tracing::info!(responder = %who.sub, "push subscription deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("no such subscription of yours"))
    }
}
