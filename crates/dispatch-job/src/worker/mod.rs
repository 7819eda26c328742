//! The worker pool: claims jobs, runs them through the handler stack, keeps their leases alive,
//! finishes them in batches, and shuts down without losing any.
//!
//! # Readiness
//!
//! [`Worker::start`] returns at once, before the worker has reached the store.
//! [`WorkerHandle::ready`] waits until it is claiming and listening: it subscribed to the
//! store's wake-ups (done in `start`, before the first claim), the store's wake-up listener is
//! connected (for a store that has one that can be lost, see
//! [`JobStore::listener_state`]), and its last claim
//! call succeeded. From then on a job enqueued anywhere (another process, another client of the
//! store) starts through a wake-up, not at the next poll. A store that is down does not make
//! `ready` hang: after [`WorkerConfig::ready_timeout`] it answers
//! [`ErrorKind::Timeout`](dispatch_core::ErrorKind::Timeout) saying what is missing, while the
//! worker keeps running and retrying (call `ready` again, or stop it).
//!
//! # Health
//!
//! [`WorkerHandle::health`] (or [`HealthProbe::health`] from another task) is a
//! [`WorkerHealth`] snapshot: whether the worker is ready now, its last successful claim,
//! heartbeat and rescue, the store's listener, attempts in flight, hook events dropped, and its
//! last [`RECENT_ERRORS`] errors (claim, heartbeat, finish, rescue, listener). Every error there
//! is also logged through `tracing`. Timestamps come from the worker's clock
//! ([`WorkerBuilder::clock`]).
//!
//! # Shutdown
//!
//! [`WorkerHandle::stop`] stops claiming, then lets in-flight attempts run for up to the
//! shutdown timeout. Attempts still running then get their cancel token fired with reason
//! [`CancelReason::Shutdown`], their futures are dropped, and
//! their leases are released in one store call: the jobs are available at once to any other
//! worker, with their attempts given back. Nothing waits for a lease to expire.

mod attempts;
mod config;
mod finisher;
mod health;
mod lease;
mod membership;
mod progress;
mod run;
mod slots;

use std::sync::Arc;

use crate::progress::ProgressSink;
use std::sync::atomic::AtomicBool;

use dispatch_core::{
    Event, Hook, JobStore, LeaseRef, MembershipStore, Result, SharedClock, SystemClock, WorkerId,
};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};

pub use config::WorkerConfig;
pub use health::{HealthProbe, Operation, RECENT_ERRORS, RecentError, WorkerHealth};

use crate::client::JobClient;
use crate::context::CancelReason;
use crate::definition::{JobDefinition, JobInput};
use crate::error::JobError;
use crate::hooks::HookBus;
use crate::layer::{RecoverLayer, ScopeLayer, TimeoutLayer, TraceLayer};
use crate::registry::Registry;
use crate::service::{HandlerService, JobRequest, JobService};
use crate::waiters::Waiters;
use attempts::Attempts;
use finisher::FinishRequest;
use health::{Health, Operation as HealthOperation};

type LayerFn = Box<dyn Fn(JobService) -> JobService + Send + Sync>;

/// State shared by a worker's tasks.
pub(crate) struct Shared {
    pub(crate) id: WorkerId,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) service: JobService,
    pub(crate) config: WorkerConfig,
    pub(crate) queues: Vec<String>,
    pub(crate) hooks: HookBus,
    pub(crate) wake: Arc<Notify>,
    pub(crate) attempts: Attempts,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) finisher: mpsc::Sender<FinishRequest>,
    pub(crate) tracker: TaskTracker,
    /// Waits of this process's clients, told when this worker makes a job final.
    pub(crate) waiters: Waiters,
    pub(crate) health: Health,
    /// The registry this worker lives in, when it is part of a cluster.
    pub(crate) membership: Option<membership::Membership>,
    /// Whether the registry knows this worker now (false until the first registration, and
    /// again after it was marked gone).
    pub(crate) registered: AtomicBool,
    /// Cancelled at the first registration: a worker in a registry claims only after it.
    pub(crate) first_registration: CancellationToken,
    /// Cancelled when claiming must end: at stop, or when the registry says to drain.
    pub(crate) claiming: CancellationToken,
    /// Cancelled when the registry told this worker to drain (after `claiming`).
    pub(crate) drain: CancellationToken,
    /// The store's flow control, when it keeps it (progress reports are written through it).
    pub(crate) flow: Option<Arc<dyn dispatch_core::FlowStore>>,
    /// Progress reports waiting for the next heartbeat.
    pub(crate) progress: ProgressSink,
    /// Set while the last claim came back empty with jobs due (gates full): an attempt that
    /// ends wakes the fetch loop, since its slot may be what the gate waits for.
    pub(crate) gated: AtomicBool,
    /// This worker's local slot limits per queue, and what runs in each.
    pub(crate) queue_slots: slots::QueueSlots,
}

