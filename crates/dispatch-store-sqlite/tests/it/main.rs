//! The SQLite store's integration tests beyond the conformance suite, in one binary (one link,
//! one run): a busy database ([`busy`]), opening with and without migrating ([`migrate`]),
//! transactional enqueue ([`transactional`]) and workflow behaviour ([`workflow`]). The conformance suite stays its own binary, with its own harness.

mod busy;
mod migrate;
mod transactional;
mod workflow;
