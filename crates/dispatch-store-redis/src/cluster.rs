//! `impl MembershipStore` and `impl LeadershipStore`: the worker registry, the leader's sweep of
//! silent workers, and leadership terms with their record of accepted writes. Every call that
//! writes is one script (`lua/worker_*.lua`, `lua/sweep_workers.lua`, `lua/leader_*.lua`, with
//! the helpers of `lua/cluster.lua`), deciding as `dispatch_core::cluster` and
//! `dispatch_core::transition` do; reading a leadership and its writes are one plain command
//! each. The keys are documented in `lua/prelude.lua`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::cluster::LEADER_WRITES_KEPT;
use dispatch_core::{
    Leader, LeaderWrite, LeadershipStore, LeaseRef, MembershipStore, RescueReport, Result,
    SweepReport, WorkerHeartbeat, WorkerId, WorkerRecord, WorkerRegistration, WorkerState,
};
use redis::Value;
use serde::Deserialize;

use crate::RedisStore;
use crate::error::internal;
use crate::finish::{dlq_id_args, note_rescues};
use crate::job::heartbeat_report;
use crate::keys::hex;
use crate::row::{Fields, array, duration_arg, stored_time, string};

#[async_trait]
impl MembershipStore for RedisStore {
    async fn register_worker(&self, worker: &WorkerRegistration) -> Result<WorkerRecord> {
        let mut call = self.call(&self.inner.scripts.worker_register);
        call.arg(worker.id.to_string())
            .arg(&worker.host)
            .arg(worker.pid)
            .arg(worker.concurrency)
            .arg(&worker.version)
            .arg(&worker.queues);
        let fields = Fields::parse(self.invoke(&call).await?)?
            .ok_or_else(|| internal("a registered worker vanished"))?;
        worker_record(&fields)
    }

    async fn heartbeat_worker(
        &self,
        worker: WorkerId,
        leases: &[LeaseRef],
        lease_ttl: Duration,
    ) -> Result<WorkerHeartbeat> {
        let mut call = self.call(&self.inner.scripts.worker_heartbeat);
        call.arg(worker.to_string()).arg(duration_arg(lease_ttl));
        for lease in leases {
            call.arg(hex(lease.job_id.uuid())).arg(hex(lease.token.uuid()));
        }
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(state), Some(codes)) = (reply.next(), reply.next()) else {
            return Err(internal("a worker heartbeat answer lacks its parts"));
        };
        let state = worker_state(&string(state)?)?;
        Ok(WorkerHeartbeat { state, leases: heartbeat_report(leases, array(codes)?)? })
    }

    async fn drain_worker(&self, worker: WorkerId) -> Result<()> {
        let mut call = self.call(&self.inner.scripts.worker_drain);
        call.arg(worker.to_string());
        self.invoke(&call).await.map(drop)
    }

    async fn deregister_worker(&self, worker: WorkerId) -> Result<()> {
        let mut call = self.call(&self.inner.scripts.worker_deregister);
        call.arg(worker.to_string());
        self.invoke(&call).await.map(drop)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let call = self.call(&self.inner.scripts.worker_list);
        let hashes = array(self.invoke(&call).await?)?;
        hashes
            .into_iter()
            .map(|hash| Fields::parse(hash)?.ok_or_else(|| internal("a listed worker vanished")))
            .map(|fields| fields.and_then(|fields| worker_record(&fields)))
            .collect()
    }

    /// One script: the fence, the gone workers and the reclaims (see `lua/sweep_workers.lua`).
    /// It takes at most 16 DLQ entry IDs (as a rescue call does); when
    /// more reclaimed jobs die than that, the sweep stops there (its report says what it did)
    /// and the next sweep goes on: a sweep is one leader write, so it is not called again here.
    async fn sweep_workers(
        &self,
        term: &Leader,
        timeout: Duration,
        limit: usize,
    ) -> Result<SweepReport> {
        let mut call = self.call(&self.inner.scripts.sweep_workers);
        call.arg(&term.name)
            .arg(term.term)
            .arg(term.holder.to_string())
            .arg(duration_arg(timeout))
            .arg(limit)
            .arg(LEADER_WRITES_KEPT);
        dlq_id_args(&mut call, limit);
        let mut reply = array(self.invoke(&call).await?)?.into_iter();
        let (Some(gone), Some(items)) = (reply.next(), reply.next()) else {
            return Err(internal("a sweep answer lacks its parts"));
        };
        let gone = array(gone)?
            .into_iter()
            .map(|id| worker_id(&string(id)?))
            .collect::<Result<Vec<_>>>()?;
        let mut rescue = RescueReport::default();
        let (found, more) = note_rescues(array(items)?, &mut rescue)?;
        if more {
            tracing::debug!(found, "a sweep ran out of DLQ entry IDs; the next sweep goes on");
        }
        Ok(SweepReport { gone, rescue })
    }
}

