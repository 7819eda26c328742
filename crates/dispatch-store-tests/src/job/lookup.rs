//! Lookups: `get_job`, keyset pagination and filters of `list_jobs`, `count_jobs`, and the
//! times the store stamps with its own clock.

use std::collections::{BTreeMap, HashSet};

use std::time::Duration;

use dispatch_core::{
    Failure, FailureKind, FinishResult, JobFilter, JobId, JobState, NewJob, Outcome, PageRequest,
    QueueCount, Replay, RunAt, Scope, UniqueKey,
};

use dispatch_core::Clock as _;
use dispatch_core::ReplayOptions;

use crate::TestContext;
use crate::support::{failure, ids, job_in, lease, request_in, secs};

/// Keyset pagination over 1,000 jobs with pages of 37: each job exactly once, in ascending ID
/// order, full pages until the last, `next` `None` on the last.
pub async fn list_jobs_keyset_pagination(ctx: TestContext) {
    let mut all = Vec::new();
    for batch in 0..10 {
        let jobs: Vec<NewJob> =
            (0..100).map(|i| job_in(&format!("n{}", (batch + i) % 3), "q")).collect();
        all.extend(ctx.enqueue(jobs).await);
    }
    all.sort();

    let mut seen: Vec<JobId> = Vec::new();
    let mut page = PageRequest::first(37);
    let mut pages = 0;
    loop {
        let got = ctx.store.list_jobs(&JobFilter::default(), &page).await.expect("list_jobs");
        pages += 1;
        assert!(got.items.len() <= 37, "page {pages} has {} items", got.items.len());
        seen.extend(got.items.iter().map(|j| j.id));
        match &got.next {
            Some(next) => {
                assert_eq!(got.items.len(), 37, "page {pages} is short but not the last");
                assert_eq!(Some(next), got.items.last().map(|j| &j.id), "cursor is the last ID");
                page = PageRequest { after: Some(*next), limit: 37 };
            }
            None => break,
        }
        assert!(pages <= 100, "pagination does not end");
    }
    assert_eq!(pages, 28, "27 full pages and one of 1");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ascending ID order, no repeats");
    assert_eq!(seen, all, "every job exactly once");
}

/// When the last page is exactly full, its `next` is `None`; a page after the last ID is empty.
pub async fn list_jobs_full_last_page_has_no_next(ctx: TestContext) {
    let mut ids = ctx.enqueue((0..8).map(|_| job_in("paged", "q")).collect()).await;
    ids.sort();
    let filter = JobFilter::default();
    let first = ctx.store.list_jobs(&filter, &PageRequest::first(4)).await.expect("list_jobs");
    assert_eq!(first.items.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..4]);
    assert_eq!(first.next, Some(ids[3]));
    let second = PageRequest { after: first.next, limit: 4 };
    let second = ctx.store.list_jobs(&filter, &second).await.expect("list_jobs");
    assert_eq!(second.items.iter().map(|j| j.id).collect::<Vec<_>>(), ids[4..]);
    assert_eq!(second.next, None, "a full last page has no next");
    let after_last = PageRequest { after: Some(ids[7]), limit: 4 };
    let empty = ctx.store.list_jobs(&filter, &after_last).await.expect("list_jobs");
    assert!(empty.items.is_empty());
    assert_eq!(empty.next, None);

    let whole = ctx.store.list_jobs(&filter, &PageRequest::first(100)).await.expect("list_jobs");
    assert_eq!(whole.items.len(), 8);
    assert_eq!(whole.next, None);
}

/// A page limit of 0 is treated as 1 (`PageRequest::effective_limit`).
pub async fn list_jobs_page_limit_is_at_least_one(ctx: TestContext) {
    let mut ids = ctx.enqueue((0..3).map(|_| job_in("tiny", "q")).collect()).await;
    ids.sort();
    let page = ctx
        .store
        .list_jobs(&JobFilter::default(), &PageRequest::first(0))
        .await
        .expect("list_jobs");
    assert_eq!(page.items.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0]]);
    assert_eq!(page.next, Some(ids[0]));
}

/// Jobs of several queues, names and states, and what we expect of each.
struct Mix {
    jobs: Vec<(JobId, String, String, JobState)>,
}

