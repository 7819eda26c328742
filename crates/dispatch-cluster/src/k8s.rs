//! Leader election through a Kubernetes `coordination.k8s.io/v1` Lease (the `k8s` feature):
//! [`KubernetesElection`].
//!
//! # What decides what
//!
//! The Kubernetes Lease decides **who** leads: a process leads while its worker ID is the
//! Lease's `holderIdentity` and it keeps `renewTime` fresh; another process takes the Lease over
//! only once `renewTime + leaseDurationSeconds` has passed. Every write to the Lease carries the
//! `resourceVersion` that was read, so of two processes that race for it the API server accepts
//! one and answers the other `409 Conflict` (that one does not lead).
//!
//! The store's term **fences** the leader's writes. A process that newly wins the Lease takes
//! the next term in the store ([`LeadershipStore::take_leadership`]), so from that moment the
//! store refuses every leader write of the previous holder ([`ErrorKind::NotLeader`]), even if
//! that holder is paused, partitioned from the API server, or its clock is off. Lease expiry is
//! judged by this process's clock against the `renewTime` another process wrote, so clock skew
//! between nodes can only make a takeover early or late; it can not let two terms write,
//! because the store checks the term in every leader write.
//!
//! # RBAC
//!
//! The pod's ServiceAccount needs `get`, `create` and `update` on `leases` in the
//! `coordination.k8s.io` group, in the namespace of the Lease:
//!
//! ```yaml
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: Role
//! metadata:
//!   name: dispatch-leader-election
//!   namespace: my-namespace
//! rules:
//!   - apiGroups: ["coordination.k8s.io"]
//!     resources: ["leases"]
//!     verbs: ["get", "create", "update"]
//! ---
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: RoleBinding
//! metadata:
//!   name: dispatch-leader-election
//!   namespace: my-namespace
//! subjects:
//!   - kind: ServiceAccount
//!     name: my-app            # the ServiceAccount the pods run as
//!     namespace: my-namespace
//! roleRef:
//!   apiGroup: rbac.authorization.k8s.io
//!   kind: Role
//!   name: dispatch-leader-election
//! ```
//!
//! # Running it in a cluster
//!
//! Give each pod its namespace through the downward API:
//!
//! ```yaml
//! env:
//!   - name: POD_NAMESPACE
//!     valueFrom:
//!       fieldRef:
//!         fieldPath: metadata.namespace
//! ```
//!
//! then build the client from the in-cluster configuration (the ServiceAccount token and CA
//! that Kubernetes mounts into the pod; outside a cluster, the kubeconfig) and hand the election
//! to the cluster runtime:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use dispatch_core::{ClusterStore, DEFAULT_LEADERSHIP, LeadershipStore};
//! use dispatch_cluster::{Cluster, k8s::KubernetesElection};
//!
//! # async fn run(store: Arc<dyn ClusterStore>) -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let namespace = std::env::var("POD_NAMESPACE")?;
//! let election = KubernetesElection::namespaced(
//!     client,
//!     &namespace,
//!     "dispatch-leader", // the Lease's name
//!     store.clone() as Arc<dyn LeadershipStore>, // the store whose term fences
//!     DEFAULT_LEADERSHIP,
//! );
//! let cluster = Cluster::builder(store).election(Arc::new(election)).build()?.start();
//! # Ok(())
//! # }
//! ```
//!
//! Two choices are left to the application, because a library must not make them:
//!
//! - **TLS.** The `k8s` feature builds `kube` with its HTTP client and no TLS stack, and the API
//!   server of a real cluster speaks HTTPS. Enable one in the application's own dependency on
//!   `kube` (features unify): `kube = { version = "5", default-features = false, features =
//!   ["client", "rustls-tls", "ring"] }` (or `"openssl-tls"`). Without one, every call fails
//!   with "TLS required but no TLS stack selected".
//! - **The Kubernetes API version.** `k8s-openapi` needs exactly one version feature, chosen by
//!   the final binary: `k8s-openapi = { version = "0.29", features = ["v1_33"] }` (any of
//!   `v1_33` to `v1_37`; the Lease API is the same in all of them), or the
//!   `K8S_OPENAPI_ENABLED_VERSION` environment variable at build time.
//!
//! Keep the cluster's `leader_ttl` at a few seconds or more: the Lease counts whole seconds
//! (`leaseDurationSeconds` is the TTL rounded up).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Error, ErrorKind, Leader, LeadershipStore, Result, WorkerId};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

use crate::Election;

/// Election through a Kubernetes Lease, fenced by the store's term (see the [module
/// docs](self) for the rules, the RBAC it needs and how to run it in a cluster).
///
/// - [`campaign`](Election::campaign) reads the Lease; creates it when absent; takes it over
///   (`leaseTransitions` + 1) when its holder is empty or its `renewTime + leaseDurationSeconds`
///   has passed; renews it when `holder` holds it already; answers `None` while another holder's
///   Lease is live or when another writer got there first (`409 Conflict`). Having newly won
///   the Lease it takes the next store term ([`LeadershipStore::take_leadership`]); holding it
///   already, it keeps its term ([`LeadershipStore::acquire_leadership`]).
/// - [`renew`](Election::renew) moves the Lease's `renewTime` (`None` when another holder has
///   it or another writer got there first), then renews the store term.
/// - [`resign`](Election::resign) clears the Lease's holder, so another process takes over at
///   once, and resigns the store term.
#[derive(Clone)]
pub struct KubernetesElection {
    leases: Api<Lease>,
    lease: String,
    store: Arc<dyn LeadershipStore>,
    name: String,
}

