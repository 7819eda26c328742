//! Durable time: sleeps, step retry backoff, and waiting runs holding no worker slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dispatch_core::{Backoff, RunState, WorkflowStore};
use dispatch_job::{JobContext, JobDefinition};
use dispatch_workflow::{
    StartOptions, StepError, StepPolicy, WorkflowContext, WorkflowDefinition, Workflows,
};
use parking_lot::Mutex;

use super::worker;
use crate::fixtures::eventually;

/// A sleeping run wakes after its sleep, never before.
pub async fn sleep_wakes_after_its_duration(store: Arc<dyn WorkflowStore>) {
    let woke: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let seen = woke.clone();
    let def = WorkflowDefinition::new("nap", move |wf: WorkflowContext, _: ()| {
        let seen = seen.clone();
        async move {
            wf.sleep(Duration::from_millis(800)).await?;
            wf.step("woke", || {
                let seen = seen.clone();
                async move {
                    *seen.lock() = Some(tokio::time::Instant::now());
                    Ok::<_, StepError>(())
                }
            })
            .await
        }
    });
    let recorder = crate::fixtures::Recorder::default();
    let workflows = Workflows::with_hooks(store.clone(), vec![Arc::new(recorder.clone())]);
    let handle = worker(store.clone()).register(workflows.register(&def)).build().unwrap().start();
    let started = tokio::time::Instant::now();
    let run = workflows.start(&def, &(), StartOptions::default()).await.unwrap();
    // The suspension itself is seen through the hooks below: polling for the state could miss
    // an 800 ms window on a loaded machine.
    workflows.wait_for_output::<()>(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    let waited = woke.lock().expect("woke").duration_since(started);
    assert!(waited >= Duration::from_millis(800), "woke after {waited:?}");
    eventually("the run's hooks", Duration::from_secs(10), || async {
        use dispatch_core::Event;
        let kinds: Vec<&'static str> = recorder
            .events
            .lock()
            .iter()
            .filter(|e| e.run().is_some_and(|r| r.id == run))
            .map(|e| match e {
                Event::RunStarted { .. } => "started",
                Event::RunSuspended { .. } => "suspended",
                Event::RunResumed { .. } => "resumed",
                Event::StepCompleted { .. } => "step",
                Event::RunCompleted { .. } => "completed",
                _ => "other",
            })
            .collect();
        // In this order; a drive retried after a transient store error may add repeats. A drive
        // stalled past the sleep's end (a loaded machine) finds the timer already due and runs
        // on without suspending: then there is no suspension to see. `started` comes from the
        // caller of `start` once the store answered, `suspended` from the worker, which may
        // claim and drive the run before that answer arrives: the two race, and both come
        // before the run resumes.
        let expected: &[&str] = if kinds.contains(&"suspended") {
            &["suspended", "resumed", "step", "completed"]
        } else {
            &["step", "completed"]
        };
        let at = |kind: &str| kinds.iter().position(|k| *k == kind);
        let started_first = at("started").is_some_and(|s| at(expected[1]).is_some_and(|e| s < e));
        let mut rest = kinds.iter();
        let in_order = expected.iter().all(|want| rest.any(|kind| kind == want));
        (started_first && in_order).then_some(())
    })
    .await;
}

/// A worker with one slot driving `def` and running a plain job that counts its runs: the
/// handle, the job, and the count.
fn one_slot_worker<I, O>(
    store: &Arc<dyn WorkflowStore>,
    workflows: &Workflows,
    def: &WorkflowDefinition<I, O>,
) -> (dispatch_job::WorkerHandle, JobDefinition<()>, Arc<AtomicU32>)
where
    I: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    O: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let ran = Arc::new(AtomicU32::new(0));
    let counter = ran.clone();
    let job = JobDefinition::new("plain", move |_ctx: JobContext, _: ()| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let handle = worker(store.clone())
        .register(workflows.register(def))
        .register(job.clone())
        .concurrency(1)
        .build()
        .expect("a one-slot worker")
        .start();
    (handle, job, ran)
}

/// With concurrency 1 and 100 runs asleep, a new job still starts at once: sleeping runs hold
/// no worker slot.
pub async fn sleeping_runs_hold_no_worker_slot(store: Arc<dyn WorkflowStore>) {
    let def = WorkflowDefinition::new("long-nap", |wf: WorkflowContext, _: u32| async move {
        wf.sleep(Duration::from_secs(600)).await?;
        Ok(())
    });
    let workflows = Workflows::new(store.clone());
    let (handle, job, ran) = one_slot_worker(&store, &workflows, &def);
    for i in 0..100 {
        workflows.start(&def, &i, StartOptions::default()).await.unwrap();
    }
    eventually("100 runs asleep", Duration::from_secs(30), || async {
        let filter = dispatch_core::RunFilter { state: Some(RunState::Suspended), name: None };
        let page =
            workflows.list_runs(&filter, &dispatch_core::PageRequest::first(1000)).await.unwrap();
        (page.items.len() == 100).then_some(())
    })
    .await;
    handle.client().enqueue(&job, ()).await.unwrap();
    eventually("the job to run", Duration::from_secs(10), || async {
        (ran.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    handle.stop().await;
}

/// A step failing twice with a 1 s backoff succeeds on its third attempt; the checkpoint
/// records 3 attempts; during the backoff the run holds no worker slot (a job runs meanwhile
/// on a worker of concurrency 1).
pub async fn step_retry_is_durable_and_holds_no_slot(store: Arc<dyn WorkflowStore>) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let log = attempts.clone();
    let def = WorkflowDefinition::new("retry", move |wf: WorkflowContext, _: ()| {
        let log = log.clone();
        async move {
            let policy = StepPolicy {
                attempts: 5,
                backoff: Backoff::Constant { delay: Duration::from_secs(1) },
            };
            wf.step_with("flaky", &policy, || {
                let log = log.clone();
                async move {
                    let mut log = log.lock();
                    log.push(tokio::time::Instant::now());
                    if log.len() < 3 { Err(StepError::retry("not yet")) } else { Ok(log.len()) }
                }
            })
            .await
        }
    });
    let workflows = Workflows::new(store.clone());
    let (handle, job, ran) = one_slot_worker(&store, &workflows, &def);
    let run = workflows.start(&def, &(), StartOptions::default()).await.unwrap();
    // After the first attempt the run suspends for its backoff and frees the only slot.
    eventually("the first attempt", Duration::from_secs(30), || async {
        (!attempts.lock().is_empty()).then_some(())
    })
    .await;
    handle.client().enqueue(&job, ()).await.unwrap();
    eventually("the job during the backoff", Duration::from_secs(10), || async {
        (ran.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(attempts.lock().len(), 1, "the job ran while the step waited for its retry");
    let third: usize = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!(third, 3);
    let times = attempts.lock().clone();
    assert!(
        times.windows(2).all(|w| w[1].duration_since(w[0]) >= Duration::from_secs(1)),
        "backoff kept"
    );
    let checkpoints = workflows.get_checkpoints(run).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&checkpoints[0].data).unwrap();
    assert_eq!(record["status"], "done");
    assert_eq!(record["attempts"], 3);
}
