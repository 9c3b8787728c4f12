//! Web Push against a fake push service on 127.0.0.1: the service checks
//! each request's VAPID JWT (ES256 signature with the hub's public key,
//! `aud` = the endpoint's origin with its port, `exp` within 24 h) and
//! decrypts the body with this file's own RFC 8291 implementation (p256
//! ECDH + HKDF-SHA-256 + AES-128-GCM), not the one that encrypted it. It
//! answers 201, 404/410, 429 with Retry-After, or 5xx as each test scripts,
//! and the tests check deletion, retries, drops and the counters. The
//! subscription API is exercised over real HTTP.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::Aead as _;
use aes_gcm::{Aes128Gcm, KeyInit as _, Nonce};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use woodpecker::auth::Authority;
use woodpecker::config::{AuthSettings, Secret};
use woodpecker::domain::{AlertId, AlertStatus, Role, Unit};
use woodpecker::push::{Notification, PushOutcome, PushResult, PushService, PushSettings};

const SECRET: &str = "push-test-secret-push-test-secret-0123456789";
/// A safety net for waits; no test asserts how long anything took.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- fake push service

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// Wait for the gate, then 201.
    Hold,
}

#[derive(Debug, Clone)]
struct Received {
    device: String,
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

struct FakeState {
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    received: Mutex<Vec<Received>>,
    gate: Semaphore,
}

struct FakePush {
    addr: SocketAddr,
    state: Arc<FakeState>,
}

impl FakePush {
    async fn start() -> Self {
        let state = Arc::new(FakeState {
            script: Mutex::default(),
            received: Mutex::default(),
            gate: Semaphore::new(0),
        });
        let app = Router::new()
            .route("/push/{device}", post(fake_push))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn script(&self, device: &Device, replies: &[Reply]) {
        self.state
            .script
            .lock()
            .expect("lock")
            .insert(device.token.clone(), replies.iter().copied().collect());
    }

    fn received(&self, device: Option<&Device>) -> Vec<Received> {
        self.state
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| device.is_none_or(|d| d.token == r.device))
            .cloned()
            .collect()
    }
}

async fn fake_push(
    State(state): State<Arc<FakeState>>,
    UrlPath(device): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.received.lock().expect("lock").push(Received {
        device: device.clone(),
        at: Instant::now(),
        headers,
        body,
    });
    let reply = state
        .script
        .lock()
        .expect("lock")
        .get_mut(&device)
        .and_then(|q| {
            if q.len() > 1 {
                q.pop_front()
            } else {
                q.front().copied()
            }
        })
        .unwrap_or(Reply::Status(201));
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Reply::RetryAfter(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::Hold => {
            if let Ok(permit) = state.gate.acquire().await {
                permit.forget();
            }
            StatusCode::CREATED.into_response()
        }
    }
}

/// A browser's push subscription: its own key pair and auth secret.
struct Device {
    token: String,
    endpoint: String,
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Device {
    fn new(push: &FakePush, token: &str) -> Self {
        let secret = loop {
            if let Ok(s) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break s;
            }
        };
        Self {
            token: token.into(),
            endpoint: format!("{}/push/{token}", push.origin()),
            secret,
            auth: rand::random(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    /// RFC 8291 receiving side, written here independently of the sender.
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        assert!(body.len() > 21 + 65 + 16, "body too short: {}", body.len());
        let salt = &body[..16];
        let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
        let idlen = body[20] as usize;
        assert_eq!(idlen, 65, "keyid is the sender's uncompressed P-256 key");
        let as_public_bytes = &body[21..21 + idlen];
        let ciphertext = &body[21 + idlen..];
        assert!(ciphertext.len() <= rs, "one record");
        let as_public = p256::PublicKey::from_sec1_bytes(as_public_bytes).expect("as key");
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), as_public.as_affine());
        let ua_public = self.secret.public_key().to_encoded_point(false);

        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(ua_public.as_bytes());
        key_info.extend_from_slice(as_public_bytes);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes().as_slice())
            .expand(&key_info, &mut ikm)
            .expect("ikm");
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .expect("cek");
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .expect("nonce");
        let cipher = Aes128Gcm::new_from_slice(&cek).expect("cipher");
        let mut plain = cipher
            .decrypt(Nonce::from_slice(&nonce), ciphertext)
            .expect("AES-128-GCM authenticates");
        while plain.last() == Some(&0) {
            plain.pop();
        }
        assert_eq!(plain.pop(), Some(2), "last-record padding delimiter");
        plain
    }
}

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// Checks the VAPID header as a push service would; returns the claims.
fn verify_vapid(headers: &HeaderMap, public_key: &str, aud: &str) -> Value {
    let value = headers
        .get("authorization")
        .expect("Authorization header")
        .to_str()
        .expect("ascii");
    let params = value.strip_prefix("vapid ").expect("vapid scheme");
    let mut t = None;
    let mut k = None;
    for part in params.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    let (t, k) = (t.expect("t="), k.expect("k="));
    assert_eq!(k, public_key, "k is the hub's public key");
    let (input, sig) = t.rsplit_once('.').expect("three JWT parts");
    let (header, claims) = input.split_once('.').expect("three JWT parts");
    let header: Value = serde_json::from_slice(&b64(header)).expect("header json");
    assert_eq!(header["alg"], "ES256");
    let key = VerifyingKey::from_sec1_bytes(&b64(k)).expect("public key");
    let sig = Signature::from_slice(&b64(sig)).expect("r||s");
    key.verify(input.as_bytes(), &sig)
        .expect("VAPID signature verifies with the public key");
    let claims: Value = serde_json::from_slice(&b64(claims)).expect("claims json");
    assert_eq!(
        claims["aud"], aud,
        "aud is the endpoint origin with its port"
    );
    let now = woodpecker::domain::now_ms() / 1000;
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp within 24 h: {exp} vs {now}"
    );
    assert!(
        claims["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("mailto:")),
        "sub is a contact"
    );
    claims
}

