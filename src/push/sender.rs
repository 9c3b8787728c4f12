//! The sending side: one bounded pool of workers, apart from the WebSocket
//! fan-out. `enqueue` never blocks (a job past `queue_capacity` pending is
//! dropped and counted); a worker encrypts (RFC 8291 aes128gcm, by
//! `web-push-native`), signs (VAPID, [`super::vapid`]) and POSTs, then
//! classifies the answer: 2xx sent, 404/410 gone (the subscription is
//! deleted), 429/5xx/network errors retried with exponential backoff that
//! honours `Retry-After`, up to `max_attempts`, anything else failed. A
//! waiting retry holds no worker. Every final outcome is counted, logged
//! and handed to the outcome hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::store::Registry;
use super::subscription::Target;
use super::vapid::VapidKey;
use super::{OutcomeHook, PushOutcome, PushResult};
use crate::domain::{AlertId, now_ms};

/// Counters (monotonic unless noted), read through [`super::PushService::stats`].
#[derive(Debug, Default)]
pub struct PushMetrics {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub gone: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Deliveries admitted and not yet finished (gauge).
    pub pending: AtomicUsize,
}

/// One notification, encoded once and shared by all its deliveries.
#[derive(Debug)]
pub struct Message {
    pub alert_id: AlertId,
    pub payload: Vec<u8>,
    pub topic: String,
    /// Past this the notification is worthless (its TTL is spent).
    pub deadline: Instant,
}

/// One delivery: a message to one device.
#[derive(Debug)]
pub struct Job {
    pub target: Arc<Target>,
    pub message: Arc<Message>,
    /// 1-based number of the next attempt.
    pub attempt: u32,
}

/// Retry policy and timeouts, from [`super::PushSettings`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub request_timeout: Duration,
    pub https_only: bool,
}

struct Ctx {
    client: reqwest::Client,
    vapid: Arc<VapidKey>,
    registry: Arc<Registry>,
    metrics: Arc<PushMetrics>,
    hook: OutcomeHook,
    policy: Policy,
    tx: mpsc::UnboundedSender<Job>,
    shutdown: watch::Receiver<bool>,
}

/// The running pool.
pub struct Pool {
    tx: mpsc::UnboundedSender<Job>,
    metrics: Arc<PushMetrics>,
    capacity: usize,
    shutdown: watch::Sender<bool>,
    workers: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

enum Attempt {
    Done(PushResult),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl Pool {
    /// Spawns `policy.workers` workers on the current Tokio runtime.
    pub fn start(
        policy: Policy,
        vapid: Arc<VapidKey>,
        registry: Arc<Registry>,
        metrics: Arc<PushMetrics>,
        hook: OutcomeHook,
    ) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(policy.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(policy.https_only)
            .user_agent(concat!(
                "woodpecker/",
                env!("CARGO_PKG_VERSION"),
                " web-push"
            ))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let capacity = policy.queue_capacity.max(1);
        let ctx = Arc::new(Ctx {
            client,
            vapid,
            registry,
            metrics: metrics.clone(),
            hook,
            policy: policy.clone(),
            tx: tx.clone(),
            shutdown: shutdown_rx,
        });
        let rx = Arc::new(AsyncMutex::new(rx));
        let workers = (0..policy.workers.max(1))
            .map(|_| tokio::spawn(worker(ctx.clone(), rx.clone())))
            .collect();
        Ok(Self {
            tx,
            metrics,
            capacity,
            shutdown,
            workers: parking_lot::Mutex::new(workers),
        })
    }

    /// Admits a delivery unless `queue_capacity` are already pending.
    /// Never blocks.
    pub fn enqueue(&self, job: Job) -> bool {
        let m = &self.metrics;
        let admitted = m
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < self.capacity).then_some(p + 1)
            })
            .is_ok();
        if !admitted || *self.shutdown.borrow() {
            if admitted {
                m.pending.fetch_sub(1, Ordering::AcqRel);
            }
            m.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.tx.send(job).is_err() {
            m.pending.fetch_sub(1, Ordering::AcqRel);
            m.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        m.queued.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Stops the workers: each finishes the attempt it is in, up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let workers: Vec<_> = std::mem::take(&mut *self.workers.lock());
        let deadline = Instant::now() + grace;
        for mut w in workers {
            if tokio::time::timeout_at(deadline, &mut w).await.is_err() {
                w.abort();
            }
        }
    }
}

async fn worker(ctx: Arc<Ctx>, rx: Arc<AsyncMutex<mpsc::UnboundedReceiver<Job>>>) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let job = {
            let mut rx = rx.lock().await;
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return,
                job = rx.recv() => job,
            }
        };
        let Some(job) = job else { return };
        ctx.process(job).await;
    }
}

