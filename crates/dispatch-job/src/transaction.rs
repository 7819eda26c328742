//! Typed enqueue inside a store transaction: [`EnqueueTransactionExt`].
//!
//! A store that writes jobs inside the application's own transaction hands the application a
//! transaction of its own type (`SqliteTransaction`, `PostgresTransaction`); every such type
//! implements [`EnqueueTransaction`], and this extension gives it the same typed calls as
//! [`JobClient`](crate::JobClient): `tx.enqueue(&definition, input)`. The jobs exist exactly
//! when the transaction commits.
//!
//! Nothing fires from inside the transaction: no hooks (the jobs may yet be rolled back), and
//! the local worker is woken by the store after the commit, where the store does that.

use async_trait::async_trait;
use dispatch_core::{EnqueueTransaction, Enqueued, Error, JobId, Result};

use crate::definition::{EnqueueOptions, JobDefinition, JobInput};

/// Typed enqueue on any open store transaction ([`EnqueueTransaction`]); import it to call
/// `tx.enqueue(&definition, input)` inside a store's transaction body.
#[async_trait]
pub trait EnqueueTransactionExt: EnqueueTransaction {
    /// Enqueue `input` for `definition` with its defaults, in this transaction.
    async fn enqueue<I: JobInput>(
        &mut self,
        definition: &JobDefinition<I>,
        input: I,
    ) -> Result<Enqueued> {
        self.enqueue_with(definition, input, EnqueueOptions::new()).await
    }

    /// Enqueue `input` for `definition` with per-call overrides, in this transaction.
    async fn enqueue_with<I: JobInput>(
        &mut self,
        definition: &JobDefinition<I>,
        input: I,
        options: EnqueueOptions,
    ) -> Result<Enqueued> {
        let job = definition.new_job(&input, options)?;
        drop(input);
        let mut results = self.enqueue_jobs(vec![job]).await?;
        results.pop().ok_or_else(|| Error::internal("store returned no result"))
    }

    /// Enqueue many inputs of one definition with its defaults, in this transaction and one
    /// store call; each job gets its own ID.
    async fn enqueue_many<I: JobInput>(
        &mut self,
        definition: &JobDefinition<I>,
        inputs: impl IntoIterator<Item = I> + Send,
    ) -> Result<Vec<Enqueued>> {
        let jobs = inputs
            .into_iter()
            .map(|input| {
                let mut job = definition.new_job(&input, EnqueueOptions::new())?;
                job.id = JobId::new();
                Ok(job)
            })
            .collect::<Result<Vec<_>>>()?;
        self.enqueue_jobs(jobs).await
    }
}

impl<T: EnqueueTransaction + ?Sized> EnqueueTransactionExt for T {}
