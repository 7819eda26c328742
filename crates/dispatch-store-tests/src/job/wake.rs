//! Push wake-ups: a store that says it pushes hands out streams that see its enqueues and
//! replays.

use dispatch_core::Replay;

use crate::TestContext;
use crate::support::{job_in, next_for};
use dispatch_core::ReplayOptions;

/// When the store pushes (`wakeups()` answers `Some`), every subscriber hears of an enqueue
/// (single and batched, across queues) and of a DLQ replay, in the queue concerned. A store that
/// does not push has nothing to check here: its workers poll.
pub async fn wakeups_follow_enqueues_and_replays(ctx: TestContext) {
    let Some(mut first) = ctx.store.wakeups() else {
        return;
    };
    let mut second = ctx.store.wakeups().expect("every subscriber gets a stream");

    ctx.enqueue_one(job_in("send", "mail")).await;
    next_for(&mut first, "mail").await;
    next_for(&mut second, "mail").await;

    ctx.enqueue(vec![job_in("send", "mail"), job_in("resize", "images")]).await;
    next_for(&mut first, "images").await;

    let (_, dlq_id) = ctx.kill("fragile", "critical").await;
    let replay = ctx.store.replay_dlq(dlq_id, &ReplayOptions::default()).await.expect("replay");
    assert!(matches!(replay, Replay::Replayed(_)), "{replay:?}");
    next_for(&mut first, "critical").await;
    next_for(&mut second, "critical").await;
}
