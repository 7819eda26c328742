//! What a suspended run waits for ([`Run::waiting`](dispatch_core::Run::waiting)): written by the
//! suspend, read back exactly as given, and gone once the run leaves `Suspended` (driven again,
//! ended, rewound).

use dispatch_core::{
    EventWait, FinishResult, JobState, Outcome, RunEnd, RunFilter, RunId, RunState, Suspend,
    SuspendOutcome, WaitingFor, WorkflowStore,
};

use dispatch_core::Clock as _;

use super::new_run;
use crate::TestContext;
use crate::support::{failure, secs};

/// A suspend of `run` (driven under `lease`) on event `paid`/`order-7` (its checkpoint `key`)
/// and a sleep, listing every kind of [`WaitingFor`]; what it lists.
async fn suspend_on_event_and_sleep(
    ctx: &TestContext<dyn WorkflowStore>,
    lease: dispatch_core::LeaseRef,
    run: RunId,
    key: &str,
) -> Vec<WaitingFor> {
    let now = ctx.clock.now();
    let (until, deadline) = (now + secs(30), now + secs(60));
    let wait =
        EventWait { key: key.into(), name: "paid".into(), correlation: "order-7".into(), deadline };
    let waiting = vec![
        WaitingFor::Sleep { until },
        WaitingFor::Event { name: "paid".into(), correlation: "order-7".into(), deadline },
        WaitingFor::Child { run: RunId::new(), deadline: None },
        WaitingFor::Retry { step: "s:charge#1".into(), attempt: 2, at: until },
    ];
    let suspend = Suspend { run, until: Some(until), waits: vec![wait], waiting: waiting.clone() };
    let outcome = ctx.store.suspend_run(lease, suspend).await.expect("suspend_run");
    assert!(matches!(outcome, SuspendOutcome::Suspended { .. }), "{outcome:?}");
    waiting
}

impl TestContext<dyn WorkflowStore> {
    async fn waiting(&self, run: RunId) -> Vec<WaitingFor> {
        self.store.get_run(run).await.expect("get_run").expect("run").waiting
    }
}

/// A suspended run reads back with exactly what its suspend said it waits for (by ID and in a
/// listing); once a delivery wakes it and the next drive loads it, it waits for nothing, and
/// ending it leaves nothing either.
pub async fn suspended_run_says_what_it_waits_for(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("waiting").await;
    assert_eq!(ctx.waiting(run).await, [], "a new run waits for nothing");
    let lease = ctx.drive(run).await;
    let waiting = suspend_on_event_and_sleep(&ctx, lease, run, "w:paid#1").await;
    let stored = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((stored.state, &stored.waiting), (RunState::Suspended, &waiting));
    let filter = RunFilter { state: Some(RunState::Suspended), ..RunFilter::default() };
    let page = ctx.store.list_runs(&filter, &dispatch_core::PageRequest::first(10)).await;
    assert_eq!(page.unwrap().items, [stored], "a listing reads the same");

    let published = ctx.publish("paid", "order-7", "yes", false).await;
    assert_eq!(published.delivered_to, [run]);
    let lease = ctx.drive(run).await;
    let snapshot = ctx.store.load_snapshot(lease, run).await.unwrap();
    assert_eq!((snapshot.run.state, snapshot.run.waiting), (RunState::Running, vec![]));
    let resumed = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((resumed.state, resumed.waiting), (RunState::Running, vec![]), "driven again");

    suspend_on_event_and_sleep(&ctx, lease, run, "w:paid#2").await;
    ctx.clock.advance(secs(30));
    let lease = ctx.drive(run).await;
    ctx.store.end_run(lease, run, RunEnd::Completed(b"1".to_vec())).await.unwrap();
    let ended = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((ended.state, ended.waiting), (RunState::Completed, vec![]), "ended");
}

/// A suspended run that is rewound, ends without its snapshot being loaded again (a drive that
/// winds it down at once), or fails as its drive job dies before any drive loaded it, waits for
/// nothing afterwards.
pub async fn a_run_leaving_suspended_waits_for_nothing(ctx: TestContext<dyn WorkflowStore>) {
    let run = ctx.start("rewound").await;
    let lease = ctx.drive(run).await;
    ctx.store
        .save_checkpoints(lease, run, vec![dispatch_core::NewCheckpoint::new("s:a#1", vec![1])])
        .await
        .unwrap();
    suspend_on_event_and_sleep(&ctx, lease, run, "w:paid#1").await;
    ctx.store.rewind_run(run, "s:a#1").await.unwrap();
    let rewound = ctx.store.get_run(run).await.unwrap().unwrap();
    assert_eq!((rewound.state, rewound.waiting), (RunState::Running, vec![]), "rewound");
    let lease = ctx.drive(run).await;
    ctx.store.end_run(lease, run, RunEnd::Completed(b"1".to_vec())).await.unwrap();

    let cancelled = ctx.start("cancelled").await;
    let lease = ctx.drive(cancelled).await;
    suspend_on_event_and_sleep(&ctx, lease, cancelled, "w:paid#1").await;
    ctx.store.request_run_cancel(cancelled, "stop").await.unwrap();
    assert_eq!(ctx.run_state(cancelled).await, RunState::Suspended);
    assert_eq!(ctx.waiting(cancelled).await.len(), 4, "a cancel request alone changes nothing");
    let lease = ctx.drive(cancelled).await;
    ctx.store.end_run(lease, cancelled, RunEnd::Cancelled("stop".into())).await.unwrap();
    let ended = ctx.store.get_run(cancelled).await.unwrap().unwrap();
    assert_eq!((ended.state, ended.waiting), (RunState::Cancelled, vec![]), "ended");

    let (fragile, mut drive) = new_run("fragile");
    drive.max_attempts = 1;
    let fragile = ctx.store.start_run(fragile, drive).await.unwrap().id();
    let lease = ctx.drive(fragile).await;
    suspend_on_event_and_sleep(&ctx, lease, fragile, "w:paid#1").await;
    ctx.clock.advance(secs(30));
    let lease = ctx.drive(fragile).await;
    let result = ctx.finish(lease, Outcome::Fail { failure: failure("worker crashed") }).await;
    assert!(matches!(result, FinishResult::Applied { state: JobState::Dead, .. }), "{result:?}");
    let died = ctx.store.get_run(fragile).await.unwrap().unwrap();
    assert_eq!((died.state, died.waiting), (RunState::Failed, vec![]), "its drive job died");
}
