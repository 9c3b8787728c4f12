//! Web Push for responders without a live connection: VAPID keys (RFC
//! 8292), durable browser subscriptions, RFC 8291 `aes128gcm` payloads sent
//! by a bounded worker pool of its own, and the HTTP routes
//! `GET /api/v1/push/vapid-public-key`, `POST|GET|DELETE
//! /api/v1/push/subscriptions`.
//!
//! [`PushService::notify`] is what the alert service calls after it fans an
//! event out: it never blocks (subscriptions are indexed in memory, jobs go
//! to an unbounded channel behind a `queue_capacity` admission count), so
//! the WebSocket fan-out never waits on a push service. The outcome of each
//! delivery comes back through the hook given to [`PushService::start`].
//!
//! - [`vapid`]: the key pair, its loading, the signed JWT.
//! - [`subscription`]: the posted JSON, validation, the parsed target.
//! - [`store`]: the durable store trait, SQLite, the in-memory registry.
//! - `sender`: the worker pool, retries, outcome classification.
//! - `routes`: the HTTP handlers.

mod routes;
mod sender;
pub mod store;
pub mod subscription;
pub mod vapid;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::Authority;
use crate::config::{ConfigError, Secret};
use crate::domain::{AlertId, AlertStatus, now_ms};
use crate::protocol::Alert;

pub use sender::PushMetrics;
use sender::{Job, Message, Policy, Pool};
use store::{Registry, SqliteSubscriptions, SubscriptionStore};
use vapid::VapidKey;

/// The most a push service is asked to keep a message (28 days).
pub const MAX_TTL_S: u64 = 28 * 24 * 3600;
/// The largest plaintext that fits a 4096-byte aes128gcm body: 4096 − 86
/// (salt, record size, key id) − 16 (tag) − 1 (padding delimiter).
pub const MAX_PAYLOAD_BYTES: usize = 3993;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push: VAPID private key {0}")]
    Key(String),
    #[error("push: cannot use VAPID key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("push: subscription store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("push: io: {0}")]
    Io(#[from] std::io::Error),
    #[error("push: HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("push: background task failed: {0}")]
    Task(String),
    #[error("push notifications are disabled on this hub")]
    Disabled,
}

/// `[push]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    pub enabled: bool,
    /// VAPID `sub`: how a push service reaches the operator (`mailto:` or `https:`).
    pub subject: String,
    /// base64url P-256 private key; best from `WOODPECKER__PUSH__VAPID_PRIVATE_KEY`.
    pub vapid_private_key: Secret,
    /// A file holding the key (base64url or PEM); must exist.
    pub vapid_private_key_file: Option<PathBuf>,
    pub workers: usize,
    /// Deliveries admitted (queued, in flight or waiting to retry) at once.
    pub queue_capacity: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// First retry delay when no `Retry-After` is given; doubles each time.
    pub retry_base_ms: u64,
    /// A retry that would wait longer than this (`Retry-After` included) fails instead.
    pub retry_max_ms: u64,
    pub request_timeout_s: u64,
    /// Accept `http://` endpoints on loopback hosts (tests only).
    pub allow_http_loopback: bool,
    pub max_subscriptions_per_responder: usize,
    /// The link a notification opens; `{alert}` becomes the alert id.
    pub alert_url: String,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            subject: "mailto:ops@example.invalid".into(),
            vapid_private_key: Secret::default(),
            vapid_private_key_file: None,
            workers: 4,
            queue_capacity: 10_000,
            max_attempts: 4,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            request_timeout_s: 10,
            allow_http_loopback: false,
            max_subscriptions_per_responder: 10,
            alert_url: "/responder.html?alert={alert}".into(),
        }
    }
}

