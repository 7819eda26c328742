//! [`DispatcherBuilder`]: one store, the job and workflow definitions to run, and the settings,
//! layers and hooks of the worker that runs them.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{Error, Hook, JobStore, Result, SharedClock, SystemClock, WorkflowStore};
use dispatch_job::{
    HookBus, JobDefinition, JobError, JobInput, JobRequest, JobService, Worker, WorkerBuilder,
    WorkerConfig,
};
use tower::{Layer, Service};

use crate::dispatcher::Dispatcher;
use crate::services::Services;

type Step = Box<dyn FnOnce(WorkerBuilder) -> WorkerBuilder + Send>;

/// A workflow definition waiting for the engine to exist, so it can be registered with it.
#[cfg(feature = "workflow")]
type WorkflowStep =
    Box<dyn FnOnce(&dispatch_workflow::Workflows) -> JobDefinition<dispatch_core::RunId> + Send>;

/// The store as the dispatcher sees it: always a job store, and a workflow store when it keeps
/// runs (every built-in store does).
#[derive(Clone)]
pub(crate) struct Stores {
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) runs: Option<Arc<dyn WorkflowStore>>,
}

impl Dispatcher {
    /// Start configuring a dispatcher.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder::default()
    }
}

/// Configures a [`Dispatcher`]. Start with [`Dispatcher::builder`].
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct DispatcherBuilder {
    stores: Option<Stores>,
    steps: Vec<Step>,
    hooks: Vec<Arc<dyn Hook>>,
    #[cfg(feature = "workflow")]
    workflows: Vec<WorkflowStep>,
    #[cfg(feature = "cluster")]
    cluster: Option<dispatch_cluster::ClusterConfig>,
    /// What the leader prunes, when retention is on.
    #[cfg(feature = "cluster")]
    retention: Option<dispatch_core::RetentionPolicy>,
    /// Cron entries to register at start.
    #[cfg(feature = "cron")]
    crons: Vec<dispatch_cron::CronSpec>,
    /// Queue configs (flow control) to store at start.
    queues: Vec<dispatch_core::QueueConfig>,
    /// The clock the services read (default: the system clock).
    clock: Option<SharedClock>,
    /// The application's version, as the worker registry shows it.
    app_version: Option<String>,
}

impl DispatcherBuilder {
    /// The store jobs and workflow runs live in (required, or [`job_store`](Self::job_store)).
    /// Every built-in store ([`MemoryStore`](crate::MemoryStore), `SqliteStore`,
    /// `PostgresStore`) fits here; stores are cheap to clone, so keep a clone when the
    /// application needs one.
    pub fn store(mut self, store: impl WorkflowStore) -> Self {
        let store = Arc::new(store);
        self.stores = Some(Stores { jobs: store.clone(), runs: Some(store) });
        self
    }

    /// The store, already shared (for example opened by code that picks the store at run time).
    pub fn shared_store(mut self, store: Arc<dyn WorkflowStore>) -> Self {
        self.stores = Some(Stores { jobs: store.clone(), runs: Some(store) });
        self
    }

    /// A store that keeps jobs only (a custom store implementing `JobStore` but not
    /// `WorkflowStore`): the dispatcher runs jobs, and its workflow calls fail with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
    pub fn job_store(mut self, store: impl JobStore) -> Self {
        self.stores = Some(Stores { jobs: Arc::new(store), runs: None });
        self
    }

    fn step(mut self, step: impl FnOnce(WorkerBuilder) -> WorkerBuilder + Send + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }

    /// Run jobs of `definition` on this dispatcher's worker.
    pub fn register<I: JobInput>(self, definition: JobDefinition<I>) -> Self {
        self.step(move |w| w.register(definition))
    }

