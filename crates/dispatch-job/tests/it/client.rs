//! The client for users: waiting for a job's outcome, looking jobs up and counting them, all
//! without the worker's calls (the DLQ is `dispatch-dlq`'s; here only that a dead job's entry
//! is there). (That a wait is answered by the worker's notice rather
//! than its poll is proven in the crate's unit tests, where the poll can be made to never come.)

use std::sync::Arc;
use std::time::Duration;

use dispatch_core::{
    DlqFilter, ErrorKind, Job, JobCancel, JobFilter, JobId, JobState, PageRequest, Replay,
    ReplayOptions,
};
use dispatch_job::{EnqueueOptions, JobClient, JobContext, JobDefinition, JobError, JobWaitError};
use tokio::sync::Notify;

use crate::support::{store, worker};

/// Long enough that a loaded machine never reaches it; the clock is paused anyway.
const WITHIN: Duration = Duration::from_secs(60);

fn noop() -> JobDefinition<u32> {
    JobDefinition::new("noop", |_ctx: JobContext, _: u32| async { Ok(()) })
}

fn doomed() -> JobDefinition<()> {
    JobDefinition::new("doomed", |_ctx: JobContext, _: ()| async {
        Err(JobError::permanent("card declined"))
    })
}

/// `?` turns a wait's error into the crate's error.
async fn completed(client: &JobClient, id: JobId) -> dispatch_core::Result<Job> {
    Ok(client.wait(id, WITHIN).await?)
}

