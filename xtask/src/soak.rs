//! `cargo xtask soak`: minutes of steady enqueue and drain at a fixed rate, with retries,
//! snoozes, a workflow mix and retention on, against SQLite, PostgreSQL and Redis at once; a
//! sample every `--sample` (jobs size, dead tuples, index size, claim latency, RSS); one
//! restart of PostgreSQL half-way; then a table, sparklines and a verdict per store, and the
//! account of every job (none may be lost).
//!
//! Each store runs in a child process of its own (this binary, `soak-child`), so each store's
//! RSS is its own and a store's stall does not slow the others' schedules; at a fixed rate the
//! three fit on two cores. PostgreSQL is a server of the soak's own (initdb into a temporary
//! directory, `--postgres-port`, default 5433), so its restart disturbs nothing else; Redis is
//! the local server under a key prefix of the soak's own; SQLite a temporary file.
//!
//! ```sh
//! cargo xtask soak [--duration 10m] [--rate 200] [--stores sqlite,postgres,redis]
//!                  [--sample 10s] [--retention-age 30s] [--no-restart]
//! ```

mod child;
mod options;
mod postgres;
mod probe;
mod report;
mod workload;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

pub(crate) use child::main as child_main;
use options::Options;

/// What a child printed: its samples, its sample after the drain, its final account.
#[derive(Default)]
struct Collected {
    samples: Vec<Value>,
    drained: Option<Value>,
    account: Option<Value>,
}

/// Run the soak (the parent: the PostgreSQL server, the children, the restart, the report).
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut options = Options::parse(args)?;
    let server = if options.stores.iter().any(|s| s == "postgres") {
        let server = postgres::Instance::start(options.postgres_port)?;
        options.postgres_url = Some(server.url());
        println!("soak: PostgreSQL of its own at {}", server.url());
        Some(server)
    } else {
        None
    };
    println!(
        "soak: {} s at {} jobs/s (+ {} runs/s) per store, sample every {} s, retention {} s: {}",
        options.duration.as_secs(),
        options.rate,
        options.rate.div_ceil(20),
        options.sample.as_secs(),
        options.retention_age.as_secs(),
        options.stores.join(", ")
    );
    let load_before = load_average();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for store in &options.stores {
        let mut child = Command::new(&exe)
            .arg("soak-child")
            .args(options.child_args(store))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {store} soak"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        echo(store.clone(), stderr);
        children.push((store.clone(), child, collect(store.clone(), stdout)));
    }
    let restarted = match server.as_ref().filter(|_| options.restart) {
        Some(server) => restart_half_way(server, &options, &children)?,
        None => None,
    };
    let mut reports = Vec::new();
    for (store, mut child, collector) in children {
        let status = child.wait()?;
        let collected = collector.join().map_err(|_| anyhow::anyhow!("collector panicked"))?;
        if !status.success() {
            println!("soak: the {store} soak exited with {status}");
        }
        reports.push((store, collected));
    }
    drop(server);
    println!("\n## Soak report");
    // Latency figures depend on what else the machine runs; say how busy it was.
    println!(
        "\nload average (1, 5, 15 min): {load_before} at the start, {} at the end",
        load_average()
    );
    if let Some((at, took)) = restarted {
        println!(
            "\nPostgreSQL restarted (pg_ctl restart -m fast) at t = {} s, back in {:.1} s",
            at.as_secs(),
            took.as_secs_f64()
        );
    }
    let mut lost = false;
    for (store, c) in &reports {
        print!(
            "{}",
            report::render(store, options.rate, &c.samples, c.drained.as_ref(), c.account.as_ref())
        );
        let n = |k: &str| c.account.as_ref().and_then(|a| a.get(k)?.as_u64());
        lost |= n("lost") != Some(0) || n("runs_lost") != Some(0);
    }
    anyhow::ensure!(!lost, "jobs or runs were lost (or a soak did not finish)");
    Ok(())
}

/// Wait until half the duration has passed (or every child has ended), then restart the
/// server. Returns when (since the children started) and how long it took, if it did.
fn restart_half_way(
    server: &postgres::Instance,
    options: &Options,
    children: &[(String, std::process::Child, JoinHandle<Collected>)],
) -> anyhow::Result<Option<(Duration, Duration)>> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < options.duration / 2 {
        if children.iter().all(|(_, _, c)| c.is_finished()) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("soak: restarting PostgreSQL (pg_ctl restart -m fast)");
    let at = start.elapsed();
    let took = server.restart()?;
    println!("soak: PostgreSQL restarted in {:.1} s", took.as_secs_f64());
    Ok(Some((at, took)))
}

/// The machine's load averages, from /proc/loadavg.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Read a child's JSON lines, showing a short progress line for each sample.
fn collect(store: String, stdout: impl Read + Send + 'static) -> JoinHandle<Collected> {
    std::thread::spawn(move || {
        let mut collected = Collected::default();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                println!("[{store}] {line}");
                continue;
            };
            if let Some(sample) = value.get("sample") {
                println!("[{store}] {}", progress(sample));
                collected.samples.push(sample.clone());
            } else if let Some(sample) = value.get("drained") {
                collected.drained = Some(sample.clone());
            } else if let Some(account) = value.get("final") {
                collected.account = Some(account.clone());
            }
        }
        collected
    })
}

fn progress(sample: &Value) -> String {
    let n = |k: &str| sample.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    format!(
        "t={:.0}s rows={:.0} jobs={:.2} MiB claim p99={:.2} ms rss={:.1} MiB completed={:.0}/{:.0}",
        n("t"),
        n("rows"),
        n("jobs_bytes") / 1_048_576.0,
        n("claim_p99_us") / 1000.0,
        n("rss_kib") / 1024.0,
        n("completed"),
        n("enqueued"),
    )
}

/// Show a child's diagnostics as they come, each line marked with its store.
fn echo(store: String, stderr: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{store}] {line}");
        }
    });
}
