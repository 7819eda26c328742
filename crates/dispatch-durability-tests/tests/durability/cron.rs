//! Cron across processes: three clustered processes share a per-second entry; the leader is
//! SIGKILLed twice. Every scheduled second from the first fire to the last is fired exactly
//! once: the seconds of the downtime by the entry's catch-up policy (each missed time), the
//! others on time, and none twice, whichever process fired it. Waits poll the store against a
//! deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dispatch::core::{CronStore, JobFilter, JobStore, PageRequest, Scope, WorkflowStore};
use dispatch_durability_tests::cluster::EVERY_SECOND;

use super::cluster::{Member, cluster_store, leading};
use super::{Kind, drop_schema, fresh, scratch_file, wait_until};

/// The scheduled time of each fire (from its unique key `cron:<entry>:<µs>`) and how late its
/// job was created, in µs, for every job of the entry.
async fn fires(store: &Arc<dyn WorkflowStore>) -> Vec<(i64, i64)> {
    let filter = JobFilter { name: Some("tick".to_owned()), ..JobFilter::default() };
    let mut page = PageRequest::first(1000);
    let mut fires = Vec::new();
    loop {
        let got = store.list_jobs(&filter, &page).await.expect("list_jobs");
        for job in &got.items {
            let key = job.unique_key.as_deref().expect("a cron job carries its fire key");
            let at: i64 = key.rsplit(':').next().and_then(|t| t.parse().ok()).expect("fire key");
            fires.push((at, job.created_at.as_unix_micros() - at));
        }
        match PageRequest::next_of(&got, 1000) {
            Some(next) => page = next,
            None => return fires,
        }
    }
}

/// The entry's last fired time, in µs since the epoch (0 before its first fire).
async fn last_fired(cron: &Arc<dyn CronStore>) -> i64 {
    let record = cron.find_cron(&Scope::default(), EVERY_SECOND).await.expect("find_cron");
    record.and_then(|r| r.last_fired).map_or(0, |t| t.as_unix_micros())
}

/// Seconds the entry fires under each leader before it is killed, and after the last kill.
const SECONDS_BETWEEN_KILLS: i64 = 7;

/// Wait until the entry has fired `seconds` more scheduled seconds than it had when called.
async fn fires_for(cron: &Arc<dyn CronStore>, seconds: i64) {
    let mut from = 0;
    wait_until("the entry to fire", Duration::from_secs(60), async || {
        let fired = last_fired(cron).await;
        if from == 0 {
            from = fired;
            return false;
        }
        fired >= from + seconds * 1_000_000
    })
    .await;
}

/// Three processes run a per-second entry (catch-up: each missed time); the leader is killed
/// twice, each time after it fired a few seconds, and a new process started. Then every second
/// between the first fire and the last has exactly one job.
pub(super) async fn a_per_second_entry_fires_each_second_once_across_leader_kills(kind: Kind) {
    let spec = fresh(kind, "cron-kill");
    let cluster = cluster_store(&spec).await;
    let store: Arc<dyn WorkflowStore> = spec.open("test").await.expect("open");
    let jobs: Arc<dyn JobStore> = store.clone();
    let cron = jobs.as_cron_store().expect("every built-in store keeps cron entries");
    let mut started = 0;
    let mut start = || {
        started += 1;
        let log = scratch_file(&format!("cron-kill-{kind:?}-{}-{started}.log", std::process::id()));
        Member::start("cron", &spec, &[], log)
    };
    let mut members: Vec<Member> = (0..3).map(|_| start()).collect();
    let mut killed_terms = Vec::new();
    for _ in 0..2 {
        let newer = killed_terms.last().copied().unwrap_or(0);
        let mut leader = None;
        wait_until("a new leader", Duration::from_secs(60), async || {
            leader = leading(&cluster, &members).await.filter(|&(_, term)| term > newer);
            leader.is_some()
        })
        .await;
        fires_for(&cron, SECONDS_BETWEEN_KILLS).await;
        // Still the leader that was found: a takeover meanwhile would be a kill of the wrong one.
        let (index, term) = leader.expect("a leader");
        let current = cluster.leader(dispatch::core::DEFAULT_LEADERSHIP).await.expect("leader");
        assert_eq!(current.map(|l| l.term), Some(term), "the leader changed without a kill");
        members.remove(index).kill();
        killed_terms.push(term);
        members.push(start());
    }
    fires_for(&cron, SECONDS_BETWEEN_KILLS).await;
    drop(members);

    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    let fires = fires(&store).await;
    for (at, _) in &fires {
        *per_second.entry(*at).or_default() += 1;
    }
    let twice: Vec<_> = per_second.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seconds fired more than once: {twice:?}");
    let times: Vec<i64> = per_second.keys().copied().collect();
    let gaps: Vec<_> = times.windows(2).filter(|w| w[1] - w[0] != 1_000_000).collect();
    assert!(gaps.is_empty(), "seconds never fired between {gaps:?}");
    let latest = fires.iter().map(|(_, lag)| *lag).max().unwrap_or(0);
    println!(
        "{kind:?}: {} seconds fired once each across leader kills (terms {killed_terms:?} \
         killed); the latest fire came {} ms after its second (caught up after a downtime)",
        times.len(),
        latest / 1000
    );
    assert!(times.len() >= 12, "too short a run to show anything: {} fires", times.len());
    drop_schema(&spec).await;
}
