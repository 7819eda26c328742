//! The persisted checkpoint key format. Workflows that use every primitive (steps, a step in a
//! loop, a retried step, `now` / `random` / `uuid`, a durable sleep, event waits delivered, timed
//! out and raced in a `select!`, nested parallel branches, sagas, a child awaited and a child
//! left running, a run timeout) run on the memory store, and the keys of every run's checkpoints
//! must be exactly those of `fixtures/checkpoint_keys.txt`, which was written by the code before
//! the key format got a type of its own. A run whose checkpoints were written under the
//! fixture's keys resumes from them without running its finished steps again.
//!
//! `UPDATE_FIXTURES=1 cargo test -p dispatch-workflow --test it keys` rewrites the fixture; do
//! that only for a deliberate format change, which strands runs in flight.

use std::collections::{BTreeMap, HashMap};
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    Backoff, ClaimRequest, LeaseRef, LeaseToken, NewCheckpoint, PageRequest, RunFilter, RunId,
    RunState, Timestamp, WorkerId, WorkflowStore,
};
use dispatch_job::{Worker, WorkerHandle};
use dispatch_store_memory::MemoryStore;
use dispatch_workflow::{
    PublishOptions, RunWaitError, StartOptions, StepError, StepPolicy, WorkflowContext,
    WorkflowDefinition, WorkflowError, Workflows,
};
use parking_lot::Mutex;

const FIXTURE: &str = "tests/it/fixtures/checkpoint_keys.txt";
/// Stands for a child run's ID in the fixture.
const CHILD: &str = "{child}";
const LONG: Duration = Duration::from_secs(30);

/// How often each step ran, by label.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, u32>>>);

impl Counts {
    fn of(&self, label: &str) -> u32 {
        self.0.lock().get(label).copied().unwrap_or(0)
    }
}

/// A step body that counts its runs under `label` and returns `value`.
fn counted<T: Clone>(
    counts: &Counts,
    label: impl Into<String>,
    value: T,
) -> impl FnMut() -> Ready<Result<T, StepError>> {
    let (counts, label) = (counts.clone(), label.into());
    move || {
        *counts.0.lock().entry(label.clone()).or_default() += 1;
        ready(Ok(value.clone()))
    }
}

/// The output of [`every_primitive`].
type Output = (u64, u64, u64, i64, u64, String, Option<u32>, Option<u32>, u32, Vec<u64>, u64);

/// A child that waits for `child-go` (so its parent is sure to wait for it) and doubles its input.
fn gated_child() -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("gated", |wf: WorkflowContext, n: u64| async move {
        let _: Option<u32> = wf.wait_for_event("child-go", "gate", LONG).await?;
        wf.step("double", || async move { Ok::<_, StepError>(n * 2) }).await
    })
}

/// A child its parent starts and leaves running.
fn free_child() -> WorkflowDefinition<u64, u64> {
    WorkflowDefinition::new("free", |wf: WorkflowContext, n: u64| async move {
        wf.step("double", || async move { Ok::<_, StepError>(n * 2) }).await
    })
}

