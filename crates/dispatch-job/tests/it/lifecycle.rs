//! The life of a job: typed round trip, defaults and overrides, hooks, retries, panics, snooze,
//! decode failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dispatch_core::{Backoff, Event, FailureKind, JobState, NewJob, Scope};
use dispatch_job::{EnqueueOptions, JobContext, JobDefinition, JobError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::support::{PanickingHook, Recorder, store, wait_for_state, worker};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
}

#[tokio::test(start_paused = true)]
async fn typed_round_trip_with_defaults_and_overrides() {
    let store = store();
    let seen: Arc<Mutex<Vec<(Email, String, Scope)>>> = Arc::default();
    let log = seen.clone();
    let send = JobDefinition::new("send_email", move |ctx: JobContext, email: Email| {
        let log = log.clone();
        async move {
            log.lock().push((email, ctx.queue().to_owned(), ctx.scope().clone()));
            Ok(())
        }
    })
    .queue("emails")
    .priority(5)
    .max_attempts(7)
    .timeout(Duration::from_secs(30));
    let worker =
        worker(store.clone()).register(send.clone()).queues(["emails", "urgent"]).build().unwrap();
    let client = worker.client();
    let handle = worker.start();

    let email = Email { to: "a@example.com".into(), subject: "hi".into() };
    let by_default = client.enqueue(&send, email.clone()).await.unwrap().id();
    let job = wait_for_state(&store, by_default, JobState::Completed).await;
    assert_eq!((job.queue.as_str(), job.priority, job.max_attempts), ("emails", 5, 7));
    assert_eq!(job.timeout, Some(Duration::from_secs(30)));

    let scope = Scope::new("shop", "acme");
    let options = EnqueueOptions::new()
        .queue("urgent")
        .priority(9)
        .max_attempts(2)
        .no_timeout()
        .scope(scope.clone());
    let overridden = client.enqueue_with(&send, email.clone(), options).await.unwrap().id();
    let job = wait_for_state(&store, overridden, JobState::Completed).await;
    assert_eq!((job.queue.as_str(), job.priority, job.max_attempts), ("urgent", 9, 2));
    assert_eq!(job.timeout, None);
    assert_eq!(job.attempt, 1);

    handle.stop().await;
    let seen = seen.lock();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], (email.clone(), "emails".to_owned(), Scope::default()));
    assert_eq!(seen[1], (email, "urgent".to_owned(), scope));
}

