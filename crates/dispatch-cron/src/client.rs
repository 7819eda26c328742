//! [`Cron`]: registering, inspecting and managing entries. Every write validates the schedule
//! first, so a bad expression or time zone stores nothing.

use std::sync::Arc;

use dispatch_core::{
    CronEntry, CronFilter, CronId, CronRecord, CronStore, Error, JobId, NewJob, Page, PageRequest,
    Result, Scope, SharedClock, Timestamp,
};

use crate::schedule::Schedule;
use crate::spec::CronSpec;

/// Registers cron entries and manages them. Firing is the leader's
/// ([`CronScheduler`](crate::CronScheduler)); this client only writes entries. Cheap to clone.
#[derive(Clone)]
pub struct Cron {
    store: Arc<dyn CronStore>,
    clock: SharedClock,
}

impl std::fmt::Debug for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cron").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl Cron {
    /// A client of `store`, computing first fire times by `clock` (the store's clock, so a
    /// registration's first fire is the one the store's due read agrees with).
    pub fn new(store: Arc<dyn CronStore>, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Register `spec`: insert it, or update the entry with the same `(scope, name)`. Its
    /// first fire is the first scheduled time after now; an update that keeps its schedule and
    /// time zone keeps its stored next fire, so a restart that registers the same entries
    /// again neither skips nor repeats a time.
    pub async fn register(&self, spec: CronSpec) -> Result<CronRecord> {
        self.register_entry(spec.build()?).await
    }

    /// Register an entry built by hand (see [`register`](Self::register)).
    pub async fn register_entry(&self, entry: CronEntry) -> Result<CronRecord> {
        let schedule = Schedule::parse(&entry.schedule, &entry.timezone)?;
        validate(&entry)?;
        let next_fire = schedule.next_after(self.clock.now());
        self.store.save_cron(entry, next_fire).await
    }

    /// One entry by ID.
    pub async fn get(&self, id: CronId) -> Result<Option<CronRecord>> {
        self.store.get_cron(id).await
    }

    /// One entry by its `(scope, name)`.
    pub async fn find(&self, scope: &Scope, name: &str) -> Result<Option<CronRecord>> {
        self.store.find_cron(scope, name).await
    }

    /// Entries matching `filter`, in ID order, a page at a time; each carries its next fire.
    pub async fn list(
        &self,
        filter: &CronFilter,
        page: &PageRequest<CronId>,
    ) -> Result<Page<CronRecord, CronId>> {
        self.store.list_cron(filter, page).await
    }

    /// Enable an entry: a disabled one fires next at its first scheduled time after now (the
    /// times it was disabled for are not caught up). Fails with
    /// [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound) for an unknown entry.
    pub async fn enable(&self, id: CronId) -> Result<CronRecord> {
        let record = self.require(id).await?;
        let schedule = Schedule::parse(&record.entry.schedule, &record.entry.timezone)?;
        let next_fire = schedule.next_after(self.clock.now());
        self.store.set_cron_enabled(id, true, next_fire).await
    }

    /// Disable an entry: it stops firing until enabled. Fails with
    /// [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound) for an unknown entry.
    pub async fn disable(&self, id: CronId) -> Result<CronRecord> {
        self.store.set_cron_enabled(id, false, None).await
    }

    /// Delete an entry; whether it existed. Jobs it enqueued stay.
    pub async fn delete(&self, id: CronId) -> Result<bool> {
        self.store.delete_cron(id).await
    }

    /// Enqueue the entry's job now, in its scope, outside its schedule (which is untouched).
    /// The job holds no unique key, so it never stands in for a scheduled fire. Fails with
    /// [`ErrorKind::NotFound`](dispatch_core::ErrorKind::NotFound) for an unknown entry.
    pub async fn trigger_now(&self, id: CronId) -> Result<JobId> {
        let record = self.require(id).await?;
        let template = record.entry.job;
        let mut job = NewJob::new(template.name, template.payload);
        job.queue = template.queue;
        job.priority = template.priority;
        job.max_attempts = template.max_attempts;
        job.timeout = template.timeout;
        job.scope = record.entry.scope;
        let mut enqueued = self.store.enqueue(vec![job]).await?;
        let enqueued = enqueued.pop().ok_or_else(|| Error::internal("store returned no result"))?;
        Ok(enqueued.id())
    }

    /// The next scheduled time of `schedule` in `timezone` after now: what a registration
    /// would take as its first fire.
    pub fn next_fire(&self, schedule: &str, timezone: &str) -> Result<Option<Timestamp>> {
        Ok(Schedule::parse(schedule, timezone)?.next_after(self.clock.now()))
    }

    async fn require(&self, id: CronId) -> Result<CronRecord> {
        self.store
            .get_cron(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no cron entry {id}")))
    }
}

/// The checks a store would otherwise make later, or never: a name and a job that can run.
fn validate(entry: &CronEntry) -> Result<()> {
    if entry.name.is_empty() {
        return Err(Error::invalid_input("a cron entry needs a name"));
    }
    if entry.job.name.is_empty() {
        return Err(Error::invalid_input(format!("cron entry `{}` has no job name", entry.name)));
    }
    if entry.job.max_attempts == 0 {
        return Err(Error::invalid_input(format!(
            "cron entry `{}`: its job needs at least one attempt",
            entry.name
        )));
    }
    Ok(())
}
