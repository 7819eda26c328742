//! Tests of [`DlqStore`](dispatch_core::DlqStore): entries written with the death, replay at most
//! once, purge by filter, filtered and paginated listing; the operator's calls (filters by
//! scope, time and error text, counts, bulk replay and purge in bounded batches) in [`service`].

pub mod service;

pub use service::{
    bulk_replay_takes_exactly_the_matching_entries,
    bulk_replay_under_concurrency_replays_each_once, count_groups_by_queue_and_name,
    filters_by_scope_time_and_error, pages_over_ten_thousand_entries,
    purge_is_bounded_oldest_first, replay_options_change_queue_and_delay,
};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dispatch_core::{
    DlqEntry, DlqFilter, DlqId, ErrorKind, Finish, FinishResult, JobFilter, JobState, Outcome,
    PageRequest, Replay, Scope,
};

use dispatch_core::Clock as _;
use dispatch_core::ReplayOptions;

use crate::TestContext;
use crate::support::{assert_kind, failure, ids, job_in, lease, request_in, retry, secs, share};

/// The death and the entry are one: the job is dead with `dlq_id` naming an entry that lists
/// under its queue and name, unreplayed.
pub async fn entry_written_with_death(ctx: TestContext) {
    let (job_id, dlq_id) = ctx.kill("fragile", "critical").await;
    let job = ctx.job(job_id).await;
    assert_eq!((job.state, job.dlq_id), (JobState::Dead, Some(dlq_id)));
    let entry = ctx.dlq(dlq_id).await;
    assert_eq!((entry.id, entry.job_id), (dlq_id, job_id));
    assert_eq!(entry.errors.len(), 1);
    assert_eq!(entry.errors[0].message, "dead");
    let filter = DlqFilter { queue: Some("critical".into()), ..DlqFilter::default() };
    assert_eq!(ctx.list_dlq_all(&filter).await, vec![entry.clone()]);
    let filter = DlqFilter { replayed: Some(false), ..DlqFilter::default() };
    assert_eq!(ctx.list_dlq_all(&filter).await, vec![entry]);
}

/// Ten concurrent replays of one entry: one `Replayed`, nine `AlreadyReplayed` naming the same
/// job, which is a faithful, fresh, claimable copy of the dead job.
pub async fn replay_once_under_concurrency(ctx: TestContext) {
    let mut new = job_in("import", "bulk");
    new.payload = b"{\"file\":\"a.csv\"}".to_vec();
    new.priority = 4;
    new.max_attempts = 2;
    new.timeout = Some(secs(90));
    new.scope = Scope::new("crm", "acme");
    let original = ctx.enqueue_one(new.clone()).await;
    let request = request_in(&["bulk"], &["import"], 1);
    let claimed = ctx.claim_with(&request).await.remove(0);
    ctx.finish(lease(&claimed), retry("first", secs(0))).await;
    let claimed = ctx.claim_with(&request).await.remove(0);
    let result = ctx.finish(lease(&claimed), retry("second", secs(0))).await;
    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } = result else {
        panic!("the job should be dead after its last attempt, got {result:?}");
    };
    ctx.clock.advance(secs(60));
    let now = ctx.clock.now();

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = share(&ctx.store);
            tokio::spawn(async move {
                store.replay_dlq(dlq_id, &ReplayOptions::default()).await.expect("replay_dlq")
            })
        })
        .collect();
    let mut replayed = Vec::new();
    let mut already = Vec::new();
    for task in tasks {
        match task.await.expect("replay task") {
            Replay::Replayed(id) => replayed.push(id),
            Replay::AlreadyReplayed(id) => already.push(id),
        }
    }
    assert_eq!(replayed.len(), 1, "exactly one replay");
    let new_id = replayed[0];
    assert_eq!(already, vec![new_id; 9], "the rest name the same job");
    assert_ne!(new_id, original, "a replay makes a new job");

    let copy = ctx.job(new_id).await;
    assert_eq!(copy.name, new.name);
    assert_eq!(copy.queue, new.queue);
    assert_eq!(copy.payload, new.payload);
    assert_eq!(copy.priority, new.priority);
    assert_eq!(copy.timeout, new.timeout);
    assert_eq!(copy.max_attempts, new.max_attempts);
    assert_eq!(copy.scope, new.scope);
    assert_eq!(copy.state, JobState::Available);
    assert_eq!(copy.attempt, 0);
    assert!(copy.errors.is_empty(), "fresh attempts, fresh history");
    assert_eq!((copy.lease, copy.dlq_id, copy.finished_at), (None, None, None));
    assert_eq!(copy.created_at, now);
    assert!(copy.run_at <= now, "runs now");

    let entry = ctx.dlq(dlq_id).await;
    assert_eq!(entry.replayed_as, Some(new_id));
    assert_eq!(entry.replayed_at, Some(now));
    assert_eq!(entry.errors.len(), 2, "the entry keeps its history");
    let dead = ctx.job(original).await;
    assert_eq!(
        (dead.state, dead.dlq_id),
        (JobState::Dead, Some(dlq_id)),
        "the original stays dead"
    );

    let claimed = ctx.claim_with(&request).await;
    assert_eq!(ids(&claimed), HashSet::from([new_id]), "the copy is claimable");
    assert_eq!(claimed[0].job.attempt, 1);
    ctx.clock.advance(secs(1));
    let later = ctx.store.replay_dlq(dlq_id, &ReplayOptions::default()).await.expect("replay_dlq");
    assert_eq!(later, Replay::AlreadyReplayed(new_id));
    assert_eq!(ctx.list_all(&dispatch_core::JobFilter::default()).await.len(), 2);
}

