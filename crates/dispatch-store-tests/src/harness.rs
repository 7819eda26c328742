//! The runner: turns [`all_tests`](crate::all_tests) into libtest-mimic trials, each with a fresh
//! store from a [`StoreFactory`] and a fresh [`ManualClock`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{DynStore, ManualClock, SharedClock};
use libtest_mimic::{Arguments, Failed, Trial};

use crate::{RuntimeTest, SuiteTest, all_tests, runtime_tests};

/// How long one suite test may take before it is failed as hung. Generous: the suite never
/// sleeps, so only a stalled store comes near it.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(300);

/// What each suite test gets: a fresh, empty store in its own namespace, reading time from
/// `clock`.
#[derive(Clone)]
pub struct TestContext {
    /// The store under test, empty when the test starts.
    pub store: DynStore,
    /// The clock the store reads; the test moves it with [`ManualClock::advance`].
    pub clock: Arc<ManualClock>,
}

/// Builds fresh stores for the suite.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A short name for reports, e.g. "memory".
    fn name(&self) -> &str;

    /// Whether the backing server answers; `Err(reason)` when unreachable. Default: `Ok(())`.
    async fn probe(&self) -> Result<(), String> {
        Ok(())
    }

    /// A fresh empty store (own schema / key prefix / file) reading time from `clock`: a
    /// [`ManualClock`] for the suite; `None` for the runtime scenarios, which run on the store's
    /// own default time source (the database clock, for a server store).
    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<DynStore>;
}

/// Entry point for a `harness = false` test binary: runs every suite test on stores made by
/// `factory` and returns the process exit code.
///
/// One libtest-mimic trial per suite test, run in parallel on libtest-mimic's thread pool (so
/// `--test-threads`, name filters, `--list` and `--exact` work as with the built-in harness).
/// Each trial gets its own tokio multi-thread runtime (2 workers), a fresh
/// [`ManualClock::fixed`] and a fresh store from [`StoreFactory::create`].
///
/// The factory is probed once first. If the probe fails and the environment variable `CI` is
/// `true`, every trial fails with the reason; otherwise every trial is reported ignored and the
/// reason is printed once (running with `--ignored` then fails them with the reason).
pub fn run_conformance(factory: impl StoreFactory) -> ExitCode {
    let args = Arguments::from_args();
    let factory: Arc<dyn StoreFactory> = Arc::new(factory);
    let store_name = factory.name().to_owned();

    let probe = match probe(factory.as_ref()) {
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

    let suite = all_tests().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_one(factory, test)) as Runner)
    });
    let scenarios = runtime_tests().into_iter().map(|test| {
        let factory = Arc::clone(&factory);
        (test.name, Box::new(move || run_scenario(factory, test)) as Runner)
    });
    let trials = suite
        .chain(scenarios)
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
fn probe(factory: &dyn StoreFactory) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("can not build a tokio runtime for the probe: {e}"))?;
    runtime.block_on(factory.probe())
}

/// Run one suite test on its own runtime, store and clock. Panics (failed assertions) propagate
/// to libtest-mimic, which reports them as failures.
fn run_one(factory: Arc<dyn StoreFactory>, test: SuiteTest) -> Result<(), Failed> {
    let clock = Arc::new(ManualClock::fixed());
    on_fresh_store(factory, test.name, Some(clock.clone()), move |store| {
        (test.run)(TestContext { store, clock })
    })
}

/// Run one runtime scenario on its own runtime and a fresh store on its default clock.
fn run_scenario(factory: Arc<dyn StoreFactory>, test: RuntimeTest) -> Result<(), Failed> {
    on_fresh_store(factory, test.name, None, test.run)
}

/// Make a store reading `clock` on a new runtime (2 workers) and run `test` on it, failing it
/// past [`TRIAL_TIMEOUT`].
fn on_fresh_store<F>(
    factory: Arc<dyn StoreFactory>,
    name: &str,
    clock: Option<SharedClock>,
    test: impl FnOnce(DynStore) -> F,
) -> Result<(), Failed>
where
    F: std::future::Future<Output = ()>,
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
        tokio::time::timeout(TRIAL_TIMEOUT, test(store))
            .await
            .map_err(|_| format!("{name} did not finish within {TRIAL_TIMEOUT:?}"))?;
        Ok(())
    })
}
