//! Finish (release included) and rescue: the transitions out of `running`, one script call per
//! batch (`lua/finish.lua`, `lua/rescue.lua`), each writing a dying job's DLQ entry in the same
//! call. The DLQ entry IDs are made here and passed in, since only jobs that may die need one.

use std::str::FromStr;

use dispatch_core::{DlqId, Finish, FinishResult, JobId, JobState, RescueReport, Result};
use redis::{ScriptInvocation, Value};

use crate::RedisStore;
use crate::error::internal;
use crate::keys::hex;
use crate::row::{array, int, parse_uuid, run_at_args, string};

/// The most jobs one rescue call takes; a larger limit is worked through in several calls.
const RESCUE_CHUNK: usize = 1000;

/// The DLQ entry IDs one rescue call (or sweep) takes: enough for the few rescued jobs that
/// die; a rescue call that runs out stops there and is called again (a sweep stops there, and
/// the next sweep goes on).
pub(crate) const RESCUE_DLQ_IDS: usize = 16;

impl RedisStore {
    pub(crate) async fn finish_jobs(&self, finishes: &[Finish]) -> Result<Vec<FinishResult>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.call(&self.inner.scripts.finish);
        call.arg(finishes.len());
        for finish in finishes {
            finish_args(&mut call, finish);
        }
        let reply = array(self.invoke(&call).await?)?;
        if reply.len() != finishes.len() {
            return Err(internal(format!(
                "finish answered {} of {} items",
                reply.len(),
                finishes.len()
            )));
        }
        reply.into_iter().map(finish_result).collect()
    }

    /// Rescue up to `limit` expired leases, [`RESCUE_CHUNK`] per script call, until a call
    /// finds fewer than it could take.
    pub(crate) async fn rescue_leases(&self, limit: usize) -> Result<RescueReport> {
        let mut report = RescueReport::default();
        let mut left = limit;
        while left > 0 {
            let chunk = left.min(RESCUE_CHUNK);
            let (found, more) = self.rescue_chunk(chunk, &mut report).await?;
            left -= found;
            if !more && found < chunk {
                break;
            }
        }
        Ok(report)
    }

    /// One rescue call of at most `chunk` jobs, noted in `report`: how many it rescued, and
    /// whether it stopped early for want of DLQ entry IDs.
    async fn rescue_chunk(&self, chunk: usize, report: &mut RescueReport) -> Result<(usize, bool)> {
        let mut call = self.call(&self.inner.scripts.rescue);
        call.arg(chunk);
        dlq_id_args(&mut call, chunk);
        note_rescues(array(self.invoke(&call).await?)?, report)
    }
}

/// Fresh DLQ entry IDs as arguments, for a call reclaiming up to `jobs` jobs: at most
/// [`RESCUE_DLQ_IDS`].
pub(crate) fn dlq_id_args(call: &mut ScriptInvocation<'_>, jobs: usize) {
    for _ in 0..jobs.min(RESCUE_DLQ_IDS) {
        call.arg(hex(DlqId::new().uuid()));
    }
}

/// The items of a rescue's (or a sweep's) answer into `report`: how many jobs they name, and
/// whether the script stopped early for want of DLQ entry IDs (a last item `{0}`).
pub(crate) fn note_rescues(
    mut items: Vec<Value>,
    report: &mut RescueReport,
) -> Result<(usize, bool)> {
    let more =
        items.last().is_some_and(|last| matches!(last, Value::Array(parts) if parts.len() == 1));
    if more {
        items.pop();
    }
    let found = items.len();
    for item in items {
        note_rescue(item, report)?;
    }
    Ok((found, more))
}

/// The 8 arguments of one finish (see `lua/finish.lua`).
fn finish_args(call: &mut ScriptInvocation<'_>, finish: &Finish) {
    let failure = finish.outcome.failure();
    let (kind, value) = run_at_args(finish.outcome.run_at().unwrap_or_default());
    let outcome = finish.outcome.as_str();
    call.arg(hex(finish.lease.job_id.uuid())).arg(hex(finish.lease.token.uuid())).arg(outcome);
    match failure {
        Some(failure) => call.arg(failure.kind.as_str()).arg(&failure.message),
        None => call.arg("").arg(""),
    };
    call.arg(kind).arg(value);
    // Only a failure can kill the job, so only a failure needs an entry ID.
    match failure {
        Some(_) => call.arg(hex(DlqId::new().uuid())),
        None => call.arg(""),
    };
}

