//! A runner for a server store's own tests (beside the conformance suite): each test gets the
//! server's URL and runs on a two-worker runtime of its own, as a libtest-mimic trial, reported
//! ignored when the server does not answer, and failed instead under `CI=true`, as the suite's
//! trials are.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

/// How long one server test may take before it is failed as hung.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A test that needs the server: gets its URL.
pub type ServerTest = fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Run `tests` (name, test) against the server at `url`, whose probe answered `probe`, and
/// return the process exit code. The caller cleans up what the tests made afterwards.
pub fn run_server_tests(
    url: &str,
    probe: Result<(), String>,
    tests: Vec<(String, ServerTest)>,
) -> ExitCode {
    let args = Arguments::from_args();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(reason) = &probe {
        let what = if in_ci { "CI=true, so every test fails" } else { "every test is ignored" };
        eprintln!("{reason}; {what}");
    }
    let trials = tests
        .into_iter()
        .map(|(name, test)| match &probe {
            Ok(()) => {
                let url = url.to_owned();
                Trial::test(name, move || run_one(test, url))
            }
            Err(reason) => {
                let reason = reason.clone();
                Trial::test(name, move || Err(Failed::from(reason))).with_ignored_flag(!in_ci)
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Probe on a small runtime of its own: `probe`'s answer, or why no runtime could be built.
pub fn probe_with<F: Future<Output = Result<(), String>>>(probe: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(probe))
}

fn run_one(test: ServerTest, url: String) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("can not build a tokio runtime: {e}"))?;
    runtime
        .block_on(async { tokio::time::timeout(TEST_TIMEOUT, test(url)).await })
        .map_err(|_| Failed::from(format!("the test did not finish within {TEST_TIMEOUT:?}")))
}