impl Mix {
    async fn build(ctx: &TestContext) -> Self {
        let mut jobs = Vec::new();
        let queues = ["alpha", "beta", "gamma"];
        let names = ["send", "sync"];
        let mut batch = Vec::new();
        for i in 0..60 {
            let new = job_in(names[i % 2], queues[i % 3]);
            jobs.push((new.id, new.name.clone(), new.queue.clone(), JobState::Available));
            batch.push(new);
        }
        ctx.enqueue(batch).await;
        let mut mix = Self { jobs };
        // From each queue and name: run some, complete some, fail some, cancel some.
        for queue in queues {
            for name in names {
                let claimed = ctx.claim_with(&request_in(&[queue], &[name], 6)).await;
                assert_eq!(claimed.len(), 6, "{queue}/{name}");
                for (i, c) in claimed.iter().enumerate() {
                    let state = match i {
                        0 | 1 => {
                            ctx.finish(lease(c), Outcome::Complete).await;
                            JobState::Completed
                        }
                        2 => {
                            ctx.finish(lease(c), Outcome::Fail { failure: failure("x") }).await;
                            JobState::Dead
                        }
                        3 => {
                            ctx.finish(lease(c), Outcome::Cancel).await;
                            JobState::Cancelled
                        }
                        _ => JobState::Running,
                    };
                    mix.set(c.job.id, state);
                }
            }
        }
        let available = mix.jobs.iter().find(|j| j.3 == JobState::Available).map(|j| j.0);
        let available = available.expect("an available job is left");
        ctx.store.request_job_cancel(available).await.expect("cancel");
        mix.set(available, JobState::Cancelled);
        mix
    }

    fn set(&mut self, id: JobId, state: JobState) {
        let job = self.jobs.iter_mut().find(|j| j.0 == id).expect("a job of the mix");
        job.3 = state;
    }

    fn matching(&self, filter: &JobFilter) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, name, queue, state)| {
                filter.state.is_none_or(|s| s == *state)
                    && filter.queue.as_ref().is_none_or(|q| q == queue)
                    && filter.name.as_ref().is_none_or(|n| n == name)
            })
            .map(|j| j.0)
            .collect();
        ids.sort();
        ids
    }
}

/// `list_jobs` filters by state, queue and name, alone and together, and every item matches.
pub async fn list_jobs_filters(ctx: TestContext) {
    let mix = Mix::build(&ctx).await;
    let mut filters = vec![JobFilter::default()];
    for state in JobState::ALL {
        filters.push(JobFilter { state: Some(state), ..JobFilter::default() });
        filters.push(JobFilter {
            state: Some(state),
            queue: Some("beta".into()),
            name: Some("sync".into()),
        });
    }
    for queue in ["alpha", "beta", "gamma", "nowhere"] {
        filters.push(JobFilter { queue: Some(queue.into()), ..JobFilter::default() });
    }
    for name in ["send", "sync", "nobody"] {
        filters.push(JobFilter { name: Some(name.into()), ..JobFilter::default() });
        filters.push(JobFilter {
            name: Some(name.into()),
            queue: Some("gamma".into()),
            ..JobFilter::default()
        });
    }
    for filter in filters {
        let got = ctx.list_all(&filter).await;
        for job in &got {
            assert!(filter.state.is_none_or(|s| s == job.state), "{filter:?} gave {job:?}");
            assert!(filter.queue.as_ref().is_none_or(|q| *q == job.queue), "{filter:?}");
            assert!(filter.name.as_ref().is_none_or(|n| *n == job.name), "{filter:?}");
        }
        let got: Vec<JobId> = got.iter().map(|j| j.id).collect();
        assert_eq!(got, mix.matching(&filter), "{filter:?}");
    }
    // Filters and pagination together.
    let filter = JobFilter { state: Some(JobState::Available), ..JobFilter::default() };
    let expected = mix.matching(&filter);
    let mut seen = Vec::new();
    let mut page = PageRequest::first(5);
    loop {
        let got = ctx.store.list_jobs(&filter, &page).await.expect("list_jobs");
        seen.extend(got.items.iter().map(|j| j.id));
        match PageRequest::next_of(&got, 5) {
            Some(next) => page = next,
            None => break,
        }
    }
    assert_eq!(seen, expected, "paged filter");
}

/// `count_jobs` gives the number per queue and state, leaves out empty pairs and is sorted by
/// queue, then state.
pub async fn count_jobs_per_queue_and_state(ctx: TestContext) {
    assert!(ctx.store.count_jobs().await.expect("count_jobs").is_empty(), "an empty store");
    let mix = Mix::build(&ctx).await;
    let mut expected: BTreeMap<(String, JobState), u64> = BTreeMap::new();
    for (_, _, queue, state) in &mix.jobs {
        *expected.entry((queue.clone(), *state)).or_default() += 1;
    }
    let expected: Vec<QueueCount> = expected
        .into_iter()
        .map(|((queue, state), count)| QueueCount { queue, state, count })
        .collect();
    assert_eq!(ctx.store.count_jobs().await.expect("count_jobs"), expected);
    let states: HashSet<JobState> = expected.iter().map(|c| c.state).collect();
    assert_eq!(states.len(), 5, "the mix covers every state");
}

