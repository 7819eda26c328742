//! Workflows, part 2: sagas, child workflows, deterministic helpers, run timeouts, versions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_core::{PageRequest, RunFilter, RunId, RunState, WorkflowStore};
use dispatch_workflow::{
    StartOptions, StepError, StepPolicy, WorkflowContext, WorkflowDefinition, WorkflowError,
    Workflows,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{ended, run_with_one_interruption, wait_state, worker};

/// A step policy that gives up at once (the saga tests want a failure, not retries).
fn once() -> StepPolicy {
    StepPolicy { attempts: 1, ..StepPolicy::default() }
}

/// Steps one and two have compensations; step three fails: the compensations of two and one
/// run, in that order, exactly once each, also when the worker stops between them; the run's
/// error stays step three's.
pub async fn saga_compensates_in_reverse_once(store: Arc<dyn WorkflowStore>) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop_before_undo_one = Arc::new(AtomicBool::new(true));
    let reached = Arc::new(Notify::new());
    let (l, gate, hit) = (log.clone(), stop_before_undo_one.clone(), reached.clone());
    let def = WorkflowDefinition::new("saga", move |wf: WorkflowContext, _: ()| {
        let (l, gate, hit) = (l.clone(), gate.clone(), hit.clone());
        async move {
            for n in 1..=2u32 {
                let (l, gate, hit) = (l.clone(), gate.clone(), hit.clone());
                wf.step_with_compensation(
                    &format!("do-{n}"),
                    || async move { Ok::<_, StepError>(n) },
                    move |done: u32| {
                        let (l, gate, hit) = (l.clone(), gate.clone(), hit.clone());
                        async move {
                            if done == 1 && gate.swap(false, Ordering::SeqCst) {
                                hit.notify_one();
                                std::future::pending::<()>().await;
                            }
                            l.lock().push(format!("undo-{done}"));
                            Ok(())
                        }
                    },
                )
                .await?;
            }
            wf.step_with("do-3", &once(), || async {
                Err::<u32, _>(StepError::permanent("card declined"))
            })
            .await?;
            Ok(())
        }
    });
    let workflows = Workflows::new(store.clone());
    let ended = run_with_one_interruption(&store, &workflows, &def, &(), &reached).await;
    let run = ended.expect_err("the saga fails");
    assert_eq!(run.state, RunState::Failed);
    assert!(run.error.as_deref().unwrap_or_default().contains("card declined"), "{:?}", run.error);
    assert_eq!(*log.lock(), vec!["undo-2".to_owned(), "undo-1".to_owned()]);
}

fn doubler() -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("doubler", |wf: WorkflowContext, n: u64| async move {
        if n == 13 {
            return Err(WorkflowError::failed("thirteen is unlucky"));
        }
        wf.step("double", || async move { Ok::<_, StepError>(n * 2) }).await
    })
}

