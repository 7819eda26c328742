//! The dispatcher as a cluster member: its worker joins the store's registry, and a
//! [`Cluster`](dispatch_cluster::Cluster) campaigns for the leadership beside it.

use std::sync::Arc;

use dispatch_cluster::{Cluster, ClusterBuilder, ClusterConfig, Retention};
use dispatch_core::{Error, Hook, JobStore, Result, RetentionPolicy};
use dispatch_job::WorkerBuilder;

/// With `config`, make the worker a registry member (heartbeat and lease settings from the
/// cluster's) and prepare the leadership runtime, pruning by `retention` when given; without,
/// change nothing (retention without a cluster is refused: only a leader prunes).
pub(crate) fn join(
    builder: WorkerBuilder,
    jobs: Arc<dyn JobStore>,
    config: Option<ClusterConfig>,
    retention: Option<RetentionPolicy>,
    hooks: &[Arc<dyn Hook>],
    version: String,
) -> Result<(WorkerBuilder, Option<ClusterBuilder>)> {
    let Some(config) = config else {
        if retention.is_some() {
            return Err(Error::invalid_input(
                "retention is leader work: it needs a cluster (DispatcherBuilder::cluster)",
            ));
        }
        return Ok((builder, None));
    };
    let retention = retention.map(|policy| retention_task(&jobs, policy, &config)).transpose()?;
    let store = jobs.as_cluster_store().ok_or_else(|| {
        Error::invalid_input("a cluster needs a store that keeps a worker registry and leadership")
    })?;
    let (heartbeat, lease) = (config.heartbeat_interval, config.lease_ttl);
    let builder = builder.membership(store.clone(), version).configure(move |c| {
        c.heartbeat_interval = heartbeat;
        c.lease_ttl = lease;
    });
    let cluster =
        hooks.iter().fold(Cluster::builder(store).config(config), |c, hook| c.hook(hook.clone()));
    let cluster = match retention {
        Some(task) => cluster.task(Arc::new(task)),
        None => cluster,
    };
    Ok((builder, Some(cluster)))
}

/// The leader's retention task over `jobs`, which must prune.
fn retention_task(
    jobs: &Arc<dyn JobStore>,
    policy: RetentionPolicy,
    config: &ClusterConfig,
) -> Result<Retention> {
    let store = jobs
        .clone()
        .as_retention_store()
        .ok_or_else(|| Error::invalid_input("retention needs a store that prunes"))?;
    Ok(Retention::new(store, policy, config.retention_interval, config.retention_batch))
}
