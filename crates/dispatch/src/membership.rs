//! The dispatcher as a cluster member: its worker joins the store's registry, and a
//! [`Cluster`](dispatch_cluster::Cluster) campaigns for the leadership beside it.

use std::sync::Arc;

use dispatch_cluster::{Cluster, ClusterBuilder, ClusterConfig};
use dispatch_core::{Error, Hook, JobStore, Result};
use dispatch_job::WorkerBuilder;

/// With `config`, make the worker a registry member (heartbeat and lease settings from the
/// cluster's) and prepare the leadership runtime; without, change nothing.
pub(crate) fn join(
    builder: WorkerBuilder,
    store: Arc<dyn JobStore>,
    config: Option<ClusterConfig>,
    hooks: &[Arc<dyn Hook>],
    version: String,
) -> Result<(WorkerBuilder, Option<ClusterBuilder>)> {
    let Some(config) = config else { return Ok((builder, None)) };
    let store = store.as_cluster_store().ok_or_else(|| {
        Error::invalid_input("a cluster needs a store that keeps a worker registry and leadership")
    })?;
    let (heartbeat, lease) = (config.heartbeat_interval, config.lease_ttl);
    let builder = builder.membership(store.clone(), version).configure(move |c| {
        c.heartbeat_interval = heartbeat;
        c.lease_ttl = lease;
    });
    let cluster =
        hooks.iter().fold(Cluster::builder(store).config(config), |c, hook| c.hook(hook.clone()));
    Ok((builder, Some(cluster)))
}
