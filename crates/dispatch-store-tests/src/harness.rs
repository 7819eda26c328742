//! The runner: turns the suite's tests and scenarios into libtest-mimic trials, each with a fresh
//! store from a [`StoreFactory`] and a fresh [`ManualClock`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{ClusterStore, JobStore, ManualClock, SharedClock, WorkflowStore};
use libtest_mimic::{Arguments, Failed, Trial};

use crate::{
    Scenario, SuiteTest, cluster_tests, cron_tests, flow_scenarios, flow_tests, job_scenarios,
    job_tests, retention_tests, workflow_scenarios, workflow_tests,
};

/// How long one suite test may take before it is failed as hung. Generous: the suite never
/// sleeps, so only a stalled store comes near it.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(300);

/// What each suite test gets: a fresh, empty store in its own namespace, reading time from
/// `clock`. Job and DLQ tests see it as a [`JobStore`]; workflow tests as a [`WorkflowStore`].
pub struct TestContext<S: ?Sized = dyn JobStore> {
    /// The store under test, empty when the test starts.
    pub store: Arc<S>,
    /// The clock the store reads; the test moves it with [`ManualClock::advance`].
    pub clock: Arc<ManualClock>,
}

impl<S: ?Sized> Clone for TestContext<S> {
    fn clone(&self) -> Self {
        Self { store: Arc::clone(&self.store), clock: Arc::clone(&self.clock) }
    }
}

/// Builds fresh stores for the suite.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test: a [`JobStore`] for [`run_job_conformance`], a [`WorkflowStore`]
    /// and a [`ClusterStore`] too for [`run_conformance`].
    type Store: JobStore;

    /// A short name for reports, e.g. "memory".
    fn name(&self) -> &str;

    /// Whether the backing server answers; `Err(reason)` when unreachable. Default: `Ok(())`.
    async fn probe(&self) -> Result<(), String> {
        Ok(())
    }

    /// A fresh empty store (own schema / key prefix / file) reading time from `clock`: a
    /// [`ManualClock`] for the suite; `None` for the runtime scenarios, which run on the store's
    /// own default time source (the database clock, for a server store).
    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<Self::Store>;
}

/// Entry point for a `harness = false` test binary of a store that keeps jobs and workflows:
/// runs the whole suite (jobs, DLQ, the cluster, cron, retention, workflow runs) and every runtime scenario (the job runtime
/// and workflows) on stores made by `factory`, and returns the process exit code.
///
/// One libtest-mimic trial per test, run in parallel on libtest-mimic's thread pool (so
/// `--test-threads`, name filters, `--list` and `--exact` work as with the built-in harness).
/// Each trial gets its own tokio multi-thread runtime (2 workers), a fresh
/// [`ManualClock::fixed`] and a fresh store from [`StoreFactory::create`].
///
/// The factory is probed once first. If the probe fails and the environment variable `CI` is
/// `true`, every trial fails with the reason; otherwise every trial is reported ignored and the
/// reason is printed once (running with `--ignored` then fails them with the reason).
pub fn run_conformance<F>(factory: F) -> ExitCode
where
    F: StoreFactory,
    F::Store: WorkflowStore + ClusterStore,
{
    let factory = Arc::new(factory);
    let mut runners = job_runners(&factory);
    runners.extend(cluster_tests().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_one(factory, as_cluster_store, test)) as Runner)
    }));
    runners.extend(cron_tests().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_one(factory, as_job_store, test)) as Runner)
    }));
    runners.extend(flow_tests().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_one(factory, as_job_store, test)) as Runner)
    }));
    runners.extend(flow_scenarios().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_scenario(factory, as_job_store, test)) as Runner)
    }));
    runners.extend(retention_tests().into_iter().chain(workflow_tests()).map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_one(factory, as_workflow_store, test)) as Runner)
    }));
    runners.extend(workflow_scenarios().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_scenario(factory, as_workflow_store, test)) as Runner)
    }));
    run_trials(factory.as_ref(), runners)
}

/// Entry point for a `harness = false` test binary of a store that keeps jobs only (a
/// [`JobStore`] with its DLQ, no workflows): runs the job and DLQ tests and the job runtime's
/// scenarios, as [`run_conformance`] does for a full store.
pub fn run_job_conformance<F: StoreFactory>(factory: F) -> ExitCode {
    let factory = Arc::new(factory);
    let runners = job_runners(&factory);
    run_trials(factory.as_ref(), runners)
}

