//! `cargo xtask bench`: every scenario three times, each run in its own process, medians in a
//! table and in `<target dir>/bench/<store>.json` (`target/` unless `CARGO_TARGET_DIR` or cargo's
//! configuration says otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

const RUNS: usize = 3;

/// Scenario name and arguments, full size and `--quick` size. The latency rates are the store's
/// target rates (memory 2,000 jobs/s; SQLite and Redis 1,000; PostgreSQL 200 and 1,000, and
/// 2,000 reported). The heartbeat scenario times one worker's heartbeat renewing 1,000 leases in
/// one store call (200 calls, 50 when quick). Every store runs `cron-due` and `dlq-replay`
/// (see `bench/src/operate.rs`). PostgreSQL also runs `prune-1m` and `dead-tuples`
/// (retention and bloat: see `bench/src/churn.rs`).
fn scenarios(quick: bool, store: &str) -> Vec<Vec<String>> {
    let rates: &[&str] = match store {
        "memory" => &["2000"],
        "postgres" => &["200", "1000", "2000"],
        _ => &["1000"],
    };
    let (drain_jobs, batch_jobs, single_jobs, seconds) =
        if quick { ("10000", "20000", "2000", "1") } else { ("100000", "200000", "20000", "5") };
    // Jobs of each kind that crowd the queue of `drain-crowded` (twice this many in all).
    let crowd = if quick { "10000" } else { "100000" };
    let mut list: Vec<Vec<&str>> = vec![
        vec!["enqueue-single", "--jobs", single_jobs],
        vec!["enqueue-batch", "--jobs", batch_jobs, "--batch", "1000"],
        vec!["drain", "--jobs", drain_jobs, "--concurrency", "1"],
        // The worker's default concurrency.
        vec!["drain", "--jobs", drain_jobs, "--concurrency", "10"],
        vec!["drain", "--jobs", drain_jobs, "--concurrency", "16"],
        vec!["drain", "--jobs", drain_jobs, "--concurrency", "64"],
        vec!["drain", "--jobs", drain_jobs, "--concurrency", "256"],
        // The drain beside a crowded queue must stay close to the plain drain.
        vec!["drain-crowded", "--jobs", drain_jobs, "--concurrency", "16", "--crowd", crowd],
        vec!["drain-crowded", "--jobs", drain_jobs, "--concurrency", "256", "--crowd", crowd],
        // Flow control: a fleet-wide limit that never binds must cost the drain little.
        vec!["drain-limited", "--jobs", drain_jobs, "--concurrency", "16"],
        vec!["drain-limited", "--jobs", drain_jobs, "--concurrency", "256"],
        // One tenant's 20,000-job backlog must not starve another's 20 jobs.
        vec!["fairness", "--jobs", if quick { "5000" } else { "20000" }],
    ];
    list.push(vec!["workflow", "--runs", if quick { "200" } else { "1000" }, "--steps", "10"]);
    for rate in rates {
        // Worker concurrency 16, as the side-by-side runs against other queues use.
        list.push(vec!["latency", "--rate", rate, "--seconds", seconds, "--concurrency", "16"]);
    }
    // One worker heartbeat renewing all its 1,000 leases: time per call, calls/s.
    list.push(vec!["heartbeat", "--leases", "1000", "--calls", if quick { "50" } else { "200" }]);
    // Cron: 10,000 entries due in the same second, fired by the leader (a tenth when quick).
    list.push(vec!["cron-due", "--entries", if quick { "1000" } else { "10000" }]);
    // The DLQ service's bulk replay: 100,000 entries on PostgreSQL (the figure), 20,000
    // elsewhere (a tenth of each when quick).
    let replayed = match (store, quick) {
        ("postgres", false) => "100000",
        ("postgres", true) | (_, false) => "20000",
        (_, true) => "2000",
    };
    list.push(vec!["dlq-replay", "--entries", replayed]);
    if store == "postgres" {
        // Retention: the leader's prune loop over a million old completed jobs (a tenth when
        // quick) beside as many young ones; rows/s and the longest call.
        let old_jobs = if quick { "100000" } else { "1000000" };
        list.push(vec!["prune-1m", "--jobs", old_jobs, "--batch", "1000"]);
        // A drain, then the same drain while an idle transaction pins the xmin horizon over
        // a million dead rows (a tenth when quick): the rate pinned, both on stderr.
        let (jobs, dead) = if quick { ("5000", "100000") } else { ("20000", "1000000") };
        list.push(vec!["dead-tuples", "--jobs", jobs, "--dead", dead]);
    }
    list.into_iter().map(|s| s.into_iter().map(str::to_owned).collect()).collect()
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut store = "memory".to_owned();
    let mut quick = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--store" => store = rest.next().context("--store needs a value")?.clone(),
            "--quick" => quick = true,
            other => bail!("unknown bench option {other}"),
        }
    }
    crate::run("cargo build --release -p dispatch-bench")?;
    let target = target_directory(Command::new(env!("CARGO")))?;
    let binary = target.join("release/dispatch-bench");
    let mut results = Vec::new();
    for scenario in scenarios(quick, &store) {
        let runs = (0..RUNS)
            .map(|_| run_once(&binary, &scenario, &store))
            .collect::<anyhow::Result<Vec<Value>>>()?;
        results.push(median_of(&runs));
    }
    print_table(&store, &results);
    let out = target.join("bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join(format!("{store}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    println!("\nwritten to {}", file.display());
    Ok(())
}