#[tokio::test(start_paused = true)]
async fn wait_answers_a_completed_job_with_its_final_record() {
    let handle = worker(store()).register(noop()).build().unwrap().start();
    let client = handle.client();
    let id = client.enqueue(&noop(), 7).await.unwrap().id();

    let job = completed(&client, id).await.unwrap();
    assert_eq!((job.id, job.state, job.attempt), (id, JobState::Completed, 1));
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_reports_a_dead_job_whose_dlq_entry_the_store_keeps() {
    let store = store();
    let handle = worker(store.clone()).register(doomed()).build().unwrap().start();
    let client = handle.client();
    let id = client.enqueue(&doomed(), ()).await.unwrap().id();

    let error = client.wait(id, WITHIN).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict);
    let JobWaitError::Dead(job) = error else { panic!("{error:?}") };
    assert_eq!(job.state, JobState::Dead);
    let entry = store.get_dlq(job.dlq_id.expect("a dead job has a DLQ entry")).await.unwrap();
    assert_eq!(entry.expect("the entry").job_id, id);

    let error = dispatch_core::Error::from(client.wait(id, WITHIN).await.unwrap_err());
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert_eq!(error.to_string(), "conflict: waiting for a job", "the reason is its source");
    let source = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<JobWaitError>());
    assert_eq!(source.and_then(JobWaitError::job).map(|job| job.id), Some(id));
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_reports_a_running_job_cancelled_on_request() {
    let started = Arc::new(Notify::new());
    let on_start = started.clone();
    let stubborn = JobDefinition::new("stubborn", move |ctx: JobContext, _: ()| {
        let on_start = on_start.clone();
        async move {
            on_start.notify_one();
            ctx.cancelled().await;
            Err(JobError::retry("stopped on request"))
        }
    });
    let handle = worker(store()).register(stubborn.clone()).build().unwrap().start();
    let client = handle.client();
    let id = client.enqueue(&stubborn, ()).await.unwrap().id();
    started.notified().await;

    assert_eq!(client.cancel(id).await.unwrap(), JobCancel::Requested);
    let error = client.wait(id, WITHIN).await.unwrap_err();
    assert!(matches!(&error, JobWaitError::Cancelled(job) if job.state == JobState::Cancelled));
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_reports_an_available_job_cancelled_through_a_standalone_client() {
    let client = JobClient::standalone(store());
    let id = client.enqueue(&noop(), 1).await.unwrap().id();
    assert_eq!(client.cancel(id).await.unwrap(), JobCancel::Cancelled);

    let error = client.wait(id, WITHIN).await.unwrap_err();
    assert!(matches!(&error, JobWaitError::Cancelled(job) if job.id == id), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_with_the_job_as_it_last_read_it() {
    // No worker runs this job, so it stays available.
    let client = JobClient::standalone(store());
    let id = client.enqueue(&noop(), 1).await.unwrap().id();

    let error = client.wait(id, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    let JobWaitError::TimedOut(job) = &error else { panic!("{error:?}") };
    assert_eq!((job.id, job.state, job.attempt), (id, JobState::Available, 0));
    assert_eq!(dispatch_core::Error::from(error).kind(), ErrorKind::Timeout);

    let checked = client.wait(id, Duration::ZERO).await.unwrap_err();
    assert!(matches!(checked, JobWaitError::TimedOut(_)), "a zero timeout still reads once");
}

#[tokio::test(start_paused = true)]
async fn wait_for_an_unknown_job_is_not_found() {
    let client = JobClient::standalone(store());
    let unknown = JobId::new();

    let error = client.wait(unknown, WITHIN).await.unwrap_err();
    assert!(matches!(error, JobWaitError::NotFound(id) if id == unknown), "{error:?}");
    assert_eq!(dispatch_core::Error::from(error).kind(), ErrorKind::NotFound);
    let all = client.wait_all([unknown], WITHIN).await.unwrap_err();
    assert!(matches!(all, JobWaitError::NotFound(_)), "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn wait_all_answers_every_final_record_in_the_order_asked() {
    let handle = worker(store()).register(noop()).register(doomed()).build().unwrap().start();
    let client = handle.client();
    let later = EnqueueOptions::new().delay(Duration::from_secs(2));
    let ids = [
        client.enqueue_with(&noop(), 1, later).await.unwrap().id(),
        client.enqueue(&doomed(), ()).await.unwrap().id(),
        client.enqueue(&noop(), 2).await.unwrap().id(),
    ];

    let jobs = client.wait_all(ids, WITHIN).await.unwrap();
    let seen: Vec<(JobId, JobState)> = jobs.iter().map(|job| (job.id, job.state)).collect();
    assert_eq!(
        seen,
        [(ids[0], JobState::Completed), (ids[1], JobState::Dead), (ids[2], JobState::Completed)]
    );
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_all_times_out_on_the_first_job_not_final_in_time() {
    let handle = worker(store()).register(noop()).build().unwrap().start();
    let client = handle.client();
    let done = client.enqueue(&noop(), 1).await.unwrap().id();
    let never = client.enqueue(&doomed(), ()).await.unwrap().id(); // no worker runs it

    let error = client.wait_all([done, never], Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(&error, JobWaitError::TimedOut(job) if job.id == never), "{error:?}");
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn get_list_and_counts_see_the_stored_jobs() {
    let client = JobClient::standalone(store());
    let in_bulk = EnqueueOptions::new().queue("bulk");
    let bulk = client.enqueue_many_with(&noop(), 0..3, in_bulk).await.unwrap();
    let plain = client.enqueue_many(&noop(), 0..2).await.unwrap();
    client.cancel(plain[0].id()).await.unwrap();

    let job = client.get(bulk[1].id()).await.unwrap().expect("the job");
    assert_eq!((job.queue.as_str(), job.state), ("bulk", JobState::Available));
    assert_eq!(client.get(JobId::new()).await.unwrap(), None);

    let filter = JobFilter { queue: Some("bulk".into()), ..JobFilter::default() };
    let first = client.list(&filter, &PageRequest::first(2)).await.unwrap();
    let next = PageRequest::next_of(&first, 2).expect("a second page");
    let second = client.list(&filter, &next).await.unwrap();
    let listed: Vec<JobId> = first.items.iter().chain(&second.items).map(|job| job.id).collect();
    let mut expected: Vec<JobId> = bulk.iter().map(|e| e.id()).collect();
    expected.sort(); // pages come in ID order
    assert_eq!(listed, expected);
    assert_eq!(second.next, None);

    let counts = client.counts().await.unwrap();
    assert_eq!(counts.total(), 5);
    assert_eq!(counts.in_state(JobState::Available), 4);
    assert_eq!(counts.in_queue("bulk"), 3);
    assert_eq!(counts.get("default", JobState::Cancelled), 1);
    assert_eq!(counts.queues().collect::<Vec<_>>(), ["bulk", "default"]);
    let rows: Vec<_> = counts.iter().collect();
    assert_eq!(
        rows,
        [
            ("bulk", JobState::Available, 3),
            ("default", JobState::Available, 1),
            ("default", JobState::Cancelled, 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_replayed_from_the_dlq_runs_on_the_worker() {
    let store = store();
    let handle = worker(store.clone()).register(doomed()).build().unwrap().start();
    let client = handle.client();
    let id = client.enqueue(&doomed(), ()).await.unwrap().id();
    let dlq_id = match client.wait(id, WITHIN).await {
        Err(JobWaitError::Dead(job)) => job.dlq_id.expect("a DLQ entry"),
        other => panic!("{other:?}"),
    };

    let listed = store.list_dlq(&DlqFilter::default(), &PageRequest::first(10)).await.unwrap();
    assert_eq!(listed.items.iter().map(|entry| entry.id).collect::<Vec<_>>(), [dlq_id]);
    let replay = store.replay_dlq(dlq_id, &ReplayOptions::default()).await.unwrap();
    let Replay::Replayed(again) = replay else { panic!("replayed") };
    let error = client.wait(again, WITHIN).await.unwrap_err();
    assert!(matches!(error, JobWaitError::Dead(_)), "the replayed job fails again: {error:?}");
    handle.stop().await;
}