#[tokio::test(start_paused = true)]
async fn delayed_job_waits_for_its_time() {
    let store = store();
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: ()| async { Ok(()) });
    let handle = worker(store.clone()).register(noop.clone()).build().unwrap().start();
    let client = handle.client();
    let id = client
        .enqueue_with(&noop, (), EnqueueOptions::new().delay(Duration::from_secs(2)))
        .await
        .unwrap()
        .id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get_job(id).await.unwrap().unwrap().state, JobState::Available);
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(store.get_job(id).await.unwrap().unwrap().state, JobState::Available);
    wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hook_sequence_for_two_failures_then_success() {
    let store = store();
    let recorder = Recorder::default();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = JobDefinition::new("flaky", move |_ctx: JobContext, _: ()| {
        let counter = counter.clone();
        async move {
            match counter.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(JobError::retry("not yet")),
                _ => Ok(()),
            }
        }
    })
    .backoff(Backoff::Linear { step: Duration::from_millis(10), cap: Duration::from_secs(1) });
    let worker = worker(store.clone())
        .register(flaky.clone())
        .hook(PanickingHook)
        .hook(recorder.clone())
        .build()
        .unwrap();
    let client = worker.client();
    let handle = worker.start();
    let id = client.enqueue(&flaky, ()).await.unwrap().id();
    wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;

    let sequence: Vec<String> = recorder
        .for_job(id)
        .iter()
        .map(|event| match event {
            Event::JobEnqueued { duplicate, .. } => format!("enqueued dup={duplicate}"),
            Event::JobStarted { attempt, .. } => format!("started {attempt}"),
            Event::JobRetrying { attempt, delay, failure, .. } => {
                format!("retrying {attempt} after {delay:?}: {}", failure.message)
            }
            Event::JobCompleted { attempt, .. } => format!("completed {attempt}"),
            other => format!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        sequence,
        [
            "enqueued dup=false",
            "started 1",
            "retrying 1 after 10ms: not yet",
            "started 2",
            "retrying 2 after 20ms: not yet",
            "started 3",
            "completed 3",
        ],
        "the panicking hook registered first must not disturb the sequence"
    );
    assert!(recorder.events.lock().contains(&Event::Shutdown));
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.errors.len(), 2);
    assert_eq!(job.errors[1].attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_goes_to_the_dlq_at_once_with_hooks() {
    let store = store();
    let recorder = Recorder::default();
    let doomed = JobDefinition::new("doomed", |_ctx: JobContext, _: ()| async {
        Err(JobError::permanent("card declined"))
    });
    let handle = worker(store.clone())
        .register(doomed.clone())
        .hook(recorder.clone())
        .build()
        .unwrap()
        .start();
    let id = handle.client().enqueue(&doomed, ()).await.unwrap().id();
    let job = wait_for_state(&store, id, JobState::Dead).await;
    handle.stop().await;
    assert_eq!(job.attempt, 1, "no retry for a permanent error");
    let entry = store.get_dlq(job.dlq_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(entry.errors.last().unwrap().message, "card declined");
    let events = recorder.for_job(id);
    assert!(matches!(events[events.len() - 2], Event::JobFailed { attempt: 1, .. }));
    assert!(
        matches!(events[events.len() - 1], Event::JobPromoted { dlq_id, .. } if dlq_id == entry.id)
    );
}

#[tokio::test(start_paused = true)]
async fn undecodable_payload_goes_to_the_dlq_naming_job_type_and_error() {
    let store = store();
    let send = JobDefinition::new("send_email", |_ctx: JobContext, _email: Email| async { Ok(()) });
    let handle = worker(store.clone()).register(send).build().unwrap().start();
    let raw = NewJob::new("send_email", br#"{"to": 42}"#.to_vec());
    let id = handle.client().enqueue_jobs(vec![raw]).await.unwrap()[0].id();
    let job = wait_for_state(&store, id, JobState::Dead).await;
    handle.stop().await;
    let error = &job.errors[0];
    assert_eq!(error.kind, FailureKind::Decode);
    assert!(error.message.contains("send_email"), "{}", error.message);
    assert!(error.message.contains("Email"), "{}", error.message);
    assert!(error.message.contains("invalid type"), "{}", error.message);
    assert_eq!(job.attempt, 1);
}

#[tokio::test(start_paused = true)]
async fn panic_is_a_failed_attempt_and_the_pool_keeps_running() {
    let store = store();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let panicky = JobDefinition::new("panicky", move |_ctx: JobContext, _: ()| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                panic!("boom at attempt one");
            }
            Ok(())
        }
    })
    .backoff(Backoff::Constant { delay: Duration::from_millis(10) });
    let noop = JobDefinition::new("noop", |_ctx: JobContext, n: u32| async move {
        if n == 3 {
            panic!("panic inside the future");
        }
        Ok(())
    });
    let handle = worker(store.clone())
        .register(panicky.clone())
        .register(noop.clone())
        .build()
        .unwrap()
        .start();
    let client = handle.client();
    let id = client.enqueue(&panicky, ()).await.unwrap().id();
    let others = client
        .enqueue_many_with(&noop, 0..10, EnqueueOptions::new().max_attempts(1))
        .await
        .unwrap();
    let job = wait_for_state(&store, id, JobState::Completed).await;
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].kind, FailureKind::Panic);
    assert!(job.errors[0].message.contains("boom at attempt one"), "{}", job.errors[0].message);
    for (n, other) in others.iter().enumerate() {
        let expected = if n == 3 { JobState::Dead } else { JobState::Completed };
        let job = wait_for_state(&store, other.id(), expected).await;
        if n == 3 {
            assert!(job.errors[0].message.contains("panic inside the future"));
        }
    }
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn snooze_five_times_then_succeed_spends_one_attempt() {
    let store = store();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let sleepy = JobDefinition::new("sleepy", move |ctx: JobContext, _: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            assert_eq!(ctx.attempt(), 1, "a snooze gives the attempt back");
            if n < 5 { Err(JobError::snooze(Duration::from_millis(20))) } else { Ok(()) }
        }
    })
    .max_attempts(2);
    let handle = worker(store.clone()).register(sleepy.clone()).build().unwrap().start();
    let id = handle.client().enqueue(&sleepy, ()).await.unwrap().id();
    let job = wait_for_state(&store, id, JobState::Completed).await;
    handle.stop().await;
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(job.attempt, 1);
    assert!(job.errors.is_empty(), "a snooze is not a failure");
}

