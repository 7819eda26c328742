//! Cron entries on a clustered dispatcher: one fires every second, one every two seconds for
//! each of two tenants (the same name in two scopes is two entries). The handler prints each
//! job, a hook prints each fire; the process stops by itself after about five seconds.
//!
//! ```sh
//! cargo run -p cron-example
//! ```
//!
//! Entries live in the store and fire on the cluster's leader, so the same code on several
//! processes over one durable store fires each scheduled time once.

use std::time::Duration;

use dispatch::cluster::ClusterConfig;
use dispatch::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Report {
    what: String,
}

/// Prints every fire the leader makes.
struct PrintFires;

#[async_trait::async_trait]
impl Hook for PrintFires {
    async fn on_event(&self, event: &Event) {
        if let Event::CronFired { entry, scheduled, .. } = event {
            println!("fired {} for {:?} at {scheduled}", entry.name, entry.scope.tenant);
        }
    }
}

#[tokio::main]
async fn main() -> dispatch::Result<()> {
    let report = JobDefinition::new("report", |ctx: JobContext, report: Report| async move {
        let tenant = ctx.scope().tenant.clone().unwrap_or_else(|| "-".to_owned());
        println!("  ran {} for tenant {tenant}", report.what);
        Ok(())
    });
    let heartbeat = CronSpec::new("heartbeat", "* * * * * *")
        .job(&report, &Report { what: "heartbeat".into() });
    let per_tenant = |tenant: &str| {
        CronSpec::new("tenant-digest", "*/2 * * * * *")
            .job(&report, &Report { what: "digest".into() })
            .scope(Scope::new("shop", tenant))
    };
    let mut dispatcher = Dispatcher::builder()
        .store(MemoryStore::new())
        .register(report.clone())
        .hook(PrintFires)
        .cluster(ClusterConfig::default())
        .cron(heartbeat)
        .cron(per_tenant("acme"))
        .cron(per_tenant("globex"))
        .build()?;
    dispatcher.start().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    dispatcher.stop().await;
    Ok(())
}