/// Five child starts in a loop make five children; a fan-out of 20 returns 20 outputs in input
/// order; a failing child fails its parent with the child's error.
pub async fn children_loop_fan_out_and_fail(store: Arc<dyn WorkflowStore>) {
    let child = doubler();
    let spawner = {
        let child = child.clone();
        WorkflowDefinition::new("spawner", move |wf: WorkflowContext, _: ()| {
            let child = child.clone();
            async move {
                let mut sum = 0;
                for n in 0..5u64 {
                    sum += wf.child(&child, &n).await?;
                }
                let inputs: Vec<u64> = (100..120).collect();
                let doubled = wf.fan_out(&child, &inputs).await?;
                Ok((sum, doubled))
            }
        })
    };
    let unlucky = {
        let child = child.clone();
        WorkflowDefinition::new("unlucky", move |wf: WorkflowContext, _: ()| {
            let child = child.clone();
            async move { wf.child(&child, &13).await }
        })
    };
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone())
        .register(workflows.register(&child))
        .register(workflows.register(&spawner))
        .register(workflows.register(&unlucky))
        .concurrency(32)
        .build()
        .unwrap()
        .start();
    let run = workflows.start(&spawner, &(), StartOptions::default()).await.unwrap();
    let (sum, doubled): (u64, Vec<u64>) =
        workflows.wait_for_output(run, Duration::from_secs(60)).await.unwrap();
    assert_eq!(sum, 20);
    assert_eq!(doubled, (100..120).map(|n| n * 2).collect::<Vec<_>>());
    let filter = RunFilter { name: Some("doubler".into()), state: Some(RunState::Completed) };
    let children = workflows.list_runs(&filter, &PageRequest::first(100)).await.unwrap();
    assert_eq!(children.items.len(), 25, "5 in the loop, 20 in the fan-out");
    assert!(children.items.iter().all(|c| c.parent == Some(run)));

    let bad = workflows.start(&unlucky, &(), StartOptions::default()).await.unwrap();
    let failed = ended(workflows.wait_for_output::<u64>(bad, Duration::from_secs(60)).await);
    let error = failed.expect_err("a failed child fails its parent").error.unwrap_or_default();
    assert!(error.contains("thirteen is unlucky"), "{error}");
    handle.stop().await;
}

/// `now`, `random` and `uuid` return the same values after an interruption and resume.
pub async fn deterministic_helpers_keep_their_values_across_drives(store: Arc<dyn WorkflowStore>) {
    let first_seen: Arc<Mutex<Option<(i64, u64, String)>>> = Arc::default();
    let stop_once = Arc::new(AtomicBool::new(true));
    let reached = Arc::new(Notify::new());
    let (seen, gate, hit) = (first_seen.clone(), stop_once.clone(), reached.clone());
    let def = WorkflowDefinition::new("dice", move |wf: WorkflowContext, _: ()| {
        let (seen, gate, hit) = (seen.clone(), gate.clone(), hit.clone());
        async move {
            let values = (
                wf.now().await?.as_unix_micros(),
                wf.random().await?,
                wf.uuid().await?.to_string(),
            );
            if seen.lock().is_none() {
                *seen.lock() = Some(values.clone());
            }
            let (gate, hit) = (gate.clone(), hit.clone());
            wf.step("pause", || {
                let (gate, hit) = (gate.clone(), hit.clone());
                async move {
                    if gate.swap(false, Ordering::SeqCst) {
                        hit.notify_one();
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, StepError>(())
                }
            })
            .await?;
            Ok(values)
        }
    });
    let workflows = Workflows::new(store.clone());
    let values: (i64, u64, String) =
        run_with_one_interruption(&store, &workflows, &def, &(), &reached)
            .await
            .expect("completes");
    assert_eq!(Some(values), first_seen.lock().clone());
}

/// A run timeout of 2 s on a run sleeping 10 s ends it failed with a timeout error at about 2 s.
pub async fn run_timeout_ends_a_sleeping_run(store: Arc<dyn WorkflowStore>) {
    let def = WorkflowDefinition::new("slow", |wf: WorkflowContext, _: ()| async move {
        wf.sleep(Duration::from_secs(10)).await?;
        Ok(())
    })
    .timeout(Duration::from_secs(2));
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone()).register(workflows.register(&def)).build().unwrap().start();
    let started = tokio::time::Instant::now();
    let run = workflows.start(&def, &(), StartOptions::default()).await.unwrap();
    let ended = ended(workflows.wait_for_output::<()>(run, Duration::from_secs(30)).await);
    let took = started.elapsed();
    handle.stop().await;
    let run = ended.expect_err("timed out");
    assert_eq!(run.state, RunState::Failed);
    assert!(run.error.as_deref().unwrap_or_default().contains("timeout"), "{:?}", run.error);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "ended after {took:?}"
    );
}

fn versioned(version: u32) -> WorkflowDefinition<(), String> {
    WorkflowDefinition::new("greeting", move |wf: WorkflowContext, _: ()| async move {
        let _: Option<bool> =
            wf.wait_for_event("go", &format!("v{version}"), Duration::from_secs(60)).await?;
        Ok(format!("hello from v{version}"))
    })
    .version(version)
}