// ---------------------------------------------------------------- the hub side

#[derive(Default)]
struct Outcomes(Mutex<Vec<PushOutcome>>);

impl Outcomes {
    async fn wait_for(&self, n: usize) -> Vec<PushOutcome> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let got = self.0.lock().expect("lock");
                if got.len() >= n {
                    return got.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} outcomes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Hub {
    push: PushService,
    outcomes: Arc<Outcomes>,
    api: String,
    http: reqwest::Client,
    authority: Arc<Authority>,
}

fn settings() -> PushSettings {
    PushSettings {
        allow_http_loopback: true,
        workers: 2,
        retry_base_ms: 10,
        retry_max_ms: 5_000,
        request_timeout_s: 10,
        ..PushSettings::default()
    }
}

impl Hub {
    async fn start(dir: &Path, settings: PushSettings) -> Self {
        woodpecker::install_crypto_provider();
        let outcomes = Arc::new(Outcomes::default());
        let sink = outcomes.clone();
        let push = PushService::start(
            &settings,
            dir,
            Arc::new(move |o| sink.0.lock().expect("lock").push(o)),
        )
        .expect("push service");
        let authority = Arc::new(
            Authority::new(&AuthSettings::default(), &Secret::new(SECRET)).expect("authority"),
        );
        let app: Router = push.router(authority.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            push,
            outcomes,
            api: format!("http://{addr}/api/v1/push"),
            http: reqwest::Client::new(),
            authority,
        }
    }

    fn token(&self, sub: &str, role: Role) -> String {
        let unit = (role == Role::Responder).then_some(Unit::Volunteer);
        self.authority
            .mint(sub, role, unit, "", Duration::from_secs(600))
            .expect("mint")
    }

    async fn subscribe(&self, sub: &str, device: &Device) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/subscriptions", self.api))
            .bearer_auth(self.token(sub, Role::Responder))
            .json(&device.json())
            .send()
            .await
            .expect("post");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn public_key(&self) -> String {
        self.push.public_key().expect("enabled").to_string()
    }
}

fn notification(alert: &str, body: &str) -> Notification {
    Notification {
        alert_id: AlertId::parse(alert).expect("id"),
        status: AlertStatus::Active,
        version: 1,
        title: "Missing child, 7, red jacket".into(),
        body: body.into(),
        url: format!("/responder.html?alert={alert}"),
        urgent: true,
        ttl_s: 600,
        topic: alert.into(),
    }
}

fn subs(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|s| Arc::from(*s)).collect()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_responders_get_encrypted_vapid_signed_pushes() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(dir.path(), settings()).await;
    let phone = Device::new(&fake, "v1-phone");
    let tablet = Device::new(&fake, "v1-tablet");
    let other = Device::new(&fake, "v2-phone");
    for (sub, d) in [("v-1", &phone), ("v-1", &tablet), ("v-2", &other)] {
        let (status, body) = hub.subscribe(sub, d).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(body["id"].as_str().is_some_and(|id| id.starts_with("ps_")));
    }
    assert_eq!(hub.push.subscriptions_of("v-1"), 2);