/// Where cargo puts build outputs, as `cargo` (a command, so tests can set its environment)
/// reports it: `CARGO_TARGET_DIR` and cargo's configuration included.
fn target_directory(cargo: Command) -> anyhow::Result<PathBuf> {
    let metadata = crate::cargo_metadata(cargo)?;
    let dir = metadata["target_directory"].as_str().context("no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn run_once(binary: &Path, scenario: &[String], store: &str) -> anyhow::Result<Value> {
    let output = Command::new(binary).args(scenario).args(["--store", store]).output()?;
    if !output.status.success() {
        bail!("{scenario:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// Per numeric field, the median of the runs; other fields from the first run.
fn median_of(runs: &[Value]) -> Value {
    let mut merged = runs[0].clone();
    if let Value::Object(map) = &mut merged {
        for (key, value) in map.iter_mut() {
            let mut numbers: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.as_f64()).collect();
            if numbers.len() == runs.len() {
                numbers.sort_by(f64::total_cmp);
                *value = serde_json::json!(numbers[numbers.len() / 2]);
            }
        }
    }
    merged
}

fn print_table(store: &str, results: &[Value]) {
    println!("\nstore: {store} (median of {RUNS} runs, each in its own process)\n");
    println!(
        "| scenario | jobs/s (steps/s, calls/s) | p50 | p99 | max | late sends | dead tuples | Redis B/job | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let number = |key: &str| r.get(key).and_then(Value::as_f64);
        let ms = |key: &str| number(key).map_or("-".into(), |v| format!("{:.2} ms", v / 1000.0));
        let count = |key: &str| number(key).map_or("-".into(), |v| format!("{v:.0}"));
        let rss = number("peak_rss_kib").map_or("-".into(), |v| format!("{:.1} MiB", v / 1024.0));
        let name = r.get("scenario").and_then(Value::as_str).unwrap_or("?");
        let (jobs, p50, p99, max) =
            (count("jobs_per_sec"), ms("p50_us"), ms("p99_us"), ms("max_us"));
        let (late, dead) = (count("late_sends"), count("dead_tuples"));
        let per_job = count("redis_bytes_per_job");
        println!(
            "| {name} | {jobs} | {p50} | {p99} | {max} | {late} | {dead} | {per_job} | {rss} |"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_benches_a_heartbeat_with_1000_leases() {
        for (quick, calls) in [(false, "200"), (true, "50")] {
            for store in ["memory", "sqlite", "postgres", "redis"] {
                let list = scenarios(quick, store);
                let heartbeat = list.iter().find(|s| s[0] == "heartbeat").unwrap();
                assert_eq!(heartbeat[1..], ["--leases", "1000", "--calls", calls]);
            }
        }
    }

    #[test]
    fn only_postgres_benches_retention_and_dead_tuples() {
        for store in ["memory", "sqlite", "postgres", "redis"] {
            let list = scenarios(false, store);
            let churn = list.iter().filter(|s| s[0] == "prune-1m" || s[0] == "dead-tuples");
            assert_eq!(churn.count(), if store == "postgres" { 2 } else { 0 }, "{store}");
        }
    }

    #[test]
    fn the_target_directory_follows_cargo_target_dir() {
        let elsewhere = std::env::temp_dir().join("dispatch-xtask-target");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.env("CARGO_TARGET_DIR", &elsewhere);
        assert_eq!(target_directory(cargo).unwrap(), elsewhere);
    }
}
