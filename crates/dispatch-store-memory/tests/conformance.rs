//! Runs the conformance suite on the memory store (placeholder).
fn main() {}