/// v1 and v2 of one workflow: a v1 run suspended before v2 was registered resumes on v1 and
/// returns v1's output; a new run on v2 returns v2's.
pub async fn runs_stay_on_their_version(store: Arc<dyn WorkflowStore>) {
    let (v1, v2) = (versioned(1), versioned(2));
    let old = Workflows::new(store.clone());
    let first = worker(store.clone()).register(old.register(&v1)).build().unwrap().start();
    let old_run = old.start(&v1, &(), StartOptions::default()).await.unwrap();
    wait_state(&old, old_run, RunState::Suspended).await;
    first.stop().await;

    let both = Workflows::new(store.clone());
    let second = worker(store.clone())
        .register(both.register(&v1))
        .register(both.register(&v2))
        .build()
        .unwrap()
        .start();
    let new_run = both.start(&v2, &(), StartOptions::default()).await.unwrap();
    wait_state(&both, new_run, RunState::Suspended).await;
    both.publish("go", "v1", &true, Default::default()).await.unwrap();
    both.publish("go", "v2", &true, Default::default()).await.unwrap();
    let old_out: String = both.wait_for_output(old_run, Duration::from_secs(30)).await.unwrap();
    let new_out: String = both.wait_for_output(new_run, Duration::from_secs(30)).await.unwrap();
    second.stop().await;
    assert_eq!((old_out.as_str(), new_out.as_str()), ("hello from v1", "hello from v2"));
}