impl Ctx {
    async fn process(self: &Arc<Self>, job: Job) {
        match self.attempt(&job).await {
            Attempt::Done(result) => self.finish(job, result).await,
            Attempt::Retry {
                reason,
                retry_after,
            } => {
                if job.attempt >= self.policy.max_attempts {
                    let result = PushResult::Failed(format!(
                        "gave up after {} attempts: {reason}",
                        job.attempt
                    ));
                    return self.finish(job, result).await;
                }
                let delay = match retry_after {
                    Some(d) => d,
                    None => backoff(self.policy.retry_base, job.attempt),
                };
                if delay > self.policy.retry_max {
                    let result = PushResult::Failed(format!(
                        "{reason}; retry after {}s is beyond the {}s limit",
                        delay.as_secs(),
                        self.policy.retry_max.as_secs()
                    ));
                    return self.finish(job, result).await;
                }
                if Instant::now() + delay >= job.message.deadline {
                    let result =
                        PushResult::Failed(format!("{reason}; TTL would run out before a retry"));
                    return self.finish(job, result).await;
                }
                self.metrics.retried.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    alert = %job.message.alert_id,
                    responder = %job.target.sub,
                    subscription = %job.target.id,
                    push_service = %job.target.origin,
                    attempt = job.attempt,
                    delay_ms = delay.as_millis() as u64,
                    %reason,
                    "push retry scheduled"
                );
                let ctx = self.clone();
                let mut shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => {
                            ctx.metrics.pending.fetch_sub(1, Ordering::AcqRel);
                        }
                        _ = tokio::time::sleep(delay) => {
                            let next = Job { attempt: job.attempt + 1, ..job };
                            if ctx.tx.send(next).is_err() {
                                ctx.metrics.pending.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                    }
                });
            }
        }
    }

    async fn attempt(&self, job: &Job) -> Attempt {
        let msg = &job.message;
        let target = &job.target;
        let now = Instant::now();
        if now >= msg.deadline {
            return Attempt::Done(PushResult::Failed("TTL ran out while queued".into()));
        }
        let ttl = msg.deadline.duration_since(now).as_secs().max(1);
        let body =
            match web_push_native::encrypt(msg.payload.clone(), &target.ua_public, &target.auth) {
                Ok(b) => b,
                Err(e) => return Attempt::Done(PushResult::Failed(format!("encryption: {e}"))),
            };
        let auth = self.vapid.authorization(&target.origin, now_ms() / 1000);
        let sent = self
            .client
            .post(target.endpoint.clone())
            .header("TTL", ttl)
            .header(header::CONTENT_ENCODING, "aes128gcm")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("Urgency", "high")
            .header("Topic", &msg.topic)
            .header(header::AUTHORIZATION, auth)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("request failed: {}", e.without_url()),
                    retry_after: None,
                };
            }
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let detail = read_some(resp).await;
        classify(status, retry_after, &detail)
    }

    async fn finish(&self, job: Job, result: PushResult) {
        let m = &self.metrics;
        let target = &job.target;
        let alert = &job.message.alert_id;
        match &result {
            PushResult::Sent => {
                m.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%alert, responder = %target.sub, subscription = %target.id,
                    push_service = %target.origin, attempts = job.attempt, "push sent");
            }
            PushResult::Gone => {
                m.gone.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%alert, responder = %target.sub, subscription = %target.id,
                    push_service = %target.origin, "push subscription gone; deleting it");
                let registry = self.registry.clone();
                let id = target.id.clone();
                let deleted =
                    tokio::task::spawn_blocking(move || registry.unsubscribe_id(&id, None)).await;
                match deleted {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, subscription = %target.id, "could not delete a gone subscription");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, subscription = %target.id, "could not delete a gone subscription");
                    }
                }
            }
            PushResult::Failed(reason) => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%alert, responder = %target.sub, subscription = %target.id,
                    push_service = %target.origin, attempts = job.attempt, %reason, "push failed");
            }
        }
        m.pending.fetch_sub(1, Ordering::AcqRel);
        (self.hook)(PushOutcome {
            alert_id: alert.clone(),
            sub: target.sub.clone(),
            subscription: target.id.clone(),
            result,
            attempts: job.attempt,
        });
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, detail: &str) -> Attempt {
    let reason = if detail.is_empty() {
        format!("push service answered {status}")
    } else {
        format!("push service answered {status}: {detail}")
    };
    match status.as_u16() {
        200..=299 => Attempt::Done(PushResult::Sent),
        404 | 410 => Attempt::Done(PushResult::Gone),
        429 | 500..=599 => Attempt::Retry {
            reason,
            retry_after,
        },
        _ => Attempt::Done(PushResult::Failed(reason)),
    }
}

/// `base · 2^(attempt-1)`, with up to 25 % random jitter.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let jitter = rand::random::<f64>() * 0.25;
    exp.mul_f64(1.0 + jitter)
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Up to 200 bytes of the response body, for the log; the rest is drained
/// only up to 4 KiB so a hostile service cannot make us read forever.
async fn read_some(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]);
    text.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            classify(StatusCode::CREATED, None, ""),
            Attempt::Done(PushResult::Sent)
        ));
        assert!(matches!(
            classify(StatusCode::GONE, None, ""),
            Attempt::Done(PushResult::Gone)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, ""),
            Attempt::Done(PushResult::Gone)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3)), ""),
            Attempt::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, ""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, None, "bad jwt"),
            Attempt::Done(PushResult::Failed(r)) if r.contains("403") && r.contains("bad jwt")
        ));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "7".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().expect("hv"),
        );
        let d = retry_after(&h).expect("date");
        assert!(d <= Duration::from_secs(120) && d >= Duration::from_secs(100));
        h.insert(header::RETRY_AFTER, "soon".parse().expect("hv"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_with_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..6 {
            let d = backoff(base, attempt);
            let floor = base * (1 << (attempt - 1));
            assert!(d >= floor && d <= floor.mul_f64(1.25), "{attempt}: {d:?}");
        }
        assert!(backoff(base, 100) >= base * (1 << 16));
    }
}