impl PushSettings {
    /// Names the `push.*` setting that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                setting,
                problem: problem.into(),
            }
        }
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https://")) {
            return Err(bad(
                "push.subject",
                "must be a mailto: or https: URI (RFC 8292)",
            ));
        }
        if !self.vapid_private_key.is_empty() {
            vapid::parse_private_key(self.vapid_private_key.expose()).map_err(|e| match e {
                PushError::Key(problem) => bad("push.vapid_private_key", problem),
                e => bad("push.vapid_private_key", e.to_string()),
            })?;
        }
        if !(1..=256).contains(&self.workers) {
            return Err(bad("push.workers", "must be between 1 and 256"));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(bad("push.queue_capacity", "must be between 1 and 1000000"));
        }
        if !(1..=20).contains(&self.max_attempts) {
            return Err(bad("push.max_attempts", "must be between 1 and 20"));
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(bad(
                "push.retry_base_ms / push.retry_max_ms",
                "need 1 <= retry_base_ms <= retry_max_ms",
            ));
        }
        if !(1..=120).contains(&self.request_timeout_s) {
            return Err(bad("push.request_timeout_s", "must be between 1 and 120"));
        }
        if !(1..=100).contains(&self.max_subscriptions_per_responder) {
            return Err(bad(
                "push.max_subscriptions_per_responder",
                "must be between 1 and 100",
            ));
        }
        if !self.alert_url.contains("{alert}")
            || !(self.alert_url.starts_with('/') || self.alert_url.starts_with("https://"))
        {
            return Err(bad(
                "push.alert_url",
                "must start with / or https:// and contain {alert}",
            ));
        }
        Ok(())
    }
}

/// What one push shows. Build it with [`PushService::notification_for`]
/// (or by hand); it is encoded once per [`PushService::notify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub alert_id: AlertId,
    pub status: AlertStatus,
    pub version: u32,
    pub title: String,
    pub body: String,
    /// Opened when the notification is tapped (relative to the hub's origin or absolute).
    pub url: String,
    /// Vibrate and stay on screen until handled.
    pub urgent: bool,
    /// How long a push service may hold it (clamped to 1 s ..= 28 days).
    pub ttl_s: u64,
    /// RFC 8030 `Topic`: a newer message with the same topic replaces an
    /// undelivered older one (sanitized to ≤ 32 base64url characters).
    pub topic: String,
}

impl Notification {
    /// The notification for an alert event: a new alert, an update, or a
    /// cancellation / resolution / expiry (then not urgent). TTL is the time
    /// left to the alert's expiry (at least a minute, so a stand-down still
    /// reaches a phone that was briefly offline). `url_template` holds `{alert}`.
    pub fn for_alert(alert: &Alert, url_template: &str) -> Self {
        let id = alert.id.as_str();
        let (title, body, urgent) = match alert.status {
            AlertStatus::Active if alert.version <= 1 => (
                alert.title.clone(),
                alert.body.clone(),
                alert.urgency == "immediate"
                    || matches!(alert.severity.as_str(), "extreme" | "severe"),
            ),
            AlertStatus::Active => (
                format!("Update: {}", alert.title),
                alert.body.clone(),
                alert.urgency == "immediate"
                    || matches!(alert.severity.as_str(), "extreme" | "severe"),
            ),
            AlertStatus::Cancelled => (
                format!("Cancelled: {}", alert.title),
                alert
                    .outcome
                    .clone()
                    .unwrap_or_else(|| "This alert was cancelled. Please stand down.".into()),
                false,
            ),
            AlertStatus::Resolved => (
                format!("Resolved: {}", alert.title),
                alert
                    .outcome
                    .clone()
                    .unwrap_or_else(|| "Resolved. Thank you, please stand down.".into()),
                false,
            ),
            AlertStatus::Found => (
                format!("Found: {}", alert.title),
                "The person has been found. Thank you, please stand down.".into(),
                false,
            ),
            AlertStatus::Expired => (
                format!("Ended: {}", alert.title),
                "This alert has expired.".into(),
                false,
            ),
        };
        let left_s = alert.expires_at.saturating_sub(now_ms()) / 1000;
        Self {
            alert_id: alert.id.clone(),
            status: alert.status,
            version: alert.version,
            title,
            body,
            url: url_template.replace("{alert}", id),
            urgent,
            ttl_s: left_s.clamp(60, MAX_TTL_S),
            topic: id.to_string(),
        }
    }

