//! Workflow runtime tests through the public API, on the memory store in real time (short
//! intervals; waits poll against a deadline). The store-level guarantees are pinned by the
//! conformance suite on every store; the multi-process crash tests live with the durability
//! tests.

mod events;
mod steps;
mod support;
mod timing;
