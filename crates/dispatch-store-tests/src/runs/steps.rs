//! Steps: exactly-once across interruptions at every boundary, loops, parallel branches, resume
//! cost, panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use dispatch_core::{Event, RunState, WorkflowStore};
use dispatch_workflow::{StartOptions, StepError, WorkflowContext, WorkflowDefinition, Workflows};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{ended, run_with_one_interruption, worker};
use crate::fixtures::{Recorder, counting, eventually};

/// Where the ten-step workflow stops its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Before step `k` runs (after the previous checkpoint was written); `Before(10)` is after
    /// the last checkpoint, before the run ends.
    Before(usize),
    /// After step `k`'s effect, before its checkpoint is written.
    AfterEffect(usize),
}

/// Shared between the test and its workflow's steps.
#[derive(Default)]
struct Probe {
    runs: [AtomicU32; 10],
    cut: Mutex<Option<Cut>>,
    reached: Notify,
}

impl Probe {
    /// Block forever (until the worker is stopped) if the cut is here; disarms it.
    async fn maybe_stop(&self, here: Cut) {
        let hit = {
            let mut cut = self.cut.lock();
            let hit = *cut == Some(here);
            if hit {
                *cut = None;
            }
            hit
        };
        if hit {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

fn ten_steps(probe: Arc<Probe>) -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("ten", move |wf: WorkflowContext, seed: u64| {
        let probe = probe.clone();
        async move {
            let mut acc = seed;
            for k in 0..10 {
                let probe = probe.clone();
                probe.maybe_stop(Cut::Before(k)).await;
                acc = wf
                    .step(&format!("step-{k}"), || {
                        let probe = probe.clone();
                        async move {
                            probe.runs[k].fetch_add(1, Ordering::SeqCst);
                            probe.maybe_stop(Cut::AfterEffect(k)).await;
                            Ok::<_, StepError>(acc.wrapping_mul(31).wrapping_add(k as u64))
                        }
                    })
                    .await?;
            }
            probe.maybe_stop(Cut::Before(10)).await;
            Ok(acc)
        }
    })
}

fn expected(seed: u64) -> u64 {
    (0..10u64).fold(seed, |acc, k| acc.wrapping_mul(31).wrapping_add(k))
}

/// Interrupted before each step and after each step's effect (before its checkpoint): the
/// output equals an uninterrupted run; every step before the cut ran once, the step at it at
/// most twice.
pub async fn interrupted_at_every_step_boundary_resumes_exactly(store: Arc<dyn WorkflowStore>) {
    let cuts = (0..10).flat_map(|k| [Cut::Before(k), Cut::AfterEffect(k)]);
    // Before(10): after the last checkpoint, before the run ends.
    for cut in cuts.chain([Cut::Before(10)]) {
        {
            let probe = Arc::new(Probe::default());
            *probe.cut.lock() = Some(cut);
            let workflows = Workflows::new(store.clone());
            let def = ten_steps(probe.clone());
            let output = run_with_one_interruption(&store, &workflows, &def, &7, &probe.reached)
                .await
                .unwrap_or_else(|run| panic!("{cut:?}: run failed: {:?}", run.error));
            assert_eq!(output, expected(7), "{cut:?}");
            for (step, runs) in probe.runs.iter().enumerate() {
                let runs = runs.load(Ordering::SeqCst);
                let allowed = if matches!(cut, Cut::AfterEffect(at) if at == step) { 2 } else { 1 };
                assert!(runs >= 1 && runs <= allowed, "{cut:?}: step {step} ran {runs} times");
            }
        }
    }
}

/// A loop of 100 `step("item")` calls makes 100 checkpoints, and resumes correctly when
/// interrupted in the middle.
pub async fn a_step_in_a_loop_gets_a_checkpoint_per_call(store: Arc<dyn WorkflowStore>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let stop_at = Arc::new(Notify::new());
    let (counter, gate) = (calls.clone(), stop_at.clone());
    let def = WorkflowDefinition::new("loop", move |wf: WorkflowContext, n: u64| {
        let (counter, gate) = (counter.clone(), gate.clone());
        async move {
            let mut sum = 0;
            for i in 0..n {
                let (counter, gate) = (counter.clone(), gate.clone());
                sum += wf
                    .step("item", || {
                        let (counter, gate) = (counter.clone(), gate.clone());
                        async move {
                            if counter.fetch_add(1, Ordering::SeqCst) == 50 {
                                gate.notify_one();
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, StepError>(i * i)
                        }
                    })
                    .await?;
            }
            Ok(sum)
        }
    });
    let workflows = Workflows::new(store.clone());
    let sum = run_with_one_interruption(&store, &workflows, &def, &100, &stop_at).await.unwrap();
    let filter = dispatch_core::RunFilter { name: Some("loop".into()), state: None };
    let page = workflows.list_runs(&filter, &dispatch_core::PageRequest::first(10)).await.unwrap();
    let run = page.items.first().expect("the run").id;
    assert_eq!(sum, (0..100u64).map(|i| i * i).sum::<u64>());
    let checkpoints = workflows.get_checkpoints(run).await.unwrap();
    let keys: Vec<String> = checkpoints.iter().map(|c| c.key.clone()).collect();
    let expected: Vec<String> = (1..=100).map(|n| format!("s:item#{n}")).collect();
    assert_eq!(keys, expected, "one checkpoint per call, in order");
    assert_eq!(calls.load(Ordering::SeqCst), 101, "only the interrupted call ran twice");
}

/// Parallel branches using the same step names keep their own checkpoints and results, also
/// across a resume.
pub async fn parallel_branches_keep_their_own_results(store: Arc<dyn WorkflowStore>) {
    let def = WorkflowDefinition::new("fan", |wf: WorkflowContext, _: ()| async move {
        let branches = (0..3u64)
            .map(|b| {
                move |wf: WorkflowContext| async move {
                    let a: u64 = wf.step("x", || async move { Ok(b * 10) }).await?;
                    wf.sleep(Duration::from_millis(50 * (b + 1))).await?;
                    let c: u64 = wf.step("x", || async move { Ok(a + 1) }).await?;
                    Ok(c)
                }
            })
            .collect();
        wf.parallel("branches", branches).await
    });
    let workflows = Workflows::new(store.clone());
    let handle = worker(store.clone()).register(workflows.register(&def)).build().unwrap().start();
    let run = workflows.start(&def, &(), StartOptions::default()).await.unwrap();
    let out: Vec<u64> = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    handle.stop().await;
    assert_eq!(out, vec![1, 11, 21]);
    let keys: Vec<String> =
        workflows.get_checkpoints(run).await.unwrap().into_iter().map(|c| c.key).collect();
    for b in 0..3 {
        for n in 1..=2 {
            let key = format!("p:branches#1/{b}/s:x#{n}");
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
    }
}

/// Resuming costs the same store calls whether 10 or 100 steps are done: one load, then only
/// what the resumed code does.
pub async fn resume_cost_does_not_grow_with_finished_steps(store: Arc<dyn WorkflowStore>) {
    let mut costs = Vec::new();
    for steps in [10u64, 100] {
        let counting = counting(store.clone());
        let def = WorkflowDefinition::new("long", |wf: WorkflowContext, n: u64| async move {
            for i in 0..n {
                wf.step("s", || async move { Ok(i) }).await?;
            }
            let go: Option<bool> = wf.wait_for_event("go", "k", Duration::from_secs(60)).await?;
            Ok(go.unwrap_or(false))
        });
        let workflows = Workflows::new(counting.clone());
        let handle =
            worker(counting.clone()).register(workflows.register(&def)).build().unwrap().start();
        let run = workflows.start(&def, &steps, StartOptions::default()).await.unwrap();
        super::wait_state(&workflows, run, RunState::Suspended).await;
        let before = counting.interceptor().drive_calls.load(Ordering::SeqCst);
        workflows.publish("go", "k", &true, Default::default()).await.unwrap();
        let out: bool = workflows.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
        assert!(out);
        handle.stop().await;
        costs.push(counting.interceptor().drive_calls.load(Ordering::SeqCst) - before);
    }
    assert_eq!(costs[0], costs[1], "store calls of the resume: {costs:?}");
}

/// A panic inside a step is a failed attempt (retried); a panic in workflow code outside a
/// step fails the run with a clear error; the worker survives both.
pub async fn panics_fail_attempts_or_runs_not_workers(store: Arc<dyn WorkflowStore>) {
    let tries = Arc::new(AtomicU32::new(0));
    let counter = tries.clone();
    let flaky = WorkflowDefinition::new("flaky", move |wf: WorkflowContext, _: ()| {
        let counter = counter.clone();
        async move {
            let policy = dispatch_workflow::StepPolicy {
                attempts: 3,
                backoff: dispatch_core::Backoff::Constant { delay: Duration::from_millis(10) },
            };
            wf.step_with("boom", &policy, || {
                let counter = counter.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("first try explodes");
                    }
                    Ok(5u32)
                }
            })
            .await
        }
    });
    let broken = WorkflowDefinition::new("broken", |_wf: WorkflowContext, _: ()| async move {
        if true {
            panic!("bug in workflow code");
        }
        Ok(())
    });
    let recorder = Recorder::default();
    let workflows = Workflows::with_hooks(store.clone(), vec![Arc::new(recorder.clone())]);
    let handle = worker(store.clone())
        .register(workflows.register(&flaky))
        .register(workflows.register(&broken))
        .build()
        .unwrap()
        .start();
    let ok = workflows.start(&flaky, &(), StartOptions::default()).await.unwrap();
    let bad = workflows.start(&broken, &(), StartOptions::default()).await.unwrap();
    let five: u32 = workflows.wait_for_output(ok, Duration::from_secs(30)).await.unwrap();
    assert_eq!(five, 5);
    let failed = ended(workflows.wait_for_output::<()>(bad, Duration::from_secs(30)).await);
    let run = failed.expect_err("the broken run fails");
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("panicked outside a step") && error.contains("bug in workflow code"),
        "{error}"
    );
    handle.stop().await;
    eventually("hooks", Duration::from_secs(5), || async {
        let events = recorder.events.lock().clone();
        let step_failed = events
            .iter()
            .any(|e| matches!(e, Event::StepFailed { attempt: 1, will_retry: true, .. }));
        let completed =
            events.iter().any(|e| matches!(e, Event::RunCompleted { run } if run.id == ok));
        let run_failed =
            events.iter().any(|e| matches!(e, Event::RunFailed { run, .. } if run.id == bad));
        (step_failed && completed && run_failed).then_some(())
    })
    .await;
}