    /// The JSON the service worker reads, cut to fit [`MAX_PAYLOAD_BYTES`]
    /// (the body first, then the title).
    pub fn payload(&self) -> Vec<u8> {
        let mut title = self.title.clone();
        let mut body = self.body.clone();
        loop {
            let json = serde_json::json!({
                "v": 1,
                "type": if self.status == AlertStatus::Active && self.version <= 1 { "alert" } else { "alert_update" },
                "alert": self.alert_id,
                "status": self.status,
                "version": self.version,
                "title": title,
                "body": body,
                "url": self.url,
                "urgent": self.urgent,
                "tag": topic_of(&self.topic),
                "ts": now_ms(),
            });
            let bytes = json.to_string().into_bytes();
            if bytes.len() <= MAX_PAYLOAD_BYTES {
                return bytes;
            }
            let excess = bytes.len() - MAX_PAYLOAD_BYTES;
            if !body.is_empty() {
                body = cut(&body, excess);
            } else if !title.is_empty() {
                title = cut(&title, excess);
            } else {
                // Only the url or the id can be that long; send a bare ping.
                return serde_json::json!({"v": 1, "alert": self.alert_id, "title": "Woodpecker alert"})
                    .to_string()
                    .into_bytes();
            }
        }
    }
}

/// Drops at least `excess` bytes (plus room for an ellipsis) from the end.
fn cut(s: &str, excess: usize) -> String {
    let keep = s.len().saturating_sub(excess + 3);
    let mut end = keep;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        String::new()
    } else {
        format!("{}…", &s[..end])
    }
}

/// RFC 8030 topic: at most 32 characters of the base64url alphabet.
fn topic_of(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect()
}

/// How one delivery (one alert event to one device) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The push service accepted it (201): count it as `push_sent`.
    Sent,
    /// 404/410: the subscription is expired and has been deleted.
    Gone,
    /// Refused, or retries ran out; the reason is for logs.
    Failed(String),
}

/// Handed to the outcome hook once per delivery.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    pub alert_id: AlertId,
    /// The responder.
    pub sub: Arc<str>,
    /// The subscription (device) id.
    pub subscription: Arc<str>,
    pub result: PushResult,
    pub attempts: u32,
}

/// Called on a push worker for every finished delivery; must be quick and
/// must not block or panic.
pub type OutcomeHook = Arc<dyn Fn(PushOutcome) + Send + Sync>;

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PushStats {
    pub queued: u64,
    pub sent: u64,
    pub gone: u64,
    pub retried: u64,
    pub failed: u64,
    pub dropped: u64,
    pub pending: u64,
    pub subscriptions: u64,
}

/// The push subsystem; cheap to clone.
#[derive(Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PushSettings,
    metrics: Arc<PushMetrics>,
    /// `None` when push is disabled.
    running: Option<Running>,
}

struct Running {
    vapid: Arc<VapidKey>,
    registry: Arc<Registry>,
    pool: Pool,
}

impl PushService {
    /// Loads (or generates) the VAPID key, opens the subscription table in
    /// `<data_dir>/woodpecker.db`, loads it into memory and spawns the
    /// workers. Call inside a Tokio runtime. With `push.enabled = false` it
    /// returns an inert service (routes answer 503, `notify` queues nothing).
    pub fn start(
        settings: &PushSettings,
        data_dir: &Path,
        outcome_hook: OutcomeHook,
    ) -> Result<Self, PushError> {
        if !settings.enabled {
            return Ok(Self::disabled(settings));
        }
        let store: Arc<dyn SubscriptionStore> = Arc::new(SqliteSubscriptions::open(data_dir)?);
        Self::start_with_store(settings, data_dir, store, outcome_hook)
    }