/// Every primitive but compensations, in a run with a timeout.
fn every_primitive(
    counts: &Counts,
    gated: &WorkflowDefinition<u64, u64>,
    free: &WorkflowDefinition<u64, u64>,
) -> WorkflowDefinition<(), Output> {
    let (counts, gated, free) = (counts.clone(), gated.clone(), free.clone());
    WorkflowDefinition::new("keys", move |wf: WorkflowContext, _: ()| {
        let (counts, gated, free) = (counts.clone(), gated.clone(), free.clone());
        async move {
            let a = wf.step("a", counted(&counts, "a", 1u64)).await?;
            let mut looped = 0;
            for i in 0..3u64 {
                looped += wf.step("loop", counted(&counts, format!("loop{i}"), i)).await?;
            }
            let policy = StepPolicy {
                attempts: 2,
                backoff: Backoff::Constant { delay: Duration::from_millis(10) },
            };
            let tries = counts.clone();
            let retried = wf
                .step_with("retry", &policy, move || {
                    let mut tries = tries.0.lock();
                    let n = tries.entry("retry".to_owned()).or_default();
                    *n += 1;
                    ready(if *n == 1 { Err(StepError::retry("once")) } else { Ok(5u64) })
                })
                .await?;
            let now = wf.now().await?.as_unix_micros();
            let random = wf.random().await?;
            let uuid = wf.uuid().await?.to_string();
            wf.sleep(Duration::from_millis(20)).await?;
            let go: Option<u32> = wf.wait_for_event("go", "k", LONG).await?;
            let never: Option<u32> =
                wf.wait_for_event("never", "k", Duration::from_millis(20)).await?;
            let picked: u32 = tokio::select! {
                biased;
                left = wf.wait_for_event::<u32>("left", "k", LONG) => left?.unwrap_or(0),
                right = wf.wait_for_event::<u32>("right", "k", LONG) => right?.unwrap_or(0) + 100,
            };
            let branches = (0..2u64).map(|i| {
                let counts = counts.clone();
                move |branch: WorkflowContext| async move {
                    let b = branch.step("b", counted(&counts, format!("b{i}"), 10 + i)).await?;
                    if i == 0 {
                        return Ok(b);
                    }
                    let inner = vec![move |leaf: WorkflowContext| async move {
                        leaf.step("c", counted(&counts, "c", 20u64)).await
                    }];
                    Ok::<_, WorkflowError>(b + branch.parallel("inner", inner).await?[0])
                }
            });
            let fanned = wf.parallel("fan", branches.collect()).await?;
            let doubled = wf.child(&gated, &21).await?;
            wf.start_child(&free, &5).await?;
            Ok((a, looped, retried, now, random, uuid, go, never, picked, fanned, doubled))
        }
    })
    .timeout(Duration::from_secs(60))
}

/// A step that can never succeed.
fn once() -> StepPolicy {
    StepPolicy { attempts: 1, ..StepPolicy::default() }
}

/// Compensations, at the top level and in a parallel branch, run when a later step fails.
fn saga() -> WorkflowDefinition<(), ()> {
    WorkflowDefinition::new("saga", |wf: WorkflowContext, _: ()| async move {
        let undo = |_: u64| async { Ok::<_, StepError>(()) };
        wf.step_with_compensation("book", || async { Ok::<_, StepError>(1u64) }, undo).await?;
        let leg = vec![move |branch: WorkflowContext| async move {
            branch.step_with_compensation("leg", || async { Ok::<_, StepError>(2u64) }, undo).await
        }];
        wf.parallel("legs", leg).await?;
        wf.step_with("charge", &once(), || async {
            Err::<u64, _>(StepError::permanent("card declined"))
        })
        .await?;
        Ok(())
    })
}

/// A run that times out while it sleeps, and compensates.
fn late() -> WorkflowDefinition<(), ()> {
    WorkflowDefinition::new("late", |wf: WorkflowContext, _: ()| async move {
        let undo = |_: u64| async { Ok::<_, StepError>(()) };
        wf.step_with_compensation("hold", || async { Ok::<_, StepError>(1u64) }, undo).await?;
        wf.sleep(Duration::from_secs(3600)).await?;
        Ok(())
    })
    .timeout(Duration::from_secs(5))
}

struct Env {
    store: Arc<dyn WorkflowStore>,
    workflows: Workflows,
    counts: Counts,
    keys: WorkflowDefinition<(), Output>,
    gated: WorkflowDefinition<u64, u64>,
    free: WorkflowDefinition<u64, u64>,
}

impl Env {
    fn new() -> Self {
        let store: Arc<dyn WorkflowStore> = Arc::new(MemoryStore::new());
        let workflows = Workflows::new(store.clone());
        let counts = Counts::default();
        let (gated, free) = (gated_child(), free_child());
        let keys = every_primitive(&counts, &gated, &free);
        Self { store, workflows, counts, keys, gated, free }
    }

    fn worker(&self) -> WorkerHandle {
        let w = &self.workflows;
        Worker::builder(self.store.clone())
            .configure(|c| {
                c.poll_interval = Duration::from_millis(20);
                c.heartbeat_interval = Duration::from_millis(50);
                c.lease_ttl = Duration::from_secs(5);
                c.rescue_interval = Duration::from_millis(100);
                c.shutdown_timeout = Duration::from_secs(2);
            })
            .register(w.register(&self.keys))
            .register(w.register(&self.gated))
            .register(w.register(&self.free))
            .register(w.register(&saga()))
            .register(w.register(&late()))
            .build()
            .expect("worker")
            .start()
    }

