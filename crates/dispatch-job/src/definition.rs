//! Typed job definitions: a name bound to an input type, a handler and defaults, plus the
//! per-enqueue overrides in [`EnqueueOptions`].

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::codec::{decode_json, encode_json};
use dispatch_core::job::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE};
use dispatch_core::{
    Backoff, ConcurrencyKey, JobId, NewJob, Result, RunAt, Scope, Timestamp, UniqueKey,
};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{JobContext, current_scope};
use crate::error::{JobError, JobResult};

/// What a job input must be: encodable to and from the JSON payload, and sendable to a worker.
pub trait JobInput: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> JobInput for T {}

type Handler<I> = Arc<dyn Fn(JobContext, I) -> BoxFuture<'static, JobResult> + Send + Sync>;

/// A job's defaults: what an enqueue gets unless it says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobDefaults {
    /// The queue (default `"default"`).
    pub queue: String,
    /// Higher runs first (default 0).
    pub priority: i32,
    /// Attempts allowed, the first included (default 25).
    pub max_attempts: u32,
    /// Time limit per attempt (default none).
    pub timeout: Option<Duration>,
    /// Delay between failed attempts (default: exponential with full jitter, 1 s to 5 min).
    pub backoff: Backoff,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            backoff: Backoff::default(),
        }
    }
}

/// A kind of job: a name, an input type `I`, an async handler and defaults.
///
/// ```
/// use dispatch_job::{JobContext, JobDefinition, JobResult};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Email { to: String }
///
/// async fn send(_ctx: JobContext, email: Email) -> JobResult {
///     println!("sending to {}", email.to);
///     Ok(())
/// }
///
/// let send_email = JobDefinition::new("send_email", send).queue("emails").max_attempts(5);
/// assert_eq!(send_email.name(), "send_email");
/// ```
///
/// The input type is part of the definition's type, so enqueueing the wrong input does not
/// compile. This compiles:
///
/// ```
/// # use dispatch_job::{JobClient, JobContext, JobDefinition};
/// # async fn enqueue(client: JobClient) -> dispatch_core::Result<()> {
/// let count = JobDefinition::new("count", |_ctx: JobContext, _n: u32| async { Ok(()) });
/// client.enqueue(&count, 7).await?;
/// client.enqueue_many(&count, [7, 8]).await?;
/// # Ok(()) }
/// ```
///
/// and the same with a string for the `u32` does not, neither one job (mismatched types)
///
/// ```compile_fail,E0308
/// # use dispatch_job::{JobClient, JobContext, JobDefinition};
/// # async fn enqueue(client: JobClient) -> dispatch_core::Result<()> {
/// let count = JobDefinition::new("count", |_ctx: JobContext, _n: u32| async { Ok(()) });
/// client.enqueue(&count, "seven").await?;
/// # Ok(()) }
/// ```
///
/// nor many (the inputs' item type is not the definition's):
///
/// ```compile_fail,E0271
/// # use dispatch_job::{JobClient, JobContext, JobDefinition};
/// # async fn enqueue(client: JobClient) -> dispatch_core::Result<()> {
/// let count = JobDefinition::new("count", |_ctx: JobContext, _n: u32| async { Ok(()) });
/// client.enqueue_many(&count, ["seven", "eight"]).await?;
/// # Ok(()) }
/// ```
///
/// (Each block is the compiling one with only the input changed, so it fails for that alone.)
pub struct JobDefinition<I> {
    name: Arc<str>,
    defaults: JobDefaults,
    handler: Handler<I>,
    _input: PhantomData<fn(I)>,
}

impl<I> Clone for JobDefinition<I> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            defaults: self.defaults.clone(),
            handler: self.handler.clone(),
            _input: PhantomData,
        }
    }
}

