//! Flow control through the dispatcher: queue configs given to the builder are stored at
//! start, and pause and resume at run time stop and restart claims and reach the hooks.

use std::time::Duration;

use dispatch::core::{Event, JobState, QueueConfig, Rate};
use dispatch::prelude::*;

use crate::{Events, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_configs_are_stored_and_pause_resume_reach_the_hooks() {
    let events = Events::default();
    let job =
        JobDefinition::new("paced", |_ctx: JobContext, (): ()| async { Ok(()) }).queue("paced");
    let config = QueueConfig::new("paced").max_running(2).rate(Rate::per_second(100));
    let mut dispatcher = Dispatcher::builder()
        .store(MemoryStore::new())
        .register(job.clone())
        .queue(config.clone())
        .hook(events.clone())
        .configure(|c| c.poll_interval = Duration::from_millis(20))
        .build()
        .expect("build");
    dispatcher.start().await.expect("start");
    let queues = dispatcher.queues().expect("flow control");
    let stored = queues.get("paced").await.expect("get").expect("stored at start");
    assert_eq!(stored.config, config);

    assert!(queues.pause("paced").await.expect("pause"));
    let id = dispatcher.enqueue(&job, ()).await.expect("enqueue").id();
    assert!(queues.resume("paced").await.expect("resume"));
    wait_for(&dispatcher, id, JobState::Completed).await;
    dispatcher.stop().await;
    let seen = events.0.lock().clone();
    let paused = seen
        .iter()
        .position(|e| matches!(e, Event::QueuePaused { queue, name: None } if queue == "paced"));
    let resumed = seen
        .iter()
        .position(|e| matches!(e, Event::QueueResumed { queue, name: None } if queue == "paced"));
    assert!(paused.is_some() && resumed > paused, "paused then resumed: {seen:?}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_at_build() {
    let bad = QueueConfig::new("q").rate(Rate::per_second(0));
    let built = Dispatcher::builder().store(MemoryStore::new()).queue(bad).build();
    assert_eq!(built.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
}
