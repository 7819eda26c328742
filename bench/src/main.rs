//! One benchmark scenario per process, so each reports its own peak RSS.
//!
//! `cargo xtask bench` runs this binary (release build) three times per scenario and reports
//! medians; run it by hand as `dispatch-bench <scenario> --store memory [--jobs N]
//! [--concurrency C] [--crowd N] [--rate R] [--seconds S] [--leases L] [--calls N]`. It prints
//! one JSON object.
//!
//! Scenarios: `enqueue-single`, `enqueue-batch`, `drain`, `drain-crowded` (the drain with
//! `--crowd` future jobs of the drained name and `--crowd` due jobs of another name in its queue
//! first), `workflow`, `latency`, `heartbeat` (one registered worker holding `--leases` leases
//! times `--calls` worker heartbeats, each renewing all of them in one store call; reported as
//! `heartbeat-<leases>`); PostgreSQL only, `prune-1m` (`--jobs` old completed jobs pruned by the
//! leader's loop, `--batch` per call) and `dead-tuples` (a drain of `--jobs`, then again over
//! `--dead` dead rows an idle transaction keeps from vacuum); `cron-due` (`--entries` cron
//! entries due in the same second, fired by the leader's scheduler) and `dlq-replay`
//! (`--entries` DLQ entries replayed in bulk by the DLQ service); `drain-limited` (the drain
//! on a queue whose fleet-wide limit never binds) and `fairness` (`--jobs` of tenant A, then 20
//! of tenant B on a fair queue: `late_sends` counts A's starts while B waited).

mod churn;
mod counting;
mod flow;
mod operate;
mod scenario;

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde::Serialize;

/// What a scenario measured.
#[derive(Debug, Default, Serialize)]
pub struct Measurement {
    /// The scenario's name, with its parameters.
    pub scenario: String,
    /// The store.
    pub store: String,
    /// Jobs per second, for throughput scenarios; heartbeat calls per second for the heartbeat
    /// scenario.
    pub jobs_per_sec: Option<f64>,
    /// Median latency from an enqueue's scheduled send to its handler's first line, in
    /// microseconds, for the (open-loop) latency scenario; for the heartbeat scenario, the
    /// median time of one heartbeat call.
    pub p50_us: Option<u64>,
    /// 99th percentile enqueue-to-start latency (heartbeat: call time) in microseconds.
    pub p99_us: Option<u64>,
    /// The longest enqueue-to-start latency (heartbeat: call time) in microseconds.
    pub max_us: Option<u64>,
    /// Latency sends whose task started over 5 ms after their scheduled time.
    pub late_sends: Option<u64>,
    /// Dead tuples in the jobs table after a drain (PostgreSQL only).
    pub dead_tuples: Option<i64>,
    /// Memory the Redis server holds per job after a drain (its `used_memory` growth over the
    /// run, divided by the jobs; Redis only).
    pub redis_bytes_per_job: Option<f64>,
    /// Peak resident memory of the process, in KiB.
    pub peak_rss_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (scenario, options) = parse(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut measurement = runtime.block_on(async {
        if churn::handles(&scenario) {
            churn::run(&scenario, &options).await
        } else {
            scenario::run(&scenario, &options).await
        }
    })?;
    measurement.peak_rss_kib = peak_rss_kib();
    println!("{}", serde_json::to_string(&measurement)?);
    Ok(())
}

/// Scenario options, by name.
pub type Options = HashMap<String, String>;

fn parse(args: &[String]) -> anyhow::Result<(String, Options)> {
    let scenario = args.first().context("usage: dispatch-bench <scenario> [--key value]...")?;
    let mut options = Options::new();
    let mut rest = args[1..].iter();
    while let Some(key) = rest.next() {
        let Some(key) = key.strip_prefix("--") else { bail!("expected --option, got {key}") };
        let value = rest.next().with_context(|| format!("--{key} needs a value"))?;
        options.insert(key.to_owned(), value.clone());
    }
    Ok((scenario.clone(), options))
}

/// The process's peak resident set (VmHWM), in KiB; 0 where /proc is missing.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