/// One item of finish's answer: `{1, state, dlq id or ''}`, `{2}` or `{3}`.
fn finish_result(item: Value) -> Result<FinishResult> {
    let mut parts = array(item)?.into_iter();
    let code = int(parts.next().ok_or_else(|| internal("an empty finish answer"))?)?;
    match code {
        1 => {
            let (Some(state), Some(dlq)) = (parts.next(), parts.next()) else {
                return Err(internal("an applied finish answer lacks its parts"));
            };
            let state = string(state)?;
            let state = JobState::from_str(&state)
                .map_err(|_| internal(format!("unknown job state {state:?}")))?;
            let dlq = string(dlq)?;
            let dlq_id = match dlq.as_str() {
                "" => None,
                hex => Some(DlqId::from_uuid(parse_uuid(hex)?)),
            };
            Ok(FinishResult::Applied { state, dlq_id })
        }
        2 => Ok(FinishResult::AlreadyApplied),
        3 => Ok(FinishResult::LeaseLost),
        other => Err(internal(format!("unknown finish answer {other}"))),
    }
}

/// One item of rescue's answer into `report`: `{1, id}` available again, `{2, id, dlq id}`
/// promoted, `{3, id}` cancelled.
fn note_rescue(item: Value, report: &mut RescueReport) -> Result<()> {
    let mut parts = array(item)?.into_iter();
    let (Some(code), Some(id)) = (parts.next(), parts.next()) else {
        return Err(internal("a rescue answer lacks its parts"));
    };
    let id = JobId::from_uuid(parse_uuid(&string(id)?)?);
    match int(code)? {
        1 => report.rescued.push(id),
        2 => {
            let dlq = parts.next().ok_or_else(|| internal("a promotion lacks its entry"))?;
            report.promoted.push((id, DlqId::from_uuid(parse_uuid(&string(dlq)?)?)));
        }
        3 => report.cancelled.push(id),
        other => return Err(internal(format!("unknown rescue answer {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn answer(parts: Vec<Value>) -> Value {
        Value::Array(parts)
    }

    #[test]
    fn finish_answers() {
        let dlq = DlqId::new();
        let dead = answer(vec![Value::Int(1), text("dead"), text(&hex(dlq.uuid()))]);
        let applied = FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq) };
        assert_eq!(finish_result(dead).unwrap(), applied);
        let done = answer(vec![Value::Int(1), text("completed"), text("")]);
        let applied = FinishResult::Applied { state: JobState::Completed, dlq_id: None };
        assert_eq!(finish_result(done).unwrap(), applied);
        let repeat = finish_result(answer(vec![Value::Int(2)])).unwrap();
        assert_eq!(repeat, FinishResult::AlreadyApplied);
        let lost = finish_result(answer(vec![Value::Int(3)])).unwrap();
        assert_eq!(lost, FinishResult::LeaseLost);
        assert!(finish_result(answer(vec![Value::Int(1), text("gone"), text("")])).is_err());
    }

    #[test]
    fn rescue_answers_fill_the_report() {
        let (a, b, c, dlq) = (JobId::new(), JobId::new(), JobId::new(), DlqId::new());
        let mut report = RescueReport::default();
        let items = [
            vec![Value::Int(1), text(&hex(a.uuid()))],
            vec![Value::Int(2), text(&hex(b.uuid())), text(&hex(dlq.uuid()))],
            vec![Value::Int(3), text(&hex(c.uuid()))],
        ];
        for item in items {
            note_rescue(answer(item), &mut report).unwrap();
        }
        let expected =
            RescueReport { rescued: vec![a], promoted: vec![(b, dlq)], cancelled: vec![c] };
        assert_eq!(report, expected);
        let no_entry = answer(vec![Value::Int(2), text(&hex(a.uuid()))]);
        assert!(note_rescue(no_entry, &mut report).is_err());
    }
}
