//! Correlated events: one event per waiter, keys, timeouts, early events, broadcast.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{RunId, RunState, WorkflowStore};
use dispatch_workflow::{
    PublishOptions, StartOptions, StepError, WorkflowContext, WorkflowDefinition, Workflows,
};
use parking_lot::Mutex;

use super::{wait_state, worker};

/// Waits for `paid` on its input key for `timeout` ms; returns the payload or -1, and counts
/// how often it completed per key.
fn waiter(done: Arc<Mutex<HashMap<String, u32>>>) -> WorkflowDefinition<(String, u64), i64> {
    WorkflowDefinition::new("waiter", move |wf: WorkflowContext, (key, timeout): (String, u64)| {
        let done = done.clone();
        async move {
            let got: Option<i64> =
                wf.wait_for_event("paid", &key, Duration::from_millis(timeout)).await?;
            let value = got.unwrap_or(-1);
            wf.step("record", || {
                let (done, key) = (done.clone(), key.clone());
                async move {
                    *done.lock().entry(key).or_default() += 1;
                    Ok::<_, StepError>(())
                }
            })
            .await?;
            Ok(value)
        }
    })
}

async fn setup(
    store: Arc<dyn WorkflowStore>,
    done: Arc<Mutex<HashMap<String, u32>>>,
) -> (Workflows, WorkflowDefinition<(String, u64), i64>, dispatch_job::WorkerHandle) {
    let workflows = Workflows::new(store.clone());
    let def = waiter(done);
    let handle =
        worker(store).register(workflows.register(&def)).concurrency(16).build().unwrap().start();
    (workflows, def, handle)
}

async fn all_suspended(workflows: &Workflows, runs: &[RunId]) {
    for run in runs {
        wait_state(workflows, *run, RunState::Suspended).await;
    }
}

/// 50 runs waiting on one name with 50 keys, 50 events: each run completes exactly once with
/// its own event.
pub async fn fifty_keys_fifty_events(store: Arc<dyn WorkflowStore>) {
    let done = Arc::new(Mutex::new(HashMap::new()));
    let (workflows, def, handle) = setup(store, done.clone()).await;
    let mut runs = Vec::new();
    for i in 0..50 {
        runs.push(
            workflows
                .start(&def, &(format!("k{i}"), 60_000), StartOptions::default())
                .await
                .unwrap(),
        );
    }
    all_suspended(&workflows, &runs).await;
    for i in 0..50i64 {
        let published = workflows
            .publish("paid", &format!("k{i}"), &i, PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(published.delivered_to, vec![runs[i as usize]]);
    }
    for (i, run) in runs.iter().enumerate() {
        let got: i64 = workflows.wait_for_output(*run, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got, i as i64);
    }
    handle.stop().await;
    assert!(done.lock().values().all(|&n| n == 1) && done.lock().len() == 50);
}

/// 10 runs waiting on one key and 4 events: exactly 4 runs receive one each; the other 6 time
/// out.
pub async fn four_events_for_ten_waiters(store: Arc<dyn WorkflowStore>) {
    let done = Arc::new(Mutex::new(HashMap::new()));
    let (workflows, def, handle) = setup(store, done).await;
    let mut runs = Vec::new();
    for _ in 0..10 {
        runs.push(
            workflows
                .start(&def, &("shared".to_owned(), 6000), StartOptions::default())
                .await
                .unwrap(),
        );
    }
    all_suspended(&workflows, &runs).await;
    for i in 0..4i64 {
        workflows.publish("paid", "shared", &(100 + i), PublishOptions::default()).await.unwrap();
    }
    let mut received = Vec::new();
    let mut timed_out = 0;
    for run in &runs {
        match workflows.wait_for_output::<i64>(*run, Duration::from_secs(30)).await.unwrap() {
            -1 => timed_out += 1,
            v => received.push(v),
        }
    }
    handle.stop().await;
    received.sort_unstable();
    assert_eq!(received, vec![100, 101, 102, 103], "each event to exactly one run");
    assert_eq!(timed_out, 6);
}

/// An event published before its run waits is received.
pub async fn early_event_is_received(store: Arc<dyn WorkflowStore>) {
    let done = Arc::new(Mutex::new(HashMap::new()));
    let (workflows, def, handle) = setup(store, done).await;
    let published =
        workflows.publish("paid", "early", &42i64, PublishOptions::default()).await.unwrap();
    assert!(published.kept);
    let run = workflows
        .start(&def, &("early".to_owned(), 60_000), StartOptions::default())
        .await
        .unwrap();
    let got: i64 = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!(got, 42);
}

/// A broadcast reaches every run waiting when it is published.
pub async fn broadcast_reaches_all_current_waiters(store: Arc<dyn WorkflowStore>) {
    let done = Arc::new(Mutex::new(HashMap::new()));
    let (workflows, def, handle) = setup(store, done).await;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(
            workflows
                .start(&def, &("all".to_owned(), 60_000), StartOptions::default())
                .await
                .unwrap(),
        );
    }
    all_suspended(&workflows, &runs).await;
    let options = PublishOptions { broadcast: true, ..PublishOptions::default() };
    let published = workflows.publish("paid", "all", &7i64, options).await.unwrap();
    assert_eq!(published.delivered_to.len(), 5);
    for run in &runs {
        let got: i64 = workflows.wait_for_output(*run, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got, 7);
    }
    handle.stop().await;
}

