//! Tests of the DLQ calls an operator's tools stand on: filters by scope, failure time and
//! error text ([`DlqFilter::matches`] is the rule), counts per queue and job name, replay
//! options, bulk replay (each entry at most once, even from two callers at once) and purge in
//! bounded batches, oldest first, and paging over many entries.

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::{
    DlqCount, DlqFilter, DlqId, Finish, FinishResult, JobFilter, JobId, JobState, JobStore, NewJob,
    Outcome, PageRequest, ReplayOptions, Scope,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{failure, job_in, lease, request_in, retry, secs, share};

impl<S: JobStore + ?Sized> TestContext<S> {
    /// Enqueue `new` with one attempt (two when `first` is given: it fails with `first` and is
    /// retried at once), claim it and fail it with `message`: its DLQ entry.
    async fn die(&self, mut new: NewJob, first: Option<&str>, message: &str) -> DlqId {
        new.max_attempts = if first.is_some() { 2 } else { 1 };
        let (queue, name) = (new.queue.clone(), new.name.clone());
        self.enqueue_one(new).await;
        let request = request_in(&[&queue], &[&name], 1);
        if let Some(first) = first {
            let claimed = self.claim_with(&request).await.remove(0);
            self.finish(lease(&claimed), retry(first, Duration::ZERO)).await;
        }
        let claimed = self.claim_with(&request).await.remove(0);
        let result =
            self.finish(lease(&claimed), Outcome::Fail { failure: failure(message) }).await;
        match result {
            FinishResult::Applied { state: JobState::Dead, dlq_id: Some(id) } => id,
            other => panic!("expected a death, got {other:?}"),
        }
    }

    /// The IDs of the entries `filter` lists, in listing order.
    async fn dlq_ids(&self, filter: &DlqFilter) -> Vec<DlqId> {
        self.list_dlq_all(filter).await.into_iter().map(|e| e.id).collect()
    }

    /// The total count `filter` reports.
    async fn dlq_total(&self, filter: &DlqFilter) -> u64 {
        self.store.count_dlq(filter).await.expect("count_dlq").iter().map(|c| c.count).sum()
    }
}

fn scoped(name: &str, scope: Scope) -> NewJob {
    let mut new = job_in(name, "ops");
    new.scope = scope;
    new
}

/// Filters by app, tenant, failure time (from inclusive, before exclusive) and the text of the
/// last error (case-sensitive); listings and counts agree.
pub async fn filters_by_scope_time_and_error(ctx: TestContext) {
    let t0 = ctx.clock.now();
    let e1 =
        ctx.die(scoped("sync", Scope::new("crm", "acme")), None, "timeout calling billing").await;
    ctx.clock.advance(secs(10));
    let e2 = ctx.die(scoped("sync", Scope::new("crm", "globex")), None, "bad input").await;
    ctx.clock.advance(secs(10));
    let erp = Scope { app: Some("erp".into()), tenant: None };
    let e3 = ctx.die(scoped("sync", erp), None, "Timeout").await;
    ctx.clock.advance(secs(10));
    let e4 = ctx.die(scoped("sync", Scope::default()), Some("timeout"), "disk full").await;

    let cases: Vec<(DlqFilter, Vec<DlqId>)> = vec![
        (DlqFilter { tenant: Some("acme".into()), ..DlqFilter::default() }, vec![e1]),
        (DlqFilter { app: Some("crm".into()), ..DlqFilter::default() }, vec![e1, e2]),
        (DlqFilter { app: Some("erp".into()), ..DlqFilter::default() }, vec![e3]),
        (DlqFilter { failed_after: Some(t0 + secs(10)), ..DlqFilter::default() }, vec![e2, e3, e4]),
        (DlqFilter { failed_before: Some(t0 + secs(20)), ..DlqFilter::default() }, vec![e1, e2]),
        (
            DlqFilter {
                failed_after: Some(t0 + secs(10)),
                failed_before: Some(t0 + secs(30)),
                ..DlqFilter::default()
            },
            vec![e2, e3],
        ),
        (DlqFilter { error_contains: Some("timeout".into()), ..DlqFilter::default() }, vec![e1]),
        (DlqFilter { error_contains: Some("full".into()), ..DlqFilter::default() }, vec![e4]),
        (DlqFilter { error_contains: Some("nothing".into()), ..DlqFilter::default() }, vec![]),
        (
            DlqFilter {
                app: Some("crm".into()),
                error_contains: Some("input".into()),
                ..DlqFilter::default()
            },
            vec![e2],
        ),
    ];
    for (filter, mut want) in cases {
        want.sort();
        assert_eq!(ctx.dlq_ids(&filter).await, want, "list {filter:?}");
        assert_eq!(ctx.dlq_total(&filter).await, want.len() as u64, "count {filter:?}");
        for entry in ctx.list_dlq_all(&filter).await {
            assert!(filter.matches(&entry), "the store and DlqFilter::matches agree");
        }
    }
}

/// Counts come per (queue, job name), ordered by queue then name, under a filter.
pub async fn count_groups_by_queue_and_name(ctx: TestContext) {
    for (name, queue, times) in [("b", "q1", 1), ("a", "q2", 2), ("a", "q1", 3)] {
        for _ in 0..times {
            ctx.kill(name, queue).await;
        }
    }
    let count =
        |queue: &str, name: &str, count| DlqCount { queue: queue.into(), name: name.into(), count };
    let all = ctx.store.count_dlq(&DlqFilter::default()).await.expect("count_dlq");
    assert_eq!(all, [count("q1", "a", 3), count("q1", "b", 1), count("q2", "a", 2)]);
    let only_a = DlqFilter { name: Some("a".into()), ..DlqFilter::default() };
    let got = ctx.store.count_dlq(&only_a).await.expect("count_dlq");
    assert_eq!(got, [count("q1", "a", 3), count("q2", "a", 2)]);
    let none = DlqFilter { queue: Some("q9".into()), ..DlqFilter::default() };
    assert!(ctx.store.count_dlq(&none).await.expect("count_dlq").is_empty());
}

/// A replay may move the new job to another queue and delay it; it keeps everything else.
pub async fn replay_options_change_queue_and_delay(ctx: TestContext) {
    let mut new = job_in("report", "slow");
    new.priority = 6;
    new.scope = Scope::new("crm", "acme");
    let entry = ctx.die(new, None, "boom").await;
    let now = ctx.clock.now();
    let options = ReplayOptions { queue: Some("fast".into()), delay: Some(secs(30)) };
    let replay = ctx.store.replay_dlq(entry, &options).await.expect("replay_dlq");
    let job = ctx.job(replay.job_id()).await;
    assert_eq!((job.queue.as_str(), job.run_at, job.priority), ("fast", now + secs(30), 6));
    assert_eq!(job.scope, Scope::new("crm", "acme"));
    let request = request_in(&["fast"], &["report"], 10);
    assert!(ctx.claim_with(&request).await.is_empty(), "delayed");
    ctx.clock.advance(secs(30));
    assert_eq!(ctx.claim_with(&request).await.len(), 1, "due after its delay, in its new queue");
}

/// A bulk replay takes exactly the matching entries not yet replayed, oldest first, at most
/// `limit` per call, and says which entry became which job; the rest stay as they were.
pub async fn bulk_replay_takes_exactly_the_matching_entries(ctx: TestContext) {
    let mut matching = Vec::new();
    let mut others = Vec::new();
    for i in 0..8 {
        let (name, queue) = [("a", "q1"), ("b", "q1"), ("a", "q2")][i % 3];
        let (_, entry) = ctx.kill(name, queue).await;
        if (name, queue) == ("a", "q1") {
            matching.push(entry)
        } else {
            others.push(entry)
        }
        ctx.clock.advance(secs(1));
    }
    let before = ctx.store.replay_dlq(matching[0], &ReplayOptions::default()).await;
    before.expect("replay_dlq");
    let filter =
        DlqFilter { queue: Some("q1".into()), name: Some("a".into()), ..DlqFilter::default() };
    let options = ReplayOptions::default();
    let replay = |limit| {
        let (ctx, filter, options) = (ctx.clone(), filter.clone(), options.clone());
        async move {
            let got = ctx.store.replay_dlq_matching(&filter, &options, limit).await;
            got.expect("replay_dlq_matching")
        }
    };
    let first = replay(1).await;
    assert_eq!(first.iter().map(|r| r.0).collect::<Vec<_>>(), [matching[1]], "oldest first");
    let second = replay(5).await;
    assert_eq!(second.iter().map(|r| r.0).collect::<Vec<_>>(), [matching[2]], "then the rest");
    assert!(replay(5).await.is_empty(), "nothing left to replay");
    for (entry, job_id) in first.into_iter().chain(second) {
        assert_eq!(ctx.dlq(entry).await.replayed_as, Some(job_id));
        let job = ctx.job(job_id).await;
        assert_eq!(
            (job.name.as_str(), job.queue.as_str(), job.state),
            ("a", "q1", JobState::Available)
        );
    }
    for entry in others {
        assert_eq!(ctx.dlq(entry).await.replayed_as, None, "outside the filter");
    }
}

/// Two callers bulk-replaying the same entries at once replay each entry exactly once
/// between them.
pub async fn bulk_replay_under_concurrency_replays_each_once(ctx: TestContext) {
    let mut entries = HashSet::new();
    for _ in 0..30 {
        entries.insert(ctx.kill("twice", "bulk").await.1);
    }
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let store = share(&ctx.store);
            tokio::spawn(async move {
                let (filter, options) = (DlqFilter::default(), ReplayOptions::default());
                let mut mine = Vec::new();
                loop {
                    let batch = store.replay_dlq_matching(&filter, &options, 4).await;
                    let batch = batch.expect("replay_dlq_matching");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut replayed = Vec::new();
    for caller in callers {
        replayed.extend(caller.await.expect("caller"));
    }
    let ids: HashSet<DlqId> = replayed.iter().map(|r| r.0).collect();
    assert_eq!(replayed.len(), 30, "each entry replayed once: {replayed:?}");
    assert_eq!(ids, entries);
    let jobs: HashSet<JobId> = replayed.iter().map(|r| r.1).collect();
    assert_eq!(jobs.len(), 30);
    let filter = JobFilter { state: Some(JobState::Available), ..JobFilter::default() };
    assert_eq!(ctx.list_all(&filter).await.len(), 30, "thirty new jobs, no more");
}

/// A purge deletes at most `limit` matching entries per call, oldest first.
pub async fn purge_is_bounded_oldest_first(ctx: TestContext) {
    let mut entries = Vec::new();
    for _ in 0..5 {
        entries.push(ctx.kill("old", "purge").await.1);
        ctx.clock.advance(secs(1));
    }
    let kept = ctx.kill("other", "elsewhere").await.1;
    let filter = DlqFilter { queue: Some("purge".into()), ..DlqFilter::default() };
    assert_eq!(ctx.store.purge_dlq(&filter, 2).await.expect("purge_dlq"), 2);
    assert_eq!(ctx.dlq_ids(&filter).await, entries[2..], "the two oldest went first");
    assert_eq!(ctx.store.purge_dlq(&filter, 2).await.expect("purge_dlq"), 2);
    assert_eq!(ctx.store.purge_dlq(&filter, 2).await.expect("purge_dlq"), 1);
    assert_eq!(ctx.store.purge_dlq(&filter, 2).await.expect("purge_dlq"), 0);
    assert_eq!(ctx.dlq_ids(&DlqFilter::default()).await, [kept]);
}

/// Ten thousand entries page in ID order, each exactly once, unfiltered and filtered.
pub async fn pages_over_ten_thousand_entries(ctx: TestContext) {
    const TOTAL: usize = 10_000;
    const BATCH: usize = 1000;
    let mut died = Vec::with_capacity(TOTAL);
    for batch in 0..TOTAL / BATCH {
        let jobs: Vec<NewJob> = (0..BATCH)
            .map(|i| {
                let mut new = job_in("many", ["even", "odd"][(batch * BATCH + i) % 2]);
                new.max_attempts = 1;
                new
            })
            .collect();
        ctx.enqueue(jobs).await;
        let claimed = ctx.claim_with(&request_in(&["even", "odd"], &["many"], BATCH)).await;
        assert_eq!(claimed.len(), BATCH);
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|c| Finish { lease: lease(c), outcome: Outcome::Fail { failure: failure("x") } })
            .collect();
        for result in ctx.store.finish(&finishes).await.expect("finish") {
            let FinishResult::Applied { dlq_id: Some(id), .. } = result else {
                panic!("expected a death, got {result:?}");
            };
            died.push(id);
        }
    }
    died.sort();
    let page_through = |filter: DlqFilter, size: usize| {
        let ctx = ctx.clone();
        async move {
            let (mut seen, mut pages) = (Vec::new(), 0);
            let mut page = PageRequest::first(size);
            loop {
                let got = ctx.store.list_dlq(&filter, &page).await.expect("list_dlq");
                pages += 1;
                assert!(got.items.iter().all(|e| filter.matches(e)));
                seen.extend(got.items.iter().map(|e| e.id));
                match PageRequest::next_of(&got, size) {
                    Some(next) => page = next,
                    None => return (seen, pages),
                }
            }
        }
    };
    let (seen, pages) = page_through(DlqFilter::default(), 700).await;
    assert_eq!(pages, 15);
    assert_eq!(seen, died, "every entry once, in ID order");
    let even = DlqFilter { queue: Some("even".into()), ..DlqFilter::default() };
    let (seen, pages) = page_through(even.clone(), 999).await;
    assert_eq!((seen.len(), pages), (TOTAL / 2, 6));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ascending");
    assert_eq!(ctx.dlq_total(&even).await, (TOTAL / 2) as u64);
}
