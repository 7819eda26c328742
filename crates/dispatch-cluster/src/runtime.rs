//! [`Cluster`]: the leadership loop. A follower campaigns every `campaign_interval`; a leader
//! renews every `renew_interval`, runs its [`LeaderTask`]s under its term, and steps down when
//! it resigns, when a renewal says the term is gone, when its local deadline passes without a
//! renewal, or when a task's write is refused for a newer term.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{ClusterStore, ErrorKind, Event, Hook, Leader, Result, WorkerId};
use local_deadline::Deadline;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hooks::Hooks;
use crate::{ClusterConfig, DeadWorkerSweep, Election, LeaderTask, StoreElection};

/// Configures a [`Cluster`]. Start with [`Cluster::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterBuilder {
    store: Arc<dyn ClusterStore>,
    config: ClusterConfig,
    holder: WorkerId,
    election: Option<Arc<dyn Election>>,
    tasks: Vec<Arc<dyn LeaderTask>>,
    hooks: Vec<Arc<dyn Hook>>,
}

impl ClusterBuilder {
    /// The settings (default [`ClusterConfig::default`]).
    pub fn config(mut self, config: ClusterConfig) -> Self {
        self.config = config;
        self
    }

    /// Who campaigns: the ID of this process's worker, so the leader is a registered worker
    /// (default: a fresh ID).
    pub fn holder(mut self, holder: WorkerId) -> Self {
        self.holder = holder;
        self
    }

    /// Elect through `election` instead of the store's leadership lease.
    pub fn election(mut self, election: Arc<dyn Election>) -> Self {
        self.election = Some(election);
        self
    }

    /// Run `task` while leading (the dead-worker sweep is always there).
    pub fn task(mut self, task: Arc<dyn LeaderTask>) -> Self {
        self.tasks.push(task);
        self
    }

    /// Tell `hook` when this process becomes leader or stops leading.
    pub fn hook(mut self, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Check the settings and build the cluster.
    pub fn build(self) -> Result<Cluster> {
        self.config.validate()?;
        let config = self.config;
        let election = self.election.unwrap_or_else(|| {
            Arc::new(StoreElection::new(self.store.clone(), config.leadership.clone()))
        });
        let sweep = DeadWorkerSweep::new(
            self.store.clone(),
            config.worker_timeout,
            config.sweep_interval,
            config.sweep_limit,
        );
        let mut tasks: Vec<Arc<dyn LeaderTask>> = vec![Arc::new(sweep)];
        tasks.extend(self.tasks);
        Ok(Cluster { config, holder: self.holder, election, tasks, hooks: self.hooks })
    }
}

/// A cluster member's leadership runtime, not yet running.
pub struct Cluster {
    config: ClusterConfig,
    holder: WorkerId,
    election: Arc<dyn Election>,
    tasks: Vec<Arc<dyn LeaderTask>>,
    hooks: Vec<Arc<dyn Hook>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Start configuring a cluster member over `store` (its registry and, by default, its
    /// election).
    pub fn builder(store: Arc<dyn ClusterStore>) -> ClusterBuilder {
        ClusterBuilder {
            store,
            config: ClusterConfig::default(),
            holder: WorkerId::new(),
            election: None,
            tasks: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// Start campaigning (inside a tokio runtime). Returns at once.
    pub fn start(self) -> ClusterHandle {
        let (leader_tx, leader_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let (hooks, delivery) = Hooks::start(self.hooks);
        let inner = Arc::new(Inner {
            hooks,
            config: self.config,
            holder: self.holder,
            election: self.election,
            tasks: self.tasks,
            leader: leader_tx,
        });
        let task = tokio::spawn(run(inner, stop.clone()));
        ClusterHandle { leader: leader_rx, stop, task, delivery }
    }
}

/// A running cluster member.
pub struct ClusterHandle {
    leader: watch::Receiver<Option<Leader>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The hook delivery task, which ends after the last event once the loop has ended.
    delivery: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").field("leader", &*self.leader.borrow()).finish()
    }
}

impl ClusterHandle {
    /// The term this process leads under now, or `None` when it does not lead.
    pub fn leader(&self) -> Option<Leader> {
        self.leader.borrow().clone()
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.borrow().is_some()
    }

    /// A receiver that sees every change of this process's leadership.
    pub fn changes(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.clone()
    }

    /// Stop: a leader halts its tasks and resigns, so another process takes over at once.
    /// Returns once the hooks have received every event (at most a few seconds more).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Some(delivery) = self.delivery
            && tokio::time::timeout(Duration::from_secs(5), delivery).await.is_err()
        {
            tracing::warn!("cluster hooks were still busy after stop");
        }
    }
}

/// State shared by the leadership loop and its tasks.
struct Inner {
    config: ClusterConfig,
    holder: WorkerId,
    election: Arc<dyn Election>,
    tasks: Vec<Arc<dyn LeaderTask>>,
    hooks: Hooks,
    leader: watch::Sender<Option<Leader>>,
}

impl Inner {
    /// How long a term may be trusted locally after the call that granted it started: the TTL
    /// less a tenth, for clocks that run at slightly different rates.
    fn trust(&self) -> Duration {
        self.config.leader_ttl - self.config.leader_ttl / 10
    }
}

async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    while let Some((term, deadline)) = campaign(&inner, &stop).await {
        lead(&inner, term, deadline, &stop).await;
    }
}

/// Campaign until elected (the term and its local deadline), or `None` once stopped.
async fn campaign(inner: &Inner, stop: &CancellationToken) -> Option<(Leader, Instant)> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let started = Instant::now();
        let call = inner.election.campaign(inner.holder, inner.config.leader_ttl);
        match tokio::time::timeout(inner.config.store_timeout, call).await {
            Ok(Ok(Some(term))) => return Some((term, started + inner.trust())),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "campaigning for the leadership failed"),
            Err(_) => tracing::warn!("campaigning for the leadership timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(inner.config.campaign_interval) => {}
        }
    }
}