/// Every field of an enqueued job comes back from `get_job` as given, with the store's
/// bookkeeping at its start values.
pub async fn get_job_round_trips_every_field(ctx: TestContext) {
    ctx.clock.advance(secs(5));
    let now = ctx.clock.now();
    let run_at = now + secs(90);
    let new = NewJob {
        id: JobId::new(),
        name: "emails.send_welcome".into(),
        queue: "mail-high".into(),
        payload: vec![0, 1, 2, 255, 254, b'{', b'"'],
        priority: -42,
        run_at: RunAt::At(run_at),
        max_attempts: 7,
        timeout: Some(secs(12) + std::time::Duration::from_micros(345)),
        unique: Some(UniqueKey { key: "welcome:42".into(), window: Some(secs(600)) }),
        scope: Scope::new("shop", "acme"),
        concurrency: Some(dispatch_core::ConcurrencyKey::new("customer:42", 2)),
    };
    let id = ctx.enqueue_one(new.clone()).await;
    let job = ctx.job(id).await;
    assert_eq!(job.id, new.id);
    assert_eq!(job.name, new.name);
    assert_eq!(job.queue, new.queue);
    assert_eq!(job.payload, new.payload);
    assert_eq!(job.priority, new.priority);
    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.max_attempts, 7);
    assert_eq!(job.timeout, new.timeout);
    assert_eq!(job.run_at, run_at);
    assert_eq!(job.created_at, now);
    assert_eq!(job.finished_at, None);
    assert_eq!(job.unique_key.as_deref(), Some("welcome:42"));
    assert_eq!(job.scope, new.scope);
    assert_eq!(job.lease, None);
    assert!(!job.cancel_requested);
    assert!(job.errors.is_empty());
    assert_eq!(job.dlq_id, None);
    assert_eq!(job.concurrency, new.concurrency);
    assert_eq!(job.progress, None);

    let listed = ctx.list_all(&JobFilter::default()).await;
    assert_eq!(listed, vec![job], "list_jobs returns the same record");
}

/// `get_job` of an unknown ID is `None`, not an error.
pub async fn get_job_unknown_is_none(ctx: TestContext) {
    ctx.enqueue_one(job_in("present", "q")).await;
    assert_eq!(ctx.store.get_job(JobId::new()).await.expect("get_job"), None);
}

/// Times come from the store's clock: `created_at` is its now at enqueue, `RunAt::Now` is now,
/// `RunAt::After(d)` is now + d, and leases expire at claim time + ttl.
pub async fn store_clock_stamps_times(ctx: TestContext) {
    let t0 = ctx.clock.now();
    let mut after = job_in("clocked", "q");
    after.run_at = RunAt::After(secs(90));
    let now_job = job_in("clocked", "q");
    let ids = ctx.enqueue(vec![after, now_job]).await;
    let (after_id, now_id) = (ids[0], ids[1]);
    assert_eq!(ctx.job(after_id).await.created_at, t0);
    assert_eq!(ctx.job(after_id).await.run_at, t0 + secs(90));
    assert_eq!(ctx.job(now_id).await.run_at, t0);

    ctx.clock.advance(secs(1000));
    let t1 = ctx.clock.now();
    let mut later = job_in("clocked", "q");
    later.run_at = RunAt::After(secs(5));
    let later_id = ctx.enqueue_one(later).await;
    let later = ctx.job(later_id).await;
    assert_eq!((later.created_at, later.run_at), (t1, t1 + secs(5)));
    assert_eq!(ctx.job(after_id).await.run_at, t0 + secs(90), "resolved once, at enqueue");

    let claimed = ctx.claim_with(&request_in(&["q"], &["clocked"], 10)).await;
    assert_eq!(claimed.len(), 2, "the two due jobs");
    assert!(claimed.iter().all(|c| c.lease.expires_at == t1 + crate::support::TTL));

    // A clock set back to the past is obeyed too: the store has no clock of its own.
    ctx.clock.set(t0 - secs(86_400));
    let past = ctx.enqueue_one(job_in("clocked", "q")).await;
    assert_eq!(ctx.job(past).await.created_at, t0 - secs(86_400));
}