/// Replaying an unknown entry fails with `NotFound` and enqueues nothing.
pub async fn replay_unknown_is_not_found(ctx: TestContext) {
    ctx.kill("present", "q").await;
    assert_kind(
        ctx.store.replay_dlq(DlqId::new(), &ReplayOptions::default()).await,
        ErrorKind::NotFound,
        "unknown entry",
    );
    assert_eq!(ctx.list_all(&dispatch_core::JobFilter::default()).await.len(), 1);
}

/// Purge deletes exactly the entries matching every set field of its filter and returns how
/// many; the others remain.
pub async fn purge_removes_what_filter_says(ctx: TestContext) {
    let t0 = ctx.clock.now();
    let (_, e1) = ctx.kill("a", "q1").await;
    let (_, e2) = ctx.kill("b", "q1").await;
    ctx.clock.advance(secs(10));
    let (_, e3) = ctx.kill("a", "q2").await;
    let (_, e4) = ctx.kill("b", "q2").await;
    ctx.clock.advance(secs(10));
    let (_, e5) = ctx.kill("a", "q1").await;
    let (_, e6) = ctx.kill("c", "q3").await;
    let mut copies = Vec::new();
    for entry in [e5, e6] {
        copies.push(
            ctx.store
                .replay_dlq(entry, &ReplayOptions::default())
                .await
                .expect("replay_dlq")
                .job_id(),
        );
    }

    let remaining = |ctx: TestContext| async move {
        let entries = ctx.list_dlq_all(&DlqFilter::default()).await;
        entries.into_iter().map(|e| e.id).collect::<BTreeSet<DlqId>>()
    };
    let purge = |p: DlqFilter| {
        let ctx = ctx.clone();
        async move { ctx.store.purge_dlq(&p, 1000).await.expect("purge_dlq") }
    };

    assert_eq!(purge(DlqFilter { queue: Some("none".into()), ..DlqFilter::default() }).await, 0);
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e1, e2, e3, e4, e5, e6]));

    // Replayed and in q1: only e5 (e6 is replayed but in q3; e1, e2 are in q1 but not replayed).
    let both = DlqFilter { queue: Some("q1".into()), replayed: Some(true), ..DlqFilter::default() };
    assert_eq!(purge(both).await, 1);
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e1, e2, e3, e4, e6]));
    assert_eq!(ctx.store.get_dlq(e5).await.expect("get_dlq"), None, "purged");

    // Failed strictly before t0 + 10 s: e1, e2 (e3 failed at exactly t0 + 10 s).
    let before = DlqFilter { failed_before: Some(t0 + secs(10)), ..DlqFilter::default() };
    assert_eq!(purge(before).await, 2);
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e3, e4, e6]));

    let by_name = DlqFilter { name: Some("a".into()), ..DlqFilter::default() };
    assert_eq!(purge(by_name).await, 1);
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e4, e6]));

    let by_queue = DlqFilter { queue: Some("q2".into()), ..DlqFilter::default() };
    assert_eq!(purge(by_queue).await, 1);
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e6]));

    let unreplayed = DlqFilter { replayed: Some(false), ..DlqFilter::default() };
    assert_eq!(purge(unreplayed).await, 0, "e6 was replayed");
    assert_eq!(remaining(ctx.clone()).await, BTreeSet::from([e6]));

    assert_eq!(purge(DlqFilter::default()).await, 1, "an empty filter purges everything");
    assert!(remaining(ctx.clone()).await.is_empty());
    assert_eq!(purge(DlqFilter::default()).await, 0);
    for copy in copies {
        let job = ctx.job(copy).await;
        assert_eq!(job.state, JobState::Available, "purging an entry leaves its replay alone");
    }
}

