//! The Redis store's integration tests, one module per subject, in one binary: timing on the
//! server's clock (scheduled, retried and rescued jobs are claimed when due, never before),
//! the wake-up listener (it reconnects after its connection is killed; its streams end with
//! the store), key edges (queue and job names with `:` and `{`), listings whose filters
//! match little (bounded calls, short pages that carry a cursor), rescues of many dying jobs at
//! once, the DLQ's bulk calls and cron fires at scale, flow control (the gated claim's rules and the
//! lane and gate keys it keeps), the cluster scripts at their bounds (a sweep short of DLQ entry IDs, the kept leader
//! writes), and retention (no key of a pruned record is left behind; the prune rate). Each
//! needs the test server at `DISPATCH_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! makes its own key
//! prefixes, deleted at the end of the run; without a server every test is reported ignored,
//! and fails instead under `CI=true` (see `support`). The stores read the server's clock, as in
//! production, so these tests take real time: they wait by polling against a deadline. Tests
//! are named `module::test`. Run with `cargo test -p dispatch-store-redis --test it`.

#[path = "../support/mod.rs"]
mod support;

mod bulk;
mod cluster;
mod common;
mod flow;
mod keys;
mod listing;
mod rescue;
mod retention;
mod timing;
mod wakeup;

use std::process::ExitCode;

fn main() -> ExitCode {
    let modules = [
        ("bulk", bulk::tests()),
        ("cluster", cluster::tests()),
        ("flow", flow::tests()),
        ("keys", keys::tests()),
        ("listing", listing::tests()),
        ("rescue", rescue::tests()),
        ("retention", retention::tests()),
        ("timing", timing::tests()),
        ("wakeup", wakeup::tests()),
    ];
    let tests = modules
        .into_iter()
        .flat_map(|(module, tests)| {
            tests.into_iter().map(move |(name, test)| (format!("{module}::{name}"), test))
        })
        .collect();
    support::run(tests)
}