/// Lead under `term` until stepping down; emits the hooks and publishes the leadership.
async fn lead(inner: &Arc<Inner>, term: Leader, deadline: Instant, stop: &CancellationToken) {
    tracing::info!(term = term.term, leadership = %term.name, "elected leader");
    inner.hooks.emit(|| Event::LeaderElected { leader: term.clone() });
    inner.leader.send_replace(Some(term.clone()));
    let deadline = Deadline::new(deadline);
    let refused = CancellationToken::new();
    let halt = CancellationToken::new();
    let tasks: Vec<JoinHandle<()>> = inner
        .tasks
        .iter()
        .map(|task| {
            let work = TaskRun {
                task: task.clone(),
                term: term.clone(),
                deadline: deadline.clone(),
                refused: refused.clone(),
            };
            tokio::spawn(work.run(halt.clone()))
        })
        .collect();
    let reason = hold(inner, &term, &deadline, &refused, stop).await;
    halt.cancel();
    for mut task in tasks {
        if tokio::time::timeout(inner.config.store_timeout, &mut task).await.is_err() {
            // Whatever it writes now is refused by the store: stop it all the same.
            tracing::warn!("a leader task did not stop in time; aborting it");
            task.abort();
        }
    }
    inner.leader.send_replace(None);
    tracing::warn!(term = term.term, reason, "stopped leading");
    inner.hooks.emit(|| Event::LeadershipLost { leader: term, reason: reason.to_owned() });
}

/// Renew `term` until there is a reason to step down; that reason.
async fn hold(
    inner: &Inner,
    term: &Leader,
    deadline: &Deadline,
    refused: &CancellationToken,
    stop: &CancellationToken,
) -> &'static str {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let resign = inner.election.resign(term);
                if let Ok(Err(error)) = tokio::time::timeout(inner.config.store_timeout, resign).await {
                    tracing::warn!(%error, "resigning the leadership failed; it expires instead");
                }
                return "resigned";
            }
            _ = refused.cancelled() => return "a leader write was refused: a newer term exists",
            _ = tokio::time::sleep_until(deadline.get()) => {
                return "could not renew before the term's lease ran out";
            }
            _ = tokio::time::sleep(inner.config.renew_interval) => {
                let started = Instant::now();
                let budget = deadline.get().saturating_duration_since(started);
                let renew = inner.election.renew(term, inner.config.leader_ttl);
                match tokio::time::timeout(budget.min(inner.config.store_timeout), renew).await {
                    Ok(Ok(Some(_))) => deadline.set(started + inner.trust()),
                    Ok(Ok(None)) => return "the term is no longer valid",
                    Ok(Err(error)) => tracing::warn!(%error, "renewing the leadership failed"),
                    Err(_) => tracing::warn!("renewing the leadership timed out"),
                }
            }
        }
    }
}

/// One leader task's loop under one term.
struct TaskRun {
    task: Arc<dyn LeaderTask>,
    term: Leader,
    deadline: Deadline,
    refused: CancellationToken,
}

impl TaskRun {
    async fn run(self, halt: CancellationToken) {
        loop {
            if Instant::now() >= self.deadline.get() {
                return;
            }
            // A run is not cut short when the leader steps down (nor by a timer: a process
            // paused past its lease wakes with every timer expired): it ends by itself, at the
            // latest at its first write the store refuses. Its store calls carry the store's
            // own call timeout.
            match self.task.run(&self.term).await {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotLeader => {
                    tracing::warn!(task = self.task.name(), %error, "leader write refused");
                    self.refused.cancel();
                    return;
                }
                Err(error) => tracing::warn!(task = self.task.name(), %error, "leader task failed"),
            }
            tokio::select! {
                _ = halt.cancelled() => return,
                _ = tokio::time::sleep(self.task.interval()) => {}
            }
        }
    }
}

/// The leader's local deadline, shared by the renewal loop (which moves it) and the tasks
/// (which read it before each run).
mod local_deadline {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    /// A shared instant.
    #[derive(Clone)]
    pub(super) struct Deadline(Arc<Mutex<Instant>>);

    impl Deadline {
        pub(super) fn new(at: Instant) -> Self {
            Self(Arc::new(Mutex::new(at)))
        }

        pub(super) fn get(&self) -> Instant {
            *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        pub(super) fn set(&self, at: Instant) {
            *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
        }
    }
}