    /// Drive runs of `definition` (this version of the workflow) on this dispatcher's worker.
    /// Starting, waiting for and inspecting runs needs no registration: a producer-only
    /// dispatcher can start runs that another process drives.
    #[cfg(feature = "workflow")]
    pub fn workflow<I, O>(mut self, definition: dispatch_workflow::WorkflowDefinition<I, O>) -> Self
    where
        I: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        O: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        self.workflows.push(Box::new(move |engine| engine.register(&definition)));
        self
    }

    /// Most attempts running at once (default 10). A waiting workflow run holds no slot.
    pub fn concurrency(self, concurrency: usize) -> Self {
        self.step(move |w| w.concurrency(concurrency))
    }

    /// Claim from these queues only (default: `"default"` plus the registered definitions'
    /// queues).
    pub fn queues<S: Into<String>>(self, queues: impl IntoIterator<Item = S>) -> Self {
        let queues: Vec<String> = queues.into_iter().map(Into::into).collect();
        self.step(move |w| w.queues(queues))
    }

    /// How long in-flight attempts may run after stop is asked (default 30 s).
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.step(move |w| w.shutdown_timeout(timeout))
    }

    /// Change any worker setting ([`WorkerConfig`]: lease, heartbeat, polling, rescue).
    pub fn configure(self, change: impl FnOnce(&mut WorkerConfig) + Send + 'static) -> Self {
        self.step(move |w| w.configure(change))
    }

    /// Add a tower layer around every job handler (inside the built-in layers).
    pub fn layer<L>(self, layer: L) -> Self
    where
        L: Layer<JobService> + Send + Sync + 'static,
        L::Service:
            Service<JobRequest, Response = (), Error = JobError> + Clone + Send + Sync + 'static,
        <L::Service as Service<JobRequest>>::Future: Send + 'static,
    {
        self.step(move |w| w.layer(layer))
    }

    /// Deliver lifecycle events to `hook`: jobs' events and, with workflows, runs' and steps'.
    pub fn hook(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Run as one member of a cluster of processes sharing the store (every built-in store
    /// keeps one): the worker registers and heartbeats in the store's registry with long job
    /// leases (`config.lease_ttl`), this process campaigns for the leadership, and the leader
    /// takes over the jobs of workers whose heartbeat stopped within `config.worker_timeout`
    /// plus one sweep. See `dispatch_cluster` for the settings; hooks also receive
    /// [`Event::LeaderElected`](dispatch_core::Event::LeaderElected) and
    /// [`Event::LeadershipLost`](dispatch_core::Event::LeadershipLost).
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, config: dispatch_cluster::ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Prune finished work by `policy` (see [`RetentionPolicy`](dispatch_core::RetentionPolicy)
    /// for its defaults and for what is never pruned): leader work, so it needs
    /// [`cluster`](Self::cluster). The leader prunes every `retention_interval` of the cluster
    /// settings, in batches of `retention_batch` per kind, each batch a short store operation
    /// fenced by its term. Without it nothing is ever deleted.
    #[cfg(feature = "cluster")]
    pub fn retention(mut self, policy: dispatch_core::RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }

    /// Register the cron entry `spec` at start (call once per entry): inserted, or updated
    /// by its `(scope, name)`, keeping its next fire unless its schedule changed. Entries fire
    /// on the cluster's leader, so this needs [`cluster`](Self::cluster) and a store that keeps
    /// cron entries; [`build`](Self::build) refuses it otherwise, and refuses a spec without a
    /// job or with a bad schedule or time zone. Manage entries at run time with
    /// [`Dispatcher::cron`].
    #[cfg(feature = "cron")]
    pub fn cron(mut self, spec: dispatch_cron::CronSpec) -> Self {
        self.crons.push(spec);
        self
    }

    /// Store `config` for its queue at start (call once per queue): fleet-wide running and
    /// rate limits, per-tenant limits, fairness between tenants, pause (see
    /// [`QueueConfig`](dispatch_core::QueueConfig)). Every start writes it again, so the code
    /// is the source of truth at deploy; change it at run time with
    /// [`Dispatcher::queues`]. [`build`](Self::build) refuses an invalid config, or any config
    /// on a store that keeps no flow control.
    pub fn queue(mut self, config: dispatch_core::QueueConfig) -> Self {
        self.queues.push(config);
        self
    }

    /// The clock the dispatcher reads outside the store: the worker's health timestamps, cron
    /// registrations' first fire and the DLQ's age purges (default: the system clock). Give
    /// the store's clock when it is not the system's (a test's `ManualClock`).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock.clone());
        self.step(move |w| w.clock(clock))
    }

    /// The application's version, shown by the worker registry (default: Dispatch's
    /// [`VERSION`](crate::VERSION)).
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// Build the dispatcher (inside a tokio runtime). Fails without a store, with workflows on
    /// a store that keeps no runs, or with settings that do not fit together. Nothing runs
    /// until [`Dispatcher::start`]; a dispatcher never started is a producer: it enqueues,
    /// starts runs and inspects, and other processes do the work.
    pub fn build(self) -> Result<Dispatcher> {
        let stores =
            self.stores.ok_or_else(|| Error::invalid_input("a dispatcher needs a store"))?;
        let mut builder = Worker::builder(stores.jobs.clone());
        for hook in &self.hooks {
            builder = builder.shared_hook(hook.clone());
        }
        #[cfg(feature = "workflow")]
        let (builder, workflows) = workflow_parts(builder, &stores, &self.hooks, self.workflows)?;
        let builder = self.steps.into_iter().fold(builder, |w, step| step(w));
        let version = self.app_version.unwrap_or_else(|| crate::VERSION.to_owned());
        #[cfg(feature = "cron")]
        let crons = cron_entries(self.crons, &stores, self.cluster.is_some())?;
        let bus = HookBus::new(self.hooks.clone());
        check_queues(&self.queues, &stores.jobs)?;
        #[cfg(feature = "cluster")]
        let (builder, cluster) = crate::membership::join(
            builder,
            stores.jobs.clone(),
            self.cluster,
            self.retention,
            &self.hooks,
            version,
        )?;
        #[cfg(not(feature = "cluster"))]
        let _ = version;
        let worker = builder.build()?;
        // The leader is a registered worker: it campaigns under its worker's ID.
        #[cfg(feature = "cluster")]
        let cluster = cluster.map(|c| c.holder(worker.id()));
        #[cfg(feature = "cron")]
        let cluster = cluster.map(|c| with_cron_scheduler(c, &stores, &bus));
        #[cfg(feature = "cluster")]
        let cluster = cluster.map(|c| c.build()).transpose()?;
        let services = Services {
            jobs: stores.jobs.clone(),
            hooks: bus,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            #[cfg(feature = "cron")]
            crons,
            queues: self.queues,
        };
        Ok(Dispatcher::new(
            worker,
            #[cfg(feature = "workflow")]
            workflows,
            #[cfg(feature = "cluster")]
            cluster,
            services,
        ))
    }
}

/// Refuse queue configs that are invalid, or any on a store without flow control.
fn check_queues(queues: &[dispatch_core::QueueConfig], jobs: &Arc<dyn JobStore>) -> Result<()> {
    if queues.is_empty() {
        return Ok(());
    }
    if jobs.clone().as_flow_store().is_none() {
        return Err(Error::invalid_input("queue configs need a store that keeps flow control"));
    }
    queues.iter().try_for_each(dispatch_core::QueueConfig::validate)
}

/// The workflow engine over the store's runs (when it keeps them), with every workflow
/// definition's drive job registered on the worker.
#[cfg(feature = "workflow")]
fn workflow_parts(
    mut builder: WorkerBuilder,
    stores: &Stores,
    hooks: &[Arc<dyn Hook>],
    definitions: Vec<WorkflowStep>,
) -> Result<(WorkerBuilder, Option<dispatch_workflow::Workflows>)> {
    let Some(runs) = stores.runs.clone() else {
        if definitions.is_empty() {
            return Ok((builder, None));
        }
        return Err(Error::invalid_input(
            "workflows need a store that keeps runs: pass it with `store`, not `job_store`",
        ));
    };
    let engine = dispatch_workflow::Workflows::with_hooks(runs, hooks.to_vec());
    for register in definitions {
        builder = builder.register(register(&engine));
    }
    Ok((builder, Some(engine)))
}

/// The builder's cron specs as entries, checked now so a bad one fails the build rather than
/// the start: each needs a job, a valid schedule and time zone, a cluster (entries fire on its
/// leader) and a store that keeps them.
#[cfg(feature = "cron")]
fn cron_entries(
    specs: Vec<dispatch_cron::CronSpec>,
    stores: &Stores,
    clustered: bool,
) -> Result<Vec<dispatch_core::CronEntry>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    if !clustered {
        return Err(Error::invalid_input(
            "cron entries fire on the leader: they need a cluster (DispatcherBuilder::cluster)",
        ));
    }
    if stores.jobs.clone().as_cron_store().is_none() {
        return Err(Error::invalid_input("cron entries need a store that keeps them"));
    }
    specs
        .into_iter()
        .map(|spec| {
            let entry = spec.build()?;
            dispatch_cron::Schedule::parse(&entry.schedule, &entry.timezone)?;
            Ok(entry)
        })
        .collect()
}

/// A cluster member on a store that keeps cron entries fires them while it leads, whichever
/// process registered them.
#[cfg(feature = "cron")]
fn with_cron_scheduler(
    cluster: dispatch_cluster::ClusterBuilder,
    stores: &Stores,
    bus: &HookBus,
) -> dispatch_cluster::ClusterBuilder {
    match stores.jobs.clone().as_cron_store() {
        Some(store) => {
            let scheduler = dispatch_cron::CronScheduler::new(store).hooks(bus.clone());
            cluster.task(Arc::new(scheduler))
        }
        None => cluster,
    }
}