/// Keyset pages stay exact while jobs are added and leave the filter between pages: ascending
/// IDs across pages, no job twice, every item matching the filter, and every job that matched
/// throughout returned.
pub async fn list_jobs_stable_while_rows_change(ctx: TestContext) {
    let original = ctx.enqueue((0..100).map(|_| job_in("churn", "q")).collect()).await;
    let filter = JobFilter { state: Some(JobState::Available), ..JobFilter::default() };
    let mut seen: Vec<JobId> = Vec::new();
    let mut page = PageRequest::first(10);
    let mut pages = 0;
    loop {
        let got = ctx.store.list_jobs(&filter, &page).await.expect("list_jobs");
        assert!(got.items.iter().all(|j| j.state == JobState::Available), "filter holds");
        seen.extend(got.items.iter().map(|j| j.id));
        // Between pages: new jobs arrive and the oldest available ones are claimed.
        ctx.enqueue((0..3).map(|_| job_in("churn", "q")).collect()).await;
        ctx.claim_with(&request_in(&["q"], &["churn"], 2)).await;
        match PageRequest::next_of(&got, 10) {
            Some(next) => page = next,
            None => break,
        }
        pages += 1;
        assert!(pages <= 100, "pagination does not end");
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ascending across pages, no job twice");
    let seen: HashSet<JobId> = seen.into_iter().collect();
    let original: HashSet<JobId> = original.into_iter().collect();
    for job in ctx.list_all(&filter).await {
        if original.contains(&job.id) {
            assert!(seen.contains(&job.id), "job {} was available throughout but skipped", job.id);
        }
    }
}

/// Values at the edges come back exactly as given, on the job, through its claim, in its DLQ
/// entry and in its replay: an empty payload, NUL and non-UTF-8 bytes, each half of a scope
/// alone, a timeout of one microsecond and of a month, non-ASCII names and an error message
/// with quotes, backslashes and newlines.
pub async fn get_job_round_trips_edge_values(ctx: TestContext) {
    let (name, queue) = ("résumé.envoyer_📧", "cola-ñ");
    let message = "échec 💥 \"quoted\" \\ {} \n second line\t";
    let cases = [
        (Vec::new(), Scope::default(), None),
        (vec![0], Scope { app: Some("app".into()), tenant: None }, Some(Duration::from_micros(1))),
        (
            vec![0xff, 0xfe, 0, 0x80],
            Scope { app: None, tenant: Some("tenant".into()) },
            Some(secs(30 * 86_400)),
        ),
        (b"null".to_vec(), Scope::new("ぷ", "ünï"), Some(secs(1))),
    ];
    let request = request_in(&[queue], &[name], 1);
    for (payload, scope, timeout) in cases {
        let mut new = job_in(name, queue);
        new.payload = payload;
        new.scope = scope;
        new.timeout = timeout;
        new.max_attempts = 1;
        let what = format!("{:?} {:?} {:?}", new.payload, new.scope, new.timeout);
        let expected = (
            new.name.clone(),
            new.queue.clone(),
            new.payload.clone(),
            new.scope.clone(),
            new.timeout,
        );
        let id = ctx.enqueue_one(new).await;

        let stored = ctx.job(id).await;
        let got = (stored.name, stored.queue, stored.payload, stored.scope, stored.timeout);
        assert_eq!(got, expected, "stored: {what}");
        let claimed = ctx.claim_with(&request).await;
        assert_eq!(ids(&claimed), HashSet::from([id]), "{what}");
        let c = &claimed[0].job;
        let got = (c.name.clone(), c.queue.clone(), c.payload.clone(), c.scope.clone(), c.timeout);
        assert_eq!(got, expected, "claimed: {what}");

        let outcome = Outcome::Fail { failure: Failure::new(FailureKind::Decode, message) };
        let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
            ctx.finish(lease(&claimed[0]), outcome).await
        else {
            panic!("a failed one-attempt job is dead: {what}");
        };
        assert_eq!(ctx.job(id).await.errors[0].message, message, "{what}");
        let e = ctx.dlq(dlq_id).await;
        let got = (e.name, e.queue, e.payload, e.scope, e.timeout);
        assert_eq!(got, expected, "DLQ entry: {what}");
        assert_eq!(e.errors[0].message, message, "DLQ entry: {what}");

        let replay =
            ctx.store.replay_dlq(dlq_id, &ReplayOptions::default()).await.expect("replay_dlq");
        let Replay::Replayed(copy) = replay else { panic!("first replay: {replay:?}") };
        let r = ctx.job(copy).await;
        assert_eq!((r.name, r.queue, r.payload, r.scope, r.timeout), expected, "replay: {what}");
        let claimed = ctx.claim_with(&request).await;
        assert_eq!(ids(&claimed), HashSet::from([copy]), "the replay is claimable: {what}");
        ctx.finish(lease(&claimed[0]), Outcome::Complete).await;
    }
}