/// Configures a [`Worker`]: handlers, settings, layers and hooks.
pub struct WorkerBuilder {
    store: Arc<dyn JobStore>,
    registry: Registry,
    config: WorkerConfig,
    layers: Vec<LayerFn>,
    hooks: Vec<Arc<dyn Hook>>,
    clock: SharedClock,
    membership: Option<membership::Membership>,
}

impl WorkerBuilder {
    /// Run jobs of `definition`.
    pub fn register<I: JobInput>(mut self, definition: JobDefinition<I>) -> Self {
        self.registry.register(definition);
        self
    }

    /// Replace all settings.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Change settings in place.
    pub fn configure(mut self, change: impl FnOnce(&mut WorkerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Most attempts running at once.
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.configure(|c| c.concurrency = concurrency)
    }

    /// Give `queue` at most `slots` of this worker's slots (local to this process; fleet-wide
    /// limits are flow control's, in the store). The other queues share the rest.
    pub fn queue_slots(self, queue: impl Into<String>, slots: usize) -> Self {
        let queue = queue.into();
        self.configure(move |c| _ = c.queue_slots.insert(queue, slots))
    }

    /// Claim from these queues only.
    pub fn queues<S: Into<String>>(self, queues: impl IntoIterator<Item = S>) -> Self {
        let queues = queues.into_iter().map(Into::into).collect();
        self.configure(|c| c.queues = Some(queues))
    }

    /// How long in-flight attempts may run after stop is asked.
    pub fn shutdown_timeout(self, timeout: std::time::Duration) -> Self {
        self.configure(|c| c.shutdown_timeout = timeout)
    }

    /// Add a tower layer around the handler, inside the built-in layers. The first layer added
    /// is the outermost of the user layers.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<JobService> + Send + Sync + 'static,
        L::Service:
            Service<JobRequest, Response = (), Error = JobError> + Clone + Send + Sync + 'static,
        <L::Service as Service<JobRequest>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |inner| BoxCloneSyncService::new(layer.layer(inner))));
        self
    }

    /// Read the time of the health view's timestamps from `clock` (default: the system clock).
    /// Leases and run-at times are the store's, by the store's clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Deliver lifecycle events to `hook`.
    pub fn hook(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Deliver lifecycle events to a shared hook.
    pub fn shared_hook(mut self, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Make this worker a member of a cluster's registry in `store` (normally the store it
    /// runs jobs from): it registers before its first claim, its heartbeat renews the worker
    /// and all its leases in one call, it drains when the registry says so
    /// ([`WorkerHandle::drain_requested`]), and it deregisters at stop. The cluster's leader
    /// takes over its jobs within the worker timeout when its heartbeat stops, so
    /// [`WorkerConfig::lease_ttl`] may be long. The registry shows `version` (the
    /// application's, for rolling deploys) and this host's name.
    pub fn membership(
        mut self,
        store: Arc<dyn MembershipStore>,
        version: impl Into<String>,
    ) -> Self {
        let version = version.into();
        self.membership =
            Some(membership::Membership { store, host: membership::host_name(), version });
        self
    }

    /// Check the settings and build the worker. Must be called inside a tokio runtime when hooks
    /// are registered (their delivery task starts here, so enqueue hooks fire before start).
    pub fn build(self) -> Result<Worker> {
        self.config.validate()?;
        let registry = Arc::new(self.registry);
        let service = build_stack(&registry, &self.layers);
        let queues = self.config.queues.clone().unwrap_or_else(|| default_queues(&registry));
        let hooks = if self.hooks.is_empty() || tokio::runtime::Handle::try_current().is_ok() {
            HookBus::with_buffer(self.hooks, self.config.hook_buffer)
        } else {
            return Err(dispatch_core::Error::invalid_input(
                "a worker with hooks must be built inside a tokio runtime",
            ));
        };
        let capacity = self.config.concurrency.max(self.config.finish_batch) * 2;
        let (finisher, finish_rx) = mpsc::channel(capacity);
        let flow = self.store.clone().as_flow_store();
        let shared = Arc::new(Shared {
            id: WorkerId::new(),
            flow,
            progress: ProgressSink::default(),
            gated: AtomicBool::new(false),
            queue_slots: slots::QueueSlots::new(self.config.queue_slots.clone()),
            store: self.store,
            registry,
            service,
            slots: Arc::new(Semaphore::new(self.config.concurrency)),
            config: self.config,
            queues,
            hooks,
            wake: Arc::new(Notify::new()),
            attempts: Attempts::default(),
            finisher,
            tracker: TaskTracker::new(),
            waiters: Waiters::default(),
            health: Health::new(self.clock),
            membership: self.membership,
            registered: AtomicBool::new(false),
            first_registration: CancellationToken::new(),
            claiming: CancellationToken::new(),
            drain: CancellationToken::new(),
        });
        Ok(Worker { shared, finish_rx })
    }
}

fn build_stack(registry: &Arc<Registry>, layers: &[LayerFn]) -> JobService {
    let mut service = JobService::new(HandlerService::new(registry.clone()));
    for layer in layers.iter().rev() {
        service = layer(service);
    }
    let builtin = tower::ServiceBuilder::new()
        .layer(RecoverLayer)
        .layer(TraceLayer)
        .layer(ScopeLayer)
        .layer(TimeoutLayer)
        .service(service);
    BoxCloneSyncService::new(builtin)
}

fn default_queues(registry: &Registry) -> Vec<String> {
    let mut queues = registry.default_queues();
    queues.push(dispatch_core::job::DEFAULT_QUEUE.to_owned());
    queues.sort();
    queues.dedup();
    queues
}

/// A configured worker, not yet running.
pub struct Worker {
    shared: Arc<Shared>,
    finish_rx: mpsc::Receiver<FinishRequest>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.shared.id).finish_non_exhaustive()
    }
}

