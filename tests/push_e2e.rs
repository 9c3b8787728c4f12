//! End to end through the whole hub: a targeted responder with a live
//! WebSocket gets the alert there and no push; one without a live session
//! gets a Web Push (for the alert and for its cancellation), and the alert's
//! counts show `push_sent`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use woodpecker::config::{Secret, Settings};
use woodpecker::domain::{Role, Unit};

const SECRET: &str = "push-e2e-secret-push-e2e-secret-0123456789";
const AT: (f64, f64) = (30.7522, 120.7585);

type Seen = Arc<Mutex<Vec<String>>>;

async fn fake_push() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/push/{device}",
            post(
                |State(seen): State<Seen>, Path(device): Path<String>| async move {
                    seen.lock().expect("lock").push(device);
                    StatusCode::CREATED
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn device(origin: &str, name: &str) -> Value {
    let secret = p256::SecretKey::from_slice(&[5u8; 32]).expect("key");
    json!({
        "endpoint": format!("{origin}/push/{name}"),
        "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode([1u8; 16]),
        }
    })
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

async fn responder(addr: std::net::SocketAddr, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    ws.send(Message::text(
        json!({"type": "hello", "token": token}).to_string(),
    ))
    .await
    .expect("hello");
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    ws.send(Message::text(
        json!({"type": "location", "lat": AT.0, "lng": AT.1, "id": 1}).to_string(),
    ))
    .await
    .expect("location");
    assert_eq!(recv(&mut ws).await["type"], "ok");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_responders_without_a_live_session_get_a_push() {
    let (origin, seen) = fake_push().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = Settings::default();
    s.server.data_dir = dir.path().to_path_buf();
    s.auth.jwt_secret = Secret::new(SECRET);
    s.push.allow_http_loopback = true;
    let authority = woodpecker::app::authority(&s).expect("authority");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = woodpecker::app::start(s, listener).await.expect("start");
    let addr = running.addr;
    let token = |sub: &str, role: Role| {
        let unit = (role == Role::Responder).then_some(Unit::Volunteer);
        authority
            .mint(sub, role, unit, "", Duration::from_secs(600))
            .expect("mint")
    };
    let http = reqwest::Client::new();
    for name in ["online", "offline"] {
        let resp = http
            .post(format!("http://{addr}/api/v1/push/subscriptions"))
            .bearer_auth(token(name, Role::Responder))
            .json(&device(&origin, name))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let mut online = responder(addr, &token("online", Role::Responder)).await;
    let mut gone = responder(addr, &token("offline", Role::Responder)).await;
    gone.close(None).await.expect("close");
    let hub = running.state.hub.clone();
    wait_until("offline session ends", async || !hub.is_live("offline")).await;

    let police = token("p-1", Role::Police);
    let issued: Value = http
        .post(format!("http://{addr}/api/v1/alerts"))
        .bearer_auth(&police)
        .json(
            &json!({"kind": "missing_person", "title": "Missing child", "body": "red jacket",
            "lat": AT.0, "lng": AT.1, "radius_m": 1000, "audience": ["volunteer"]}),
        )
        .send()
        .await
        .expect("issue")
        .json()
        .await
        .expect("json");
    assert_eq!(issued["targeted"], 2, "{issued}");
    assert_eq!(issued["delivered_live"], 1);
    assert_eq!(issued["push_queued"], 1);
    let id = issued["alert"]["id"].as_str().expect("id").to_string();
    let frame = recv(&mut online).await;
    assert_eq!(
        (frame["type"].as_str(), frame["alert"]["id"].as_str()),
        (Some("alert"), Some(id.as_str()))
    );

    let counts = async || -> Value {
        http.get(format!("http://{addr}/api/v1/alerts/{id}"))
            .bearer_auth(&police)
            .send()
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["counts"]
            .clone()
    };
    wait_until("push_sent counted", async || {
        counts().await["push_sent"] == 1
    })
    .await;
    assert_eq!(*seen.lock().expect("lock"), ["offline"]);

    let resp = http
        .post(format!("http://{addr}/api/v1/alerts/{id}/cancel"))
        .bearer_auth(&police)
        .json(&json!({"reason": "found"}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(recv(&mut online).await["type"], "alert_update");
    wait_until("cancellation pushed", async || {
        seen.lock().expect("lock").len() == 2
    })
    .await;
    assert_eq!(
        *seen.lock().expect("lock"),
        ["offline", "offline"],
        "never the live one"
    );
    assert_eq!(counts().await["push_sent"], 1, "counted per responder");
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metrics.contains("woodpecker_push_sent_total 2"),
        "{metrics}"
    );
    running.stop().await;
}