    /// Drive run `run` of [`every_primitive`] to its end (publishing `go` unless `go` is
    /// false) and check its output.
    async fn finish_keys_run(&self, run: RunId, go: bool) -> Output {
        let w = &self.workflows;
        if go {
            w.publish("go", "k", &7u32, PublishOptions::default()).await.unwrap();
        }
        w.publish("left", "k", &3u32, PublishOptions::default()).await.unwrap();
        // Let the child go only once the parent waits for it, so it always waits.
        eventually("the parent to wait for its child", || async {
            let keys = w.get_checkpoints(run).await.unwrap();
            let waits = keys.iter().any(|c| c.key.starts_with("w:child:"));
            let suspended = w.get_run(run).await.unwrap().map(|r| r.state);
            (waits && suspended == Some(RunState::Suspended)).then_some(())
        })
        .await;
        w.publish("child-go", "gate", &1u32, PublishOptions::default()).await.unwrap();
        let output: Output = w.wait_for_output(run, LONG).await.expect("completed");
        assert_eq!((output.7, output.8), (None, 3), "never, picked");
        assert_eq!(output.10, 42, "the child doubled 21");
        output
    }

    /// The keys of each run this test started, by fixture section: child IDs in keys replaced.
    async fn sections(&self, runs: &[(&str, RunId)]) -> BTreeMap<String, Vec<String>> {
        let mut sections = BTreeMap::new();
        for &(section, run) in runs {
            let mut keys = self.keys_of(run).await;
            for child in self.children(run).await {
                let child_keys = self.keys_of(child).await;
                let name = self.workflows.get_run(child).await.unwrap().unwrap().name;
                sections.insert(format!("{section} > {name}"), child_keys);
                let id = child.to_string();
                keys = keys.into_iter().map(|k| k.replace(&id, CHILD)).collect();
            }
            keys.sort();
            sections.insert(section.to_owned(), keys);
        }
        sections
    }

    async fn keys_of(&self, run: RunId) -> Vec<String> {
        let w = &self.workflows;
        eventually("the run to end", || async {
            w.get_run(run).await.unwrap().filter(|r| r.state.is_final()).map(|_| ())
        })
        .await;
        let mut keys: Vec<String> =
            w.get_checkpoints(run).await.unwrap().into_iter().map(|c| c.key).collect();
        keys.sort();
        keys
    }

    async fn children(&self, parent: RunId) -> Vec<RunId> {
        let filter = RunFilter::default();
        let runs = self.workflows.list_runs(&filter, &PageRequest::first(100)).await.unwrap();
        runs.items.into_iter().filter(|r| r.parent == Some(parent)).map(|r| r.id).collect()
    }
}

/// Poll `probe` until it answers.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    let deadline = tokio::time::Instant::now() + LONG;
    while probe().await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fixture: keys by section.
fn read_fixture() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(FIXTURE).expect("the fixture");
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# ") {
            continue;
        }
        match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(name) => section = name.to_owned(),
            None => sections.entry(section.clone()).or_default().push(line.to_owned()),
        }
    }
    sections
}

fn write_fixture(sections: &BTreeMap<String, Vec<String>>) {
    let mut text = String::from(
        "# Checkpoint keys written by the workflows of tests/it/keys.rs, one section per run,\n\
         # sorted; `{child}` stands for a child run's ID. Persisted format: runs in flight carry\n\
         # these keys, so a change here strands them.\n",
    );
    for (section, keys) in sections {
        text.push_str(&format!("\n[{section}]\n"));
        for key in keys {
            text.push_str(key);
            text.push('\n');
        }
    }
    std::fs::write(FIXTURE, text).expect("write the fixture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_writes_the_fixture_keys() {
    let env = Env::new();
    let handle = env.worker();
    let w = &env.workflows;
    let keys = w.start(&env.keys, &(), StartOptions::default()).await.unwrap();
    let saga_run = w.start(&saga(), &(), StartOptions::default()).await.unwrap();
    let late_run = w.start(&late(), &(), StartOptions::default()).await.unwrap();
    let output = env.finish_keys_run(keys, true).await;
    assert_eq!((output.0, output.1, output.2, output.6), (1, 3, 5, Some(7)));
    assert_eq!(output.9, vec![10, 31]);
    let saga_end = w.wait_for_output::<()>(saga_run, LONG).await;
    let Err(RunWaitError::Failed { error, .. }) = saga_end else { panic!("the saga fails") };
    assert!(error.contains("card declined"), "{error}");
    let late_end = w.wait_for_output::<()>(late_run, LONG).await;
    let Err(RunWaitError::Failed { error, .. }) = late_end else { panic!("the run times out") };
    assert!(error.contains("timeout"), "{error}");
    let runs = [("keys", keys), ("saga", saga_run), ("late", late_run)];
    let written = env.sections(&runs).await;
    handle.stop().await;
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        write_fixture(&written);
    }
    assert_eq!(written, read_fixture(), "the keys written are the fixture's");
}