impl<I> fmt::Debug for JobDefinition<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobDefinition")
            .field("name", &self.name)
            .field("input", &std::any::type_name::<I>())
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl<I: JobInput> JobDefinition<I> {
    /// A job named `name` whose attempts run `handler`.
    pub fn new<F, Fut>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(JobContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let handler: Handler<I> = Arc::new(move |ctx, input| Box::pin(handler(ctx, input)));
        Self {
            name: name.into().into(),
            defaults: JobDefaults::default(),
            handler,
            _input: PhantomData,
        }
    }

    /// Default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.defaults.queue = queue.into();
        self
    }

    /// Default priority (higher runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.defaults.priority = priority;
        self
    }

    /// Default attempts allowed, the first included.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.defaults.max_attempts = max_attempts;
        self
    }

    /// Default time limit per attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.defaults.timeout = Some(timeout);
        self
    }

    /// The delay between failed attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.defaults.backoff = backoff;
        self
    }

    /// The job name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The defaults.
    pub fn defaults(&self) -> &JobDefaults {
        &self.defaults
    }

    /// The store-independent job an enqueue of `input` with `options` writes. Stores that offer
    /// enqueue inside an application's transaction take this value. The scope is the options'
    /// scope, else the scope of the job running on this task, else none.
    pub fn new_job(&self, input: &I, options: EnqueueOptions) -> Result<NewJob> {
        let d = &self.defaults;
        let unique = options.unique.map(|(key, window)| UniqueKey { key, window });
        Ok(NewJob {
            id: options.id.unwrap_or_else(JobId::new),
            name: self.name.to_string(),
            queue: options.queue.unwrap_or_else(|| d.queue.clone()),
            payload: encode_json(input)?,
            priority: options.priority.unwrap_or(d.priority),
            run_at: options.run_at.unwrap_or_default(),
            max_attempts: options.max_attempts.unwrap_or(d.max_attempts),
            timeout: options.timeout.unwrap_or(d.timeout),
            unique,
            scope: options.scope.or_else(current_scope).unwrap_or_default(),
            concurrency: options.concurrency,
        })
    }

    /// Run the handler on an encoded payload, as a worker does. A payload that does not decode
    /// is a permanent [`JobError`] naming the job, the type and the serde error.
    pub fn call(&self, ctx: JobContext, payload: &[u8]) -> BoxFuture<'static, JobResult> {
        match decode_json::<I>(&self.name, payload) {
            Ok(input) => (self.handler)(ctx, input),
            Err(error) => Box::pin(std::future::ready(Err(JobError::decode(error.message())))),
        }
    }
}

/// Per-enqueue overrides of a definition's defaults. Unset fields keep the default.
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    id: Option<JobId>,
    queue: Option<String>,
    priority: Option<i32>,
    run_at: Option<RunAt>,
    max_attempts: Option<u32>,
    timeout: Option<Option<Duration>>,
    unique: Option<(String, Option<Duration>)>,
    scope: Option<Scope>,
    concurrency: Option<ConcurrencyKey>,
}

impl EnqueueOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this ID (for example to know it before the enqueue returns).
    pub fn id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    /// At most `limit` running jobs share `key`, fleet-wide and across queues (e.g. one at a
    /// time per customer). Checked by the store at claim; see `dispatch_core::flow`.
    pub fn concurrency_key(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.concurrency = Some(ConcurrencyKey::new(key, limit));
        self
    }

    /// Enqueue to this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// With this priority (higher runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Run no earlier than `at`.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(RunAt::At(at));
        self
    }

    /// Run no earlier than `delay` from now (by the store's clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(RunAt::After(delay));
        self
    }

    /// Allow this many attempts, the first included.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Limit each attempt to `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(Some(timeout));
        self
    }

    /// No time limit, whatever the definition says.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }

    /// Only one job of this name with `key` may be available or running at a time.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique = Some((key.into(), None));
        self
    }

    /// As [`unique`](Self::unique), and the key stays held for `window` after this enqueue even
    /// when the job has finished.
    pub fn unique_for(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.unique = Some((key.into(), Some(window)));
        self
    }

    /// Under this tenant scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }
}
