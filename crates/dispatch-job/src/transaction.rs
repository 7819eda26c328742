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

#[cfg(test)]
mod tests {
    use dispatch_core::NewJob;

    use super::*;
    use crate::JobContext;

    /// A transaction that keeps what it is given.
    #[derive(Default)]
    struct Recording(Vec<NewJob>);

    #[async_trait]
    impl EnqueueTransaction for Recording {
        async fn enqueue_jobs(&mut self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
            let results = jobs.iter().map(|job| Enqueued::Created(job.id)).collect();
            self.0.extend(jobs);
            Ok(results)
        }
    }

    #[tokio::test]
    async fn typed_calls_build_jobs_from_the_definition() {
        let ship = JobDefinition::new("ship", |_ctx: JobContext, _order: u32| async { Ok(()) })
            .queue("shipping");
        let mut tx = Recording::default();
        let one = tx.enqueue(&ship, 1).await.unwrap();
        let id = JobId::new();
        let two =
            tx.enqueue_with(&ship, 2, EnqueueOptions::new().id(id).priority(5)).await.unwrap();
        let many = tx.enqueue_many(&ship, [3, 4]).await.unwrap();
        assert_eq!(two.id(), id);
        let ids: Vec<JobId> = tx.0.iter().map(|job| job.id).collect();
        assert_eq!(ids, [one.id(), two.id(), many[0].id(), many[1].id()]);
        assert_ne!(many[0].id(), many[1].id(), "each of many gets its own ID");
        let payloads: Vec<&[u8]> = tx.0.iter().map(|job| job.payload.as_slice()).collect();
        assert_eq!(payloads, [b"1", b"2", b"3", b"4"]);
        assert!(tx.0.iter().all(|job| job.name == "ship" && job.queue == "shipping"));
        assert_eq!(tx.0[1].priority, 5);
    }
}