/// The checkpoints a run of [`every_primitive`] is seeded with: fixture keys, and the data the
/// runtime writes under them (step records, deadlines, an event payload).
fn seeded(now: Timestamp) -> Vec<(&'static str, String)> {
    let done = |value: &str| format!(r#"{{"status":"done","attempts":1,"value":{value}}}"#);
    let until = |at: Timestamp| format!(r#"{{"until":{}}}"#, at.as_unix_micros());
    vec![
        ("d:run-deadline#1", until(now + Duration::from_secs(60))),
        ("s:a#1", done("41")),
        ("s:loop#1", done("100")),
        ("s:loop#2", done("200")),
        ("s:loop#3", done("300")),
        ("s:retry#1", done("6")),
        ("d:now#1", "12345".to_owned()),
        ("d:random#1", "777".to_owned()),
        ("d:uuid#1", r#""67e55044-10b1-426f-9247-bb680e5fe0c8""#.to_owned()),
        ("t:sleep#1", until(now)),
        ("w:go#1~deadline", until(now + Duration::from_secs(60))),
        ("w:go#1", "8".to_owned()),
        ("p:fan#1/0/s:b#1", done("1000")),
        ("p:fan#1/1/p:inner#1/0/s:c#1", done("2000")),
    ]
}

/// A run whose checkpoints were written under the fixture's keys (as by an older release that
/// was stopped mid-run) resumes from them: the checkpointed steps do not run again, and their
/// values, the journaled `now` / `random` / `uuid` and the delivered event are read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_from_checkpoints_under_the_fixture_keys() {
    let env = Env::new();
    let w = &env.workflows;
    let run = w.start(&env.keys, &(), StartOptions::default()).await.unwrap();
    let fixture = read_fixture();
    let now = env.store.get_run(run).await.unwrap().unwrap().created_at;
    let checkpoints: Vec<NewCheckpoint> = seeded(now)
        .into_iter()
        .map(|(key, data)| {
            assert!(fixture["keys"].iter().any(|k| k == key), "{key} is a fixture key");
            NewCheckpoint::new(key.to_owned(), data.into_bytes())
        })
        .collect();
    // Hold the run's drive job as a drive would, write the checkpoints, give the job back.
    let claim = ClaimRequest {
        worker: WorkerId::new(),
        queues: vec!["default".to_owned()],
        names: vec![env.keys.drive_job_name()],
        limit: 1,
        lease_ttl: LONG,
        token: LeaseToken::new(),
    };
    let claimed = env.store.claim(&claim).await.unwrap();
    let lease = LeaseRef { job_id: claimed[0].job.id, token: claimed[0].lease.token };
    env.store.save_checkpoints(lease, run, checkpoints).await.unwrap();
    env.store.release(&[lease]).await.unwrap();

    let handle = env.worker();
    let output = env.finish_keys_run(run, false).await;
    let (a, looped, retried, now_seen, random, uuid, go) =
        (output.0, output.1, output.2, output.3, output.4, &output.5, output.6);
    assert_eq!((a, looped, retried), (41, 600, 6), "step results read back");
    assert_eq!((now_seen, random), (12345, 777), "journaled values read back");
    assert_eq!(uuid, "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!(go, Some(8), "the delivered event read back");
    assert_eq!(output.9, vec![1000, 2011], "branch steps read back, the rest ran");
    for label in ["a", "loop0", "loop1", "loop2", "retry", "b0", "b1", "c"] {
        let expected = u32::from(label == "b1");
        assert_eq!(env.counts.of(label), expected, "runs of step {label}");
    }
    let written = env.sections(&[("keys", run)]).await;
    handle.stop().await;
    let fixture = read_fixture();
    for (section, keys) in &written {
        assert_eq!(keys, &fixture[section], "the keys of {section} after the resume");
    }
}