    let queued = hub.push.notify(
        &subs(&["v-1", "v-2", "v-3-without-devices"]),
        notification("al_00000000000000a1", "Last seen near the west gate"),
    );
    assert_eq!(queued, 3);
    let outcomes = hub.outcomes.wait_for(3).await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.result == PushResult::Sent && o.attempts == 1)
    );
    let mut reached: Vec<&str> = outcomes.iter().map(|o| &*o.sub).collect();
    reached.sort();
    assert_eq!(reached, ["v-1", "v-1", "v-2"]);

    let received = fake.received(None);
    assert_eq!(received.len(), 3);
    for r in &received {
        verify_vapid(&r.headers, &hub.public_key(), &fake.origin());
        assert_eq!(header(r, "content-encoding"), "aes128gcm");
        assert_eq!(header(r, "urgency"), "high");
        assert_eq!(header(r, "topic"), "al_00000000000000a1");
        let ttl: u64 = header(r, "ttl").parse().expect("TTL");
        assert!((1..=600).contains(&ttl), "TTL up to the expiry: {ttl}");
        assert!(r.body.len() <= 4096);
        let device = [&phone, &tablet, &other]
            .into_iter()
            .find(|d| d.token == r.device)
            .expect("known device");
        let payload: Value = serde_json::from_slice(&device.decrypt(&r.body)).expect("json");
        assert_eq!(payload["alert"], "al_00000000000000a1");
        assert_eq!(payload["title"], "Missing child, 7, red jacket");
        assert_eq!(payload["body"], "Last seen near the west gate");
        assert_eq!(payload["url"], "/responder.html?alert=al_00000000000000a1");
        assert_eq!(payload["urgent"], true);
        assert_eq!(payload["type"], "alert");
    }

    // A body far over the limit is cut so the encrypted message fits 4 KiB.
    let long = "Wearing a red jacket. ".repeat(400);
    assert_eq!(
        hub.push
            .notify(&subs(&["v-2"]), notification("al_00000000000000a2", &long)),
        1
    );
    hub.outcomes.wait_for(4).await;
    let big = fake
        .received(Some(&other))
        .pop()
        .expect("second push to v-2");
    assert!(big.body.len() <= 4096, "{}", big.body.len());
    let payload: Value = serde_json::from_slice(&other.decrypt(&big.body)).expect("json");
    assert!(payload["body"].as_str().expect("body").ends_with('…'));
    assert_eq!(payload["url"], "/responder.html?alert=al_00000000000000a2");

    let stats = hub.push.stats();
    assert_eq!(
        (stats.queued, stats.sent, stats.failed, stats.dropped),
        (4, 4, 0, 0)
    );
    assert_eq!(stats.pending, 0);
    assert!(
        hub.push
            .prometheus()
            .contains("woodpecker_push_sent_total 4")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_subscriptions_are_deleted_durably() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(dir.path(), settings()).await;
    let expired = Device::new(&fake, "expired");
    let unknown = Device::new(&fake, "unknown");
    let fine = Device::new(&fake, "fine");
    fake.script(&expired, &[Reply::Status(410)]);
    fake.script(&unknown, &[Reply::Status(404)]);
    hub.subscribe("v-1", &expired).await;
    hub.subscribe("v-1", &unknown).await;
    hub.subscribe("v-2", &fine).await;

    let queued = hub.push.notify(
        &subs(&["v-1", "v-2"]),
        notification("al_00000000000000b1", "x"),
    );
    assert_eq!(queued, 3);
    let outcomes = hub.outcomes.wait_for(3).await;
    let result_of = |sub: &str| -> Vec<PushResult> {
        outcomes
            .iter()
            .filter(|o| &*o.sub == sub)
            .map(|o| o.result.clone())
            .collect()
    };
    assert_eq!(result_of("v-1"), [PushResult::Gone, PushResult::Gone]);
    assert_eq!(result_of("v-2"), [PushResult::Sent]);
    assert_eq!(hub.push.subscriptions_of("v-1"), 0);
    assert_eq!(hub.push.stats().gone, 2);

    let listed: Value = hub
        .http
        .get(format!("{}/subscriptions", hub.api))
        .bearer_auth(hub.token("v-1", Role::Responder))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["subscriptions"], json!([]));
    assert_eq!(
        hub.push
            .notify(&subs(&["v-1"]), notification("al_00000000000000b2", "x")),
        0
    );

    // Durable: a hub started on the same data directory agrees.
    let again = Hub::start(dir.path(), settings()).await;
    assert_eq!(again.push.subscriptions_of("v-1"), 0);
    assert_eq!(again.push.subscriptions_of("v-2"), 1);
    assert_eq!(again.public_key(), hub.public_key(), "same vapid.key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_push_is_retried_after_retry_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(dir.path(), settings()).await;
    let phone = Device::new(&fake, "busy");
    fake.script(&phone, &[Reply::RetryAfter(1), Reply::Status(201)]);
    hub.subscribe("v-1", &phone).await;

    assert_eq!(
        hub.push
            .notify(&subs(&["v-1"]), notification("al_00000000000000c1", "x")),
        1
    );
    let outcomes = hub.outcomes.wait_for(1).await;
    assert_eq!(outcomes[0].result, PushResult::Sent);
    assert_eq!(outcomes[0].attempts, 2);
    let tries = fake.received(Some(&phone));
    assert_eq!(tries.len(), 2);
    // Retry-After is a floor: the retry never comes before it.
    assert!(tries[1].at.duration_since(tries[0].at) >= Duration::from_secs(1));
    for t in &tries {
        verify_vapid(&t.headers, &hub.public_key(), &fake.origin());
        let payload: Value = serde_json::from_slice(&phone.decrypt(&t.body)).expect("json");
        assert_eq!(payload["alert"], "al_00000000000000c1");
    }
    let stats = hub.push.stats();
    assert_eq!((stats.sent, stats.retried, stats.failed), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(
        dir.path(),
        PushSettings {
            max_attempts: 3,
            ..settings()
        },
    )
    .await;
    let broken = Device::new(&fake, "broken");
    let flaky = Device::new(&fake, "flaky");
    let refused = Device::new(&fake, "refused");
    fake.script(&broken, &[Reply::Status(500)]);
    fake.script(&flaky, &[Reply::Status(503), Reply::Status(201)]);
    fake.script(&refused, &[Reply::Status(403)]);
    hub.subscribe("v-1", &broken).await;
    hub.subscribe("v-2", &flaky).await;
    hub.subscribe("v-3", &refused).await;

    assert_eq!(
        hub.push.notify(
            &subs(&["v-1", "v-2", "v-3"]),
            notification("al_00000000000000d1", "x")
        ),
        3
    );
    let outcomes = hub.outcomes.wait_for(3).await;
    let of = |sub: &str| {
        outcomes
            .iter()
            .find(|o| &*o.sub == sub)
            .cloned()
            .expect("outcome")
    };
    let v1 = of("v-1");
    assert!(
        matches!(&v1.result, PushResult::Failed(r) if r.contains("500")),
        "{v1:?}"
    );
    assert_eq!(v1.attempts, 3);
    assert_eq!(fake.received(Some(&broken)).len(), 3, "bounded");
    let v2 = of("v-2");
    assert_eq!((v2.result, v2.attempts), (PushResult::Sent, 2));
    let v3 = of("v-3");
    assert!(matches!(&v3.result, PushResult::Failed(r) if r.contains("403")));
    assert_eq!(v3.attempts, 1, "a 403 is not retried");

    let stats = hub.push.stats();
    assert_eq!(
        (stats.sent, stats.failed, stats.retried, stats.gone),
        (1, 2, 3, 0)
    );
    assert_eq!(
        hub.push.subscriptions_of("v-1"),
        1,
        "failure keeps the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(
        dir.path(),
        PushSettings {
            workers: 1,
            queue_capacity: 2,
            ..settings()
        },
    )
    .await;
    let devices: Vec<Device> = (0..4)
        .map(|i| Device::new(&fake, &format!("held-{i}")))
        .collect();
    for d in &devices {
        fake.script(d, &[Reply::Hold]);
        hub.subscribe("v-1", d).await;
    }
    // The pushes are held at the service, so nothing finishes while we queue.
    let queued = hub
        .push
        .notify(&subs(&["v-1"]), notification("al_00000000000000e1", "x"));
    assert_eq!(queued, 2);
    assert_eq!(hub.push.stats().dropped, 2);
    fake.state.gate.add_permits(100);
    let outcomes = hub.outcomes.wait_for(2).await;
    assert!(outcomes.iter().all(|o| o.result == PushResult::Sent));
    // Room again once they finished.
    assert_eq!(
        hub.push
            .notify(&subs(&["v-1"]), notification("al_00000000000000e2", "x")),
        2
    );
    hub.outcomes.wait_for(4).await;
    let stats = hub.push.stats();
    assert_eq!((stats.queued, stats.sent, stats.dropped), (4, 4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_api_validates_dedups_and_deletes() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(dir.path(), settings()).await;
    let url = format!("{}/subscriptions", hub.api);
    let phone = Device::new(&fake, "phone");

    let key: Value = hub
        .http
        .get(format!("{}/vapid-public-key", hub.api))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let key = key["public_key"].as_str().expect("public_key");
    assert_eq!(key, hub.public_key());
    let raw = b64(key);
    assert_eq!((raw.len(), raw[0]), (65, 4));

    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_string();
    let resp = hub
        .http
        .post(&url)
        .json(&phone.json())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code(&resp.json().await.expect("json")), "unauthorized");
    let resp = hub
        .http
        .post(&url)
        .bearer_auth(hub.token("p-1", Role::Police))
        .json(&phone.json())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(&resp.json().await.expect("json")), "forbidden");

    let responder = hub.token("v-1", Role::Responder);
    let mut bad = Vec::new();
    let mut not_https = phone.json();
    not_https["endpoint"] = json!("http://push.example/x");
    bad.push(not_https);
    let mut short_auth = phone.json();
    short_auth["keys"]["auth"] = json!("AAAA");
    bad.push(short_auth);
    let mut not_a_point = phone.json();
    not_a_point["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]));
    bad.push(not_a_point);
    bad.push(json!({"endpoint": phone.endpoint}));
    for body in bad {
        let resp = hub
            .http
            .post(&url)
            .bearer_auth(&responder)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&resp.json().await.expect("json")), "bad_request");
    }

    let (status, first) = hub.subscribe("v-1", &phone).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = hub.subscribe("v-1", &phone).await;
    assert_eq!(status, StatusCode::OK, "a known endpoint is refreshed");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["created"], false);
    assert_eq!(hub.push.subscriptions_of("v-1"), 1);

    // Another responder cannot delete it by id.
    let id = first["id"].as_str().expect("id");
    let resp = hub
        .http
        .delete(format!("{url}/{id}"))
        .bearer_auth(hub.token("v-2", Role::Responder))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    for expected in [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND] {
        let resp = hub
            .http
            .delete(&url)
            .bearer_auth(&responder)
            .json(&json!({"endpoint": phone.endpoint}))
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), expected);
    }
    assert_eq!(hub.push.subscriptions_of("v-1"), 0);

    // Plain http is refused once loopback is not allowed.
    let strict = Hub::start(
        dir.path(),
        PushSettings {
            allow_http_loopback: false,
            ..settings()
        },
    )
    .await;
    let (status, body) = strict.subscribe("v-1", &phone).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_push_is_inert() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = FakePush::start().await;
    let hub = Hub::start(
        dir.path(),
        PushSettings {
            enabled: false,
            ..settings()
        },
    )
    .await;
    assert!(hub.push.public_key().is_none());
    let resp = hub
        .http
        .get(format!("{}/vapid-public-key", hub.api))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = hub.subscribe("v-1", &Device::new(&fake, "d")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        hub.push
            .notify(&subs(&["v-1"]), notification("al_00000000000000f1", "x")),
        0
    );
    assert!(!dir.path().join("vapid.key").exists());
}

/// The routes merge beside an `/api/v1` nest with its own fallback, the
/// way `api::router` is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_merge_beside_the_api_nest() {
    let dir = tempfile::tempdir().expect("tmp");
    let push = PushService::start(&settings(), dir.path(), Arc::new(|_| {})).expect("push");
    let authority = Arc::new(
        Authority::new(&AuthSettings::default(), &Secret::new(SECRET)).expect("authority"),
    );
    #[derive(Clone)]
    struct AppState;
    let api = Router::<AppState>::new()
        .route("/alerts", get(|| async { "alerts" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such API route") });
    let app = Router::<AppState>::new()
        .nest("/api/v1", api)
        .merge(push.router(authority))
        .with_state(AppState);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    woodpecker::install_crypto_provider();
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
    assert_eq!(
        get("/api/v1/push/vapid-public-key")
            .await
            .expect("get")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/api/v1/alerts").await.expect("get").status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/api/v1/nope").await.expect("get").status(),
        StatusCode::NOT_FOUND
    );
}
