use std::time::Duration;

use super::*;

const T0: Timestamp = Timestamp::from_unix_micros(1_700_000_000_000_000);

fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_micros(T0.as_unix_micros() + millis * 1000)
}

fn job(queue: &str, tenant: Option<&str>, key: Option<(&str, u32)>) -> Candidate {
    static SEQ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Candidate {
        order: ClaimOrder::new(0, T0, seq),
        id: JobId::new(),
        queue: queue.to_owned(),
        name: "a".to_owned(),
        tenant: tenant.map(str::to_owned),
        key: key.map(|(k, n)| ConcurrencyKey::new(k, n)),
    }
}

/// Offers `n` jobs of `queue` at `now`, carrying the gates over from `gates`; answers how many
/// were admitted and the gates after.
fn offer(
    config: &QueueConfig,
    gates: Vec<(String, GateState)>,
    now: Timestamp,
    n: usize,
) -> (usize, Vec<(String, GateState)>) {
    let mut admission = Admission::new(now, [config.clone()], gates.clone());
    let admitted = (0..n).filter(|_| admission.admit(&job(&config.queue, None, None))).count();
    let mut after: std::collections::HashMap<_, _> = gates.into_iter().collect();
    for (gate, state) in admission.changed() {
        after.insert(gate.to_owned(), state);
    }
    (admitted, after.into_iter().collect())
}

#[test]
fn a_rate_admits_its_burst_then_one_interval_at_a_time() {
    let config = QueueConfig::new("q").rate(Rate::per_second(50).with_burst(10));
    let (first, mut gates) = offer(&config, vec![], at(0), 100);
    assert_eq!(first, 10, "the burst starts at once");
    let (second, after) = offer(&config, gates.clone(), at(0), 100);
    assert_eq!(second, 0, "nothing more in the same instant");
    gates = after;
    // Claims every 5 ms for a second: exactly one period's worth more, whatever the spacing.
    let mut started = 0;
    for step in 1..=200 {
        let (n, after) = offer(&config, gates, at(step * 5), 100);
        started += n;
        gates = after;
    }
    assert_eq!(started, 50, "one period later, one period's worth beyond the burst");
    let (at_once, _) = offer(&config, gates, at(1500), 100);
    assert_eq!(at_once, 10, "after half a quiet period, no more than the burst at once");
}

#[test]
fn a_rate_is_back_to_its_burst_after_a_quiet_spell() {
    let config = QueueConfig::new("q").rate(Rate::per_second(50).with_burst(10));
    let (_, gates) = offer(&config, vec![], at(0), 100);
    let (again, _) = offer(&config, gates, at(60_000), 100);
    assert_eq!(again, 10, "a quiet minute gives the burst back, no more");
}

#[test]
fn max_running_counts_the_gate_and_a_release_frees_it() {
    let config = QueueConfig::new("q").max_running(5);
    let (first, mut gates) = offer(&config, vec![], at(0), 16);
    assert_eq!(first, 5);
    let (none, _) = offer(&config, gates.clone(), at(10), 16);
    assert_eq!(none, 0);
    gates.iter_mut().for_each(|(_, s)| s.running -= 2);
    let (two, _) = offer(&config, gates, at(20), 16);
    assert_eq!(two, 2);
}

#[test]
fn a_paused_queue_or_name_admits_nothing() {
    let mut config = QueueConfig::new("q");
    config.paused = true;
    assert_eq!(offer(&config, vec![], at(0), 3).0, 0);
    let mut config = QueueConfig::new("q");
    config.paused_names.insert("a".to_owned());
    assert_eq!(offer(&config, vec![], at(0), 3).0, 0);
    config.paused_names.clear();
    config.paused_names.insert("b".to_owned());
    assert_eq!(offer(&config, vec![], at(0), 3).0, 3, "only the paused name waits");
}