/// `list_dlq` filters by queue, name and replayed, and keyset-paginates in ascending ID order,
/// each entry once.
pub async fn list_filters_and_paginates(ctx: TestContext) {
    let mut all: Vec<(DlqId, &str, &str)> = Vec::new();
    for i in 0..25 {
        let name = ["x", "y"][i % 2];
        let queue = ["left", "right", "middle"][i % 3];
        let (_, dlq_id) = ctx.kill(name, queue).await;
        all.push((dlq_id, name, queue));
        ctx.clock.advance(secs(1));
    }
    let mut replayed = HashSet::new();
    for (dlq_id, _, _) in all.iter().step_by(4) {
        ctx.store.replay_dlq(*dlq_id, &ReplayOptions::default()).await.expect("replay_dlq");
        replayed.insert(*dlq_id);
    }
    let mut sorted: Vec<DlqId> = all.iter().map(|e| e.0).collect();
    sorted.sort();

    // Pages of 4 over everything.
    let mut seen = Vec::new();
    let mut page = PageRequest::first(4);
    let mut pages = 0;
    loop {
        let got = ctx.store.list_dlq(&DlqFilter::default(), &page).await.expect("list_dlq");
        pages += 1;
        seen.extend(got.items.iter().map(|e| e.id));
        match &got.next {
            Some(next) => {
                assert_eq!(got.items.len(), 4, "a page before the last is full");
                assert_eq!(Some(next), got.items.last().map(|e| &e.id), "cursor is the last ID");
                page = PageRequest { after: Some(*next), limit: 4 };
            }
            None => break,
        }
        assert!(pages <= 100, "pagination does not end");
    }
    assert_eq!(pages, 7);
    assert_eq!(seen, sorted, "every entry once, ascending");

    let check = |filter: DlqFilter| {
        let ctx = ctx.clone();
        let mut expected: Vec<DlqId> = all
            .iter()
            .filter(|(id, name, queue)| {
                filter.name.as_deref().is_none_or(|n| n == *name)
                    && filter.queue.as_deref().is_none_or(|q| q == *queue)
                    && filter.replayed.is_none_or(|r| r == replayed.contains(id))
            })
            .map(|e| e.0)
            .collect();
        expected.sort();
        async move {
            let got: Vec<DlqId> = ctx.list_dlq_all(&filter).await.iter().map(|e| e.id).collect();
            assert_eq!(got, expected, "{filter:?}");
        }
    };
    check(DlqFilter { queue: Some("left".into()), ..DlqFilter::default() }).await;
    check(DlqFilter { name: Some("y".into()), ..DlqFilter::default() }).await;
    check(DlqFilter { replayed: Some(true), ..DlqFilter::default() }).await;
    check(DlqFilter { replayed: Some(false), ..DlqFilter::default() }).await;
    check(DlqFilter {
        queue: Some("middle".into()),
        name: Some("x".into()),
        ..DlqFilter::default()
    })
    .await;
    check(DlqFilter {
        queue: Some("right".into()),
        name: Some("y".into()),
        replayed: Some(false),
        ..DlqFilter::default()
    })
    .await;
    check(DlqFilter { queue: Some("nowhere".into()), ..DlqFilter::default() }).await;
}

