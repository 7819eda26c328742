//! Runtime tests of `dispatch-job` on the memory store, through the public API. (The scenarios
//! that must hold on every store run in each store's conformance binary: see
//! `dispatch_store_tests::runtime`.)
//!
//! Tests run on tokio's paused clock: timers (poll, heartbeat, backoff, timeouts) advance
//! instantly when every task is idle, so waits are deterministic and take no real time. The
//! store reads a manual clock, so leases expire only when a test says so.

mod client;
mod control;
mod health;
mod hooks;
mod lifecycle;
mod pool;
mod support;
