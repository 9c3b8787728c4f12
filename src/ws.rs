//! WebSocket transport: a thin adapter from sockets onto the alert service
//! and the hub. One task per connection: `hello` within the timeout, then a
//! loop over the client's frames, the session's bounded outbox, heartbeats
//! and shutdown. A client that cannot keep up fills its outbox and is closed
//! with `slow` (4010); it resumes with `since_seq`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde_json::Value;
use tokio::time::{Instant, timeout};

use crate::app::AppState;
use crate::domain::{Principal, Role};
use crate::hub::{Frame, Outgoing, Ready, SessionId, SessionQueue};
use crate::protocol::{
    ApiError, ClientMessage, ErrorCode, error_frame, ok_frame, pong_frame, welcome_frame,
};

pub const SUBPROTOCOL: &str = "woodpecker.v1";
/// How many events a resuming client is sent at most; past that it should
/// reload state over HTTP (documented in `docs/protocol.md`).
pub const REPLAY_LIMIT: usize = 10_000;
/// Frames written per flush when the outbox has a backlog.
const WRITE_BATCH: usize = 64;

/// Counts live connections; dropping it releases the slot.
struct ConnectionSlot(AppState);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Unregisters the session from the hub and the watcher lists on any exit.
struct Registration {
    app: AppState,
    sid: SessionId,
    responder: Option<Arc<str>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.app.hub.unregister(self.sid);
        self.app.alerts.session_closed(self.sid);
        if let Some(sub) = &self.responder
            && !self.app.hub.is_live(sub)
        {
            self.app.alerts.responder_offline(sub);
        }
    }
}

pub async fn upgrade(State(app): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let cfg = &app.settings.ws;
    let before = app.connections.fetch_add(1, Ordering::Relaxed);
    let slot = ConnectionSlot(app.clone());
    if before >= cfg.max_connections {
        return ApiError::new(
            ErrorCode::Unavailable,
            "connection limit reached; retry later",
        )
        .into_response();
    }
    let write_buffer = cfg.write_buffer_bytes;
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + 4 * cfg.max_message_bytes.max(64 * 1024))
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes)
        .on_upgrade(move |socket| async move {
            run(socket, app).await;
            drop(slot);
        })
}

fn text(frame: Frame) -> Message {
    // Frames are built from serde_json output, so this conversion only fails
    // on a bug; send an internal error rather than panic.
    match Utf8Bytes::try_from(frame) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(Utf8Bytes::from_static(
            r#"{"type":"error","code":"internal","message":"bad frame"}"#,
        )),
    }
}

async fn close(socket: &mut WebSocket, code: ErrorCode, reason: &str) {
    close_with(socket, code.close_code(), reason).await;
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.chars().take(120).collect::<String>()),
    };
    let _ = timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Sends an error frame and then closes with the error's close code.
async fn fail(socket: &mut WebSocket, err: ApiError) {
    let _ = timeout(
        Duration::from_secs(1),
        socket.send(text(error_frame(None, &err))),
    )
    .await;
    close(socket, err.code, &err.message).await;
}

fn is_too_big(err: &axum::Error) -> bool {
    let msg = err.to_string();
    msg.contains("Space limit exceeded")
        || msg.contains("too long")
        || msg.contains("Message too big")
}

/// Reads the first client frame and verifies its `hello`.
async fn handshake(
    socket: &mut WebSocket,
    app: &AppState,
) -> Result<(Principal, Option<u64>), ApiError> {
    let hello_timeout = Duration::from_secs(app.settings.ws.hello_timeout_s);
    let deadline = Instant::now() + hello_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.recv()).await;
        let msg = match next {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    format!("no hello within {} s", hello_timeout.as_secs()),
                ));
            }
            Ok(None) => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "closed before hello",
                ));
            }
            Ok(Some(Err(e))) if is_too_big(&e) => {
                return Err(ApiError::new(
                    ErrorCode::TooBig,
                    "frame exceeds the size limit",
                ));
            }
            Ok(Some(Err(_))) => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "connection error before hello",
                ));
            }
            Ok(Some(Ok(m))) => m,
        };
        let t = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                return Err(ApiError::bad_request(
                    "binary frames are not accepted; send JSON text",
                ));
            }
            Message::Close(_) => {
                return Err(ApiError::new(
                    ErrorCode::Unauthorized,
                    "closed before hello",
                ));
            }
        };
        return match ClientMessage::parse(t.as_str()) {
            Ok(ClientMessage::Hello { token, since_seq }) => app
                .auth
                .verify(&token)
                .map(|p| (p, since_seq))
                .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string())),
            Ok(_) => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the first message must be hello",
            )),
            Err((_, e)) => Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("the first message must be hello ({})", e.message),
            )),
        };
    }
}

