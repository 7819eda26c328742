//! Runs the `dispatch-store-tests` conformance suite on the memory store: every test gets a
//! fresh `MemoryStore` reading the test's manual clock. Run with
//! `cargo test -p dispatch-store-memory --test conformance`.

use std::process::ExitCode;

use dispatch_core::SharedClock;
use dispatch_store_memory::MemoryStore;
use dispatch_store_tests::StoreFactory;

/// Makes a fresh in-process store per test; there is no server to probe.
struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    type Store = MemoryStore;

    fn name(&self) -> &str {
        "memory"
    }

    async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<MemoryStore> {
        Ok(match clock {
            Some(clock) => MemoryStore::with_clock(clock),
            None => MemoryStore::new(),
        })
    }
}

fn main() -> ExitCode {
    dispatch_store_tests::run_conformance(Memory)
}