    /// [`start`](Self::start) with another subscription store.
    pub fn start_with_store(
        settings: &PushSettings,
        data_dir: &Path,
        store: Arc<dyn SubscriptionStore>,
        outcome_hook: OutcomeHook,
    ) -> Result<Self, PushError> {
        if !settings.enabled {
            return Ok(Self::disabled(settings));
        }
        let (vapid, source) = vapid::load_or_create(settings, data_dir)?;
        let vapid = Arc::new(vapid);
        let registry = Arc::new(Registry::load(
            store,
            settings.max_subscriptions_per_responder,
        )?);
        let metrics = Arc::new(PushMetrics::default());
        let policy = Policy {
            workers: settings.workers,
            queue_capacity: settings.queue_capacity,
            max_attempts: settings.max_attempts.max(1),
            retry_base: Duration::from_millis(settings.retry_base_ms.max(1)),
            retry_max: Duration::from_millis(settings.retry_max_ms),
            request_timeout: Duration::from_secs(settings.request_timeout_s.max(1)),
            https_only: !settings.allow_http_loopback,
        };
        let pool = Pool::start(
            policy,
            vapid.clone(),
            registry.clone(),
            metrics.clone(),
            outcome_hook,
        )?;
        tracing::info!(
            key = %source,
            subscriptions = registry.total(),
            workers = settings.workers,
            "web push ready"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                metrics,
                running: Some(Running {
                    vapid,
                    registry,
                    pool,
                }),
            }),
        })
    }

    fn disabled(settings: &PushSettings) -> Self {
        tracing::info!("web push disabled");
        Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                metrics: Arc::new(PushMetrics::default()),
                running: None,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.running.is_some()
    }

    pub fn settings(&self) -> &PushSettings {
        &self.inner.settings
    }

    /// The VAPID public key (base64url, 65-byte point), if enabled.
    pub fn public_key(&self) -> Option<&str> {
        self.inner.running.as_ref().map(|r| r.vapid.public_key())
    }

    /// The notification for this alert's current state, linking to
    /// `push.alert_url`.
    pub fn notification_for(&self, alert: &Alert) -> Notification {
        Notification::for_alert(alert, &self.inner.settings.alert_url)
    }

    /// Queues `notification` for every device of every responder in
    /// `subs` (pass only those without a live session). Never blocks.
    /// Returns how many deliveries were queued; any beyond
    /// `queue_capacity` pending are dropped and counted.
    pub fn notify(&self, subs: &[Arc<str>], notification: Notification) -> usize {
        let Some(run) = &self.inner.running else {
            return 0;
        };
        let targets = run.registry.targets_of(subs);
        if targets.is_empty() {
            return 0;
        }
        let ttl = Duration::from_secs(notification.ttl_s.clamp(1, MAX_TTL_S));
        let message = Arc::new(Message {
            payload: notification.payload(),
            topic: topic_of(&notification.topic),
            alert_id: notification.alert_id,
            deadline: tokio::time::Instant::now() + ttl,
        });
        let total = targets.len();
        let mut queued = 0;
        for target in targets {
            let job = Job {
                target,
                message: message.clone(),
                attempt: 1,
            };
            if run.pool.enqueue(job) {
                queued += 1;
            }
        }
        let dropped = total - queued;
        if dropped > 0 {
            tracing::warn!(alert = %message.alert_id, dropped, "push queue full; deliveries dropped");
        }
        queued
    }

    /// How many devices a responder has subscribed (memory only).
    pub fn subscriptions_of(&self, sub: &str) -> usize {
        self.inner
            .running
            .as_ref()
            .map_or(0, |r| r.registry.count_of(sub))
    }

    pub fn metrics(&self) -> &PushMetrics {
        &self.inner.metrics
    }

    pub fn stats(&self) -> PushStats {
        let m = &self.inner.metrics;
        PushStats {
            queued: m.queued.load(Ordering::Relaxed),
            sent: m.sent.load(Ordering::Relaxed),
            gone: m.gone.load(Ordering::Relaxed),
            retried: m.retried.load(Ordering::Relaxed),
            failed: m.failed.load(Ordering::Relaxed),
            dropped: m.dropped.load(Ordering::Relaxed),
            pending: m.pending.load(Ordering::Relaxed) as u64,
            subscriptions: self
                .inner
                .running
                .as_ref()
                .map_or(0, |r| r.registry.total() as u64),
        }
    }

    /// Prometheus text lines for `/metrics`.
    pub fn prometheus(&self) -> String {
        let s = self.stats();
        let rows: [(&str, &str, u64); 8] = [
            ("woodpecker_push_queued_total", "counter", s.queued),
            ("woodpecker_push_sent_total", "counter", s.sent),
            ("woodpecker_push_gone_total", "counter", s.gone),
            ("woodpecker_push_retried_total", "counter", s.retried),
            ("woodpecker_push_failed_total", "counter", s.failed),
            ("woodpecker_push_dropped_total", "counter", s.dropped),
            ("woodpecker_push_pending", "gauge", s.pending),
            ("woodpecker_push_subscriptions", "gauge", s.subscriptions),
        ];
        let mut out = String::new();
        for (name, kind, value) in rows {
            out.push_str(&format!("# TYPE {name} {kind}\n{name} {value}\n"));
        }
        out
    }

    /// The push routes (full paths under `/api/v1/push`), for any router
    /// state: `.merge(push.router(auth))`.
    pub fn router<S: Clone + Send + Sync + 'static>(
        &self,
        auth: Arc<Authority>,
    ) -> axum::Router<S> {
        routes::router(self.clone(), auth)
    }

    /// Stops the workers; each finishes its current attempt within `grace`.
    /// Deliveries still queued are dropped.
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(run) = &self.inner.running {
            run.pool.shutdown(grace).await;
        }
    }

    fn registry(&self) -> Result<&Arc<Registry>, PushError> {
        self.inner
            .running
            .as_ref()
            .map(|r| &r.registry)
            .ok_or(PushError::Disabled)
    }

    /// Runs a blocking registry call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, PushError> + Send + 'static,
    ) -> Result<T, PushError> {
        let registry = self.registry()?.clone();
        tokio::task::spawn_blocking(move || f(&registry))
            .await
            .map_err(|e| PushError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LatLng, Unit};

    fn alert(status: AlertStatus, version: u32, body: &str) -> Alert {
        Alert {
            id: AlertId::parse("al_00000000000000ab").expect("id"),
            kind: "missing_person".into(),
            status,
            title: "Missing child, 7, red jacket".into(),
            body: body.into(),
            center: LatLng::new(30.75, 120.75).expect("ll"),
            radius_m: 2000.0,
            audience: vec![Unit::Volunteer],
            urgency: "immediate".into(),
            severity: "severe".into(),
            issued_at: now_ms(),
            issued_by: "p-1".into(),
            expires_at: now_ms() + 3600 * 1000,
            version,
            subject: None,
            outcome: Some("Found safe".into()),
            updated_at: now_ms(),
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        PushSettings::default().validate().expect("valid");
        let s = PushSettings {
            workers: 0,
            ..PushSettings::default()
        };
        assert!(
            s.validate()
                .expect_err("bad")
                .to_string()
                .contains("push.workers")
        );
        let s = PushSettings {
            vapid_private_key: Secret::new("nope"),
            ..PushSettings::default()
        };
        assert!(
            s.validate()
                .expect_err("bad")
                .to_string()
                .contains("push.vapid_private_key")
        );
        let s = PushSettings {
            alert_url: "/x".into(),
            ..PushSettings::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn notifications_follow_the_alert_lifecycle() {
        let n = Notification::for_alert(
            &alert(AlertStatus::Active, 1, "Last seen at the park"),
            "/r?alert={alert}",
        );
        assert_eq!(n.title, "Missing child, 7, red jacket");
        assert_eq!(n.url, "/r?alert=al_00000000000000ab");
        assert_eq!(n.topic, "al_00000000000000ab");
        assert!(n.urgent);
        assert!(n.ttl_s > 3500 && n.ttl_s <= 3600, "{}", n.ttl_s);
        let u = Notification::for_alert(&alert(AlertStatus::Active, 2, "b"), "/{alert}");
        assert!(u.title.starts_with("Update: "));
        let r = Notification::for_alert(&alert(AlertStatus::Resolved, 3, "b"), "/{alert}");
        assert_eq!(
            (r.title.starts_with("Resolved: "), r.body.as_str(), r.urgent),
            (true, "Found safe", false)
        );
        let c = Notification::for_alert(&alert(AlertStatus::Cancelled, 3, "b"), "/{alert}");
        assert!(c.title.starts_with("Cancelled: "));
        let mut expired = alert(AlertStatus::Expired, 3, "b");
        expired.expires_at = 0;
        assert_eq!(Notification::for_alert(&expired, "/{alert}").ttl_s, 60);
    }

    #[test]
    fn payload_fits_and_keeps_the_link() {
        let long = "é".repeat(5000);
        let n = Notification::for_alert(&alert(AlertStatus::Active, 1, &long), "/r?alert={alert}");
        let p = n.payload();
        assert!(p.len() <= MAX_PAYLOAD_BYTES, "{}", p.len());
        let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(v["url"], "/r?alert=al_00000000000000ab");
        assert_eq!(v["type"], "alert");
        assert!(v["body"].as_str().expect("body").ends_with('…'));
        assert_eq!(topic_of("al_00ff/../x=y"), "al_00ffxy");
        assert_eq!(topic_of(&"a".repeat(40)).len(), 32);
    }
}