impl KubernetesElection {
    /// Elect through the Lease `lease` of `leases` (a namespaced `Api<Lease>`), fencing with
    /// `store`'s leadership `name`.
    pub fn new(
        leases: Api<Lease>,
        lease: impl Into<String>,
        store: Arc<dyn LeadershipStore>,
        name: impl Into<String>,
    ) -> Self {
        Self { leases, lease: lease.into(), store, name: name.into() }
    }

    /// Elect through the Lease `lease` in `namespace`, fencing with `store`'s leadership `name`.
    pub fn namespaced(
        client: kube::Client,
        namespace: &str,
        lease: impl Into<String>,
        store: Arc<dyn LeadershipStore>,
        name: impl Into<String>,
    ) -> Self {
        Self::new(Api::namespaced(client, namespace), lease, store, name)
    }

    /// Read the Lease (`None` when it does not exist).
    async fn read(&self) -> Result<Option<Lease>> {
        self.leases.get_opt(&self.lease).await.map_err(|e| api_error("reading", &self.lease, e))
    }

    /// Write `lease` back with the `resourceVersion` it was read with: `false` when another
    /// writer changed it since (`409 Conflict`).
    async fn replace(&self, lease: &Lease) -> Result<bool> {
        match self.leases.replace(&self.lease, &PostParams::default(), lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(error) => Err(api_error("updating", &self.lease, error)),
        }
    }

    /// Create the Lease held by `holder`: `false` when another process created it first.
    async fn create(&self, holder: &str, seconds: i32, now: Timestamp) -> Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.lease.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                Ok(false)
            }
            Err(error) => Err(api_error("creating", &self.lease, error)),
        }
    }

    /// Win or keep the Lease for `holder`: `Some(true)` when newly won, `Some(false)` when it
    /// was `holder`'s already (renewed), `None` when another holder has it.
    async fn win_lease(&self, holder: &str, ttl: Duration) -> Result<Option<bool>> {
        let seconds = lease_seconds(ttl);
        let now = Timestamp::now();
        let Some(mut lease) = self.read().await? else {
            return Ok(self.create(holder, seconds, now).await?.then_some(true));
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(holder);
        if !ours {
            let held = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
            if held && !expired(spec, now) {
                return Ok(None);
            }
            spec.holder_identity = Some(holder.to_owned());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        Ok(self.replace(&lease).await?.then_some(!ours))
    }
}

impl std::fmt::Debug for KubernetesElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesElection")
            .field("lease", &self.lease)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Election for KubernetesElection {
    async fn campaign(&self, holder: WorkerId, ttl: Duration) -> Result<Option<Leader>> {
        match self.win_lease(&holder.to_string(), ttl).await? {
            None => Ok(None),
            // Newly won: the next store term, which fences the previous holder from now on.
            Some(true) => self.store.take_leadership(&self.name, holder, ttl).await.map(Some),
            // Ours already: the same term (a new one only if the store term lapsed meanwhile).
            Some(false) => self.store.acquire_leadership(&self.name, holder, ttl).await,
        }
    }

    async fn renew(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        let Some(mut lease) = self.read().await? else {
            return Ok(None);
        };
        let holder = term.holder.to_string();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(holder.as_str()) {
            return Ok(None);
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(lease_seconds(ttl));
        if !self.replace(&lease).await? {
            return Ok(None);
        }
        self.store.renew_leadership(term, ttl).await
    }

    async fn resign(&self, term: &Leader) -> Result<()> {
        let cleared = self.clear_lease(term).await;
        let resigned = self.store.resign_leadership(term).await;
        cleared.and(resigned)
    }
}

impl KubernetesElection {
    /// Clear the Lease's holder when it is still `term`'s (a conflict means another writer
    /// moved on: nothing to clear).
    async fn clear_lease(&self, term: &Leader) -> Result<()> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let holder = term.holder.to_string();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.replace(&lease).await.map(drop)
    }
}

/// `leaseDurationSeconds` for `ttl`: whole seconds, rounded up, at least 1.
fn lease_seconds(ttl: Duration) -> i32 {
    let seconds = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// Whether the Lease `spec` has run out at `now`: its `renewTime + leaseDurationSeconds` has
/// passed (a Lease without a renewal time or a duration has no live holder).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    now.duration_since(renewed.0) >= SignedDuration::from_secs(i64::from(seconds))
}

/// A `kube` error as a Dispatch error: the API server's refusals by their status (a missing
/// permission or a malformed request is not transient), everything else (connection, timeout,
/// server errors) as [`ErrorKind::Unavailable`].
fn api_error(doing: &str, lease: &str, error: kube::Error) -> Error {
    let kind = match &error {
        kube::Error::Api(status) => match status.code {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            400..=499 if status.code != 408 && status.code != 429 => ErrorKind::InvalidInput,
            _ => ErrorKind::Unavailable,
        },
        kube::Error::SerdeError(_) => ErrorKind::Codec,
        kube::Error::TlsRequired => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    };
    let message = format!("{doing} the Kubernetes Lease {lease:?} failed: {error}");
    Error::new(kind, message).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_secs(10)), 10);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn expiry_is_renew_time_plus_duration() {
        let renewed = Timestamp::from_second(1_900_000_000).expect("timestamp");
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(10),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec, renewed + SignedDuration::from_secs(9)));
        assert!(expired(&spec, renewed + SignedDuration::from_secs(10)));
        assert!(expired(&LeaseSpec::default(), renewed), "no renewal: no live holder");
    }
}