/// The job and DLQ tests and the job runtime scenarios, each on a fresh [`JobStore`].
fn job_runners<F: StoreFactory>(factory: &Arc<F>) -> Vec<(&'static str, Runner)> {
    let suite = job_tests().into_iter().map(|test| {
        let factory = Arc::clone(factory);
        (test.name, Box::new(move || run_one(factory, as_job_store, test)) as Runner)
    });
    let scenarios = job_scenarios().into_iter().map(|test| {
        let factory = Arc::clone(factory);
        (test.name, Box::new(move || run_scenario(factory, as_job_store, test)) as Runner)
    });
    suite.chain(scenarios).collect()
}

fn as_job_store<S: JobStore>(store: S) -> Arc<dyn JobStore> {
    Arc::new(store)
}

fn as_cluster_store<S: ClusterStore>(store: S) -> Arc<dyn ClusterStore> {
    Arc::new(store)
}

fn as_workflow_store<S: WorkflowStore>(store: S) -> Arc<dyn WorkflowStore> {
    Arc::new(store)
}

/// Probe the factory, then run `runners` as libtest-mimic trials (ignored, or failed under
/// `CI=true`, when the probe fails).
fn run_trials<F: StoreFactory>(factory: &F, runners: Vec<(&'static str, Runner)>) -> ExitCode {
    let args = Arguments::from_args();
    let store_name = factory.name().to_owned();
    let probe = match probe(factory) {
        Ok(()) => Ok(()),
        Err(reason) => Err(format!("store {store_name:?} is unreachable: {reason}")),
    };
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(reason) = &probe {
        if in_ci {
            eprintln!("dispatch-store-tests: {reason}; CI=true, so every test fails");
        } else {
            eprintln!(
                "dispatch-store-tests: {reason}; every test is ignored (set CI=true to fail)"
            );
        }
    }
    let trials = runners
        .into_iter()
        .map(|(name, runner)| {
            let trial = match &probe {
                Ok(()) => Trial::test(name, runner),
                Err(reason) => {
                    let reason = reason.clone();
                    Trial::test(name, move || Err(Failed::from(reason))).with_ignored_flag(!in_ci)
                }
            };
            trial.with_kind(store_name.clone())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// One trial's body.
type Runner = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

/// Probe the factory on a small runtime of its own.
fn probe<F: StoreFactory>(factory: &F) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("can not build a tokio runtime for the probe: {e}"))?;
    runtime.block_on(factory.probe())
}

/// Run one suite test on its own runtime, store and clock. Panics (failed assertions) propagate
/// to libtest-mimic, which reports them as failures.
fn run_one<F: StoreFactory, S: ?Sized>(
    factory: Arc<F>,
    view: fn(F::Store) -> Arc<S>,
    test: SuiteTest<S>,
) -> Result<(), Failed> {
    let clock = Arc::new(ManualClock::fixed());
    on_fresh_store(factory, view, test.name, Some(clock.clone()), move |store| {
        (test.run)(TestContext { store, clock })
    })
}

/// Run one runtime scenario on its own runtime and a fresh store on its default clock.
fn run_scenario<F: StoreFactory, S: ?Sized>(
    factory: Arc<F>,
    view: fn(F::Store) -> Arc<S>,
    test: Scenario<S>,
) -> Result<(), Failed> {
    on_fresh_store(factory, view, test.name, None, test.run)
}

/// Make a store reading `clock` on a new runtime (2 workers), seen through `view`, and run
/// `test` on it, failing it past [`TRIAL_TIMEOUT`].
fn on_fresh_store<F: StoreFactory, S: ?Sized, Fut>(
    factory: Arc<F>,
    view: fn(F::Store) -> Arc<S>,
    name: &str,
    clock: Option<SharedClock>,
    test: impl FnOnce(Arc<S>) -> Fut,
) -> Result<(), Failed>
where
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("can not build a tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let store = factory
            .create(clock)
            .await
            .map_err(|e| format!("can not create a {:?} store: {e}", factory.name()))?;
        tokio::time::timeout(TRIAL_TIMEOUT, test(view(store)))
            .await
            .map_err(|_| format!("{name} did not finish within {TRIAL_TIMEOUT:?}"))?;
        Ok(())
    })
}
