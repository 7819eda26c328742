//! Timing on the server's clock: a scheduled job, a retried job and a rescued job are each
//! claimed once they are due by the server's `TIME`, and not before. The stores read the
//! server's clock (no injected clock), so these tests wait real seconds, claiming in a loop.

use std::time::Duration;

use dispatch_core::{
    Failure, FailureKind, Finish, FinishResult, JobState, JobStore, Outcome, RunAt,
};

use crate::common::{claim_when_due, claimed_at, job_in, lease, request, server_time, store};
use crate::support::{self, ServerTest};

/// How long a due job may take to be claimed or rescued on a loaded machine.
const DUE: Duration = Duration::from_secs(30);
/// A lease long enough that it never runs out during a test.
const LONG: Duration = Duration::from_secs(300);

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_scheduled_job_is_not_claimed_before_its_time", |url| {
            Box::pin(a_scheduled_job_is_not_claimed_before_its_time(url))
        }),
        ("a_retried_job_is_claimed_again_after_its_backoff", |url| {
            Box::pin(a_retried_job_is_claimed_again_after_its_backoff(url))
        }),
        ("a_rescued_job_is_claimed_again", |url| Box::pin(a_rescued_job_is_claimed_again(url))),
        ("a_slow_answer_within_the_call_timeout_is_no_error", |url| {
            Box::pin(a_slow_answer_within_the_call_timeout_is_no_error(url))
        }),
    ]
}

async fn a_scheduled_job_is_not_claimed_before_its_time(url: String) {
    let store = store(&url).await;
    let mut new = job_in("later", "timing");
    new.run_at = RunAt::After(Duration::from_secs(2));
    let id = store.enqueue(vec![new]).await.expect("enqueue")[0].id();
    let job = store.get_job(id).await.expect("get_job").expect("the job");
    assert_eq!(
        job.run_at.duration_since(job.created_at),
        Duration::from_secs(2),
        "run-at by the server"
    );

    let claim = request("timing", "later", 1, LONG);
    let claimed = claim_when_due(&store, &claim, DUE).await;
    let now = server_time(&url).await;
    assert_eq!(claimed.job.id, id);
    assert!(claimed_at(&claimed, LONG) >= job.run_at, "claimed before its run-at: {claimed:?}");
    assert!(now >= job.run_at, "the server's clock says {now:?}, before {:?}", job.run_at);
}

async fn a_retried_job_is_claimed_again_after_its_backoff(url: String) {
    let store = store(&url).await;
    let mut new = job_in("flaky", "timing");
    new.max_attempts = 3;
    let id = store.enqueue(vec![new]).await.expect("enqueue")[0].id();
    let claim = request("timing", "flaky", 1, LONG);
    let first = claim_when_due(&store, &claim, DUE).await;
    let outcome = Outcome::Retry {
        failure: Failure::new(FailureKind::Error, "try again"),
        run_at: RunAt::After(Duration::from_secs(1)),
    };
    let results = store.finish(&[Finish { lease: lease(&first), outcome }]).await.expect("finish");
    assert!(
        matches!(results[..], [FinishResult::Applied { state: JobState::Available, .. }]),
        "{results:?}"
    );
    let retried = store.get_job(id).await.expect("get_job").expect("the job");
    assert!(retried.run_at > claimed_at(&first, LONG), "the backoff is ahead");

    let second = claim_when_due(&store, &claim, DUE).await;
    assert_eq!((second.job.id, second.job.attempt), (id, 2));
    assert!(claimed_at(&second, LONG) >= retried.run_at, "claimed during its backoff");
    assert!(server_time(&url).await >= retried.run_at);
}

async fn a_rescued_job_is_claimed_again(url: String) {
    const SHORT: Duration = Duration::from_secs(1);
    let store = store(&url).await;
    let id = store.enqueue(vec![job_in("stuck", "timing")]).await.expect("enqueue")[0].id();
    let first = claim_when_due(&store, &request("timing", "stuck", 1, SHORT), DUE).await;
    let rescued = support::eventually(DUE, || async {
        let report = store.rescue_expired(100).await.expect("rescue_expired");
        report.rescued.contains(&id).then_some(())
    })
    .await;
    assert!(rescued.is_some(), "the expired lease was not rescued within {DUE:?}");
    assert!(server_time(&url).await >= first.lease.expires_at, "rescued before the lease ran out");

    let second = claim_when_due(&store, &request("timing", "stuck", 1, LONG), DUE).await;
    assert_eq!((second.job.id, second.job.attempt), (id, 2));
    assert!(claimed_at(&second, LONG) >= first.lease.expires_at);
    let kinds: Vec<FailureKind> = second.job.errors.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [FailureKind::LeaseExpired]);
}

/// A call that waits behind a busy server (here a script of another client spinning for
/// 1.5 s) answers within the store's call timeout (10 s), not as `Unavailable` after the
/// driver's own response timeout (500 ms by default, which a loaded machine reaches).
async fn a_slow_answer_within_the_call_timeout_is_no_error(url: String) {
    use dispatch_store_redis::redis;
    let store = store(&url).await;
    store.count_jobs().await.expect("a first call loads the scripts");
    let client = redis::Client::open(url.as_str()).expect("url");
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let spin = "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
                repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 1500000 \
                return 1";
    // The scenario happened only when the call waited behind the spin for longer than the
    // driver's default response timeout; on a loaded machine the spin may start late, so a
    // call that did not wait proves nothing and the scenario is tried again.
    for _ in 0..10 {
        let busy = client.get_multiplexed_async_connection_with_config(&patient).await;
        let mut busy = busy.expect("connect");
        let blocking = tokio::spawn(async move {
            redis::cmd("EVAL").arg(spin).arg(0).query_async::<i64>(&mut busy).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = tokio::time::Instant::now();
        let counts = store.count_jobs().await;
        let waited = started.elapsed();
        assert!(counts.is_ok(), "a slow answer failed the call: {counts:?}");
        assert_eq!(blocking.await.expect("task").expect("the spin ran"), 1);
        if waited > Duration::from_millis(600) {
            return;
        }
    }
    panic!("the call never waited behind the spinning script: the scenario did not happen");
}
