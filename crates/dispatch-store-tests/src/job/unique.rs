//! Unique keys: one holder per (name, key) while available or running, or within its window.

use std::time::Duration;

use dispatch_core::{Enqueued, JobFilter, JobState, NewJob, Outcome, UniqueKey};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{failure, job, lease, millis, secs, share};

fn keyed(name: &str, key: &str, window: Option<Duration>) -> NewJob {
    let mut new = job(name);
    new.unique = Some(UniqueKey { key: key.to_owned(), window });
    new
}

async fn enqueue_keyed(ctx: &TestContext, new: NewJob) -> Enqueued {
    let results = ctx.store.enqueue(vec![new]).await.expect("enqueue");
    assert_eq!(results.len(), 1);
    results[0]
}

/// 100 concurrent enqueues of one (name, key): exactly one is created, the other 99 are
/// duplicates naming it, and one job is stored.
pub async fn unique_concurrent_enqueues_create_one(ctx: TestContext) {
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = share(&ctx.store);
            tokio::spawn(async move {
                let new = keyed("report", "2030-01", None);
                let id = new.id;
                let result = store.enqueue(vec![new]).await.expect("enqueue");
                (id, result)
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        let (id, result) = task.await.expect("enqueue task");
        assert_eq!(result.len(), 1);
        match result[0] {
            Enqueued::Created(got) => {
                assert_eq!(got, id, "Created carries the job's own ID");
                created.push(got);
            }
            Enqueued::Duplicate(holder) => {
                assert_ne!(holder, id, "a duplicate names the holder, not itself");
                duplicates.push(holder);
            }
        }
    }
    assert_eq!(created.len(), 1, "exactly one created");
    assert_eq!(duplicates.len(), 99);
    assert!(duplicates.iter().all(|&d| d == created[0]), "every duplicate names the holder");
    let stored = ctx.list_all(&JobFilter::default()).await;
    assert_eq!(stored.len(), 1, "one job stored");
    assert_eq!(stored[0].id, created[0]);
    assert_eq!(stored[0].unique_key.as_deref(), Some("2030-01"));
}

/// A key repeated within one batch: the first item is created, the later one is a duplicate of
/// it and is not stored; other items of the batch are stored.
pub async fn unique_duplicate_within_batch(ctx: TestContext) {
    let first = keyed("sync", "user-1", None);
    let second = keyed("sync", "user-1", None);
    let plain = job("sync");
    let (first_id, second_id, plain_id) = (first.id, second.id, plain.id);
    let results = ctx.store.enqueue(vec![first, plain, second]).await.expect("enqueue");
    assert_eq!(
        results,
        vec![
            Enqueued::Created(first_id),
            Enqueued::Created(plain_id),
            Enqueued::Duplicate(first_id)
        ]
    );
    assert_eq!(ctx.store.get_job(second_id).await.expect("get_job"), None, "not stored");
    assert_eq!(ctx.list_all(&JobFilter::default()).await.len(), 2);

    // A later enqueue of the key is a duplicate of the stored holder.
    let later = enqueue_keyed(&ctx, keyed("sync", "user-1", None)).await;
    assert_eq!(later, Enqueued::Duplicate(first_id));
}

/// Keys are scoped by job name: the same key under another name is not a duplicate; another key
/// under the same name is not either.
pub async fn unique_key_scoped_by_name(ctx: TestContext) {
    let a = keyed("alpha", "k", None);
    let b = keyed("beta", "k", None);
    let c = keyed("alpha", "k2", None);
    let ids = [a.id, b.id, c.id];
    let results = ctx.store.enqueue(vec![a, b, c]).await.expect("enqueue");
    assert_eq!(results, ids.map(Enqueued::Created).to_vec());
    let d = keyed("gamma", "k", None);
    let d_id = d.id;
    assert_eq!(enqueue_keyed(&ctx, d).await, Enqueued::Created(d_id));
}

/// The key is held while its job is available or running, and free once it is completed,
/// cancelled or dead.
pub async fn unique_key_freed_by_final_state(ctx: TestContext) {
    let holder = ctx.enqueue_one(keyed("once", "k", None)).await;
    let dup = enqueue_keyed(&ctx, keyed("once", "k", None)).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held while available");
    let claimed = ctx.claim_one("once").await;
    let dup = enqueue_keyed(&ctx, keyed("once", "k", None)).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held while running");
    // A snooze keeps it held: the job is available again.
    ctx.finish(lease(&claimed), Outcome::Snooze { run_at: dispatch_core::RunAt::Now }).await;
    let dup = enqueue_keyed(&ctx, keyed("once", "k", None)).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held after a snooze");
    let claimed = ctx.claim_one("once").await;
    ctx.finish(lease(&claimed), Outcome::Complete).await;

    // Completed: free.
    let next = keyed("once", "k", None);
    let next_id = next.id;
    assert_eq!(enqueue_keyed(&ctx, next).await, Enqueued::Created(next_id), "free after complete");

    // Cancelled: free.
    ctx.store.request_job_cancel(next_id).await.expect("cancel");
    let third = keyed("once", "k", None);
    let third_id = third.id;
    assert_eq!(enqueue_keyed(&ctx, third).await, Enqueued::Created(third_id), "free after cancel");

    // Dead: free.
    let claimed = ctx.claim_one("once").await;
    assert_eq!(claimed.job.id, third_id);
    ctx.finish(lease(&claimed), Outcome::Fail { failure: failure("gone") }).await;
    assert_eq!(ctx.job(third_id).await.state, JobState::Dead);
    let fourth = keyed("once", "k", None);
    let fourth_id = fourth.id;
    assert_eq!(enqueue_keyed(&ctx, fourth).await, Enqueued::Created(fourth_id), "free after death");
}

/// With a window of 60 s the key stays held after the holder completes, until 60 s after the
/// holder's enqueue; then it is free.
pub async fn unique_window_holds_key_after_finish(ctx: TestContext) {
    let t0 = ctx.clock.now();
    let holder = ctx.enqueue_one(keyed("digest", "daily", Some(secs(60)))).await;
    ctx.clock.advance(secs(1));
    let claimed = ctx.claim_one("digest").await;
    ctx.finish(lease(&claimed), Outcome::Complete).await;

    let dup = enqueue_keyed(&ctx, keyed("digest", "daily", Some(secs(60)))).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held within the window after completion");
    ctx.clock.set(t0 + secs(60) - millis(1));
    let dup = enqueue_keyed(&ctx, keyed("digest", "daily", Some(secs(60)))).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held until 60 s after enqueue");

    ctx.clock.set(t0 + secs(60));
    let next = keyed("digest", "daily", Some(secs(60)));
    let next_id = next.id;
    assert_eq!(enqueue_keyed(&ctx, next).await, Enqueued::Created(next_id), "free at 60 s");
    let dup = enqueue_keyed(&ctx, keyed("digest", "daily", None)).await;
    assert_eq!(dup, Enqueued::Duplicate(next_id), "the new job holds it now");
}

/// A window that has passed does not free a key whose holder is still available or running.
pub async fn unique_window_does_not_free_live_holder(ctx: TestContext) {
    let holder = ctx.enqueue_one(keyed("slowpoke", "k", Some(secs(10)))).await;
    ctx.clock.advance(secs(20));
    let dup = enqueue_keyed(&ctx, keyed("slowpoke", "k", Some(secs(10)))).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held while available");
    let claimed = ctx.claim_one("slowpoke").await;
    ctx.clock.advance(secs(20));
    let dup = enqueue_keyed(&ctx, keyed("slowpoke", "k", Some(secs(10)))).await;
    assert_eq!(dup, Enqueued::Duplicate(holder), "held while running");
    ctx.finish(lease(&claimed), Outcome::Complete).await;
    let next = keyed("slowpoke", "k", Some(secs(10)));
    let next_id = next.id;
    assert_eq!(enqueue_keyed(&ctx, next).await, Enqueued::Created(next_id), "window long gone");
}

/// A duplicate stores nothing and changes nothing: the holder keeps its own payload, priority,
/// run-at and options, whatever the duplicate carried.
pub async fn unique_duplicate_leaves_holder_untouched(ctx: TestContext) {
    let mut first = keyed("invoice", "order-7", None);
    first.payload = b"first".to_vec();
    let holder = ctx.enqueue_one(first).await;
    let before = ctx.job(holder).await;
    ctx.clock.advance(secs(5));

    let mut second = keyed("invoice", "order-7", Some(secs(3600)));
    second.payload = b"second".to_vec();
    second.priority = 99;
    second.max_attempts = 1;
    second.run_at = dispatch_core::RunAt::After(secs(600));
    second.timeout = Some(secs(1));
    let second_id = second.id;
    assert_eq!(enqueue_keyed(&ctx, second).await, Enqueued::Duplicate(holder));
    assert_eq!(ctx.job(holder).await, before, "the holder is untouched");
    assert_eq!(ctx.store.get_job(second_id).await.expect("get_job"), None, "not stored");

    // The duplicate's window was not applied to the holder: the key is free once it completes.
    let claimed = ctx.claim_one("invoice").await;
    assert_eq!(claimed.job.id, holder);
    ctx.finish(lease(&claimed), Outcome::Complete).await;
    let third = keyed("invoice", "order-7", None);
    let third_id = third.id;
    assert_eq!(enqueue_keyed(&ctx, third).await, Enqueued::Created(third_id));
}