/// `get_dlq` of an unknown ID is `None`, not an error.
pub async fn get_unknown_is_none(ctx: TestContext) {
    ctx.kill("present", "q").await;
    assert_eq!(ctx.store.get_dlq(DlqId::new()).await.expect("get_dlq"), None);
}

/// Promotion is one step: a reader watching while 200 jobs die never sees a dead job whose entry
/// is missing, nor an entry whose job is not dead, and each finish's `dlq_id` is the entry the
/// job names.
pub async fn death_and_entry_are_never_apart(ctx: TestContext) {
    let jobs = (0..200)
        .map(|_| {
            let mut new = job_in("mortal", "q");
            new.max_attempts = 1;
            new
        })
        .collect();
    let all = ctx.enqueue(jobs).await;
    let done = Arc::new(AtomicBool::new(false));

    let killer = {
        let store = share(&ctx.store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let request = request_in(&["q"], &["mortal"], 10);
            let mut reported = HashMap::new();
            loop {
                let claimed = store.claim(&request).await.expect("claim");
                if claimed.is_empty() {
                    done.store(true, Ordering::SeqCst);
                    return reported;
                }
                let outcome = Outcome::Fail { failure: failure("fatal") };
                let finishes: Vec<Finish> = claimed
                    .iter()
                    .map(|c| Finish { lease: lease(c), outcome: outcome.clone() })
                    .collect();
                let results = store.finish(&finishes).await.expect("finish");
                for (finish, result) in finishes.iter().zip(results) {
                    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(dlq_id) } =
                        result
                    else {
                        panic!("a failed one-attempt job is dead with an entry, got {result:?}");
                    };
                    reported.insert(finish.lease.job_id, dlq_id);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let watcher = {
        let store = share(&ctx.store);
        let all = all.clone();
        tokio::spawn(async move {
            loop {
                let last_round = done.load(Ordering::SeqCst);
                for id in &all {
                    let job = store.get_job(*id).await.expect("get_job").expect("job exists");
                    if job.state == JobState::Dead {
                        let dlq_id = job.dlq_id.expect("a dead job names its entry");
                        let entry = store.get_dlq(dlq_id).await.expect("get_dlq");
                        let entry = entry.unwrap_or_else(|| panic!("job {id} dead, no entry"));
                        assert_eq!(entry.job_id, *id);
                    } else {
                        assert_eq!(job.dlq_id, None, "job {id} names an entry but is not dead");
                    }
                }
                let page = PageRequest::first(1000);
                let entries = store.list_dlq(&DlqFilter::default(), &page).await.expect("list");
                for entry in entries.items {
                    let job = store.get_job(entry.job_id).await.expect("get_job");
                    let job = job.expect("the entry's job exists");
                    let state = (job.state, job.dlq_id);
                    assert_eq!(state, (JobState::Dead, Some(entry.id)), "entry before death");
                }
                if last_round {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let reported = killer.await.expect("killer task");
    watcher.await.expect("watcher task");
    assert_eq!(reported.len(), all.len(), "every job died");
    for id in &all {
        let job = ctx.job(*id).await;
        assert_eq!((job.state, job.dlq_id), (JobState::Dead, reported.get(id).copied()));
    }
    assert_eq!(ctx.list_dlq_all(&DlqFilter::default()).await.len(), all.len());
}

/// A replayed job that dies again gets an entry of its own holding only its own attempts; the
/// first entry is unchanged and still names the replay; each entry replays once.
pub async fn replayed_job_dies_again_with_own_entry(ctx: TestContext) {
    let (first_job, first_entry) = ctx.kill("phoenix", "q").await;
    let before = ctx.dlq(first_entry).await;
    ctx.clock.advance(secs(5));
    let replayed_at = ctx.clock.now();
    let replay =
        ctx.store.replay_dlq(first_entry, &ReplayOptions::default()).await.expect("replay_dlq");
    let Replay::Replayed(second_job) = replay else { panic!("first replay: {replay:?}") };

    let request = request_in(&["q"], &["phoenix"], 1);
    let claimed = ctx.claim_with(&request).await;
    assert_eq!(ids(&claimed), HashSet::from([second_job]));
    assert_eq!(claimed[0].job.attempt, 1, "fresh attempts");
    ctx.clock.advance(secs(5));
    let now = ctx.clock.now();
    let result =
        ctx.finish(lease(&claimed[0]), Outcome::Fail { failure: failure("dead again") }).await;
    let FinishResult::Applied { state: JobState::Dead, dlq_id: Some(second_entry) } = result else {
        panic!("the replay dies with an entry, got {result:?}");
    };
    assert_ne!(second_entry, first_entry, "a new entry");

    let entry = ctx.dlq(second_entry).await;
    assert_eq!(entry.job_id, second_job);
    assert_eq!((entry.attempts, entry.failed_at, entry.replayed_as), (1, now, None));
    let errors: Vec<_> = entry.errors.iter().map(|e| (e.attempt, e.message.as_str())).collect();
    assert_eq!(errors, [(1, "dead again")], "only the replay's own attempts");
    let first = ctx.dlq(first_entry).await;
    let unchanged =
        DlqEntry { replayed_as: Some(second_job), replayed_at: Some(replayed_at), ..before };
    assert_eq!(first, unchanged, "the first entry only records its replay");
    assert_eq!(ctx.job(first_job).await.dlq_id, Some(first_entry));

    let again =
        ctx.store.replay_dlq(first_entry, &ReplayOptions::default()).await.expect("replay_dlq");
    assert_eq!(again, Replay::AlreadyReplayed(second_job));
    let replay =
        ctx.store.replay_dlq(second_entry, &ReplayOptions::default()).await.expect("replay_dlq");
    let Replay::Replayed(third_job) = replay else { panic!("second entry's replay: {replay:?}") };
    assert!(third_job != first_job && third_job != second_job, "a new job");
    assert_eq!(ctx.list_dlq_all(&DlqFilter::default()).await.len(), 2);
    assert_eq!(ctx.list_all(&JobFilter::default()).await.len(), 3);
}

/// A cursor whose entry was purged between pages still works: the next page starts after it,
/// skipping nothing that remains and repeating nothing.
pub async fn list_continues_after_purged_cursor(ctx: TestContext) {
    let mut entries: Vec<(DlqId, String)> = Vec::new();
    for i in 0..10 {
        let name = format!("n{i}");
        let (_, dlq_id) = ctx.kill(&name, "q").await;
        entries.push((dlq_id, name));
    }
    entries.sort();
    let ids_of = |page: &dispatch_core::Page<DlqEntry, DlqId>| -> Vec<DlqId> {
        page.items.iter().map(|e| e.id).collect()
    };
    let expected = |range: std::ops::Range<usize>| -> Vec<DlqId> {
        entries[range].iter().map(|e| e.0).collect()
    };
    let filter = DlqFilter::default();
    let first = ctx.store.list_dlq(&filter, &PageRequest::first(4)).await.expect("list_dlq");
    assert_eq!(ids_of(&first), expected(0..4));
    assert_eq!(first.next, Some(entries[3].0));

    // Purge the cursor's entry and the one after it.
    for (_, name) in &entries[3..5] {
        let purge = DlqFilter { name: Some(name.clone()), ..DlqFilter::default() };
        assert_eq!(ctx.store.purge_dlq(&purge, 1000).await.expect("purge_dlq"), 1);
    }
    let second = PageRequest { after: first.next, limit: 4 };
    let second = ctx.store.list_dlq(&filter, &second).await.expect("list_dlq");
    assert_eq!(ids_of(&second), expected(5..9));
    assert_eq!(second.next, Some(entries[8].0));
    let third = PageRequest { after: second.next, limit: 4 };
    let third = ctx.store.list_dlq(&filter, &third).await.expect("list_dlq");
    assert_eq!(ids_of(&third), expected(9..10));
    assert_eq!(third.next, None);
}
