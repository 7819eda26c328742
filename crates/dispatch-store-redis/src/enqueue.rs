//! Enqueue: validation here, then one script call for the whole batch (`lua/enqueue.lua`:
//! retried and reused IDs, unique keys, placing each job in its ready or scheduled set).

use dispatch_core::{Enqueued, JobId, NewJob, Result};
use redis::ScriptInvocation;

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{array, duration_arg, int, option_arg, parse_uuid, run_at_args, string};

impl RedisStore {
    pub(crate) async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate(self.inner.max_payload_bytes)?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.call(&self.inner.scripts.enqueue);
        call.arg(jobs.len());
        for job in &jobs {
            job_args(&mut call, job);
        }
        let reply = array(self.invoke(&call).await?)?;
        if reply.len() != jobs.len() {
            return Err(internal(format!(
                "enqueue answered {} of {} jobs",
                reply.len(),
                jobs.len()
            )));
        }
        reply.into_iter().map(enqueued).collect()
    }
}

/// The 15 arguments of one job (see `lua/enqueue_jobs.lua`).
pub(crate) fn job_args(call: &mut ScriptInvocation<'_>, job: &NewJob) {
    let (kind, value) = run_at_args(job.run_at);
    call.arg(hex(job.id.uuid()))
        .arg(&job.name)
        .arg(&job.queue)
        .arg(&job.payload)
        .arg(job.priority)
        .arg(kind)
        .arg(value)
        .arg(job.max_attempts)
        .arg(job.timeout.map(|t| duration_arg(t).to_string()).unwrap_or_default());
    match &job.unique {
        Some(unique) => call
            .arg(&unique.key)
            .arg(unique.window.map(|w| duration_arg(w).to_string()).unwrap_or_default()),
        None => call.arg("").arg(""),
    };
    call.arg(option_arg(job.scope.app.as_deref())).arg(option_arg(job.scope.tenant.as_deref()));
    match &job.concurrency {
        Some(key) => call.arg(option_arg(Some(&key.key))).arg(key.limit),
        None => call.arg("-").arg(""),
    };
}

/// One item of the script's answer: `{1, id}` created, `{2, holder}` duplicate.
pub(crate) fn enqueued(item: redis::Value) -> Result<Enqueued> {
    let mut parts = array(item)?.into_iter();
    let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
        return Err(internal("an enqueue answer lacks its parts"));
    };
    let id = JobId::from_uuid(parse_uuid(&string(id)?)?);
    match int(kind)? {
        1 => Ok(Enqueued::Created(id)),
        2 => Ok(Enqueued::Duplicate(id)),
        other => Err(internal(format!("unknown enqueue answer {other}"))),
    }
}
