//! What a run waits for, through the engine: a run suspended in an event wait, a durable sleep,
//! a step's retry backoff or a child says so in [`Run::waiting`], with its times on the store's
//! clock, and waits for nothing once it has ended.

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    Backoff, PageRequest, Run, RunFilter, RunId, RunState, Timestamp, WaitingFor, WorkflowStore,
};
use dispatch_workflow::{
    PublishOptions, RunWaitError, StartOptions, StepError, StepPolicy, WorkflowContext,
    WorkflowDefinition, Workflows,
};

use super::worker;
use crate::fixtures::eventually;

/// Long enough that nothing in these scenarios reaches it.
const HOUR: Duration = Duration::from_secs(3600);
/// How far a drive's clock may run ahead of the store's: it counts from before its snapshot
/// was read (one store call, however slow on a loaded machine), so a time it proposes is never
/// early.
const AHEAD: Duration = Duration::from_secs(60);

/// Run `id` once it is suspended.
async fn suspended(workflows: &Workflows, id: RunId) -> Run {
    eventually(&format!("run {id} to suspend"), Duration::from_secs(30), || async {
        let run = workflows.get_run(id).await.expect("get_run")?;
        (run.state == RunState::Suspended).then_some(run)
    })
    .await
}

/// Whether `at` is `after` from a moment of the drive that suspended `run`: no earlier than its
/// start, no later than its suspension (both stamped by the store), give or take how far a
/// drive's clock may run ahead.
fn drive_time(run: &Run, after: Duration, at: Timestamp) -> bool {
    run.created_at + after <= at && at <= run.updated_at + after + AHEAD
}

/// A run blocked in `wait_for_event("paid", key, timeout)` is seen through `Workflows::get_run`
/// as waiting for exactly that event, with its deadline `timeout` after the wait began; once
/// the event is published it completes and waits for nothing.
pub async fn a_run_waiting_for_an_event_says_so(store: Arc<dyn WorkflowStore>) {
    let def = WorkflowDefinition::new("payment", |wf: WorkflowContext, order: String| async move {
        let paid: Option<u32> = wf.wait_for_event("paid", &order, HOUR).await?;
        Ok(paid)
    });
    let workflows = Workflows::new(store.clone());
    let handle = worker(store).register(workflows.register(&def)).build().unwrap().start();
    let run = workflows.start(&def, &"order-7".to_owned(), StartOptions::default()).await.unwrap();
    let waiting = suspended(&workflows, run).await;
    let [WaitingFor::Event { name, correlation, deadline }] = waiting.waiting.as_slice() else {
        panic!("waits for one event: {:?}", waiting.waiting);
    };
    assert_eq!((name.as_str(), correlation.as_str()), ("paid", "order-7"));
    assert!(drive_time(&waiting, HOUR, *deadline), "deadline {deadline} of {waiting:?}");
    workflows.publish("paid", "order-7", &5u32, PublishOptions::default()).await.unwrap();
    let paid: Option<u32> = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!(paid, Some(5));
    let ended = workflows.get_run(run).await.unwrap().unwrap();
    assert_eq!((ended.state, ended.waiting), (RunState::Completed, vec![]));
}

/// A sleeping run waits for its sleep, a run in a step's backoff for that step's next attempt,
/// a parent for its child; a wait for the output that runs out says what the run waits for,
/// and a cancelled run waits for nothing.
pub async fn a_run_says_it_waits_for_a_sleep_a_retry_or_a_child(store: Arc<dyn WorkflowStore>) {
    let sleeper = WorkflowDefinition::new("sleeper", |wf: WorkflowContext, _: ()| async move {
        wf.sleep(HOUR).await
    });
    let retrier = WorkflowDefinition::new("retrier", |wf: WorkflowContext, _: ()| async move {
        let policy = StepPolicy { attempts: 3, backoff: Backoff::Constant { delay: HOUR } };
        wf.step_with("flaky", &policy, || async { Err::<(), _>(StepError::retry("not yet")) }).await
    });
    let payee = WorkflowDefinition::new("payee", |wf: WorkflowContext, key: String| async move {
        let got: Option<u32> = wf.wait_for_event("go", &key, HOUR).await?;
        Ok(got.unwrap_or_default())
    });
    let child = payee.clone();
    let payer = WorkflowDefinition::new("payer", move |wf: WorkflowContext, key: String| {
        let child = child.clone();
        async move { wf.child(&child, &key).await }
    });
    let workflows = Workflows::new(store.clone());
    let handle = worker(store)
        .register(workflows.register(&sleeper))
        .register(workflows.register(&retrier))
        .register(workflows.register(&payee))
        .register(workflows.register(&payer))
        .build()
        .unwrap()
        .start();
    let start = StartOptions::default;

    let sleeping = workflows.start(&sleeper, &(), start()).await.unwrap();
    let run = suspended(&workflows, sleeping).await;
    let [WaitingFor::Sleep { until }] = run.waiting.as_slice() else {
        panic!("waits for its sleep: {:?}", run.waiting);
    };
    assert!(drive_time(&run, HOUR, *until), "until {until} of {run:?}");
    let short = workflows.wait_for_output::<()>(sleeping, Duration::from_millis(10)).await;
    let Err(RunWaitError::TimedOut { run, .. }) = short else { panic!("{short:?}") };
    assert_eq!(
        run.waiting,
        [WaitingFor::Sleep { until: *until }],
        "the wait says what it waits for"
    );

    let retrying = workflows.start(&retrier, &(), start()).await.unwrap();
    let run = suspended(&workflows, retrying).await;
    let [WaitingFor::Retry { step, attempt: 2, at }] = run.waiting.as_slice() else {
        panic!("waits for the second attempt: {:?}", run.waiting);
    };
    assert_eq!(step, "s:flaky#1");
    assert!(drive_time(&run, HOUR, *at), "retry at {at} of {run:?}");

    let parent = workflows.start(&payer, &"k".to_owned(), start()).await.unwrap();
    let run = suspended(&workflows, parent).await;
    let filter = RunFilter { name: Some("payee".into()), state: None };
    let children = workflows.list_runs(&filter, &PageRequest::first(10)).await.unwrap().items;
    let [child] = children.as_slice() else { panic!("one child: {children:?}") };
    assert_eq!(run.waiting, [WaitingFor::Child { run: child.id, deadline: None }]);
    let child = suspended(&workflows, child.id).await;
    assert!(matches!(child.waiting.as_slice(), [WaitingFor::Event { name, .. }] if name == "go"));
    workflows.publish("go", "k", &3u32, PublishOptions::default()).await.unwrap();
    let got: u32 = workflows.wait_for_output(parent, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got, 3);
    let ended = workflows.get_run(parent).await.unwrap().unwrap();
    assert_eq!((ended.state, ended.waiting), (RunState::Completed, vec![]));

    for run in [sleeping, retrying] {
        workflows.cancel(run, "enough").await.unwrap();
        let end = workflows.wait_for_output::<()>(run, Duration::from_secs(30)).await;
        let Err(RunWaitError::Cancelled { reason, run }) = end else { panic!("{end:?}") };
        assert_eq!(
            (reason.as_str(), run.state, run.waiting),
            ("enough", RunState::Cancelled, vec![])
        );
    }
    handle.stop().await;
}
