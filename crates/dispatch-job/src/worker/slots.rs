//! Per-queue local slots: a worker may give a queue fewer of its slots than its concurrency
//! ([`WorkerConfig::queue_slots`](super::WorkerConfig::queue_slots)). They bound this process
//! only, beside flow control's fleet-wide limits in the store (`dispatch_core::flow`).

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

/// The local slot limits of a worker's queues, and how many of each run now.
#[derive(Debug, Default)]
pub(crate) struct QueueSlots {
    limits: BTreeMap<String, usize>,
    running: Mutex<HashMap<String, usize>>,
}

impl QueueSlots {
    pub(crate) fn new(limits: BTreeMap<String, usize>) -> Self {
        Self { limits, running: Mutex::default() }
    }

    /// The claims of one round over `queues` for `free` slots, as (queues, limit): each queue
    /// with a local limit on its own, limited to its free local slots (first, so the others can
    /// not leave it none), then every other queue together with what is left. No claim of 0.
    pub(crate) fn plan(&self, queues: &[String], free: usize) -> Vec<(Vec<String>, usize)> {
        if self.limits.is_empty() {
            return vec![(queues.to_vec(), free)];
        }
        let running = self.running.lock();
        let mut left = free;
        let mut claims = Vec::new();
        for queue in queues {
            let Some(&limit) = self.limits.get(queue) else { continue };
            let open = limit.saturating_sub(running.get(queue).copied().unwrap_or(0)).min(left);
            if open > 0 {
                claims.push((vec![queue.clone()], open));
                left -= open;
            }
        }
        let rest: Vec<String> =
            queues.iter().filter(|q| !self.limits.contains_key(*q)).cloned().collect();
        if !rest.is_empty() && left > 0 {
            claims.push((rest, left));
        }
        claims
    }

    /// An attempt of `queue` started.
    pub(crate) fn started(&self, queue: &str) {
        if self.limits.contains_key(queue) {
            *self.running.lock().entry(queue.to_owned()).or_default() += 1;
        }
    }

    /// An attempt of `queue` ended; true when the queue has a local limit (its slot is free).
    pub(crate) fn ended(&self, queue: &str) -> bool {
        if !self.limits.contains_key(queue) {
            return false;
        }
        if let Some(n) = self.running.lock().get_mut(queue) {
            *n = n.saturating_sub(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn without_limits_one_claim_takes_every_slot() {
        let slots = QueueSlots::default();
        assert_eq!(slots.plan(&queues(&["a", "b"]), 8), vec![(queues(&["a", "b"]), 8)]);
    }

    #[test]
    fn a_limited_queue_gets_its_free_local_slots_and_the_rest_share_what_is_left() {
        let slots = QueueSlots::new(BTreeMap::from([("slow".to_owned(), 2)]));
        let all = queues(&["fast", "slow"]);
        assert_eq!(slots.plan(&all, 8), vec![(queues(&["slow"]), 2), (queues(&["fast"]), 6)]);
        slots.started("slow");
        slots.started("slow");
        slots.started("fast");
        assert_eq!(slots.plan(&all, 5), vec![(queues(&["fast"]), 5)], "slow is full");
        assert!(slots.ended("slow"));
        assert!(!slots.ended("fast"));
        assert_eq!(slots.plan(&all, 1), vec![(queues(&["slow"]), 1)]);
    }
}