#[async_trait]
impl LeadershipStore for RedisStore {
    async fn acquire_leadership(
        &self,
        name: &str,
        holder: WorkerId,
        ttl: Duration,
    ) -> Result<Option<Leader>> {
        let mut call = self.call(&self.inner.scripts.leader_acquire);
        call.arg(name).arg(holder.to_string()).arg(duration_arg(ttl));
        leader_reply(name, self.invoke(&call).await?)
    }

    async fn renew_leadership(&self, term: &Leader, ttl: Duration) -> Result<Option<Leader>> {
        let mut call = self.call(&self.inner.scripts.leader_renew);
        call.arg(&term.name).arg(term.term).arg(term.holder.to_string()).arg(duration_arg(ttl));
        leader_reply(&term.name, self.invoke(&call).await?)
    }

    async fn resign_leadership(&self, term: &Leader) -> Result<()> {
        let mut call = self.call(&self.inner.scripts.leader_resign);
        call.arg(&term.name).arg(term.term).arg(term.holder.to_string());
        self.invoke(&call).await.map(drop)
    }

    async fn take_leadership(&self, name: &str, holder: WorkerId, ttl: Duration) -> Result<Leader> {
        let mut call = self.call(&self.inner.scripts.leader_take);
        call.arg(name).arg(holder.to_string()).arg(duration_arg(ttl));
        leader_reply(name, self.invoke(&call).await?)?
            .ok_or_else(|| internal("a taken leadership vanished"))
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        let reply = self.query(redis::cmd("HGETALL").arg(self.leader_key(name))).await?;
        leader_reply(name, reply)
    }

    async fn leader_writes(&self, name: &str, limit: usize) -> Result<Vec<LeaderWrite>> {
        let limit = limit.min(LEADER_WRITES_KEPT);
        // `LRANGE key -0 -1` would be the whole list: no write asked for, none read.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = -i64::try_from(limit).map_err(|_| internal("a limit past i64"))?;
        let key = self.leader_writes_key(name);
        let items: Vec<String> =
            self.query(redis::cmd("LRANGE").arg(key).arg(from).arg(-1)).await?;
        items.iter().map(|json| leader_write(name, json)).collect()
    }
}

/// A worker ID as the registry (and a job's `lease_owner`) spells it.
fn worker_id(text: &str) -> Result<WorkerId> {
    WorkerId::from_str(text).map_err(|_| internal(format!("bad worker ID {text:?}")))
}

/// A worker state as the scripts write it.
fn worker_state(text: &str) -> Result<WorkerState> {
    WorkerState::parse(text).ok_or_else(|| internal(format!("unknown worker state {text:?}")))
}

