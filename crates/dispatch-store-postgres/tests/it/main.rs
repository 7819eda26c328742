//! The PostgreSQL store's integration tests, one module per subject, in one binary: batch edge
//! cases, bulk DLQ replays and cron fires at scale, the claim's plan, the cluster (its record's
//! trim, the database clock), a worker's health and readiness over the listener, lost answers,
//! migrations, transactional enqueue, wake-ups and workflow races. Each needs the test server at `DISPATCH_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`) and makes its own schemas, dropped at
//! the end of the run; without a server every test is reported ignored, and fails instead under
//! `CI=true` (see `support`). Tests are named `module::test`. Run with
//! `cargo test -p dispatch-store-postgres --test it`.

#[path = "../support/mod.rs"]
mod support;

mod batches;
mod bulk;
mod claim_plan;
mod cluster;
mod flow;
mod health;
mod listener;
mod lost_answers;
mod migrate;
mod transactional;
mod wakeup;
mod workflow_races;

use std::process::ExitCode;

fn main() -> ExitCode {
    let modules = [
        ("batches", batches::tests()),
        ("bulk", bulk::tests()),
        ("claim_plan", claim_plan::tests()),
        ("cluster", cluster::tests()),
        ("flow", flow::tests()),
        ("health", health::tests()),
        ("lost_answers", lost_answers::tests()),
        ("migrate", migrate::tests()),
        ("transactional", transactional::tests()),
        ("wakeup", wakeup::tests()),
        ("workflow_races", workflow_races::tests()),
    ];
    let tests = modules
        .into_iter()
        .flat_map(|(module, tests)| {
            tests.into_iter().map(move |(name, test)| (format!("{module}::{name}"), test))
        })
        .collect();
    support::run(tests)
}
