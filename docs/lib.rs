//! The guides in `docs/`, compiled: each Markdown file is the documentation of a module here,
//! so `cargo test` builds every Rust code block in it as a doctest (with every store feature of
//! the `dispatch` crate on). Blocks marked `no_run` are compiled and not run: they need a
//! database server or run forever.
//!
//! This crate has no API; it exists so the guides can not drift from the code.

#[doc = include_str!("getting-started.md")]
pub mod getting_started {}

#[doc = include_str!("workflows.md")]
pub mod workflows {}
