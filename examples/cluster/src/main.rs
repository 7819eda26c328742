//! A worker to start several times on one store: each process registers in the worker
//! registry, one of them leads, and a killed worker's jobs run again on the others within the
//! worker timeout. Every process prints its role changes and the jobs it runs.
//!
//! ```sh
//! cargo run -p cluster-example -- sqlite:cluster.db enqueue 200   # add work
//! cargo run -p cluster-example -- sqlite:cluster.db              # in three terminals
//! ```
//!
//! The store is `sqlite:<file>`, `postgres://…` or `redis://…` (a Redis URL may end with
//! `#<prefix>` to pick the key prefix). Stop a process with Ctrl-C (it drains: its jobs finish,
//! it leaves the registry, a leader resigns) or kill it with `kill -9` and watch another take
//! its jobs over. The leader also prunes completed jobs after an hour (retention).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatch::cluster::ClusterConfig;
use dispatch::core::{RetentionPolicy, WorkflowStore};
use dispatch::prelude::*;

/// A job of about a second, so that a killed process leaves some in flight.
fn chore() -> JobDefinition<u64> {
    JobDefinition::new("chore", |ctx: JobContext, n: u64| async move {
        println!("  running chore {n} ({}, attempt {})", ctx.job_id(), ctx.attempt());
        tokio::time::sleep(Duration::from_millis(500 + n % 1000)).await;
        Ok(())
    })
}

/// Prints this process's leadership changes.
struct Roles;

#[async_trait::async_trait]
impl Hook for Roles {
    async fn on_event(&self, event: &Event) {
        match event {
            Event::LeaderElected { leader } => {
                println!("** leader now (term {}): sweeping for dead workers", leader.term);
            }
            Event::LeadershipLost { leader, reason } => {
                println!("** follower again (term {} ended: {reason})", leader.term);
            }
            _ => {}
        }
    }
}

async fn open(spec: &str) -> anyhow::Result<Arc<dyn WorkflowStore>> {
    Ok(if let Some(path) = spec.strip_prefix("sqlite:") {
        Arc::new(SqliteStore::open(path).await.context("open SQLite")?)
    } else if spec.starts_with("postgres") {
        Arc::new(PostgresStore::connect(spec).await.context("connect to PostgreSQL")?)
    } else if spec.starts_with("redis") {
        let (url, prefix) = spec.split_once('#').unwrap_or((spec, "dispatch"));
        let store = RedisStore::builder(url).prefix(prefix).build().await;
        Arc::new(store.context("connect to Redis")?)
    } else {
        anyhow::bail!("the store is sqlite:<file>, postgres://… or redis://…[#prefix]");
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args.first().map_or("sqlite:cluster.db", String::as_str);
    let store = open(spec).await?;
    let mut dispatcher = Dispatcher::builder()
        .shared_store(store)
        .register(chore())
        .concurrency(4)
        .hook(Roles)
        .cluster(ClusterConfig::default())
        .retention(RetentionPolicy {
            completed: Some(Duration::from_secs(3600)),
            ..RetentionPolicy::default()
        })
        .app_version(env!("CARGO_PKG_VERSION"))
        .build()?;
    if let [_, command, count] = args.as_slice()
        && command == "enqueue"
    {
        let count: u64 = count.parse().context("enqueue <count>")?;
        dispatcher.enqueue_many(&chore(), 0..count).await?;
        println!("enqueued {count} chores");
        return Ok(());
    }
    dispatcher.start().await?;
    let id = dispatcher.health().map(|h| h.worker_id.to_string()).unwrap_or_default();
    println!("worker {id} on {spec}: following until elected; Ctrl-C drains and stops");
    let report = dispatcher.run_until_shutdown().await?;
    println!("stopped: {} attempts cancelled and released", report.cancelled);
    Ok(())
}
