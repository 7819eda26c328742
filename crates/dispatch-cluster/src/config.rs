//! The cluster's settings and their defaults.

use std::time::Duration;

use dispatch_core::{DEFAULT_LEADERSHIP, Error, Result};

/// How a cluster elects and what its leader does. Every field has a default; see
/// [`ClusterConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The leadership campaigned for (default [`DEFAULT_LEADERSHIP`]).
    pub leadership: String,
    /// How long a term's lease lasts without renewal (default 10 s).
    pub leader_ttl: Duration,
    /// How often the leader renews (default 3 s: two renewals may fail before the lease ends).
    pub renew_interval: Duration,
    /// How often a follower tries to become leader (default 2 s).
    pub campaign_interval: Duration,
    /// How often each worker's registry heartbeat runs (default 2 s).
    pub heartbeat_interval: Duration,
    /// How long a worker may go without a heartbeat before the leader marks it gone and
    /// reclaims its jobs (default 10 s).
    pub worker_timeout: Duration,
    /// How often the leader sweeps the registry (default 2 s).
    pub sweep_interval: Duration,
    /// The most jobs one sweep call reclaims; a full sweep is followed by another at once
    /// (default 1,000).
    pub sweep_limit: usize,
    /// Job leases under the registry (default 5 min): liveness comes from the worker's
    /// heartbeat, so a lease only has to outlast the job, and a slow job never loses it to a
    /// busy moment. Leases still expire as the safety net behind the registry.
    pub lease_ttl: Duration,
    /// The longest one election or leader-work store call may take (default 5 s).
    pub store_timeout: Duration,
    /// How often the leader prunes, when retention is on (default 1 min).
    pub retention_interval: Duration,
    /// The most records of each kind one prune call removes (default 1,000): the size of the
    /// short transaction each batch is.
    pub retention_batch: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            leadership: DEFAULT_LEADERSHIP.to_owned(),
            leader_ttl: Duration::from_secs(10),
            renew_interval: Duration::from_secs(3),
            campaign_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(2),
            sweep_limit: 1000,
            lease_ttl: Duration::from_secs(300),
            store_timeout: Duration::from_secs(5),
            retention_interval: Duration::from_secs(60),
            retention_batch: 1000,
        }
    }
}

impl ClusterConfig {
    /// Check the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: &str| Err(Error::invalid_input(m.to_owned()));
        if self.leadership.is_empty() {
            return invalid("the leadership name must not be empty");
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.leader_ttl {
            return invalid("renew_interval must be positive and shorter than leader_ttl");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.worker_timeout {
            return invalid("heartbeat_interval must be positive and shorter than worker_timeout");
        }
        if self.heartbeat_interval >= self.lease_ttl {
            return invalid("heartbeat_interval must be shorter than lease_ttl");
        }
        if self.campaign_interval.is_zero() || self.sweep_interval.is_zero() {
            return invalid("campaign_interval and sweep_interval must be positive");
        }
        if self.sweep_limit == 0 || self.retention_batch == 0 {
            return invalid("sweep_limit and retention_batch must be at least 1");
        }
        if self.retention_interval.is_zero() {
            return invalid("retention_interval must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_refused() {
        assert!(ClusterConfig::default().validate().is_ok());
        let renew_too_slow =
            ClusterConfig { renew_interval: Duration::from_secs(10), ..ClusterConfig::default() };
        assert!(renew_too_slow.validate().is_err());
        let beat_too_slow = ClusterConfig {
            heartbeat_interval: Duration::from_secs(10),
            ..ClusterConfig::default()
        };
        assert!(beat_too_slow.validate().is_err());
        let no_sweep = ClusterConfig { sweep_limit: 0, ..ClusterConfig::default() };
        assert!(no_sweep.validate().is_err());
    }
}
