//! The umbrella drives workflows: a dispatcher built with `.workflow(def)` starts runs, delivers
//! the events they wait for, cancels them and looks them up, with no engine or worker plumbing.

use std::time::Duration;

use dispatch::core::{PageRequest, RunFilter, RunState};
use dispatch::prelude::*;
use dispatch::workflow::{WorkflowContext, WorkflowDefinition};

fn greeter() -> WorkflowDefinition<String, String> {
    WorkflowDefinition::new("greeter", |wf: WorkflowContext, name: String| async move {
        let title: Option<String> =
            wf.wait_for_event("title", &name, Duration::from_secs(3600)).await?;
        Ok(format!("hello {} {name}", title.unwrap_or_default()))
    })
}

fn dispatcher_with(definition: WorkflowDefinition<String, String>) -> Dispatcher {
    Dispatcher::builder()
        .store(MemoryStore::new())
        .workflow(definition)
        .configure(|c| c.poll_interval = Duration::from_millis(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_dispatcher_starts_a_run_delivers_its_event_and_returns_its_output() {
    let greeter = greeter();
    let mut dispatcher = dispatcher_with(greeter.clone());
    dispatcher.start().await.unwrap();

    let run = dispatcher.start_workflow(&greeter, "ada".to_owned()).await.unwrap();
    // The event may come before the run waits for it: it is kept for the wait.
    dispatcher.publish("title", "ada", &"countess").await.unwrap();
    let output: String = dispatcher.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    assert_eq!(output, "hello countess ada");

    let found = dispatcher.get_run(run).await.unwrap().unwrap();
    assert_eq!(found.state, RunState::Completed);
    let listed = dispatcher
        .list_runs(
            &RunFilter { name: Some("greeter".into()), ..RunFilter::default() },
            &PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(listed.items.iter().map(|r| r.id).collect::<Vec<_>>(), [run]);
    assert!(!dispatcher.get_checkpoints(run).await.unwrap().is_empty());
    dispatcher.stop().await;
}

#[tokio::test]
async fn a_dispatcher_cancels_a_waiting_run() {
    let greeter = greeter();
    let suspensions = Suspensions::default();
    let mut dispatcher = Dispatcher::builder()
        .store(MemoryStore::new())
        .workflow(greeter.clone())
        .hook(suspensions.clone())
        .build()
        .unwrap();
    dispatcher.start().await.unwrap();
    let run = dispatcher.start_workflow(&greeter, "grace".to_owned()).await.unwrap();
    // The run says what it waits for: the event, its key, and until when.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let found = dispatcher.get_run(run).await.unwrap().unwrap();
        if found.state == RunState::Suspended {
            break found.waiting;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run never suspended: {found:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let [WaitingFor::Event { name, correlation, deadline }] = waiting.as_slice() else {
        panic!("the run waits for its event only: {waiting:?}")
    };
    assert_eq!((name.as_str(), correlation.as_str()), ("title", "grace"));
    let started = dispatcher.get_run(run).await.unwrap().unwrap().created_at;
    assert!(*deadline >= started + Duration::from_secs(3600));
    // The dispatcher's hook hears the suspension (delivered off the drive's path), with what
    // the run waits for.
    let heard = tokio::time::Instant::now() + Duration::from_secs(30);
    while suspensions.0.lock().is_empty() {
        assert!(tokio::time::Instant::now() < heard, "no RunSuspended event");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(suspensions.0.lock().first(), Some(&waiting));
    dispatcher.cancel_run(run, "no longer needed").await.unwrap();
    let ended = dispatcher.wait_for_output::<String>(run, Duration::from_secs(30)).await;
    let Err(RunWaitError::Cancelled { reason, run }) = ended else {
        panic!("a cancelled run answers Cancelled: {ended:?}")
    };
    assert_eq!(reason, "no longer needed");
    assert_eq!(run.state, RunState::Cancelled);
    dispatcher.stop().await;
}

#[tokio::test]
async fn a_producer_dispatcher_starts_runs_another_dispatcher_drives() {
    let store = MemoryStore::new();
    let greeter = greeter();
    let producer = Dispatcher::builder().store(store.clone()).build().unwrap();
    let mut worker = Dispatcher::builder()
        .store(store)
        .workflow(greeter.clone())
        .configure(|c| c.poll_interval = Duration::from_millis(10))
        .build()
        .unwrap();
    worker.start().await.unwrap();
    let run = producer.start_workflow(&greeter, "alan".to_owned()).await.unwrap();
    producer.publish("title", "alan", &"dr").await.unwrap();
    let output: String = producer.wait_for_output(run, Duration::from_secs(30)).await.unwrap();
    assert_eq!(output, "hello dr alan");
    worker.stop().await;
}

#[test]
fn workflows_need_a_store_that_keeps_runs() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let err = Dispatcher::builder()
        .job_store(jobs_only(MemoryStore::new()))
        .workflow(greeter())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let jobs_only = Dispatcher::builder().job_store(jobs_only(MemoryStore::new())).build().unwrap();
    assert_eq!(jobs_only.workflows().unwrap_err().kind(), ErrorKind::InvalidInput);
}

/// Records what each suspended run waits for, as the `RunSuspended` hook event says.
#[derive(Clone, Default)]
struct Suspensions(std::sync::Arc<parking_lot::Mutex<Vec<Vec<WaitingFor>>>>);

#[async_trait::async_trait]
impl Hook for Suspensions {
    async fn on_event(&self, event: &Event) {
        if let Event::RunSuspended { waiting, .. } = event {
            self.0.lock().push(waiting.clone());
        }
    }
}

/// Passes every call through: wrapped around an `Arc<dyn JobStore>`, the memory store keeps
/// jobs only.
struct Plain;

impl dispatch::core::Interceptor for Plain {}

fn jobs_only(
    store: MemoryStore,
) -> dispatch::core::Intercepted<dyn dispatch::core::JobStore, Plain> {
    dispatch::core::Intercepted::new(std::sync::Arc::new(store), Plain)
}
