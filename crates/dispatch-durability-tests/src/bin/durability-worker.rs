//! The worker process of the durability tests.
//!
//! `durability-worker work <store> <concurrency> <lease-ms> [poll-ms]`: run `sleepy` jobs until
//! killed. `durability-worker migrate <store>`: open (and so migrate) the store, then exit.
//! `durability-worker workflows <store> <effects-file> <cut>`: drive the `ten-steps`, `saga` and
//! `sleeper` workflows until killed, dying at `<cut>` (`before:K`, `after:K`, `before-undo:K`,
//! `none`).
//! `durability-worker cluster <store> <concurrency> <log-file>`: a clustered worker running
//! `logged` jobs (each start logged), printing `ready <worker id>`.
//! `durability-worker leader <store> <log-file> <pause-ms>`: a cluster member whose leader task
//! writes every `<pause-ms>` (each attempt logged), printing `holder <worker id>`.
//! `durability-worker cron <store> <log-file>`: a clustered worker with the per-second cron
//! entry (its leader fires it), printing `ready <worker id>`.
//! `<store>` is a SQLite file path, `postgres:<schema>` or `redis:<prefix>` (see `StoreSpec`).

use std::time::Duration;

use anyhow::bail;
use dispatch::prelude::*;
use dispatch_durability_tests::cluster::{
    Log, WritingTask, cluster_config, every_second, logged_job, tick_job,
};
use dispatch_durability_tests::{Cut, StoreSpec, saga, sleeper, sleepy_job, ten_steps};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["migrate", store] => {
            StoreSpec::parse(store).open("worker").await?;
            Ok(())
        }
        ["work", store, concurrency, lease_ms, rest @ ..] => {
            let poll_ms: u64 = rest.first().map_or(Ok(50), |p| p.parse())?;
            let store = StoreSpec::parse(store).open("worker").await?;
            let lease = Duration::from_millis(lease_ms.parse()?);
            let mut dispatcher = Dispatcher::builder()
                .shared_store(store)
                .register(sleepy_job())
                .concurrency(concurrency.parse()?)
                .configure(move |c| {
                    c.lease_ttl = lease;
                    c.heartbeat_interval = lease / 4;
                    c.rescue_interval = Duration::from_millis(200);
                    c.poll_interval = Duration::from_millis(poll_ms);
                })
                .build()?;
            dispatcher.start().await?;
            println!("ready");
            std::future::pending::<()>().await;
            Ok(())
        }
        ["workflows", store, effects, cut] => {
            let store = StoreSpec::parse(store).open("worker").await?;
            let cut = Cut::parse(cut)?;
            let mut dispatcher = Dispatcher::builder()
                .shared_store(store)
                .workflow(ten_steps(effects.into(), cut))
                .workflow(saga(effects.into(), cut))
                .workflow(sleeper())
                .concurrency(64)
                .configure(|c| {
                    // Long enough that a loaded machine never lets a live drive's lease expire
                    // (a step would run twice); short enough that the next process takes over
                    // a killed one's runs within seconds.
                    c.lease_ttl = Duration::from_millis(3000);
                    c.heartbeat_interval = Duration::from_millis(250);
                    c.rescue_interval = Duration::from_millis(200);
                    c.poll_interval = Duration::from_millis(50);
                })
                .build()?;
            dispatcher.start().await?;
            println!("ready");
            std::future::pending::<()>().await;
            Ok(())
        }
        ["cluster", store, concurrency, log] => {
            let store = StoreSpec::parse(store).open("worker").await?;
            let log = Log::open(&log.into())?;
            let mut dispatcher = Dispatcher::builder()
                .shared_store(store)
                .register(logged_job(log))
                .concurrency(concurrency.parse()?)
                .cluster(cluster_config())
                .configure(|c| c.poll_interval = Duration::from_millis(50))
                .build()?;
            dispatcher.start().await?;
            let id = dispatcher.health().map(|h| h.worker_id.to_string()).unwrap_or_default();
            println!("ready {id}");
            std::future::pending::<()>().await;
            Ok(())
        }
        ["cron", store, _log] => {
            let store = StoreSpec::parse(store).open("worker").await?;
            let tick = tick_job();
            let mut dispatcher = Dispatcher::builder()
                .shared_store(store)
                .cron(every_second(&tick))
                .register(tick)
                .cluster(cluster_config())
                .configure(|c| c.poll_interval = Duration::from_millis(50))
                .build()?;
            dispatcher.start().await?;
            let id = dispatcher.health().map(|h| h.worker_id.to_string()).unwrap_or_default();
            println!("ready {id}");
            std::future::pending::<()>().await;
            Ok(())
        }
        ["leader", store, log, pause_ms] => {
            let store = StoreSpec::parse(store).open("worker").await?;
            let jobs: std::sync::Arc<dyn dispatch::core::JobStore> = store;
            let Some(cluster_store) = jobs.as_cluster_store() else {
                bail!("this store keeps no cluster");
            };
            let log = Log::open(&log.into())?;
            let pause = Duration::from_millis(pause_ms.parse()?);
            let holder = dispatch::core::WorkerId::new();
            let task = WritingTask::new(cluster_store.clone(), log, pause);
            let _cluster = dispatch::cluster::Cluster::builder(cluster_store)
                .config(cluster_config())
                .holder(holder)
                .task(std::sync::Arc::new(task))
                .build()?
                .start();
            println!("holder {holder}");
            std::future::pending::<()>().await;
            Ok(())
        }
        _ => bail!(
            "usage: durability-worker work <store> <concurrency> <lease-ms> [poll-ms] | \
             migrate <store> | workflows <store> <effects-file> <cut> | \
             cluster <store> <concurrency> <log-file> | leader <store> <log-file> <pause-ms> | \
             cron <store> <log-file>"
        ),
    }
}
