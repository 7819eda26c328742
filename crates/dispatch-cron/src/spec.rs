//! [`CronSpec`]: a typed builder of a [`CronEntry`], its job taken from a
//! [`JobDefinition`] so the payload is encoded the way the handler decodes it.

use std::time::Duration;

use dispatch_core::{CatchUp, CronEntry, CronJob, Error, ErrorKind, Overlap, Result, Scope};
use dispatch_job::{EnqueueOptions, JobDefinition, JobInput};

/// How late a fire may be and still count as on time, unless [`CronSpec::grace`] says.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Builds a [`CronEntry`]: a name, a schedule and a job, with the policies' defaults (UTC,
/// [`CatchUp::Skip`], a grace of [`DEFAULT_GRACE`], [`Overlap::Allow`], no jitter, enabled).
///
/// ```
/// use dispatch_core::{CatchUp, Scope};
/// use dispatch_cron::CronSpec;
/// use dispatch_job::{JobContext, JobDefinition};
///
/// let report = JobDefinition::new("report", |_ctx: JobContext, day: String| async move {
///     println!("report for {day}");
///     Ok(())
/// });
/// let entry = CronSpec::new("nightly-report", "0 30 2 * * *")
///     .timezone("Europe/Berlin")
///     .job(&report, &"yesterday".to_owned())
///     .scope(Scope::new("shop", "acme"))
///     .catch_up(CatchUp::Once)
///     .build()?;
/// assert_eq!(entry.job.name, "report");
/// # Ok::<(), dispatch_core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a spec does nothing until it is registered"]
pub struct CronSpec {
    name: String,
    schedule: String,
    timezone: String,
    /// The job, or why its input did not encode (kept as kind and message: a spec is
    /// cloneable, an error is not).
    job: Option<std::result::Result<CronJob, (ErrorKind, String)>>,
    queue: Option<String>,
    scope: Scope,
    catch_up: CatchUp,
    grace: Duration,
    overlap: Overlap,
    jitter: Duration,
    enabled: bool,
}

impl CronSpec {
    /// An entry named `name` (unique within its scope) firing on `schedule`: five fields, six
    /// with seconds first, or a descriptor such as `@hourly`.
    pub fn new(name: impl Into<String>, schedule: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            schedule: schedule.into(),
            timezone: "UTC".to_owned(),
            job: None,
            queue: None,
            scope: Scope::default(),
            catch_up: CatchUp::default(),
            grace: DEFAULT_GRACE,
            overlap: Overlap::default(),
            jitter: Duration::ZERO,
            enabled: true,
        }
    }

    /// The IANA time zone the schedule is read in (default `UTC`).
    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = timezone.into();
        self
    }

    /// Enqueue `input` for `definition` at each fire, with the definition's queue, priority,
    /// attempts and timeout. An input that does not encode fails [`build`](Self::build).
    pub fn job<I: JobInput>(mut self, definition: &JobDefinition<I>, input: &I) -> Self {
        let job = definition.new_job(input, EnqueueOptions::new()).map(|job| CronJob {
            name: job.name,
            queue: job.queue,
            payload: job.payload,
            priority: job.priority,
            max_attempts: job.max_attempts,
            timeout: job.timeout,
        });
        let job = job.map_err(|e| (e.kind(), e.message().to_owned()));
        self.job = Some(job);
        self
    }

    /// Enqueue into `queue` instead of the definition's.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The tenant scope, carried into every job (default none).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// What to do about times missed during downtime (default [`CatchUp::Skip`]).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// How late a fire may be and still count as on time (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// What to do while the previous job is unfinished (default [`Overlap::Allow`]).
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// Delay each job by up to `jitter` after its time, the same delay for the same entry and
    /// time (default none).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether it fires (default `true`).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The name given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry. Fails with [`ErrorKind::InvalidInput`](dispatch_core::ErrorKind) without a
    /// job or when its input did not encode. The schedule is checked when it is registered.
    pub fn build(self) -> Result<CronEntry> {
        let name = self.name;
        let mut job = self
            .job
            .ok_or_else(|| Error::invalid_input(format!("cron entry `{name}` has no job")))?
            .map_err(|(kind, message)| {
                Error::new(kind, format!("cron entry `{name}`: its job input: {message}"))
            })?;
        if let Some(queue) = self.queue {
            job.queue = queue;
        }
        Ok(CronEntry {
            name,
            scope: self.scope,
            schedule: self.schedule,
            timezone: self.timezone,
            job,
            catch_up: self.catch_up,
            grace: self.grace,
            overlap: self.overlap,
            jitter: self.jitter,
            enabled: self.enabled,
        })
    }
}

impl TryFrom<CronSpec> for CronEntry {
    type Error = Error;

    fn try_from(spec: CronSpec) -> Result<Self> {
        spec.build()
    }
}
