//! The Dispatch quickstart: four jobs, their hooks as a timeline, their final states and the DLQ.
//!
//! Run it with `cargo run -p quickstart`. It enqueues a job that succeeds, one that fails twice
//! then succeeds, one that always fails and lands in the dead letter queue, and one scheduled 2 s
//! ahead; then it waits for all four to settle, prints what happened, and exits.
//!
//! Jobs live in a SQLite file: `DISPATCH_DATABASE_URL` (a path or a `sqlite:` URL), by default
//! `dispatch-quickstart.db` in the working directory. Each run adds its own four jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use dispatch::core::DlqEntry;
use dispatch::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Welcome {
    user: String,
}

#[derive(Serialize, Deserialize)]
struct Charge {
    order: u32,
    cents: u64,
}

/// Prints each lifecycle event as it happens.
struct Timeline {
    started: tokio::time::Instant,
}

#[async_trait::async_trait]
impl Hook for Timeline {
    async fn on_event(&self, event: &Event) {
        let at = self.started.elapsed().as_secs_f64();
        let Some(job) = event.job() else { return };
        let what = match event {
            Event::JobEnqueued { .. } => "enqueued".to_owned(),
            Event::JobStarted { attempt, .. } => format!("started attempt {attempt}"),
            Event::JobRetrying { attempt, delay, failure, .. } => {
                format!("attempt {attempt} failed ({}), retrying in {delay:?}", failure.message)
            }
            Event::JobCompleted { attempt, .. } => format!("completed on attempt {attempt}"),
            Event::JobFailed { attempt, .. } => format!("failed for good on attempt {attempt}"),
            Event::JobPromoted { .. } => "moved to the dead letter queue".to_owned(),
            _ => return,
        };
        println!("  {at:>5.2}s  {:<13} {what}", job.name);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let welcome = JobDefinition::new("send_welcome", |_ctx: JobContext, w: Welcome| async move {
        println!("           (welcoming {})", w.user);
        Ok(())
    });
    let tries = Arc::new(AtomicU32::new(0));
    let counter = tries.clone();
    let sync = JobDefinition::new("sync_crm", move |_ctx: JobContext, _: ()| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if attempt <= 2 {
                return Err(JobError::retry("crm unavailable"));
            }
            Ok(())
        }
    })
    .backoff(Backoff::Constant { delay: Duration::from_millis(300) });
    let charge = JobDefinition::new("charge_card", |_ctx: JobContext, c: Charge| async move {
        Err(JobError::retry(format!("card declined for order {} ({} cents)", c.order, c.cents)))
    })
    .max_attempts(3)
    .backoff(Backoff::Exponential {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    });
    let reminder = JobDefinition::new("send_reminder", |_ctx: JobContext, w: Welcome| async move {
        println!("           (reminding {})", w.user);
        Ok(())
    });

    let database =
        std::env::var("DISPATCH_DATABASE_URL").unwrap_or_else(|_| "dispatch-quickstart.db".into());
    let store =
        SqliteStore::open(&database).await.with_context(|| format!("opening {database}"))?;
    println!("store: SQLite at {database}");
    let mut dispatcher = Dispatcher::builder()
        .store(store)
        .register(welcome.clone())
        .register(sync.clone())
        .register(charge.clone())
        .register(reminder.clone())
        .concurrency(4)
        .hook(Timeline { started: tokio::time::Instant::now() })
        .build()?;
    dispatcher.start().await?;

    println!("timeline:");
    let ids = [
        dispatcher.enqueue(&welcome, Welcome { user: "ada".into() }).await?.id(),
        dispatcher.enqueue(&sync, ()).await?.id(),
        dispatcher.enqueue(&charge, Charge { order: 42, cents: 1999 }).await?.id(),
        dispatcher
            .enqueue_with(
                &reminder,
                Welcome { user: "grace".into() },
                EnqueueOptions::new().delay(Duration::from_secs(2)),
            )
            .await?
            .id(),
    ];

    let jobs = dispatcher.wait_all(ids, Duration::from_secs(15)).await?;
    dispatcher.stop().await;

    println!("\nfinal states:");
    for job in &jobs {
        println!("  {:<13} {:<9} after {} attempt(s)", job.name, job.state, job.attempt);
    }
    let dead = jobs.iter().find(|j| j.state == JobState::Dead).context("no job reached the DLQ")?;
    let entry = dispatcher.get_dlq(dead.dlq_id.context("dead job has no DLQ entry")?).await?;
    print_dlq_entry(&entry.context("DLQ entry missing")?);
    Ok(())
}

fn print_dlq_entry(entry: &DlqEntry) {
    println!("\ndead letter queue entry {}:", entry.id);
    println!("  job {} ({}) on queue {:?}", entry.job_id, entry.name, entry.queue);
    println!("  payload {}", String::from_utf8_lossy(&entry.payload));
    println!("  {} of {} attempts, errors:", entry.attempts, entry.max_attempts);
    for error in &entry.errors {
        println!("    attempt {}: {} ({})", error.attempt, error.message, error.kind.as_str());
    }
}