impl Worker {
    /// Start configuring a worker over `store`.
    pub fn builder(store: Arc<dyn JobStore>) -> WorkerBuilder {
        WorkerBuilder {
            store,
            registry: Registry::new(),
            config: WorkerConfig::default(),
            layers: Vec::new(),
            hooks: Vec::new(),
            clock: Arc::new(SystemClock),
            membership: None,
        }
    }

    /// This worker's ID (the owner of its leases).
    pub fn id(&self) -> WorkerId {
        self.shared.id
    }

    /// A client whose enqueues wake this worker and fire its hooks, and whose waits learn at once
    /// of the jobs this worker ends.
    pub fn client(&self) -> JobClient {
        client_of(&self.shared)
    }

    /// Start claiming and running jobs (inside a tokio runtime). Returns at once; await
    /// [`WorkerHandle::ready`] to know the worker reached the store (see the
    /// [module docs](self)).
    pub fn start(self) -> WorkerHandle {
        let shared = self.shared;
        // Stop and a registry's drain both end claiming through this token.
        let stop = shared.claiming.clone();
        let halt = CancellationToken::new();
        let halt_finisher = CancellationToken::new();
        let mut background = Vec::new();
        // Subscribed before the fetch loop is spawned: a job made available after its first
        // claim can not slip between that claim and the subscription.
        if let Some(wakeups) = shared.store.wakeups() {
            let forward = run::forward_wakeups(shared.clone(), wakeups, halt.clone());
            background.push(tokio::spawn(forward));
        }
        background.push(tokio::spawn(lease::heartbeat_loop(shared.clone(), halt.clone())));
        background.push(tokio::spawn(lease::rescue_loop(shared.clone(), halt.clone())));
        let finisher =
            tokio::spawn(finisher::run(shared.clone(), self.finish_rx, halt_finisher.clone()));
        let fetch = tokio::spawn(run::fetch_loop(shared.clone(), stop.clone()));
        WorkerHandle { shared, stop, halt, halt_finisher, fetch, background, finisher }
    }
}

fn client_of(shared: &Shared) -> JobClient {
    let (store, wake, hooks) = (shared.store.clone(), shared.wake.clone(), shared.hooks.clone());
    JobClient::with_parts(store, wake, hooks, shared.waiters.clone())
}

/// A running worker. Dropping it without [`stop`](Self::stop) leaves its tasks running until the
/// runtime ends; call `stop` for a graceful shutdown.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: CancellationToken,
    halt: CancellationToken,
    halt_finisher: CancellationToken,
    fetch: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    finisher: JoinHandle<()>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").field("id", &self.shared.id).finish_non_exhaustive()
    }
}

/// What a shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Attempts that were still running at the shutdown timeout and were cancelled.
    pub cancelled: usize,
    /// Of those, the leases released back to the store.
    pub released: usize,
    /// Hook events dropped over the worker's life because hooks fell behind (see
    /// [`WorkerConfig::hook_buffer`]).
    pub hook_events_dropped: u64,
    /// Whether every hook event was delivered before stop returned; false when the hooks were
    /// still busy after the shutdown timeout.
    pub hooks_flushed: bool,
}

