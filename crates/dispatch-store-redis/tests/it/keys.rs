//! Key edges: queue and job names are spelled into keys, so names with the key separator `:`
//! or a hash-tag brace `{` must not make two (queue, name) pairs share a key.

use std::time::Duration;

use dispatch_core::{JobFilter, JobState, JobStore, QueueCount};

use crate::common::{job_in, request, store};
use crate::support::ServerTest;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![("separators_in_names_do_not_collide", |url| {
        Box::pin(separators_in_names_do_not_collide(url))
    })]
}

async fn separators_in_names_do_not_collide(url: String) {
    let store = store(&url).await;
    // (queue, name): each pair would spell `a:b:c` or `a{b:c` if keys were joined naively.
    let pairs = [("a:b", "c"), ("a", "b:c"), ("a{b", "c"), ("a", "{b:c}")];
    let jobs: Vec<_> = pairs.iter().map(|(queue, name)| job_in(name, queue)).collect();
    let ids: Vec<_> = jobs.iter().map(|job| job.id).collect();
    store.enqueue(jobs).await.expect("enqueue");

    for (i, (queue, name)) in pairs.iter().enumerate() {
        let filter = JobFilter {
            queue: Some((*queue).to_owned()),
            name: Some((*name).to_owned()),
            ..JobFilter::default()
        };
        let page =
            store.list_jobs(&filter, &dispatch_core::PageRequest::first(10)).await.expect("list");
        let listed: Vec<_> = page.items.iter().map(|job| job.id).collect();
        assert_eq!(listed, [ids[i]], "listing {queue:?}/{name:?}");
        let claimed =
            store.claim(&request(queue, name, 10, Duration::from_secs(60))).await.expect("claim");
        let claimed: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
        assert_eq!(claimed, [ids[i]], "claiming {queue:?}/{name:?}");
    }
    let counts = store.count_jobs().await.expect("count_jobs");
    let expected = |queue: &str, count| QueueCount {
        queue: queue.to_owned(),
        state: JobState::Running,
        count,
    };
    assert_eq!(counts, [expected("a", 2), expected("a:b", 1), expected("a{b", 1)]);
}
