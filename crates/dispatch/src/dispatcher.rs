//! The composition root: [`Dispatcher`] runs one worker and hands out one client over one
//! store; with workflows, one engine too.

use dispatch_core::{Error, ErrorKind, Result};
use dispatch_job::{HealthProbe, JobClient, ShutdownReport, Worker, WorkerHandle, WorkerHealth};

enum State {
    Ready(Worker),
    Running(WorkerHandle),
    Stopped,
}

/// Runs, enqueues and inspects jobs (and workflow runs): one worker, one client and, with
/// workflows, one engine over one store.
///
/// What a user calls lives here; what a worker calls (claim, finish, heartbeat, rescue) does
/// not, so an application can not take over a worker's jobs by mistake.
///
/// ```no_run
/// use std::time::Duration;
/// use dispatch::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Email { to: String }
///
/// # async fn run() -> dispatch::Result<()> {
/// let send = JobDefinition::new("send_email", |_ctx: JobContext, email: Email| async move {
///     println!("to {}", email.to);
///     Ok(())
/// });
/// let mut dispatcher = Dispatcher::builder()
///     .store(MemoryStore::new())
///     .register(send.clone())
///     .build()?;
/// dispatcher.start().await?;
/// let id = dispatcher.enqueue(&send, Email { to: "a@example.com".into() }).await?.id();
/// dispatcher.wait(id, Duration::from_secs(10)).await?;
/// dispatcher.stop().await;
/// # Ok(()) }
/// ```
pub struct Dispatcher {
    pub(crate) client: JobClient,
    #[cfg(feature = "workflow")]
    pub(crate) workflows: Option<dispatch_workflow::Workflows>,
    state: State,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Running(_) => "running",
            State::Stopped => "stopped",
        };
        f.debug_struct("Dispatcher").field("state", &state).finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub(crate) fn new(
        worker: Worker,
        #[cfg(feature = "workflow")] workflows: Option<dispatch_workflow::Workflows>,
    ) -> Self {
        Self {
            client: worker.client(),
            #[cfg(feature = "workflow")]
            workflows,
            state: State::Ready(worker),
        }
    }

    /// Start the worker and wait until it is ready: subscribed to the store's wake-ups, its
    /// listener connected (PostgreSQL), and a first claim answered. A job enqueued after this
    /// returns starts through a wake-up, not at the next poll.
    ///
    /// Fails with [`ErrorKind::Conflict`] when started before, and with
    /// [`ErrorKind::Timeout`] when the worker is not ready within
    /// [`WorkerConfig::ready_timeout`](dispatch_job::WorkerConfig::ready_timeout) (default 30 s;
    /// the message says what is missing, e.g. the store is down). The worker is running then
    /// all the same, retrying: [`ready`](Self::ready) waits again, [`stop`](Self::stop) stops it.
    pub async fn start(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Ready(worker) => {
                self.state = State::Running(worker.start());
                self.ready().await
            }
            other => {
                self.state = other;
                Err(Error::new(ErrorKind::Conflict, "the dispatcher was already started"))
            }
        }
    }

    /// Wait until the running worker is ready again (see [`start`](Self::start)), for example
    /// after a store outage. Fails when the worker is not running.
    pub async fn ready(&self) -> Result<()> {
        match &self.state {
            State::Running(handle) => handle.ready().await,
            _ => Err(Error::new(ErrorKind::Conflict, "the dispatcher's worker is not running")),
        }
    }

    /// The running worker's health: ready or not, its last successful claim, heartbeat and
    /// rescue, the store's listener, in-flight attempts and its recent errors. `None` when the
    /// worker is not running.
    pub fn health(&self) -> Option<WorkerHealth> {
        self.health_probe().map(|probe| probe.health())
    }

    /// A cheap handle that reads the running worker's health from anywhere (a health endpoint,
    /// a metrics task); it keeps answering after stop. `None` when the worker is not running.
    pub fn health_probe(&self) -> Option<HealthProbe> {
        match &self.state {
            State::Running(handle) => Some(handle.health_probe()),
            _ => None,
        }
    }

    /// Stop gracefully (see [`WorkerHandle::stop`]). Stopping twice, or before start, does
    /// nothing.
    pub async fn stop(&mut self) -> ShutdownReport {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(handle) => handle.stop().await,
            _ => ShutdownReport::default(),
        }
    }

    /// The client every job call of the dispatcher forwards to: clone it into request
    /// handlers and other tasks.
    pub fn client(&self) -> &JobClient {
        &self.client
    }
}