/// A parent that completes a step with a compensation (counted in `undone`), starts a child
/// that sleeps, then sleeps itself: what the cancel of a suspended run has to wind down.
fn holder_with_a_child(
    undone: Arc<std::sync::atomic::AtomicU32>,
) -> (WorkflowDefinition<(), ()>, WorkflowDefinition<(), ()>) {
    let child = WorkflowDefinition::new("napper", |wf: WorkflowContext, _: ()| async move {
        wf.sleep(Duration::from_secs(600)).await?;
        Ok(())
    });
    let parent = {
        let child = child.clone();
        WorkflowDefinition::new("holder", move |wf: WorkflowContext, _: ()| {
            let (child, undone) = (child.clone(), undone.clone());
            async move {
                wf.step_with_compensation(
                    "reserve",
                    || async { Ok::<_, StepError>(7u32) },
                    move |_: u32| {
                        let undone = undone.clone();
                        async move {
                            undone.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                )
                .await?;
                wf.start_child(&child, &()).await?;
                wf.sleep(Duration::from_secs(600)).await?;
                Ok(())
            }
        })
    };
    (child, parent)
}

/// Start [`holder_with_a_child`] on a worker and wait until the run is suspended.
async fn suspended_holder(
    store: &Arc<dyn WorkflowStore>,
    workflows: &Workflows,
    undone: &Arc<std::sync::atomic::AtomicU32>,
) -> (RunId, dispatch_job::WorkerHandle) {
    let (child, parent) = holder_with_a_child(undone.clone());
    let handle = worker(store.clone())
        .register(workflows.register(&child))
        .register(workflows.register(&parent))
        .build()
        .unwrap()
        .start();
    let run = workflows.start(&parent, &(), StartOptions::default()).await.unwrap();
    wait_state(workflows, run, RunState::Suspended).await;
    (run, handle)
}

/// The cancelled holder ended cancelled for `reason`, ran its compensation once and cancelled
/// its child.
async fn assert_wound_down(
    workflows: &Workflows,
    run: RunId,
    reason: &str,
    undone: &std::sync::atomic::AtomicU32,
) {
    let ended = ended(workflows.wait_for_output::<()>(run, Duration::from_secs(30)).await);
    let ended = ended.expect_err("cancelled");
    assert_eq!(ended.state, RunState::Cancelled);
    assert_eq!(ended.error.as_deref(), Some(reason));
    assert_eq!(undone.load(Ordering::SeqCst), 1, "the compensation ran once");
    let filter = RunFilter { name: Some("napper".into()), state: None };
    let children = workflows.list_runs(&filter, &PageRequest::first(10)).await.unwrap().items;
    assert_eq!(children.len(), 1);
    let child_end = super::ended(
        workflows.wait_for_output::<()>(children[0].id, Duration::from_secs(30)).await,
    );
    let child_end = child_end.expect_err("the child is cancelled too");
    assert_eq!(child_end.state, RunState::Cancelled);
}

/// Cancel of a suspended run: it wakes, runs the compensation of its completed step once,
/// cancels the child it started, and ends cancelled with the reason; a second cancel is
/// `AlreadyFinal`.
pub async fn cancel_of_a_suspended_run_compensates_and_cascades(store: Arc<dyn WorkflowStore>) {
    let undone = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let recorder = crate::fixtures::Recorder::default();
    let workflows = Workflows::with_hooks(store.clone(), vec![Arc::new(recorder.clone())]);
    let (run, handle) = suspended_holder(&store, &workflows, &undone).await;
    let cancel = workflows.cancel(run, "customer changed their mind").await.unwrap();
    assert_eq!(cancel, dispatch_core::RunCancel::Requested);
    assert_wound_down(&workflows, run, "customer changed their mind", &undone).await;
    let again = workflows.cancel(run, "again").await.unwrap();
    assert_eq!(again, dispatch_core::RunCancel::AlreadyFinal(RunState::Cancelled));
    handle.stop().await;
    crate::fixtures::eventually("the cancel hooks", Duration::from_secs(5), || async {
        use dispatch_core::Event;
        let events = recorder.events.lock().clone();
        let ours = |e: &&Event| e.run().is_some_and(|r| r.id == run);
        let undone = events.iter().filter(ours).any(|e| matches!(e, Event::CompensationRan { .. }));
        let cancelled = events.iter().filter(ours).any(|e| matches!(e, Event::RunCancelled { .. }));
        (undone && cancelled).then_some(())
    })
    .await;
}

/// A job-level cancel of a suspended run's drive job (`JobClient::cancel`) is the run's cancel:
/// the run wakes, runs the compensation of its completed step once, cancels its child, and ends
/// cancelled with the drive-job reason, instead of being left without a driver.
pub async fn cancel_through_the_drive_job_compensates(store: Arc<dyn WorkflowStore>) {
    let undone = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let workflows = Workflows::new(store.clone());
    let (run, handle) = suspended_holder(&store, &workflows, &undone).await;
    let drive_job = workflows.get_run(run).await.unwrap().expect("the run").drive_job;
    let cancel =
        dispatch_job::JobClient::standalone(store.clone()).cancel(drive_job).await.unwrap();
    assert_eq!(cancel, dispatch_core::JobCancel::Requested, "the run's cancel is requested");
    assert_wound_down(&workflows, run, dispatch_core::DRIVE_JOB_CANCEL_REASON, &undone).await;
    handle.stop().await;
}

/// Cancel of a running run: it stops at a step boundary (it does not run all its steps) and
/// ends cancelled.
pub async fn cancel_of_a_running_run_stops_at_a_step_boundary(store: Arc<dyn WorkflowStore>) {
    let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let busy = {
        let ran = ran.clone();
        WorkflowDefinition::new("busy", move |wf: WorkflowContext, _: ()| {
            let ran = ran.clone();
            async move {
                for _ in 0..400 {
                    let ran = ran.clone();
                    wf.step("work", || {
                        let ran = ran.clone();
                        async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(25)).await;
                            Ok::<_, StepError>(())
                        }
                    })
                    .await?;
                }
                Ok(())
            }
        })
    };
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone()).register(workflows.register(&busy)).build().unwrap().start();
    let run = workflows.start(&busy, &(), StartOptions::default()).await.unwrap();
    crate::fixtures::eventually("a few steps", Duration::from_secs(30), || async {
        (ran.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    workflows.cancel(run, "enough").await.unwrap();
    let ended = ended(workflows.wait_for_output::<()>(run, Duration::from_secs(30)).await);
    handle.stop().await;
    let ended = ended.expect_err("cancelled");
    assert_eq!((ended.state, ended.error.as_deref()), (RunState::Cancelled, Some("enough")));
    assert!(ran.load(Ordering::SeqCst) < 400, "stopped early, ran {}", ran.load(Ordering::SeqCst));
}

/// Call `operate` until it succeeds: a run that just ended is still held (`Conflict`) until its
/// drive job's finish is written.
async fn once_released<F, Fut>(mut operate: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = dispatch_core::Result<()>>,
{
    crate::fixtures::eventually("the drive to let go of the run", Duration::from_secs(30), || {
        let attempt = operate();
        async move {
            match attempt.await {
                Ok(()) => Some(()),
                Err(error) if error.kind() == dispatch_core::ErrorKind::Conflict => None,
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await;
}

fn counted(
    name: &str,
    runs: Arc<Mutex<Vec<String>>>,
) -> impl FnMut() -> futures::future::BoxFuture<'static, Result<u32, StepError>> {
    let name = name.to_owned();
    move || {
        let (name, runs) = (name.clone(), runs.clone());
        Box::pin(async move {
            runs.lock().push(name);
            Ok(1)
        })
    }
}

/// Rewind to a step: the steps after it run again, on the run's own version, and the run
/// completes again; the steps up to it do not run again.
pub async fn rewind_to_a_step_reruns_what_follows(store: Arc<dyn WorkflowStore>) {
    let runs: Arc<Mutex<Vec<String>>> = Arc::default();
    let def = {
        let runs = runs.clone();
        WorkflowDefinition::new("abc", move |wf: WorkflowContext, _: ()| {
            let runs = runs.clone();
            async move {
                let mut total = 0;
                for name in ["a", "b", "c"] {
                    total += wf.step(name, counted(name, runs.clone())).await?;
                }
                Ok(total)
            }
        })
    };
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone()).register(workflows.register(&def)).build().unwrap().start();
    let run = workflows.start(&def, &(), StartOptions::default()).await.unwrap();
    let first: u32 = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    once_released(|| workflows.rewind(run, "s:b#1")).await;
    wait_state(&workflows, run, RunState::Completed).await;
    let again: u32 = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!((first, again), (3, 3));
    assert_eq!(*runs.lock(), ["a", "b", "c", "c"], "only the step after b ran again");
}

/// A run that failed on v1 is migrated to v2: its finished steps are not run again and it
/// completes with v2's output.
pub async fn migrate_a_failed_run_to_a_fixed_version(store: Arc<dyn WorkflowStore>) {
    let runs: Arc<Mutex<Vec<String>>> = Arc::default();
    let version = |v: u32, runs: Arc<Mutex<Vec<String>>>| {
        WorkflowDefinition::new("fixable", move |wf: WorkflowContext, _: ()| {
            let runs = runs.clone();
            async move {
                wf.step("a", counted("a", runs.clone())).await?;
                if v == 1 {
                    return Err(WorkflowError::failed("bug in v1"));
                }
                Ok(format!("fixed in v{v}"))
            }
        })
        .version(v)
    };
    let (v1, v2) = (version(1, runs.clone()), version(2, runs.clone()));
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone())
        .register(workflows.register(&v1))
        .register(workflows.register(&v2))
        .build()
        .unwrap()
        .start();
    let run = workflows.start(&v1, &(), StartOptions::default()).await.unwrap();
    let failed = ended(workflows.wait_for_output::<String>(run, Duration::from_secs(30)).await);
    assert!(failed.is_err(), "v1 fails");
    once_released(|| workflows.migrate(run, &v2)).await;
    let out: String = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!(out, "fixed in v2");
    assert_eq!(*runs.lock(), ["a"], "the finished step did not run again");
    let stored = workflows.get_run(run).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
}
