//! The composition root: [`Dispatcher`] runs one worker and hands out one client over one
//! store; with workflows, one engine too.

use std::time::Duration;

use dispatch_core::{Error, ErrorKind, Result};
use dispatch_job::{HealthProbe, JobClient, ShutdownReport, Worker, WorkerHandle, WorkerHealth};

use crate::services::Services;

/// How long a stop waits for the services' hooks (cron and DLQ events) to be delivered.
const SERVICE_HOOKS_FLUSH: Duration = Duration::from_secs(5);

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
    #[cfg(feature = "cluster")]
    cluster: ClusterState,
    pub(crate) services: Services,
}

/// The leadership runtime of a clustered dispatcher, through its life.
#[cfg(feature = "cluster")]
enum ClusterState {
    /// Not a cluster member.
    None,
    /// Built, not started.
    Ready(Box<dispatch_cluster::Cluster>),
    /// Campaigning or leading.
    Running(dispatch_cluster::ClusterHandle),
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
        #[cfg(feature = "cluster")] cluster: Option<dispatch_cluster::Cluster>,
        services: Services,
    ) -> Self {
        Self {
            client: worker.client(),
            #[cfg(feature = "workflow")]
            workflows,
            state: State::Ready(worker),
            #[cfg(feature = "cluster")]
            cluster: cluster.map_or(ClusterState::None, |c| ClusterState::Ready(Box::new(c))),
            services,
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
    ///
    /// The queue configs given to the builder are stored first, then its cron entries are
    /// registered (inserted, or updated by
    /// `(scope, name)`); a store error there fails the start, and nothing runs yet.
    pub async fn start(&mut self) -> Result<()> {
        if matches!(self.state, State::Ready(_)) {
            self.services.configure_queues().await?;
            self.services.register_crons().await?;
        }
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Ready(worker) => {
                self.state = State::Running(worker.start());
                #[cfg(feature = "cluster")]
                if let ClusterState::Ready(cluster) =
                    std::mem::replace(&mut self.cluster, ClusterState::None)
                {
                    self.cluster = ClusterState::Running((*cluster).start());
                }
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
        // A leader resigns first, so another process takes over its work at once.
        #[cfg(feature = "cluster")]
        if let ClusterState::Running(cluster) =
            std::mem::replace(&mut self.cluster, ClusterState::None)
        {
            cluster.stop().await;
        }
        let report = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(handle) => handle.stop().await,
            _ => ShutdownReport::default(),
        };
        if !self.services.hooks.flush(SERVICE_HOOKS_FLUSH).await {
            tracing::warn!("cron and DLQ hooks were still busy at stop; stopping anyway");
        }
        report
    }

    /// Run until the process is asked to stop, then stop gracefully: on SIGTERM or Ctrl-C
    /// ([`shutdown_signal`]), or when the worker registry tells this worker to drain (a
    /// clustered dispatcher). Starts the dispatcher first when it was not started.
    pub async fn run_until_shutdown(&mut self) -> Result<ShutdownReport> {
        if matches!(self.state, State::Ready(_)) {
            self.start().await?;
        }
        let State::Running(handle) = &self.state else {
            return Ok(ShutdownReport::default());
        };
        tokio::select! {
            () = shutdown_signal() => tracing::info!("shutdown signal received: stopping"),
            () = handle.drain_requested() => tracing::info!("the registry asked to drain: stopping"),
        }
        Ok(self.stop().await)
    }

    /// The leadership term this process holds now, when it is a cluster member and leads.
    #[cfg(feature = "cluster")]
    pub fn leader(&self) -> Option<dispatch_core::Leader> {
        match &self.cluster {
            ClusterState::Running(handle) => handle.leader(),
            _ => None,
        }
    }

    /// The client every job call of the dispatcher forwards to: clone it into request
    /// handlers and other tasks.
    pub fn client(&self) -> &JobClient {
        &self.client
    }
}

/// Resolves when the process receives SIGTERM (Unix) or Ctrl-C: what a container runtime
/// sends before it kills a process. Use it with [`Dispatcher::run_until_shutdown`], or in your
/// own `select!` before [`Dispatcher::stop`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
