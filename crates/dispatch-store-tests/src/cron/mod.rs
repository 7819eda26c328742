//! Tests of [`CronStore`]: entries saved and updated by `(scope, name)` with the next fire
//! kept unless the schedule changed, listing and paging, enabling and deleting, due reads by
//! the store's clock, and fires applied as one fenced compare-and-set with their jobs. The
//! store is reached as the runtime reaches it, through
//! [`JobStore::as_cron_store`]. The scheduler's
//! policies (catch-up, grace, overlap) over each store are in [`policy`].

pub mod policy;

pub use policy::{
    a_late_fire_within_the_grace_is_on_time, catch_up_each_fires_missed_times_up_to_its_limit,
    catch_up_once_fires_the_latest_missed_time, catch_up_skip_fires_only_what_is_on_time,
    overlap_skip_skips_while_the_job_runs,
};

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::cron::fire_key;
use dispatch_core::{
    CatchUp, ClusterStore, CronEntry, CronFilter, CronFire, CronFireOutcome, CronId, CronJob,
    CronRecord, CronStore, DEFAULT_LEADERSHIP, Enqueued, ErrorKind, JobId, JobState, JobStore,
    Leader, NewJob, Outcome, Overlap, PageRequest, RunAt, Scope, Timestamp, UniqueKey, WorkerId,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{assert_kind, lease, request_in, secs};

const HOUR: Duration = secs(3600);
/// The queue and job name of this module's cron jobs.
pub(crate) const QUEUE: &str = "cron-q";
pub(crate) const JOB: &str = "cron-job";

impl TestContext<dyn JobStore> {
    fn cron(&self) -> Arc<dyn CronStore> {
        let jobs: Arc<dyn JobStore> = self.store.clone();
        jobs.as_cron_store().expect("the store keeps cron entries (as_cron_store answers Some)")
    }

    fn cron_cluster(&self) -> Arc<dyn ClusterStore> {
        let jobs: Arc<dyn JobStore> = self.store.clone();
        jobs.as_cluster_store().expect("the store keeps a cluster")
    }

    /// A fresh leader term, taken now.
    async fn term(&self) -> Leader {
        let cluster = self.cron_cluster();
        let taken = cluster.take_leadership(DEFAULT_LEADERSHIP, WorkerId::new(), HOUR).await;
        taken.expect("take_leadership")
    }

    async fn save(&self, entry: CronEntry, next_fire: Option<Timestamp>) -> CronRecord {
        self.cron().save_cron(entry, next_fire).await.expect("save_cron")
    }

    async fn record(&self, id: CronId) -> CronRecord {
        self.cron().get_cron(id).await.expect("get_cron").expect("the entry exists")
    }

    async fn fire(&self, term: &Leader, fires: Vec<CronFire>) -> Vec<CronFireOutcome> {
        self.cron().fire_cron(term, fires).await.expect("fire_cron")
    }

    /// How many jobs of this module's job name exist, in any state.
    async fn cron_jobs(&self) -> usize {
        let filter = dispatch_core::JobFilter {
            name: Some(JOB.to_owned()),
            ..dispatch_core::JobFilter::default()
        };
        self.list_all(&filter).await.len()
    }
}

/// An enabled every-minute entry named `name` in the default scope.
pub(crate) fn entry(name: &str) -> CronEntry {
    CronEntry {
        name: name.to_owned(),
        scope: Scope::default(),
        schedule: "0 * * * * *".to_owned(),
        timezone: "UTC".to_owned(),
        job: CronJob {
            name: JOB.to_owned(),
            queue: QUEUE.to_owned(),
            payload: b"{\"n\":1}".to_vec(),
            priority: 3,
            max_attempts: 2,
            timeout: Some(secs(30)),
        },
        catch_up: CatchUp::Skip,
        grace: secs(10),
        overlap: Overlap::Allow,
        jitter: Duration::ZERO,
        enabled: true,
    }
}

/// The job `record` enqueues for scheduled time `at`, as the scheduler builds it.
fn fire_job(record: &CronRecord, at: Timestamp) -> NewJob {
    let template = &record.entry.job;
    let mut job = NewJob::new(&template.name, template.payload.clone());
    job.queue = template.queue.clone();
    job.priority = template.priority;
    job.max_attempts = template.max_attempts;
    job.timeout = template.timeout;
    job.scope = record.entry.scope.clone();
    job.run_at = RunAt::At(at);
    job.unique = Some(UniqueKey { key: fire_key(record.id, at), window: None });
    job
}

/// A fire of `record` (as stored now) for scheduled times `times`, moving on to `next`.
fn fire_of(record: &CronRecord, times: &[Timestamp], next: Timestamp) -> CronFire {
    CronFire {
        id: record.id,
        expected_next: record.next_fire.expect("a due entry has a next fire"),
        jobs: times.iter().map(|&at| fire_job(record, at)).collect(),
        fired: times.last().copied(),
        next_fire: Some(next),
        skip_if_running: record.entry.overlap == Overlap::Skip,
    }
}

fn created(outcome: &CronFireOutcome) -> Vec<JobId> {
    match outcome {
        CronFireOutcome::Fired(enqueued) => enqueued
            .iter()
            .map(|e| match e {
                Enqueued::Created(id) => *id,
                Enqueued::Duplicate(id) => panic!("expected a new job, found duplicate {id}"),
            })
            .collect(),
        other => panic!("expected a fire, got {other:?}"),
    }
}

/// A new entry takes the given next fire; saving the same `(scope, name)` again updates it in
/// place and keeps its next fire, unless its schedule or time zone changed; another scope is
/// another entry.
pub async fn save_inserts_then_updates_by_scope_and_name(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let first = ctx.save(entry("report"), Some(now + secs(60))).await;
    assert_eq!(
        (first.next_fire, first.last_fired, first.last_job),
        (Some(now + secs(60)), None, None)
    );
    assert_eq!((first.created_at, first.updated_at), (now, now));
    assert_eq!(first.entry, entry("report"));

    ctx.clock.advance(secs(5));
    let mut changed = entry("report");
    changed.job.payload = b"{\"n\":2}".to_vec();
    changed.job.queue = "elsewhere".to_owned();
    let updated = ctx.save(changed.clone(), Some(now + secs(999))).await;
    assert_eq!(updated.id, first.id, "same (scope, name): same entry");
    assert_eq!(updated.entry, changed);
    assert_eq!(updated.next_fire, Some(now + secs(60)), "same schedule: next fire kept");
    assert_eq!((updated.created_at, updated.updated_at), (now, now + secs(5)));

    let mut rescheduled = changed.clone();
    rescheduled.schedule = "*/5 * * * * *".to_owned();
    let moved = ctx.save(rescheduled, Some(now + secs(10))).await;
    assert_eq!((moved.id, moved.next_fire), (first.id, Some(now + secs(10))));
    let mut rezoned = moved.entry.clone();
    rezoned.timezone = "Europe/Berlin".to_owned();
    let rezoned = ctx.save(rezoned, Some(now + secs(20))).await;
    assert_eq!(rezoned.next_fire, Some(now + secs(20)), "a new time zone takes the new fire");

    let mut tenant = entry("report");
    tenant.scope = Scope::new("crm", "acme");
    let other = ctx.save(tenant.clone(), Some(now + secs(30))).await;
    assert_ne!(other.id, first.id, "another scope is another entry");
    let found = ctx.cron().find_cron(&tenant.scope, "report").await.expect("find_cron");
    assert_eq!(found.map(|r| r.id), Some(other.id));
    let found = ctx.cron().find_cron(&Scope::default(), "report").await.expect("find_cron");
    assert_eq!(found.map(|r| r.id), Some(first.id));
    let missing = ctx.cron().find_cron(&Scope::default(), "nothing").await.expect("find_cron");
    assert_eq!(missing, None);
    assert_eq!(ctx.record(other.id).await, other, "get_cron round-trips every field");
}

/// Every field of an entry round-trips, edge values included.
pub async fn save_round_trips_every_field(ctx: TestContext<dyn JobStore>) {
    let mut full = entry("full");
    full.scope = Scope { app: Some("app".into()), tenant: None };
    full.schedule = "@hourly".to_owned();
    full.timezone = "America/New_York".to_owned();
    full.job.priority = -7;
    full.job.max_attempts = 1;
    full.job.timeout = None;
    full.job.payload = vec![0, 159, 146, 150, 255];
    full.catch_up = CatchUp::Each { limit: 42 };
    full.grace = Duration::from_micros(1_500_001);
    full.overlap = Overlap::Skip;
    full.jitter = secs(7);
    full.enabled = false;
    let saved = ctx.save(full.clone(), None).await;
    let read = ctx.record(saved.id).await;
    assert_eq!(read, saved);
    assert_eq!((read.entry, read.next_fire), (full, None));
}

/// `list_cron` pages in ID order, each entry once, and filters by scope and enabled.
pub async fn list_filters_and_paginates(ctx: TestContext<dyn JobStore>) {
    let acme = Scope::new("crm", "acme");
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut e = entry(&format!("e{i}"));
        if i % 2 == 0 {
            e.scope = acme.clone();
        }
        e.enabled = i % 3 != 0;
        ids.push(ctx.save(e, Some(ctx.clock.now() + secs(60))).await.id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    let mut pages = 0;
    loop {
        let got = ctx.cron().list_cron(&CronFilter::default(), &page).await.expect("list_cron");
        pages += 1;
        seen.extend(got.items.iter().map(|r| r.id));
        match PageRequest::next_of(&got, 3) {
            Some(next) => page = next,
            None => break,
        }
    }
    assert_eq!((seen, pages), (ids, 3));

    let list = |filter: CronFilter| {
        let cron = ctx.cron();
        async move {
            let got = cron.list_cron(&filter, &PageRequest::first(100)).await.expect("list_cron");
            got.items.into_iter().map(|r| r.entry.name).collect::<Vec<_>>()
        }
    };
    let by_scope = CronFilter { scope: Some(acme), ..CronFilter::default() };
    assert_eq!(sorted(list(by_scope.clone()).await), ["e0", "e2", "e4", "e6"]);
    let disabled = CronFilter { enabled: Some(false), ..CronFilter::default() };
    assert_eq!(sorted(list(disabled).await), ["e0", "e3", "e6"]);
    let both = CronFilter { enabled: Some(true), ..by_scope };
    assert_eq!(sorted(list(both).await), ["e2", "e4"]);
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Disabling keeps the next fire and takes the entry out of due reads; enabling a disabled
/// entry takes the given next fire (disabled times are not caught up); enabling an enabled one
/// keeps its own. Deleting removes it everywhere; unknown entries are not found.
pub async fn enable_disable_and_delete(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let saved = ctx.save(entry("toggle"), Some(now + secs(1))).await;
    let cron = ctx.cron();
    let off = cron.set_cron_enabled(saved.id, false, Some(now + secs(500))).await;
    let off = off.expect("disable");
    assert_eq!((off.entry.enabled, off.next_fire), (false, Some(now + secs(1))));
    ctx.clock.advance(secs(100));
    assert!(cron.due_cron(10).await.expect("due_cron").entries.is_empty(), "disabled");
    let on = cron.set_cron_enabled(saved.id, true, Some(now + secs(120))).await.expect("enable");
    assert_eq!((on.entry.enabled, on.next_fire), (true, Some(now + secs(120))));
    let again = cron.set_cron_enabled(saved.id, true, Some(now + secs(999))).await;
    assert_eq!(again.expect("enable").next_fire, Some(now + secs(120)), "already enabled");

    let mut disabled = entry("toggle");
    disabled.enabled = false;
    ctx.save(disabled, Some(now + secs(777))).await;
    let enabled = ctx.save(entry("toggle"), Some(now + secs(130))).await;
    assert_eq!(enabled.next_fire, Some(now + secs(130)), "saving it enabled takes the new fire");

    assert!(cron.delete_cron(saved.id).await.expect("delete_cron"));
    assert_eq!(cron.get_cron(saved.id).await.expect("get_cron"), None);
    assert_eq!(cron.find_cron(&Scope::default(), "toggle").await.expect("find_cron"), None);
    assert!(!cron.delete_cron(saved.id).await.expect("delete_cron"), "deleted already");
    let unknown = cron.set_cron_enabled(CronId::new(), true, None).await;
    assert_kind(unknown, ErrorKind::NotFound, "enabling an unknown entry");
    let fresh = ctx.save(entry("toggle"), Some(now)).await;
    assert_ne!(fresh.id, saved.id, "a deleted name can be saved again as a new entry");
}

/// Due reads: enabled entries whose next fire is at or before the store's clock, soonest
/// first, bounded by the limit, with the clock's reading.
pub async fn due_lists_enabled_entries_by_next_fire(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let late = ctx.save(entry("late"), Some(now - secs(2))).await;
    let on_time = ctx.save(entry("on-time"), Some(now)).await;
    ctx.save(entry("future"), Some(now + secs(1))).await;
    ctx.save(entry("never"), None).await;
    let mut off = entry("off");
    off.enabled = false;
    ctx.save(off, Some(now - secs(5))).await;

    let due = ctx.cron().due_cron(10).await.expect("due_cron");
    assert_eq!(due.now, now);
    let ids: Vec<CronId> = due.entries.iter().map(|r| r.id).collect();
    assert_eq!(ids, [late.id, on_time.id]);
    let first = ctx.cron().due_cron(1).await.expect("due_cron");
    assert_eq!(first.entries.iter().map(|r| r.id).collect::<Vec<_>>(), [late.id]);
    ctx.clock.advance(secs(1));
    assert_eq!(ctx.cron().due_cron(10).await.expect("due_cron").entries.len(), 3);
}

/// A fire enqueues its jobs (with the entry's template and scope) and advances the entry in
/// one step; the same fire again finds the entry moved on and changes nothing.
pub async fn fire_enqueues_and_advances_in_one_step(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let mut tenant = entry("tick");
    tenant.scope = Scope::new("crm", "acme");
    let record = ctx.save(tenant, Some(now - secs(1))).await;
    let term = ctx.term().await;
    let fire = fire_of(&record, &[now - secs(1), now], now + secs(1));
    let outcomes = ctx.fire(&term, vec![fire.clone()]).await;
    let jobs = created(&outcomes[0]);
    assert_eq!(jobs.len(), 2);
    let stored = ctx.record(record.id).await;
    assert_eq!(stored.next_fire, Some(now + secs(1)));
    assert_eq!((stored.last_fired, stored.last_job), (Some(now), Some(jobs[1])));
    for (job_id, at) in jobs.iter().zip([now - secs(1), now]) {
        let job = ctx.job(*job_id).await;
        assert_eq!((job.name.as_str(), job.queue.as_str()), (JOB, QUEUE));
        assert_eq!((job.priority, job.max_attempts, job.timeout), (3, 2, Some(secs(30))));
        assert_eq!((&job.scope, job.run_at), (&record.entry.scope, at));
        assert_eq!(job.unique_key, Some(fire_key(record.id, at)));
    }
    let claimed = ctx.claim_with(&request_in(&[QUEUE], &[JOB], 10)).await;
    assert_eq!(claimed.len(), 2, "a fire's jobs are claimable at their times");

    let again = ctx.fire(&term, vec![fire]).await;
    assert_eq!(again, [CronFireOutcome::Stale], "the entry has moved on");
    assert_eq!(ctx.cron_jobs().await, 2, "a stale fire enqueues nothing");
    let writes = ctx.cron_cluster().leader_writes(DEFAULT_LEADERSHIP, 10).await;
    let writes = writes.expect("leader_writes");
    assert!(writes.iter().any(|w| w.term == term.term && w.action == "cron"), "{writes:?}");
}

/// A fire read before the entry changed (rescheduled, disabled, deleted) is stale and changes
/// nothing; the other fires of the same call still apply, and outcomes keep the call's order.
pub async fn fire_of_a_changed_entry_is_stale(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let moved = ctx.save(entry("moved"), Some(now)).await;
    let off = ctx.save(entry("off"), Some(now)).await;
    let gone = ctx.save(entry("gone"), Some(now)).await;
    let fine = ctx.save(entry("fine"), Some(now)).await;
    let fires: Vec<CronFire> =
        [&moved, &off, &gone, &fine].iter().map(|r| fire_of(r, &[now], now + secs(60))).collect();

    let mut rescheduled = entry("moved");
    rescheduled.schedule = "*/2 * * * * *".to_owned();
    ctx.save(rescheduled, Some(now + secs(2))).await;
    ctx.cron().set_cron_enabled(off.id, false, None).await.expect("disable");
    assert!(ctx.cron().delete_cron(gone.id).await.expect("delete_cron"));

    let term = ctx.term().await;
    let outcomes = ctx.fire(&term, fires).await;
    assert_eq!(
        outcomes[..3],
        [CronFireOutcome::Stale, CronFireOutcome::Stale, CronFireOutcome::Stale]
    );
    assert_eq!(created(&outcomes[3]).len(), 1);
    assert_eq!(ctx.cron_jobs().await, 1);
    assert_eq!(ctx.record(moved.id).await.next_fire, Some(now + secs(2)), "untouched");
    assert_eq!(ctx.record(off.id).await.last_job, None);
}

/// A fire under a deposed term is refused, enqueues nothing and leaves the entry as it was.
pub async fn fire_is_fenced_by_the_term(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let record = ctx.save(entry("fenced"), Some(now)).await;
    let old = ctx.term().await;
    let new = ctx.term().await;
    assert!(new.term > old.term);
    let fire = fire_of(&record, &[now], now + secs(60));
    let refused = ctx.cron().fire_cron(&old, vec![fire.clone()]).await;
    assert_kind(refused, ErrorKind::NotLeader, "a fire under a deposed term");
    assert_eq!(ctx.cron_jobs().await, 0);
    assert_eq!(ctx.record(record.id).await, record, "a refused fire changes nothing");
    let outcomes = ctx.fire(&new, vec![fire]).await;
    assert_eq!(created(&outcomes[0]).len(), 1);
}

/// With `skip_if_running`, a fire while the last job is available or running enqueues nothing
/// but advances the entry; once that job finished, the next fire enqueues again. Without it,
/// fires overlap.
pub async fn overlap_skip_waits_for_the_previous_job(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let mut single = entry("single");
    single.overlap = Overlap::Skip;
    let record = ctx.save(single, Some(now)).await;
    let term = ctx.term().await;
    let first = created(&ctx.fire(&term, vec![fire_of(&record, &[now], now + secs(1))]).await[0]);

    ctx.clock.advance(secs(1));
    let record = ctx.record(record.id).await;
    let outcome = ctx.fire(&term, vec![fire_of(&record, &[now + secs(1)], now + secs(2))]).await;
    assert_eq!(outcome, [CronFireOutcome::Overlapped { previous: first[0] }], "available");
    let record = ctx.record(record.id).await;
    assert_eq!(record.next_fire, Some(now + secs(2)), "an overlapped fire still advances");
    assert_eq!((record.last_fired, record.last_job), (Some(now), Some(first[0])));

    let claimed = ctx.claim_with(&request_in(&[QUEUE], &[JOB], 10)).await;
    assert_eq!(claimed.len(), 1);
    ctx.clock.advance(secs(1));
    let outcome = ctx.fire(&term, vec![fire_of(&record, &[now + secs(2)], now + secs(3))]).await;
    assert_eq!(outcome, [CronFireOutcome::Overlapped { previous: first[0] }], "running");

    ctx.finish(lease(&claimed[0]), Outcome::Complete).await;
    let record = ctx.record(record.id).await;
    let outcome = ctx.fire(&term, vec![fire_of(&record, &[now + secs(3)], now + secs(4))]).await;
    let second = created(&outcome[0]);
    assert_eq!(ctx.record(record.id).await.last_job, Some(second[0]));

    let mut allow = fire_of(&ctx.record(record.id).await, &[now + secs(4)], now + secs(5));
    allow.skip_if_running = false;
    assert_eq!(created(&ctx.fire(&term, vec![allow]).await[0]).len(), 1, "overlap allowed");
    assert_eq!(ctx.cron_jobs().await, 3);
    let unfinished = ctx.job(second[0]).await;
    assert_eq!(unfinished.state, JobState::Available);
}

/// A scheduled time whose job exists already (its unique key is held) is answered with that
/// job, never a second one, and the entry still advances.
pub async fn a_fired_time_is_never_enqueued_twice(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let record = ctx.save(entry("once"), Some(now)).await;
    let earlier = ctx.enqueue_one(fire_job(&record, now)).await;
    let term = ctx.term().await;
    let outcome = ctx.fire(&term, vec![fire_of(&record, &[now], now + secs(60))]).await;
    assert_eq!(outcome, [CronFireOutcome::Fired(vec![Enqueued::Duplicate(earlier)])]);
    let stored = ctx.record(record.id).await;
    assert_eq!((stored.next_fire, stored.last_job), (Some(now + secs(60)), Some(earlier)));
    assert_eq!(ctx.cron_jobs().await, 1);
}

/// A fire that skips every time (its catch-up policy) enqueues nothing and only advances.
pub async fn an_empty_fire_only_advances(ctx: TestContext<dyn JobStore>) {
    let now = ctx.clock.now();
    let record = ctx.save(entry("skipper"), Some(now - HOUR)).await;
    let term = ctx.term().await;
    let outcome = ctx.fire(&term, vec![fire_of(&record, &[], now + secs(60))]).await;
    assert_eq!(outcome, [CronFireOutcome::Fired(Vec::new())]);
    let stored = ctx.record(record.id).await;
    assert_eq!((stored.next_fire, stored.last_fired), (Some(now + secs(60)), None));
    assert_eq!(ctx.cron_jobs().await, 0);
}
