//! Woodpecker: a real-time emergency mobilization hub.
//!
//! The loop is warn → push → mobilize → resolve. Police issue an alert; the
//! hub fans it out over WebSocket to every connected responder whose H3 cell
//! lies inside the geofence; responders acknowledge; watchers see it live;
//! every step is on the durable record.
//!
//! Architecture (the dependency rule: `hub` and `geo` import nothing from
//! the transports or the storage implementations):
//!
//! ```text
//!   ws (WebSocket)   api (HTTP)          transports: parse, authorize, reply
//!          \           /
//!           alerts                        lifecycle, acks, sequencing
//!          /    |     \
//!       hub    store   bus                fan-out core | durable record | peers
//!        |       |
//!       geo   sqlite                      H3 geofence  | embedded engine
//! ```
//!
//! - [`domain`]: validated newtypes (roles, units, coordinates, ids).
//! - [`geo`]: H3 cover of a circle, cells, boundaries; pure.
//! - [`hub`]: presence index, sessions, fan-out; no I/O.
//! - [`alerts`]: alert lifecycle, targeting, acks, watchers, replay.
//! - [`store`]: the durable record behind a trait; [`store::sqlite`] embedded.
//! - [`bus`]: cross-node fan-out behind a trait; local implementation.
//! - [`auth`]: JWT verification, minting and role checks.
//! - [`protocol`]: wire messages, error codes, frame encoders.
//! - [`ws`], [`api`]: the transports. [`app`]: wiring and shutdown.
//! - [`control`]: the thread police actions run on, apart from the sessions.
//! - [`config`]: typed, layered settings.

pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod control;
pub mod demo;
pub mod domain;
pub mod geo;
pub mod grid;
pub mod hub;
pub mod protocol;
pub mod push;
pub mod store;
pub mod ws;

/// rustls needs one process-wide crypto provider before the first TLS client
/// (reqwest for Web Push); installing it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
