//! The control plane: a thread of its own for the work police wait on —
//! issuing, updating and closing alerts.
//!
//! One alert to 15,000 responders wakes 15,000 session tasks at once. On
//! the shared runtime every await of the next police action (its commit,
//! its sequencer turn) then queues behind all of them, so under load each
//! await cost a full pass over the sessions and a second alert waited
//! seconds. Here the control work runs on a single-threaded runtime on its
//! own OS thread: the kernel scheduler gives it its share of a core however
//! many sessions are runnable, and alerts issued back to back are committed
//! and queued back to back (so sessions then write several frames per
//! `send`). The fan-out itself is handed back to a runtime worker while the
//! workers have room (see [`on_control_thread`]).

use std::future::Future;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static ON_CONTROL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the caller runs on a control thread. The alerts code hands a
/// big fan-out from there to a runtime worker: woken from a worker, the
/// sessions go through its local run queue; woken from this thread, each
/// wake takes the shared queue's lock against the workers (measured: 16–32
/// ms instead of ~2 ms to offer one alert to 10,000 sessions).
pub fn on_control_thread() -> bool {
    ON_CONTROL_THREAD.get()
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control plane: {0}")]
    Start(#[from] std::io::Error),
    #[error("the control plane has stopped")]
    Stopped,
    #[error("control work panicked")]
    Panicked,
}

/// Handle to the control thread; stopping (or dropping) it ends the thread
/// once the control work in flight has been cancelled.
pub struct ControlPlane {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ControlPlane {
    pub fn start() -> Result<Self, ControlError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("woodpecker-control")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("woodpecker-control".into())
            .spawn(move || {
                // Spawned work runs while this waits; a dropped sender also
                // ends the wait.
                ON_CONTROL_THREAD.set(true);
                let _ = runtime.block_on(stop_rx);
            })?;
        Ok(Self {
            handle,
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `work` on the control thread and waits for its result. The
    /// work finishes even if the caller goes away, so a police client that
    /// hangs up mid-request does not leave an alert half issued.
    pub async fn run<F, T>(&self, work: F) -> Result<T, ControlError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(work).await.map_err(|e| {
            if e.is_panic() {
                ControlError::Panicked
            } else {
                ControlError::Stopped
            }
        })
    }

    /// Ends the control thread; work still in flight is cancelled. Blocks
    /// until the thread has gone, so call it from outside async code or via
    /// `spawn_blocking`.
    pub fn stop(&self) {
        if let Ok(mut stop) = self.stop.lock()
            && let Some(tx) = stop.take()
        {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Signal only: joining here could block an async caller.
        if let Ok(mut stop) = self.stop.lock()
            && let Some(tx) = stop.take()
        {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_control_thread_and_returns_its_result() {
        let control = ControlPlane::start().expect("start");
        let name = control
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("run");
        assert_eq!(name.as_deref(), Some("woodpecker-control"));
        assert!(
            control
                .run(async { on_control_thread() })
                .await
                .expect("run")
        );
        assert!(!on_control_thread());
        tokio::task::spawn_blocking(move || control.stop())
            .await
            .expect("stop");
    }

    #[tokio::test]
    async fn work_after_stop_is_refused() {
        let control = std::sync::Arc::new(ControlPlane::start().expect("start"));
        let c = control.clone();
        tokio::task::spawn_blocking(move || c.stop())
            .await
            .expect("stop");
        let refused = control.run(async { 1 }).await;
        assert!(matches!(refused, Err(ControlError::Stopped)));
    }

    #[tokio::test]
    async fn a_panic_in_control_work_is_reported_and_the_thread_goes_on() {
        let control = ControlPlane::start().expect("start");
        let failed = control
            .run(async {
                if std::hint::black_box(true) {
                    panic!("control work failed on purpose");
                }
            })
            .await;
        assert!(matches!(failed, Err(ControlError::Panicked)));
        assert_eq!(control.run(async { 7 }).await.expect("still runs"), 7);
        tokio::task::spawn_blocking(move || control.stop())
            .await
            .expect("stop");
    }
}
