//! `impl RetentionStore`: pruning under the leader's term, one short script call per kind of
//! record (`lua/prune.lua`), each fenced by the term as the sweep is; the first call of a prune
//! records it as a leader write (`prune`).
//!
//! Each kind has a retention index scored by the time its age counts from, so a pass reads
//! only what is old enough and costs O(limit) whatever the store holds, without a scan of the
//! keyspace or a walk of a listing index:
//!
//! | kind | index (`lua/prelude.lua`, `lua/runs.lua`) | kept by | cost |
//! |---|---|---|---|
//! | jobs | `finished:<state>` by finished_at | every transition into a final state | one sorted-set member per finish, in the finish's batched `ZADD` |
//! | runs | `runsended` by finished_at | run ends, reopens | one `ZADD` and one `SMEMBERS` per run end |
//! | DLQ | `dlqs:failed` by failed_at | promote, purge | one `ZADD` per death |
//! | events | `keptexpiry` by keep-until | publish, take | one `ZADD` per kept event |
//! | workers | `workers:goneseen` by last_seen | sweep, register, deregister | one `ZADD` per worker marked gone |
//!
//! What the rules keep is set aside out of the index, so no later pass reads it again: the
//! drive job of a stored run (it goes with its run), a job inside its unique window
//! (`uniqueheld`, back once the window has passed), a run whose parent is live (parked under
//! the parent, back when the parent ends). Records written before these indexes existed are not
//! in them, and are not pruned.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{Leader, PruneReport, Result, RetentionPolicy, RetentionStore};
use redis::Value;

use crate::RedisStore;
use crate::error::internal;
use crate::row::{array, duration_arg, int};

/// One pass of a prune: a kind and its ages (`None`: kept for ever).
#[derive(Debug, Clone, Copy)]
enum Pass {
    Runs(Duration),
    Jobs([Option<Duration>; 3]),
    Dlq(Duration),
    Events,
    Workers(Duration),
}

impl Pass {
    /// The passes `policy` asks for, runs before jobs so that drive jobs go with their runs.
    /// Expired kept events have no policy: that pass always runs.
    fn of(policy: &RetentionPolicy) -> Vec<Pass> {
        let jobs = [policy.completed, policy.cancelled, policy.dead];
        let mut passes = Vec::with_capacity(5);
        passes.extend(policy.runs.map(Pass::Runs));
        if jobs.iter().any(Option::is_some) {
            passes.push(Pass::Jobs(jobs));
        }
        passes.extend(policy.dead.map(Pass::Dlq));
        passes.push(Pass::Events);
        passes.extend(policy.gone_workers.map(Pass::Workers));
        passes
    }

    fn kind(&self) -> &'static str {
        match self {
            Pass::Runs(_) => "runs",
            Pass::Jobs(_) => "jobs",
            Pass::Dlq(_) => "dlq",
            Pass::Events => "events",
            Pass::Workers(_) => "workers",
        }
    }

    /// The ages as the script reads them: µs, '' for kept for ever.
    fn ages(&self) -> Vec<String> {
        let age = |d: Duration| duration_arg(d).to_string();
        match self {
            Pass::Runs(d) | Pass::Dlq(d) | Pass::Workers(d) => vec![age(*d)],
            Pass::Jobs(ages) => ages.iter().map(|d| d.map(age).unwrap_or_default()).collect(),
            Pass::Events => Vec::new(),
        }
    }
}

#[async_trait]
impl RetentionStore for RedisStore {
    async fn prune(
        &self,
        term: &Leader,
        policy: &RetentionPolicy,
        limit: usize,
    ) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        for (i, pass) in Pass::of(policy).into_iter().enumerate() {
            let part = self.prune_pass(term, pass, limit, i == 0).await?;
            // `absorb` takes the last part's `more`; any pass that had more makes the call's.
            let more = report.more || part.more;
            report.absorb(&part);
            report.more = more;
        }
        Ok(report)
    }
}

impl RedisStore {
    /// One fenced script call: `pass` over at most `limit` records, recorded as the prune's
    /// leader write when `record`.
    async fn prune_pass(
        &self,
        term: &Leader,
        pass: Pass,
        limit: usize,
        record: bool,
    ) -> Result<PruneReport> {
        let mut call = self.call(&self.inner.scripts.prune);
        call.arg(&term.name)
            .arg(term.term)
            .arg(term.holder.to_string())
            .arg(LEADER_WRITES_KEPT)
            .arg(if record { "1" } else { "0" })
            .arg(pass.kind())
            .arg(limit);
        for age in pass.ages() {
            call.arg(age);
        }
        prune_report(self.invoke(&call).await?)
    }
}

/// The script's answer { jobs, dlq, runs, checkpoints, events, workers, more } as a report.
fn prune_report(reply: Value) -> Result<PruneReport> {
    let counts = array(reply)?
        .into_iter()
        .map(|v| int(v).and_then(|n| u64::try_from(n).map_err(|_| internal("a negative count"))))
        .collect::<Result<Vec<u64>>>()?;
    let [jobs, dlq, runs, checkpoints, events, workers, more] = counts[..] else {
        return Err(internal(format!("a prune answered {} counts, not 7", counts.len())));
    };
    Ok(PruneReport { jobs, dlq, runs, checkpoints, events, workers, more: more == 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passes_follow_the_policy() {
        let kinds = |policy: &RetentionPolicy| -> Vec<&str> {
            Pass::of(policy).iter().map(Pass::kind).collect()
        };
        assert_eq!(
            kinds(&RetentionPolicy::default()),
            ["runs", "jobs", "dlq", "events", "workers"]
        );
        assert_eq!(kinds(&RetentionPolicy::keep_all()), ["events"], "kept events expire anyway");
        let policy = RetentionPolicy {
            completed: Some(Duration::from_secs(1)),
            ..RetentionPolicy::keep_all()
        };
        assert_eq!(Pass::of(&policy)[0].ages(), ["1000000", "", ""]);
    }

    #[test]
    fn the_report_reads_what_the_script_answers() {
        let reply = Value::Array([1, 2, 3, 4, 5, 6, 1].into_iter().map(Value::Int).collect());
        let report = prune_report(reply).unwrap();
        assert_eq!((report.jobs, report.workers, report.more), (1, 6, true));
        assert!(prune_report(Value::Array(vec![Value::Int(1)])).is_err());
    }
}