/// A worker from its hash (see `lua/worker_register.lua`).
fn worker_record(f: &Fields) -> Result<WorkerRecord> {
    let queues = f.str("queues")?;
    let queues: Vec<String> = serde_json::from_str(queues)
        .map_err(|e| internal(format!("corrupt worker queues {queues:?}: {e}")))?;
    let registration = WorkerRegistration {
        id: worker_id(f.str("id")?)?,
        host: f.str("host")?.to_owned(),
        pid: f.num("pid")?,
        queues,
        concurrency: f.num("concurrency")?,
        version: f.str("version")?.to_owned(),
    };
    Ok(WorkerRecord {
        registration,
        state: worker_state(f.str("state")?)?,
        started_at: f.time("started_at")?,
        last_seen: f.time("last_seen")?,
    })
}

/// Leadership `name` from its hash as a script or a plain read answers it (`HGETALL`); `None`
/// for no hash (never held, or a script's refusal to change it: `{}`).
fn leader_reply(name: &str, reply: Value) -> Result<Option<Leader>> {
    let Some(f) = Fields::parse(reply)? else { return Ok(None) };
    Ok(Some(Leader {
        name: name.to_owned(),
        holder: worker_id(f.str("holder")?)?,
        term: f.num("term")?,
        elected_at: f.time("elected_at")?,
        expires_at: f.time("expires_at")?,
    }))
}

/// One stored leader write (JSON written by `record_leader_write` in `lua/cluster.lua`).
#[derive(Deserialize)]
struct StoredWrite {
    term: u64,
    at: i64,
    action: String,
}

/// A leader write of leadership `name` from its stored JSON.
fn leader_write(name: &str, json: &str) -> Result<LeaderWrite> {
    let stored: StoredWrite = serde_json::from_str(json)
        .map_err(|e| internal(format!("corrupt leader write {json:?}: {e}")))?;
    Ok(LeaderWrite {
        name: name.to_owned(),
        term: stored.term,
        at: stored_time(stored.at),
        action: stored.action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn hash(pairs: &[(&str, &str)]) -> Value {
        Value::Array(pairs.iter().flat_map(|(k, v)| [text(k), text(v)]).collect())
    }

    #[test]
    fn a_worker_reads_what_the_scripts_write() {
        let id = WorkerId::new();
        let id_text = id.to_string();
        let fields = [
            ("id", id_text.as_str()),
            ("host", "h"),
            ("pid", "7"),
            ("queues", r#"["a","b\/c"]"#),
            ("concurrency", "3"),
            ("version", "1"),
            ("state", "draining"),
            ("started_at", "10"),
            ("last_seen", "20"),
        ];
        let record = worker_record(&Fields::parse(hash(&fields)).unwrap().unwrap()).unwrap();
        assert_eq!(record.registration.id, id);
        assert_eq!(record.registration.queues, ["a", "b/c"], "cjson escapes '/'");
        assert_eq!((record.registration.pid, record.state), (7, WorkerState::Draining));
        assert_eq!(record.last_seen, dispatch_core::Timestamp::from_unix_micros(20));
        let mut bad = fields;
        bad[6] = ("state", "lost");
        assert!(worker_record(&Fields::parse(hash(&bad)).unwrap().unwrap()).is_err());
    }

    #[test]
    fn leaders_and_their_writes_read_what_the_scripts_write() {
        assert_eq!(leader_reply("x", Value::Array(Vec::new())).unwrap(), None, "refused");
        let holder = WorkerId::new().to_string();
        let fields =
            [("holder", holder.as_str()), ("term", "4"), ("elected_at", "1"), ("expires_at", "9")];
        let leader = leader_reply("x", hash(&fields)).unwrap().unwrap();
        assert_eq!(
            (leader.name.as_str(), leader.term, leader.holder.to_string()),
            ("x", 4, holder)
        );
        let write = leader_write("x", r#"{"term":4,"at":1893456000000001,"action":"sweep"}"#);
        let write = write.unwrap();
        assert_eq!((write.term, write.action.as_str()), (4, "sweep"));
        assert_eq!(write.at, dispatch_core::Timestamp::from_unix_micros(1_893_456_000_000_001));
        assert!(leader_write("x", "{}").is_err());
    }
}
