//! Leader election: one leader under contention, terms that only grow, renewal only by the
//! current term, and leader writes fenced by the term in the store operation that makes them.

use std::collections::HashSet;

use dispatch_core::{ClusterStore, ErrorKind, Leader, WorkerId};
use futures::future::join_all;

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{assert_kind, millis, secs, share};

const NAME: &str = "conformance";
const TTL: std::time::Duration = secs(10);

/// Many contenders at once: exactly one becomes leader, under term 1; the others get `None`.
pub async fn single_leader_under_contention(ctx: TestContext<dyn ClusterStore>) {
    let contenders: Vec<WorkerId> = (0..8).map(|_| WorkerId::new()).collect();
    let calls = contenders.iter().map(|&holder| {
        let store = share(&ctx.store);
        tokio::spawn(async move { store.acquire_leadership(NAME, holder, TTL).await })
    });
    let results: Vec<Option<Leader>> =
        join_all(calls).await.into_iter().map(|r| r.expect("task").expect("acquire")).collect();
    let leaders: Vec<&Leader> = results.iter().flatten().collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {results:?}");
    let leader = leaders[0];
    assert_eq!((leader.term, leader.name.as_str()), (1, NAME));
    assert_eq!((leader.elected_at, leader.expires_at), (ctx.clock.now(), ctx.clock.now() + TTL));
    assert_eq!(ctx.store.leader(NAME).await.expect("leader").as_ref(), Some(leader));
    assert_eq!(ctx.store.leader("another").await.expect("leader"), None, "names are apart");
}

/// The holder keeps its term by acquiring or renewing; once its lease expires another takes
/// the next term, and the old term can neither renew nor resign the new one.
pub async fn term_grows_on_takeover(ctx: TestContext<dyn ClusterStore>) {
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let first = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("free");
    ctx.clock.advance(secs(6));
    assert_eq!(ctx.store.acquire_leadership(NAME, b, TTL).await.expect("acquire"), None);
    let renewed = ctx.store.renew_leadership(&first, TTL).await.expect("renew").expect("holds");
    assert_eq!((renewed.term, renewed.expires_at), (1, ctx.clock.now() + TTL));
    let again = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("a");
    assert_eq!(again.term, 1, "the holder acquiring again keeps its term");

    ctx.clock.advance(TTL);
    let second = ctx.store.acquire_leadership(NAME, b, TTL).await.expect("acquire").expect("b");
    assert_eq!((second.term, second.holder), (2, b), "expired: the next term");
    assert_eq!(ctx.store.renew_leadership(&first, TTL).await.expect("renew"), None);
    ctx.store.resign_leadership(&first).await.expect("a stale resign is no error");
    assert_eq!(ctx.store.leader(NAME).await.expect("leader"), Some(second.clone()));

    ctx.store.resign_leadership(&second).await.expect("resign");
    let third = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("free");
    assert_eq!(third.term, 3, "after a resignation the next holder gets the next term");
    let taken = ctx.store.take_leadership(NAME, b, TTL).await.expect("take");
    assert_eq!((taken.term, taken.holder), (4, b), "take moves to the next term at once");
    assert_eq!(ctx.store.renew_leadership(&third, TTL).await.expect("renew"), None);
}

/// Renewal is for the current term's holder only, and only while its lease is live: a forged
/// term of another holder, or the holder itself after expiry, gets `None` and changes nothing.
pub async fn renewal_by_a_non_holder_fails(ctx: TestContext<dyn ClusterStore>) {
    let a = WorkerId::new();
    let held = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("free");
    let forged = Leader { holder: WorkerId::new(), ..held.clone() };
    assert_eq!(ctx.store.renew_leadership(&forged, TTL).await.expect("renew"), None);
    ctx.store.resign_leadership(&forged).await.expect("resign");
    assert_eq!(ctx.store.leader(NAME).await.expect("leader"), Some(held.clone()), "unchanged");

    ctx.clock.advance(TTL + millis(1));
    assert_eq!(ctx.store.renew_leadership(&held, TTL).await.expect("renew"), None, "expired");
    let next = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("free");
    assert_eq!(next.term, 2, "the same holder comes back under a new term");
}

/// A leader write (a sweep) is accepted under the valid term and recorded; under an old term,
/// an expired one or a forged holder it fails with `NotLeader` and records nothing.
pub async fn a_write_under_an_old_term_is_rejected(ctx: TestContext<dyn ClusterStore>) {
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let timeout = secs(5);
    let first = ctx.store.acquire_leadership(NAME, a, TTL).await.expect("acquire").expect("free");
    ctx.store.sweep_workers(&first, timeout, 10).await.expect("the valid term writes");
    let at_first = ctx.clock.now();

    ctx.clock.advance(TTL);
    let expired = ctx.store.sweep_workers(&first, timeout, 10).await;
    assert_kind(expired, ErrorKind::NotLeader, "an expired term, before any takeover");
    let second = ctx.store.acquire_leadership(NAME, b, TTL).await.expect("acquire").expect("b");
    let stale = ctx.store.sweep_workers(&first, timeout, 10).await;
    assert_kind(stale, ErrorKind::NotLeader, "the old term after a takeover");
    let forged = Leader { holder: a, ..second.clone() };
    assert_kind(
        ctx.store.sweep_workers(&forged, timeout, 10).await,
        ErrorKind::NotLeader,
        "forged",
    );
    ctx.clock.advance(millis(5));
    ctx.store.sweep_workers(&second, timeout, 10).await.expect("the new term writes");

    let writes = ctx.store.leader_writes(NAME, 100).await.expect("writes");
    let seen: Vec<(u64, &str)> = writes.iter().map(|w| (w.term, w.action.as_str())).collect();
    assert_eq!(seen, vec![(1, "sweep"), (2, "sweep")], "only the accepted writes");
    assert_eq!(writes[0].at, at_first);
    assert_eq!(writes[1].at, ctx.clock.now());
    assert!(writes.iter().all(|w| w.name == NAME));
    let last = ctx.store.leader_writes(NAME, 1).await.expect("writes");
    assert_eq!(last.iter().map(|w| w.term).collect::<Vec<_>>(), vec![2], "the newest `limit`");
}

/// Contenders racing through many expiries: every term is held by one holder, terms grow by
/// one, and the record of accepted writes never goes back to an older term.
pub async fn terms_never_overlap_under_churn(ctx: TestContext<dyn ClusterStore>) {
    let contenders: Vec<WorkerId> = (0..4).map(|_| WorkerId::new()).collect();
    let mut terms = Vec::new();
    for _ in 0..5 {
        let calls = contenders.iter().map(|&holder| {
            let store = share(&ctx.store);
            tokio::spawn(async move {
                let leader = store.acquire_leadership(NAME, holder, TTL).await.expect("acquire");
                match leader {
                    Some(term) => Some(store.sweep_workers(&term, secs(5), 10).await.map(|_| term)),
                    None => None,
                }
            })
        });
        let won: Vec<Leader> = join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| r.expect("task"))
            .map(|write| write.expect("the winner's write is accepted"))
            .collect();
        assert_eq!(won.len(), 1, "one winner per round: {won:?}");
        terms.push(won[0].term);
        ctx.clock.advance(TTL);
    }
    assert_eq!(terms, vec![1, 2, 3, 4, 5]);
    let writes = ctx.store.leader_writes(NAME, 100).await.expect("writes");
    let recorded: Vec<u64> = writes.iter().map(|w| w.term).collect();
    assert_eq!(recorded, terms);
    let distinct: HashSet<u64> = recorded.iter().copied().collect();
    assert_eq!(distinct.len(), recorded.len());
}
