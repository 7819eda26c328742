//! The worker process of the durability tests.
//!
//! `durability-worker work <database> <concurrency> <lease-ms>`: run `sleepy` jobs until killed.
//! `durability-worker migrate <database>`: open (and so migrate) the database, then exit.

use std::time::Duration;

use anyhow::{Context, bail};
use dispatch::prelude::*;
use dispatch_durability_tests::sleepy_job;
use dispatch_store_sqlite::SqliteStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["migrate", database] => {
            SqliteStore::open(database).await.context("open")?;
            Ok(())
        }
        ["work", database, concurrency, lease_ms] => {
            let store = SqliteStore::open(database).await.context("open")?;
            let lease = Duration::from_millis(lease_ms.parse()?);
            let mut dispatcher = Dispatcher::builder()
                .store(store)
                .register(sleepy_job())
                .concurrency(concurrency.parse()?)
                .configure(move |c| {
                    c.lease_ttl = lease;
                    c.heartbeat_interval = lease / 4;
                    c.rescue_interval = Duration::from_millis(200);
                    c.poll_interval = Duration::from_millis(50);
                })
                .build()?;
            dispatcher.start()?;
            println!("ready");
            std::future::pending::<()>().await;
            Ok(())
        }
        _ => bail!(
            "usage: durability-worker work <database> <concurrency> <lease-ms> | migrate <database>"
        ),
    }
}