/// A token bucket: `rate` messages a second, bursts up to `burst`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    refused_in_a_row: u32,
}

impl RateLimit {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
            refused_in_a_row: 0,
        }
    }
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }
}

/// After this many refused messages in a row the client is disconnected.
const RATE_LIMIT_DISCONNECT: u32 = 100;

enum Event {
    Client(Option<Result<Message, axum::Error>>),
    Out,
    Overflow,
    Heartbeat,
    Shutdown,
}

async fn run(mut socket: WebSocket, app: AppState) {
    let (principal, since_seq) = match handshake(&mut socket, &app).await {
        Ok(v) => v,
        Err(e) => return fail(&mut socket, e).await,
    };
    let cfg = app.settings.ws.clone();
    let outbox = Arc::new(SessionQueue::new(cfg.outbox_capacity));
    let sid = app.hub.register(&principal, outbox.clone());
    let _registration = Registration {
        app: app.clone(),
        sid,
        responder: (!principal.role.is_staff()).then(|| principal.sub.clone()),
    };
    let write_timeout = Duration::from_secs(cfg.write_timeout_s);
    let welcome = welcome_frame(&principal, app.alerts.last_seq(), cfg.heartbeat_s);
    if !matches!(
        timeout(write_timeout, socket.send(text(welcome))).await,
        Ok(Ok(()))
    ) {
        return;
    }

    // Replay what the client missed. Live events queue meanwhile; any the
    // replay already carried are skipped by seq below.
    let mut replayed_upto = 0;
    if let Some(since) = since_seq {
        match app.alerts.replay(&principal, since, REPLAY_LIMIT).await {
            Ok(events) => {
                for (seq, frame) in events {
                    if !matches!(
                        timeout(write_timeout, socket.feed(text(frame))).await,
                        Ok(Ok(()))
                    ) {
                        return;
                    }
                    replayed_upto = seq;
                }
                if !matches!(timeout(write_timeout, socket.flush()).await, Ok(Ok(()))) {
                    return;
                }
            }
            Err(e) => return fail(&mut socket, e).await,
        }
    }

    // A responder coming back gets the cells it still holds again.
    if !principal.role.is_staff() {
        for frame in app.alerts.responder_online(&principal.sub) {
            if !matches!(
                timeout(write_timeout, socket.send(text(frame))).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    let heartbeat = Duration::from_secs(cfg.heartbeat_s);
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut limiter = RateLimit::new(cfg.rate_per_s, cfg.rate_burst);
    // The shutdown wait is created once and stays registered: re-creating
    // it on every pass would lock its waiter list twice per frame sent.
    let mut shutdown = app.shutdown.clone();
    let stopping = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let mut batch: Vec<Outgoing> = Vec::new();

    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stopping => Event::Shutdown,
            ready = outbox.ready() => match ready {
                Ready::Overflow => Event::Overflow,
                Ready::Frames => Event::Out,
            },
            msg = socket.recv() => Event::Client(msg),
            _ = ticker.tick() => Event::Heartbeat,
        };
        match event {
            Event::Shutdown => {
                close_with(&mut socket, 1001, "server shutting down").await;
                return;
            }
            Event::Overflow => {
                tracing::debug!(session = sid.0, "closing slow consumer: outbox full");
                app.alerts
                    .metrics()
                    .slow_sessions
                    .fetch_add(1, Ordering::Relaxed);
                let err =
                    ApiError::new(ErrorCode::Slow, "client too slow; reconnect with since_seq");
                return fail(&mut socket, err).await;
            }
            Event::Out => {
                outbox.take_batch(WRITE_BATCH, &mut batch);
                for it in batch.drain(..) {
                    if it.seq() == 0 || it.seq() > replayed_upto {
                        match timeout(write_timeout, socket.feed(text(it.frame()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return,
                            Err(_) => return stalled(&app, sid),
                        }
                    }
                }
                match timeout(write_timeout, socket.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => return stalled(&app, sid),
                }
            }
            Event::Heartbeat => {
                if last_heard.elapsed() > heartbeat * 2 {
                    close_with(&mut socket, 1001, "no heartbeat").await;
                    return;
                }
                if !matches!(
                    timeout(
                        write_timeout,
                        socket.send(Message::Ping(Default::default()))
                    )
                    .await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Event::Client(None) => return,
            Event::Client(Some(Err(e))) => {
                if is_too_big(&e) {
                    fail(
                        &mut socket,
                        ApiError::new(ErrorCode::TooBig, "frame exceeds the size limit"),
                    )
                    .await;
                }
                return;
            }
            Event::Client(Some(Ok(msg))) => {
                last_heard = Instant::now();
                let reply = match msg {
                    Message::Text(t) => {
                        if limiter.allow() {
                            handle(&app, &principal, sid, t.as_str()).await
                        } else if limiter.refused_in_a_row >= RATE_LIMIT_DISCONNECT {
                            let err = ApiError::new(ErrorCode::RateLimited, "too many messages");
                            return fail(&mut socket, err).await;
                        } else {
                            error_frame(
                                None,
                                &ApiError::new(
                                    ErrorCode::RateLimited,
                                    "too many messages; slow down",
                                ),
                            )
                        }
                    }
                    Message::Binary(_) => error_frame(
                        None,
                        &ApiError::bad_request("binary frames are not accepted; send JSON text"),
                    ),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => return,
                };
                if !matches!(
                    timeout(write_timeout, socket.send(text(reply))).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
        }
    }
}

/// The peer stopped reading and the socket would not take a write within the
/// timeout: a slow consumer whose close frame cannot even be written. Drop it.
fn stalled(app: &AppState, sid: SessionId) {
    tracing::debug!(session = sid.0, "closing slow consumer: write timed out");
    app.alerts
        .metrics()
        .slow_sessions
        .fetch_add(1, Ordering::Relaxed);
}

/// One client message → the reply frame (`ok`, `pong`, or `error`).
async fn handle(app: &AppState, who: &Principal, sid: SessionId, raw: &str) -> Frame {
    let msg = match ClientMessage::parse(raw) {
        Ok(m) => m,
        Err((id, e)) => return error_frame(id.as_ref(), &e),
    };
    let id: Option<Value> = msg.id().cloned();
    let result = dispatch(app, who, sid, msg).await;
    match result {
        Ok(Some(frame)) => frame,
        Ok(None) => ok_frame(id.as_ref()),
        Err(e) => error_frame(id.as_ref(), &e),
    }
}

fn responder_only(who: &Principal, what: &str) -> Result<(), ApiError> {
    crate::auth::require(who, &[Role::Responder], what)
}

async fn dispatch(
    app: &AppState,
    who: &Principal,
    sid: SessionId,
    msg: ClientMessage,
) -> Result<Option<Frame>, ApiError> {
    match msg {
        ClientMessage::Hello { .. } => Err(ApiError::bad_request("already authenticated")),
        ClientMessage::Ping { id } => Ok(Some(pong_frame(id.as_ref()))),
        ClientMessage::Location {
            lat,
            lng,
            accuracy_m,
            ..
        } => {
            responder_only(who, "share a location")?;
            if let Some(acc) = accuracy_m
                && !(acc.is_finite() && acc >= 0.0)
            {
                return Err(ApiError::bad_request(
                    "accuracy_m must be a non-negative number",
                ));
            }
            app.alerts.location(who, lat, lng).await?;
            Ok(None)
        }
        ClientMessage::OffDuty { .. } => {
            responder_only(who, "go off duty")?;
            app.alerts.off_duty(who).await?;
            Ok(None)
        }
        ClientMessage::Ack { alert, state, .. } => {
            responder_only(who, "acknowledge alerts")?;
            app.alerts.ack(who, &alert, state).await?;
            Ok(None)
        }
        ClientMessage::Cell {
            alert, cell, state, ..
        } => {
            responder_only(who, "report search cells")?;
            app.alerts.report_cell(who, &alert, &cell, &state).await?;
            Ok(None)
        }
        ClientMessage::Watch { alert, id } => {
            let frames = app.alerts.watch(sid, who, &alert).await?;
            // Ack the watch; the current summary and coverage follow at once.
            let ok = ok_frame(id.as_ref());
            for frame in frames {
                app.hub.send_to(&[sid], &Outgoing::new(0, frame));
            }
            Ok(Some(ok))
        }
        ClientMessage::Assign {
            alert,
            cell,
            responder,
            ..
        } => {
            app.alerts
                .assign_cell(who, &alert, &cell, responder.as_deref())
                .await?;
            Ok(None)
        }
        ClientMessage::Unwatch { alert, .. } => {
            app.alerts.unwatch(sid, who, &alert)?;
            Ok(None)
        }
    }
}
