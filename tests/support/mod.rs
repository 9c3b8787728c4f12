//! Test support: start a hub on an ephemeral port with its own data
//! directory, real WebSocket clients, HTTP helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use woodpecker::app::{Running, start};
use woodpecker::auth::Authority;
use woodpecker::config::{Secret, Settings};
use woodpecker::domain::{Role, Unit};

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const JIAXING: (f64, f64) = (30.7522, 120.7585);

/// A point `north_m` metres north and `east_m` metres east of Jiaxing.
pub fn offset(north_m: f64, east_m: f64) -> (f64, f64) {
    let lat = JIAXING.0 + north_m / 111_320.0;
    let lng = JIAXING.1 + east_m / (111_320.0 * JIAXING.0.to_radians().cos());
    (lat, lng)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub authority: Authority,
    pub police: String,
    pub coordinator: String,
}

pub fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.server.data_dir = dir.to_path_buf();
    s.server.shutdown_grace_s = 2;
    s.auth.jwt_secret = Secret::new(SECRET);
    s.ws.hello_timeout_s = 2;
    s
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = settings(dir.path());
        tweak(&mut s);
        Self::start_in(dir, s).await
    }

    pub async fn start_in(dir: tempfile::TempDir, s: Settings) -> Self {
        let authority = woodpecker::app::authority(&s).expect("authority");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = start(s, listener).await.expect("start");
        let police = authority
            .mint(
                "p-1",
                Role::Police,
                None,
                "Officer Wang",
                Duration::from_secs(3600),
            )
            .expect("mint");
        let coordinator = authority
            .mint(
                "c-1",
                Role::Coordinator,
                None,
                "Coord Li",
                Duration::from_secs(3600),
            )
            .expect("mint");
        Self {
            addr: running.addr,
            running: Some(running),
            dir,
            http: reqwest::Client::new(),
            authority,
            police,
            coordinator,
        }
    }

    /// Stops the hub and starts a new one on the same data directory.
    pub async fn restart(mut self) -> Self {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let dir = self.dir;
        let s = settings(dir.path());
        Self::start_in(dir, s).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn responder_token(&self, sub: &str, unit: Unit) -> String {
        self.authority
            .mint(
                sub,
                Role::Responder,
                Some(unit),
                "",
                Duration::from_secs(3600),
            )
            .expect("mint")
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Issues an alert; returns the 201 body.
    pub async fn issue(&self, at: (f64, f64), radius_m: f64, audience: &[&str]) -> Value {
        self.issue_with(json!({
            "kind": "missing_person",
            "title": "Missing child, 12, red jacket",
            "body": "Last seen near the south gate of the park.",
            "lat": at.0, "lng": at.1, "radius_m": radius_m, "audience": audience,
        }))
        .await
    }

    /// Issues an alert of `kind` (only `missing_person` gets a search grid).
    pub async fn issue_kind(
        &self,
        kind: &str,
        at: (f64, f64),
        radius_m: f64,
        audience: &[&str],
    ) -> Value {
        self.issue_with(json!({
            "kind": kind, "title": "Flooding on the canal road", "lat": at.0, "lng": at.1,
            "radius_m": radius_m, "audience": audience,
        }))
        .await
    }

    pub async fn issue_with(&self, body: Value) -> Value {
        let (status, v) = self.post(&self.police, "/api/v1/alerts", body).await;
        assert_eq!(status, 201, "issue failed: {v}");
        v
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// A responder connected, greeted and with a fresh location.
    pub async fn responder_at(&self, sub: &str, unit: Unit, at: (f64, f64)) -> Client {
        let mut c = Client::hello(self.addr, &self.responder_token(sub, unit), None).await;
        c.location(at).await;
        c
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
}

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn connect(addr: SocketAddr) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    ws
}

impl Client {
    pub async fn hello(addr: SocketAddr, token: &str, since: Option<u64>) -> Self {
        let mut ws = connect(addr).await;
        let mut hello = json!({"type": "hello", "token": token});
        if let Some(s) = since {
            hello["since_seq"] = json!(s);
        }
        ws.send(Message::text(hello.to_string()))
            .await
            .expect("send");
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 0,
        };
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON text frame (skipping pings).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a frame within the wait")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("json"));
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Skips frames until one of type `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Sends a message with a fresh id and returns the reply carrying it.
    pub async fn request(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(v).await;
        loop {
            let r = self.recv().await;
            if r["id"] == json!(id) {
                return r;
            }
        }
    }

    pub async fn location(&mut self, at: (f64, f64)) {
        let r = self
            .request(json!({"type": "location", "lat": at.0, "lng": at.1, "accuracy_m": 10}))
            .await;
        assert_eq!(r["type"], "ok", "{r}");
    }

    /// Waits for the close frame and returns its code (None if the stream just ended).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Err(_) => return None,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) => return None,
            }
        }
    }

    /// True if no frame arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        self.try_recv(wait).await.is_none()
    }
}