/// A run that waited for `x` or a short sleep, whichever came first, and moved on when the sleep
/// won, waits for `y` next: its dropped wait for `x` takes nothing, so a later run waiting for
/// `x` receives the one `x` published.
pub async fn a_dropped_wait_takes_no_event(store: Arc<dyn WorkflowStore>) {
    let chooser = WorkflowDefinition::new("chooser", |wf: WorkflowContext, _: ()| async move {
        let hour = Duration::from_secs(3600);
        let first: Option<u32> = tokio::select! {
            biased;
            got = wf.wait_for_event::<u32>("x", "k", hour) => got?,
            slept = wf.sleep(Duration::from_millis(300)) => { slept?; None }
        };
        let then: Option<u32> = wf.wait_for_event("y", "k", hour).await?;
        Ok((first, then))
    });
    let taker = WorkflowDefinition::new("taker", |wf: WorkflowContext, _: ()| async move {
        let got: Option<u32> = wf.wait_for_event("x", "k", Duration::from_secs(3600)).await?;
        Ok(got)
    });
    let workflows = Workflows::new(store.clone());
    let handle = worker(store)
        .register(workflows.register(&chooser))
        .register(workflows.register(&taker))
        .build()
        .unwrap()
        .start();
    let chosen = workflows.start(&chooser, &(), StartOptions::default()).await.unwrap();
    waiting_on(&workflows, chosen, "w:y#1~deadline").await;
    let took = workflows.start(&taker, &(), StartOptions::default()).await.unwrap();
    waiting_on(&workflows, took, "w:x#1~deadline").await;
    workflows.publish("x", "k", &7u32, PublishOptions::default()).await.unwrap();
    let got: Option<u32> = workflows.wait_for_output(took, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got, Some(7), "the waiting run receives x, not the dropped wait");
    workflows.publish("y", "k", &9u32, PublishOptions::default()).await.unwrap();
    let both: (Option<u32>, Option<u32>) =
        workflows.wait_for_output(chosen, Duration::from_secs(30)).await.unwrap();
    assert_eq!(both, (None, Some(9)));
    handle.stop().await;
}

/// Wait until `run` is suspended after writing checkpoint `key` (the deadline of a wait is
/// written just before the run suspends on it).
async fn waiting_on(workflows: &Workflows, run: RunId, key: &str) {
    crate::fixtures::eventually(
        &format!("{run} to wait on {key}"),
        Duration::from_secs(30),
        || async {
            let keys = workflows.get_checkpoints(run).await.unwrap();
            let written = keys.iter().any(|c| c.key == key);
            let suspended = workflows.get_run(run).await.unwrap().map(|r| r.state);
            (written && suspended == Some(RunState::Suspended)).then_some(())
        },
    )
    .await;
}
