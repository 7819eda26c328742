//! Enqueue: validation before anything is written, all-or-nothing batches.

use dispatch_core::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use dispatch_core::job::MAX_NAME_LEN;
use dispatch_core::{Enqueued, ErrorKind, JobFilter, JobState, UniqueKey};

use crate::TestContext;
use crate::support::{assert_kind, job, secs};

/// A payload one byte over the default limit fails with `PayloadTooLarge`; nothing is stored.
pub async fn enqueue_rejects_oversized_payload(ctx: TestContext) {
    let big = dispatch_core::NewJob::new("big", vec![b'x'; DEFAULT_MAX_PAYLOAD_BYTES + 1]);
    let id = big.id;
    assert_kind(ctx.store.enqueue(vec![big]).await, ErrorKind::PayloadTooLarge, "oversized");
    assert_eq!(ctx.store.get_job(id).await.expect("get_job"), None, "nothing stored");
    assert!(ctx.list_all(&JobFilter::default()).await.is_empty(), "nothing stored");
}

/// A batch with one good job and one oversized job fails and stores neither.
pub async fn enqueue_oversized_item_fails_whole_batch(ctx: TestContext) {
    let good = job("good");
    let big = dispatch_core::NewJob::new("big", vec![0; DEFAULT_MAX_PAYLOAD_BYTES + 1]);
    let (good_id, big_id) = (good.id, big.id);
    assert_kind(ctx.store.enqueue(vec![good, big]).await, ErrorKind::PayloadTooLarge, "batch");
    assert_eq!(ctx.store.get_job(good_id).await.expect("get_job"), None, "good job not stored");
    assert_eq!(ctx.store.get_job(big_id).await.expect("get_job"), None, "big job not stored");
    assert!(ctx.list_all(&JobFilter::default()).await.is_empty(), "nothing stored");
    assert!(ctx.store.count_jobs().await.expect("count_jobs").is_empty(), "nothing counted");
    ctx.claim_none("good").await;
}

