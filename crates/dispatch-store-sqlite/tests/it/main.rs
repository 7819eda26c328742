//! The SQLite store's integration tests beyond the conformance suite, in one binary (one link,
//! one run): a busy database ([`busy`]), the cluster's tables and wake-ups ([`cluster`]),
//! flow control ([`flow`]), opening with and without migrating ([`migrate`]), pruning a large table
//! ([`retention`]), transactional enqueue ([`transactional`])
//! and workflow behaviour ([`workflow`]). The conformance suite stays its own binary, with its
//! own harness.

mod busy;
mod cluster;
mod flow;
mod migrate;
mod retention;
mod transactional;
mod workflow;