#[test]
fn tenant_limits_apply_to_each_tenant_on_its_own() {
    let config = QueueConfig::new("q").tenant_max_running(2);
    let mut admission = Admission::new(at(0), [config], []);
    let admitted = ["a", "a", "a", "b", "b", "b"]
        .into_iter()
        .filter(|t| admission.admit(&job("q", Some(t), None)))
        .count();
    assert_eq!(admitted, 4);
    assert!(admission.admit(&job("q", None, None)), "a job without a tenant has no tenant gate");
    assert!(!admission.lane_open("q", Some("a")));
    assert!(admission.lane_open("q", Some("c")));
}

#[test]
fn a_key_gate_holds_in_plain_queues_too() {
    let mut admission = Admission::new(at(0), [], []);
    assert!(admission.admit(&job("plain", None, Some(("k", 1)))));
    assert!(!admission.admit(&job("plain", None, Some(("k", 1)))));
    assert!(admission.admit(&job("other", None, Some(("j", 1)))), "keys are separate");
    assert!(!admission.key_open(&ConcurrencyKey::new("k", 1)));
    assert!(admission.key_open(&ConcurrencyKey::new("k", 2)), "a larger limit fits");
}

#[test]
fn a_refused_job_changes_no_gate() {
    let config = QueueConfig::new("q").max_running(10);
    let mut admission = Admission::new(at(0), [config], []);
    assert!(admission.admit(&job("q", None, Some(("k", 1)))));
    assert!(!admission.admit(&job("q", None, Some(("k", 1)))), "its key is full");
    let changed: Vec<_> = admission.changed().map(|(g, s)| (g.to_owned(), s.running)).collect();
    assert_eq!(changed, vec![(key_gate("k"), 1), (queue_gate("q"), 1)]);
}

#[test]
fn round_robin_takes_one_of_each_lane_in_turn() {
    let lane = |tenant: &str, n| (0..n).map(|_| job("q", Some(tenant), None)).collect::<Vec<_>>();
    let order = round_robin(vec![lane("a", 3), lane("b", 1), lane("c", 2)]);
    let tenants: Vec<_> = order.iter().map(|c| c.tenant.clone().unwrap_or_default()).collect();
    assert_eq!(tenants, ["a", "b", "c", "a", "c", "a"]);
}

#[test]
fn merge_takes_the_best_head_and_keeps_each_sequence_in_order() {
    let mut a = job("a", None, None);
    a.order = ClaimOrder::new(0, at(5), 1);
    let mut b = job("b", None, None);
    b.order = ClaimOrder::new(1, at(9), 2);
    let mut c = job("c", None, None);
    c.order = ClaimOrder::new(0, at(1), 3);
    let merged = merge(vec![vec![a.clone(), c.clone()], vec![b.clone()]]);
    assert_eq!(merged, vec![b, a, c], "higher priority first; a sequence is never reordered");
}

#[test]
fn next_start_waits_for_the_rate_and_not_at_all_for_a_free_queue() {
    let config = QueueConfig::new("q").rate(Rate::per_second(10).with_burst(1));
    let (_, gates) = offer(&config, vec![], at(0), 1);
    let admission = Admission::new(at(0), [config.clone()], gates);
    assert_eq!(admission.next_start("q"), Some(at(100)));
    assert_eq!(admission.next_start("plain"), Some(at(0)));
    let full = QueueConfig::new("f").max_running(1);
    let (_, gates) = offer(&full, vec![], at(0), 1);
    assert_eq!(Admission::new(at(0), [full], gates).next_start("f"), None);
}

#[test]
fn configs_and_keys_are_validated() {
    assert!(QueueConfig::new("").validate().is_err());
    assert!(QueueConfig::new("q").rate(Rate::per_second(0)).validate().is_err());
    assert!(QueueConfig::new("q").rate(Rate::new(1, Duration::ZERO)).validate().is_err());
    assert!(QueueConfig::new("q").rate(Rate::per_second(5)).validate().is_ok());
    assert!(ConcurrencyKey::new("", 1).validate().is_err());
    assert!(ConcurrencyKey::new("k", 0).validate().is_err());
}