#[tokio::test(start_paused = true)]
async fn jobs_enqueued_by_a_handler_inherit_its_scope() {
    let store = store();
    let client_slot: Arc<Mutex<Option<dispatch_job::JobClient>>> = Arc::default();
    let child = JobDefinition::new("child", |_ctx: JobContext, _: ()| async { Ok(()) });
    let (slot, child_def) = (client_slot.clone(), child.clone());
    let parent = JobDefinition::new("parent", move |_ctx: JobContext, _: ()| {
        let (slot, child_def) = (slot.clone(), child_def.clone());
        async move {
            let client = slot.lock().clone().expect("client set before start");
            client.enqueue(&child_def, ()).await.map_err(|e| JobError::retry(e.to_string()))?;
            Ok(())
        }
    });
    let worker = worker(store.clone()).register(parent.clone()).register(child).build().unwrap();
    *client_slot.lock() = Some(worker.client());
    let handle = worker.start();
    let scope = Scope::new("shop", "acme");
    let options = EnqueueOptions::new().scope(scope.clone());
    let id = handle.client().enqueue_with(&parent, (), options).await.unwrap().id();
    wait_for_state(&store, id, JobState::Completed).await;
    let children = crate::support::eventually("the child job", Duration::from_secs(5), || async {
        let filter = dispatch_core::JobFilter { name: Some("child".into()), ..Default::default() };
        let page = store.list_jobs(&filter, &dispatch_core::PageRequest::first(10)).await.unwrap();
        (!page.items.is_empty()).then_some(page.items)
    })
    .await;
    handle.stop().await;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].scope, scope, "the child inherits the parent's scope");
}

/// A user layer that counts the attempts passing through it.
#[derive(Clone)]
struct CountLayer(Arc<AtomicU32>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = CountService<S>;
    fn layer(&self, inner: S) -> CountService<S> {
        CountService { inner, count: self.0.clone() }
    }
}

#[derive(Clone)]
struct CountService<S> {
    inner: S,
    count: Arc<AtomicU32>,
}

impl<S> tower::Service<dispatch_job::JobRequest> for CountService<S>
where
    S: tower::Service<dispatch_job::JobRequest, Response = (), Error = JobError>,
{
    type Response = ();
    type Error = JobError;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), JobError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: dispatch_job::JobRequest) -> S::Future {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn user_layers_wrap_every_attempt() {
    let store = store();
    let count = Arc::new(AtomicU32::new(0));
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: u32| async { Ok(()) });
    let handle = worker(store.clone())
        .register(noop.clone())
        .layer(CountLayer(count.clone()))
        .build()
        .unwrap()
        .start();
    let ids = handle.client().enqueue_many(&noop, 0..5).await.unwrap();
    for id in ids {
        wait_for_state(&store, id.id(), JobState::Completed).await;
    }
    handle.stop().await;
    assert_eq!(count.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_job_starts_on_time_not_at_the_next_poll() {
    let store = store();
    let noop = JobDefinition::new("noop", |_ctx: JobContext, _: ()| async { Ok(()) });
    let handle = worker(store.clone())
        .register(noop.clone())
        .configure(|c| c.poll_interval = Duration::from_secs(60))
        .build()
        .unwrap()
        .start();
    let start = tokio::time::Instant::now();
    let options = EnqueueOptions::new().delay(Duration::from_secs(2));
    let id = handle.client().enqueue_with(&noop, (), options).await.unwrap().id();
    wait_for_state(&store, id, JobState::Completed).await;
    let waited = start.elapsed();
    handle.stop().await;
    assert!(waited >= Duration::from_secs(2), "not before its time: {waited:?}");
    assert!(waited < Duration::from_millis(2100), "the worker slept until it was due: {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_runs_after_its_backoff_not_at_the_next_poll() {
    let store = store();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let once = JobDefinition::new("once", move |_ctx: JobContext, _: ()| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move { if first { Err(JobError::retry("first try fails")) } else { Ok(()) } }
    })
    .backoff(Backoff::Constant { delay: Duration::from_millis(50) });
    let handle = worker(store.clone())
        .register(once.clone())
        .configure(|c| c.poll_interval = Duration::from_secs(60))
        .build()
        .unwrap()
        .start();
    let start = tokio::time::Instant::now();
    let id = handle.client().enqueue(&once, ()).await.unwrap().id();
    wait_for_state(&store, id, JobState::Completed).await;
    let waited = start.elapsed();
    handle.stop().await;
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_millis(150), "woken for the retry, not the poll: {waited:?}");
}
