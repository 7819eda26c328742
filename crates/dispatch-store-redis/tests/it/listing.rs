//! Listings with selective filters: one call reads a bounded number of index entries, so a
//! filter that matches little comes back in short pages that carry a cursor, and following the
//! cursors finds every match exactly once.

use std::time::Duration;

use dispatch_core::{JobFilter, JobId, JobState, JobStore, PageRequest};

use crate::common::{job_in, request, store};
use crate::support::ServerTest;

/// More jobs than one listing call reads (its budget is 10,000 index entries).
const BULK: usize = 10_500;

/// The tests of this module, by name.
pub(crate) fn tests() -> Vec<(&'static str, ServerTest)> {
    vec![
        ("a_rare_match_is_found_across_short_pages", |url| {
            Box::pin(a_rare_match_is_found_across_short_pages(url))
        }),
        ("running_jobs_page_in_id_order", |url| Box::pin(running_jobs_page_in_id_order(url))),
    ]
}

/// Running jobs have no state index of their own (the lease set holds them, scored by
/// expiry): their listing still pages in ID order, each exactly once, filters applied.
async fn running_jobs_page_in_id_order(url: String) {
    let store = store(&url).await;
    let mut jobs: Vec<_> = (0..25).map(|_| job_in("run", "listing")).collect();
    jobs.extend((0..5).map(|_| job_in("other", "listing")));
    let ids: Vec<JobId> =
        store.enqueue(jobs).await.expect("enqueue").iter().map(|e| e.id()).collect();
    // Leases of different lengths, so expiry order is not ID order.
    for (limit, ttl) in [(10, 300), (10, 100), (5, 200)] {
        let claim = request("listing", "run", limit, Duration::from_secs(ttl));
        store.claim(&claim).await.expect("claim");
    }
    let mut expected = ids[..25].to_vec();
    expected.sort();
    let filter = JobFilter {
        state: Some(JobState::Running),
        name: Some("run".into()),
        ..JobFilter::default()
    };
    let (mut found, mut page) = (Vec::new(), PageRequest::first(7));
    loop {
        let got = store.list_jobs(&filter, &page).await.expect("list_jobs");
        assert!(got.items.iter().all(|job| job.state == JobState::Running));
        found.extend(got.items.iter().map(|job| job.id));
        match PageRequest::next_of(&got, 7) {
            Some(next) => page = next,
            None => break,
        }
    }
    assert_eq!(found, expected);
}

async fn a_rare_match_is_found_across_short_pages(url: String) {
    let store = store(&url).await;
    let mut rare = Vec::new();
    for batch in 0..BULK / 500 {
        let mut jobs: Vec<_> = (0..500).map(|_| job_in("bulk", "common")).collect();
        if batch % 10 == 0 {
            let job = job_in("needle", "rare");
            rare.push(job.id);
            jobs.push(job);
        }
        store.enqueue(jobs).await.expect("enqueue");
    }
    rare.sort();

    let filter = JobFilter { queue: Some("rare".into()), ..JobFilter::default() };
    let (mut found, mut calls) = (Vec::new(), 0);
    let mut page = PageRequest::first(100);
    loop {
        let got = store.list_jobs(&filter, &page).await.expect("list_jobs");
        calls += 1;
        found.extend(got.items.iter().map(|job| job.id));
        match PageRequest::next_of(&got, 100) {
            Some(next) => page = next,
            None => break,
        }
    }
    assert_eq!(found, rare, "every match once, in ID order");
    assert!(calls >= 2, "{} entries can not be read in one call", BULK + rare.len());
}