/// A payload of exactly the default limit is accepted and comes back byte for byte.
pub async fn enqueue_accepts_payload_at_limit(ctx: TestContext) {
    let payload: Vec<u8> = (0..DEFAULT_MAX_PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    let id = ctx.enqueue_one(dispatch_core::NewJob::new("edge", payload.clone())).await;
    assert_eq!(ctx.job(id).await.payload, payload);
}

/// Every rule of [`NewJob::validate`](dispatch_core::NewJob::validate) is enforced with
/// `InvalidInput`, and a batch with one invalid item stores nothing.
pub async fn enqueue_rejects_invalid_options(ctx: TestContext) {
    let mut zero = job("zero");
    zero.max_attempts = 0;
    assert_kind(ctx.store.enqueue(vec![zero]).await, ErrorKind::InvalidInput, "max_attempts 0");

    assert_kind(ctx.store.enqueue(vec![job("")]).await, ErrorKind::InvalidInput, "empty name");
    let long = "n".repeat(MAX_NAME_LEN + 1);
    assert_kind(ctx.store.enqueue(vec![job(&long)]).await, ErrorKind::InvalidInput, "long name");

    let mut no_queue = job("q");
    no_queue.queue = String::new();
    assert_kind(ctx.store.enqueue(vec![no_queue]).await, ErrorKind::InvalidInput, "empty queue");
    let mut long_queue = job("q");
    long_queue.queue = "q".repeat(MAX_NAME_LEN + 1);
    assert_kind(ctx.store.enqueue(vec![long_queue]).await, ErrorKind::InvalidInput, "long queue");

    let mut empty_key = job("k");
    empty_key.unique = Some(UniqueKey { key: String::new(), window: None });
    assert_kind(ctx.store.enqueue(vec![empty_key]).await, ErrorKind::InvalidInput, "empty key");

    let good = job("good");
    let good_id = good.id;
    let mut bad = job("bad");
    bad.max_attempts = 0;
    assert_kind(ctx.store.enqueue(vec![good, bad]).await, ErrorKind::InvalidInput, "batch");
    assert_eq!(ctx.store.get_job(good_id).await.expect("get_job"), None, "good job not stored");
    assert!(ctx.list_all(&JobFilter::default()).await.is_empty(), "nothing stored");

    // Names of exactly the longest length are fine.
    let mut edge = job(&"n".repeat(MAX_NAME_LEN));
    edge.queue = "q".repeat(MAX_NAME_LEN);
    let id = ctx.enqueue_one(edge).await;
    assert_eq!(ctx.job(id).await.name.len(), MAX_NAME_LEN);
}

/// An ID already stored, or twice in one batch, fails with `Conflict` and stores nothing; the
/// stored job is untouched.
pub async fn enqueue_rejects_duplicate_ids(ctx: TestContext) {
    let first = job("first");
    let id = ctx.enqueue_one(first.clone()).await;
    let before = ctx.job(id).await;

    let mut again = job("again");
    again.id = id;
    again.priority = 9;
    let bystander = job("bystander");
    let bystander_id = bystander.id;
    assert_kind(ctx.store.enqueue(vec![bystander, again]).await, ErrorKind::Conflict, "stored ID");
    assert_eq!(ctx.job(id).await, before, "the stored job is untouched");
    assert_eq!(ctx.store.get_job(bystander_id).await.expect("get_job"), None, "nothing stored");

    let twin = job("twin");
    let twin_id = twin.id;
    assert_kind(ctx.store.enqueue(vec![twin.clone(), twin]).await, ErrorKind::Conflict, "twins");
    assert_eq!(ctx.store.get_job(twin_id).await.expect("get_job"), None, "nothing stored");
    assert_eq!(ctx.list_all(&JobFilter::default()).await.len(), 1, "only the first job");
}

/// An empty batch succeeds with no results and stores nothing.
pub async fn enqueue_empty_batch_is_empty(ctx: TestContext) {
    let results = ctx.store.enqueue(Vec::new()).await.expect("enqueue of nothing");
    assert!(results.is_empty(), "{results:?}");
    assert!(ctx.store.count_jobs().await.expect("count_jobs").is_empty());
}

/// A retried enqueue (the first call committed, its answer was lost) answers what the first call
/// answered: a stored ID with the same name and payload is `Created` again and nothing changes,
/// a unique-key duplicate is a duplicate of the same holder, and new items of the batch are
/// stored. The same ID with another name or payload is a reuse: `Conflict`, nothing stored.
pub async fn enqueue_retry_answers_as_the_first_call(ctx: TestContext) {
    let plain = job("plain");
    let mut keyed = job("keyed");
    keyed.unique = Some(UniqueKey { key: "k".into(), window: None });
    let mut dup = job("keyed");
    dup.unique = keyed.unique.clone();
    let batch = vec![plain.clone(), keyed.clone(), dup.clone()];
    let first = ctx.store.enqueue(batch.clone()).await.expect("first enqueue");
    let expected = vec![
        Enqueued::Created(plain.id),
        Enqueued::Created(keyed.id),
        Enqueued::Duplicate(keyed.id),
    ];
    assert_eq!(first, expected, "first call");
    ctx.claim_one("plain").await;
    let running = ctx.job(plain.id).await;
    ctx.clock.advance(secs(5));

    let extra = job("extra");
    let mut retry = batch.clone();
    retry.push(extra.clone());
    let again = ctx.store.enqueue(retry).await.expect("retried enqueue");
    let mut expected_again = expected.clone();
    expected_again.push(Enqueued::Created(extra.id));
    assert_eq!(again, expected_again, "a retry answers as the first call, new items are stored");
    assert_eq!(ctx.job(plain.id).await, running, "the retried job is untouched");
    assert_eq!(ctx.job(extra.id).await.state, JobState::Available, "the new item is stored");
    assert_eq!(ctx.list_all(&JobFilter::default()).await.len(), 3, "plain, keyed and extra");

    let mut other_payload = plain.clone();
    other_payload.payload = b"{\"other\":1}".to_vec();
    let mut other_name = plain.clone();
    other_name.name = "renamed".into();
    for reuse in [other_payload, other_name] {
        let bystander = job("bystander");
        let bystander_id = bystander.id;
        let result = ctx.store.enqueue(vec![bystander, reuse]).await;
        assert_kind(result, ErrorKind::Conflict, "a reused ID");
        assert_eq!(ctx.store.get_job(bystander_id).await.expect("get_job"), None, "nothing stored");
    }
    let twice = ctx.store.enqueue(vec![plain.clone(), plain.clone()]).await;
    assert_kind(twice, ErrorKind::Conflict, "a stored ID twice in one batch");
    assert_eq!(ctx.job(plain.id).await, running, "the stored job is untouched");
    assert_eq!(ctx.list_all(&JobFilter::default()).await.len(), 3, "nothing more stored");
}
