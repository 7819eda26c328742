//! A custom store written from the outside, the way a new store's author would: [`VecStore`]
//! implements [`JobStore`](dispatch_core::JobStore) and [`DlqStore`](dispatch_core::DlqStore)
//! and nothing else, and runs the job part of the conformance suite and the job runtime's
//! scenarios. Run with `cargo test -p dispatch-store-tests --test custom_store`.
//!
//! What it is for: proof that the job seam is those two traits (this binary names no other
//! store trait), and that a store writes storage, not policy. Every decision about a job's
//! state (what an enqueue stores, what a claim, a finish, a rescue, a cancel request or a DLQ
//! replay does to the record) comes from the pure functions of `dispatch_core::transition`; the
//! store only finds the rows, checks what the contract leaves to the store (IDs, unique keys,
//! claim order, page cursors, filters) and writes back what the functions return. It leaves
//! the optional powers (`next_due`, `wakeups`, `release_claim`) at their defaults, so the
//! runtime runs it by polling. Read it as a template: a new store keeps these module names
//! (`job`, `dlq`) and swaps the collections for its tables.
//!
//! What it is not: a store to use. It keeps everything in plain ordered maps behind one mutex
//! and answers claims, rescues and unique-key checks by scanning every job; nothing survives
//! the process. `dispatch-store-memory` is the in-process store with indexes.

mod dlq;
mod job;
mod store;

use std::process::ExitCode;
use std::sync::Arc;

use dispatch_core::{SharedClock, SystemClock};
use dispatch_store_tests::StoreFactory;

use crate::store::VecStore;

/// Makes a fresh [`VecStore`] per trial: on the trial's manual clock for the suite, on the
/// system clock for the runtime scenarios.
struct Custom;

#[async_trait::async_trait]
impl StoreFactory for Custom {
    type Store = VecStore;

    fn name(&self) -> &str {
        "custom"
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<VecStore> {
        Ok(VecStore::new(clock.unwrap_or_else(|| Arc::new(SystemClock))))
    }
}

fn main() -> ExitCode {
    dispatch_store_tests::run_job_conformance(Custom)
}
