//! Supervised tasks and graceful shutdown.
//!
//! A component spawns its background work through a [`Supervisor`] instead
//! of `tokio::spawn`, so that on SIGTERM the process can (1) tell every
//! task to stop taking new work ([`Supervisor::shutdown_token`]), (2) wait
//! for them to finish what is in flight, up to one drain deadline counted
//! from the signal, and (3) abort whatever is left
//! ([`Supervisor::abort_token`]) before it writes its final audit
//! checkpoint and exits. This is tokio-util's `TaskTracker` plus the
//! deadline and the logging (a task that panics or fails is named in the
//! log, never silently lost).

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The default drain deadline (`--drain-secs`): under Kubernetes' default
/// 30 s termination grace period, leaving time for the final audit
/// checkpoint and export before SIGKILL.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(25);

/// See the module docs. Cheap to clone: clones share the tasks and tokens.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    abort: CancellationToken,
    drain: Duration,
    /// When shutdown began (the drain deadline counts from it).
    began: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("tasks", &self.tracker.len())
            .field("shutting_down", &self.shutdown.is_cancelled())
            .field("drain", &self.drain)
            .finish()
    }
}

impl Supervisor {
    /// A supervisor whose tasks get `drain` after shutdown begins.
    pub fn new(drain: Duration) -> Self {
        Supervisor {
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            abort: CancellationToken::new(),
            drain,
            began: Arc::new(Mutex::new(None)),
        }
    }

    /// Cancelled when shutdown begins: stop accepting work, finish what is
    /// in flight.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancelled when the drain deadline has passed (or shutdown was
    /// forced): stop everything now.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// How long in-flight work may take once shutdown began.
    pub fn drain(&self) -> Duration {
        self.drain
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Begins shutdown (idempotent): the drain deadline starts now.
    pub fn begin_shutdown(&self) {
        if let Ok(mut began) = self.began.lock() {
            began.get_or_insert_with(Instant::now);
        }
        self.shutdown.cancel();
    }

    /// When the drain deadline falls: `drain` after shutdown began (or
    /// from now, if it has not).
    pub fn deadline(&self) -> Instant {
        let began = self.began.lock().ok().and_then(|b| *b);
        began.unwrap_or_else(Instant::now) + self.drain
    }

    /// Awaits `work` (in-flight work that is not a supervised task, such as
    /// a store's fetches) until the drain deadline; true if it finished.
    pub async fn within_drain<F: Future>(&self, what: &'static str, work: F) -> bool {
        let done = tokio::time::timeout_at(self.deadline(), work).await.is_ok();
        if !done {
            tracing::warn!(what, "still in flight at the drain deadline");
        }
        done
    }

    /// Runs `task` supervised: a panic is caught and logged with `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(async move {
            if AssertUnwindSafe(task).catch_unwind().await.is_err() {
                tracing::error!(task = name, "supervised task panicked");
            }
        });
    }

    /// [`Supervisor::spawn`] for a task that can fail: its error is logged
    /// with `name`.
    pub fn spawn_fallible<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.spawn(name, async move {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "supervised task failed");
            }
        });
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Begins shutdown if it has not begun, waits for every supervised task
    /// until the drain deadline (counted from when shutdown began), then
    /// cancels [`Supervisor::abort_token`] and waits a last moment for the
    /// tasks to notice. True when every task ended within the deadline.
    pub async fn drained(&self) -> bool {
        self.begin_shutdown();
        self.tracker.close();
        LIBRARY_TASKS.close();
        let deadline = self.deadline();
        let all = async {
            self.tracker.wait().await;
            LIBRARY_TASKS.wait().await;
        };
        let in_time = tokio::time::timeout_at(deadline, all).await.is_ok();
        if !in_time {
            tracing::warn!(
                tasks = self.tracker.len() + LIBRARY_TASKS.len(),
                drain_secs = self.drain.as_secs_f64(),
                "drain deadline passed: aborting what is left"
            );
        }
        self.abort.cancel();
        if !in_time {
            // Tasks watching the abort token stop at once; one that watches
            // nothing is left to the runtime's shutdown.
            let _ = tokio::time::timeout(ABORT_GRACE, self.tracker.wait()).await;
        }
        in_time
    }
}

/// Tasks the component crates spawn deep inside their work (a swarm
/// download, a preheat job, a seed's fetch, a heartbeat), where no
/// supervisor is at hand: [`spawn`] tracks them here, and every
/// supervisor's [`Supervisor::drained`] waits for them as for its own.
static LIBRARY_TASKS: std::sync::LazyLock<TaskTracker> = std::sync::LazyLock::new(TaskTracker::new);

/// `tokio::spawn`, tracked: component crates spawn through this so that
/// shutdown lets the work finish within the drain deadline instead of
/// cutting it off at exit.
pub fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    LIBRARY_TASKS.spawn(task)
}

/// Tracked tasks of the component crates still running.
pub fn library_tasks() -> usize {
    LIBRARY_TASKS.len()
}

/// How long tasks get to notice [`Supervisor::abort_token`].
const ABORT_GRACE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn tasks_that_stop_on_shutdown_drain_in_time() {
        let sup = Supervisor::new(Duration::from_secs(5));
        let stopped = Arc::new(AtomicBool::new(false));
        let (token, flag) = (sup.shutdown_token(), stopped.clone());
        sup.spawn("loop", async move {
            token.cancelled().await;
            // Finishing in-flight work takes a while, within the deadline.
            tokio::time::sleep(Duration::from_secs(2)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        assert!(sup.drained().await);
        assert!(stopped.load(Ordering::SeqCst));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(sup.running(), 0);
        assert!(sup.abort_token().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_past_the_deadline_is_aborted_at_it() {
        let sup = Supervisor::new(Duration::from_secs(3));
        let abort = sup.abort_token();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        sup.spawn("slow transfer", async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => flag.store(true, Ordering::SeqCst),
                _ = abort.cancelled() => {}
            }
        });
        // Shutdown began a second before the supervisor is awaited: the
        // deadline counts from the signal, not from the wait.
        sup.begin_shutdown();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        assert!(!sup.drained().await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(!finished.load(Ordering::SeqCst));
        assert_eq!(sup.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_contained_and_counted_as_ended() {
        let sup = Supervisor::new(Duration::from_secs(1));
        sup.spawn("bad", async { panic!("boom") });
        sup.spawn_fallible("failing", async { Err::<(), _>("no") });
        tokio::task::yield_now().await;
        assert!(sup.drained().await);
    }
}