impl WorkerHandle {
    /// This worker's ID.
    pub fn id(&self) -> WorkerId {
        self.shared.id
    }

    /// A client whose enqueues wake this worker and fire its hooks, and whose waits learn at once
    /// of the jobs this worker ends.
    pub fn client(&self) -> JobClient {
        client_of(&self.shared)
    }

    /// How many attempts are running now.
    pub fn in_flight(&self) -> usize {
        self.shared.attempts.len()
    }

    /// Wait until the worker is claiming and listening: subscribed to the store's wake-ups (when
    /// it pushes any; done by [`Worker::start`]), the store's listener connected (when it has
    /// one), and its last claim call succeeded. Resolves at once when it already is. Fails with
    /// [`ErrorKind::Timeout`](dispatch_core::ErrorKind::Timeout), saying what is missing, after
    /// [`WorkerConfig::ready_timeout`]; the worker keeps running and retrying meanwhile and
    /// after, so `ready` may be called again. See the [module docs](self).
    pub async fn ready(&self) -> Result<()> {
        health::ready(&self.shared).await
    }

    /// The worker's health now (cheap: no store call); see the [module docs](self).
    pub fn health(&self) -> WorkerHealth {
        health::snapshot(&self.shared)
    }

    /// A cloneable handle on [`health`](Self::health) for another task, valid after stop too.
    pub fn health_probe(&self) -> HealthProbe {
        HealthProbe { shared: self.shared.clone() }
    }

    /// Resolves when the worker's registry told it to drain (see
    /// [`WorkerBuilder::membership`]): it has stopped claiming; call [`stop`](Self::stop) to
    /// let its attempts finish (or release them) and leave the registry. Never resolves for a
    /// worker outside a registry.
    pub async fn drain_requested(&self) {
        self.shared.drain.cancelled().await;
    }

    /// Stop gracefully: see the [module docs](self).
    pub async fn stop(self) -> ShutdownReport {
        self.shared.health.stopping();
        self.stop.cancel();
        let _ = self.fetch.await;
        let shared = &self.shared;
        shared.tracker.close();
        let timeout = shared.config.shutdown_timeout;
        let timed_out = tokio::time::timeout(timeout, shared.tracker.wait()).await.is_err();
        if timed_out {
            abort_in_flight(shared);
            shared.tracker.wait().await;
        }
        // Write every finish already queued; what is still in flight after that was aborted.
        self.halt_finisher.cancel();
        let _ = self.finisher.await;
        let leases = shared.attempts.take_all();
        let released = release(shared, &leases).await;
        self.halt.cancel();
        for task in self.background {
            let _ = task.await;
        }
        if let Some(membership) = &shared.membership {
            membership::deregister(shared, membership).await;
        }
        shared.hooks.emit(|| Event::Shutdown);
        let hooks_flushed = shared.hooks.flush(timeout).await;
        if !hooks_flushed {
            tracing::warn!(
                ?timeout,
                "hooks were still busy at the shutdown timeout; stopping anyway"
            );
        }
        ShutdownReport {
            cancelled: leases.len(),
            released,
            hook_events_dropped: shared.hooks.dropped(),
            hooks_flushed,
        }
    }
}

/// Fire every in-flight attempt's token with reason shutdown and drop its future (attempts whose
/// handler already returned are unaffected: their finish is queued).
fn abort_in_flight(shared: &Shared) {
    shared.attempts.abort_all(CancelReason::Shutdown);
}

async fn release(shared: &Shared, leases: &[LeaseRef]) -> usize {
    if leases.is_empty() {
        return 0;
    }
    let call = tokio::time::timeout(shared.config.store_timeout, shared.store.release(leases));
    match call.await {
        Ok(Ok(results)) => results
            .iter()
            .filter(|r| matches!(r, dispatch_core::FinishResult::Applied { .. }))
            .count(),
        Ok(Err(error)) => {
            tracing::error!(%error, "releasing leases at shutdown failed; they will expire");
            shared.health.error(HealthOperation::Finish, &error);
            0
        }
        Err(_) => {
            tracing::error!("releasing leases at shutdown timed out; they will expire");
            let error = dispatch_core::Error::new(
                dispatch_core::ErrorKind::Timeout,
                "releasing leases at shutdown timed out",
            );
            shared.health.error(HealthOperation::Finish, &error);
            0
        }
    }
}
