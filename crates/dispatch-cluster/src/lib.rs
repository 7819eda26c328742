//! The cluster runtime of Dispatch: several processes on one store elect one leader, and the
//! leader runs the maintenance work (dead-worker sweeps and retention now; cron joins it) under
//! its term, which the store checks in every leader write.
//!
//! What it is for: [`Cluster`] campaigns for the leadership through an [`Election`] (the store's
//! lease by default, [`StoreElection`]; a Kubernetes Lease with the `k8s` feature), renews it,
//! steps down as soon as it can not renew in time, and while it leads runs each [`LeaderTask`]
//! at its interval with the current term. The built-in task, [`DeadWorkerSweep`], marks workers
//! whose registry heartbeat stopped as gone and reclaims their jobs in the same store operation,
//! so a killed worker's jobs run again within the worker timeout plus one sweep. [`Retention`]
//! prunes what a [`RetentionPolicy`](dispatch_core::RetentionPolicy) no longer keeps, in bounded
//! batches (add it with [`ClusterBuilder::task`]; the umbrella's `DispatcherBuilder::retention`
//! does).
//!
//! What it is not: the worker registry itself (a worker joins it through
//! `dispatch_job::WorkerBuilder::membership`), nor the rules of election and fencing, which live
//! in `dispatch_core::cluster` and each store. A local deadline check before leader work is only
//! an optimisation; safety comes from the store refusing writes under a term that is no longer
//! valid ([`ErrorKind::NotLeader`](dispatch_core::ErrorKind::NotLeader)).
//!
//! With the `k8s` feature, `k8s::KubernetesElection` elects through a Kubernetes Lease
//! (`coordination.k8s.io/v1`) and takes the next store term on winning it, so the Lease decides
//! who leads while the store term still fences every leader write.
//!
//! Applications use it through the `dispatch` umbrella (`DispatcherBuilder::cluster`).

mod config;
mod election;
mod hooks;
#[cfg(feature = "k8s")]
pub mod k8s;
mod retention;
mod runtime;
mod sweep;
mod task;

pub use config::ClusterConfig;
pub use election::{Election, StoreElection};
pub use retention::Retention;
pub use runtime::{Cluster, ClusterBuilder, ClusterHandle};
pub use sweep::DeadWorkerSweep;
pub use task::LeaderTask;
