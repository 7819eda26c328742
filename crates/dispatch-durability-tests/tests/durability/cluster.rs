//! Cluster scenarios with real processes: workers SIGKILLed mid-run whose jobs the leader takes
//! over within the worker timeout, a leader stopped (SIGSTOP) past its lease whose writes after
//! resuming are all refused, and contending leaders killed in turn whose accepted writes never
//! interleave terms. Waits poll the store against a deadline; the pauses between kills pace the
//! scenario, they do not wait for anything to happen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dispatch::core::{
    ClusterStore, DEFAULT_LEADERSHIP, FailureKind, JobFilter, JobId, JobState, JobStore,
    PageRequest, WorkerId, WorkflowStore,
};
use dispatch::job::JobClient;
use dispatch_durability_tests::StoreSpec;
use dispatch_durability_tests::cluster::{Log, cluster_config, logged_job, wall_micros};

use super::{Kind, count, drop_schema, fresh, scratch_file, wait_until};

/// A cluster process: a `durability-worker cluster` or `leader`, known by the worker ID it
/// printed; killed when dropped.
pub(super) struct Member {
    child: Child,
    id: WorkerId,
    log: PathBuf,
}

impl Member {
    /// Start `durability-worker <mode> <spec> <args…>` logging to `log`, and read its ID.
    pub(super) fn start(mode: &str, spec: &StoreSpec, args: &[&str], log: PathBuf) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_durability-worker"));
        command.arg(mode).arg(spec.to_string());
        match mode {
            "cluster" => command.args(args).arg(&log),
            _ => command.arg(&log).args(args),
        };
        let mut child = command.stdout(Stdio::piped()).spawn().expect("start a cluster process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the process's first line");
        let id = line.split_whitespace().nth(1).and_then(|id| id.parse().ok());
        let id = id.unwrap_or_else(|| panic!("the process did not print its ID: {line:?}"));
        Self { child, id, log }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Send `signal` (`STOP`, `CONT`).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid()).status();
        assert!(status.expect("run kill").success(), "kill -{signal} failed");
    }

    /// SIGKILL, and reap.
    pub(super) fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// The lines of its log.
    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) async fn cluster_store(spec: &StoreSpec) -> Arc<dyn ClusterStore> {
    let store: Arc<dyn JobStore> = spec.open("test").await.expect("open");
    store.as_cluster_store().expect("every built-in store keeps a cluster")
}

/// Three clustered workers run 10,000 jobs of 10–50 ms; every three seconds one is SIGKILLed
/// and started again (four times). Nothing is lost; jobs run twice at most as many as the killed
/// workers had in flight, each time because the leader took the job over (a `WorkerLost`
/// error: leases of five minutes never expire here); every job in flight is taken over within
/// seconds of the kill (the worker timeout plus a sweep, plus the leader's lease when the
/// leader was the one killed; printed, and bounded far below the lease) and starts again
/// right after (printed: a taken-over job keeps its place in the queue).
pub(super) async fn killed_workers_jobs_run_again_within_the_worker_timeout(kind: Kind) {
    const JOBS: u64 = 10_000;
    let spec = fresh(kind, "cluster-kill");
    let store = spec.open("test").await.expect("open");
    let client = JobClient::standalone(store.clone());
    let def = logged_job(Log::open(&PathBuf::from("/dev/null")).expect("null log"));
    for start in (0..JOBS).step_by(1000) {
        client.enqueue_many(&def, start..start + 1000).await.expect("enqueue");
    }
    let log =
        |n: usize| scratch_file(&format!("cluster-kill-{kind:?}-{}-{n}.log", std::process::id()));
    let mut started = 0;
    let mut start = |spec: &StoreSpec| {
        started += 1;
        Member::start("cluster", spec, &["8"], log(started))
    };
    let mut members: Vec<Member> = (0..3).map(|_| start(&spec)).collect();
    let mut logs: Vec<PathBuf> = members.iter().map(|m| m.log.clone()).collect();
    let mut kills: Vec<(i64, HashSet<JobId>)> = Vec::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if count(&store, JobState::Completed).await >= JOBS * 9 / 10 {
            break;
        }
        let victim = members.remove(round % members.len());
        let id = victim.id;
        victim.kill();
        let killed_at = wall_micros();
        kills.push((killed_at, running_of(&store, id).await));
        let fresh_member = start(&spec);
        logs.push(fresh_member.log.clone());
        members.push(fresh_member);
    }
    assert!(kills.len() >= 2, "the run ended before two kills: make it longer");
    wait_until("every job", Duration::from_secs(240), async || {
        count(&store, JobState::Completed).await == JOBS
    })
    .await;

    let jobs = all_jobs(&store).await;
    assert_eq!(jobs.len() as u64, JOBS, "none lost");
    assert!(jobs.iter().all(|j| j.state == JobState::Completed), "all completed");
    let in_flight: usize = kills.iter().map(|(_, running)| running.len()).sum();
    let ran_twice: Vec<_> = jobs.iter().filter(|j| j.attempt > 1).collect();
    assert!(ran_twice.len() <= in_flight, "{} ran twice, {in_flight} in flight", ran_twice.len());
    for job in &ran_twice {
        let kinds: Vec<_> = job.errors.iter().map(|e| e.kind).collect();
        assert!(kinds.iter().all(|&k| k == FailureKind::WorkerLost), "{}: {kinds:?}", job.id);
    }
    let taken_over = takeover_delays(&kills, &jobs);
    let delays = restart_delays(&kills, &logs);
    let max = delays.iter().max().copied().unwrap_or(0);
    let median = delays.get(delays.len() / 2).copied().unwrap_or(0);
    let timeout = cluster_config().worker_timeout;
    let taken_max = taken_over.iter().max().copied().unwrap_or(0);
    let taken_median = taken_over.get(taken_over.len() / 2).copied().unwrap_or(0);
    println!(
        "{kind:?}: {} kills, {in_flight} jobs in flight at the kills, {} ran again; \
         taken over (available again) after the kill: median {} ms, max {} ms (worker timeout \
         {} ms, sweep every {} ms); started again: median {} ms, max {} ms",
        kills.len(),
        ran_twice.len(),
        taken_median / 1000,
        taken_max / 1000,
        timeout.as_millis(),
        cluster_config().sweep_interval.as_millis(),
        median / 1000,
        max / 1000,
    );
    // A job listed running just after a kill was taken over, or its finish, sent before the
    // kill, committed just after the listing (the server ends a dead client's last statement).
    let by_id: HashMap<JobId, &dispatch::core::Job> = jobs.iter().map(|j| (j.id, j)).collect();
    for id in kills.iter().flat_map(|(_, running)| running) {
        let job = by_id[id];
        let lost = job.errors.iter().any(|e| e.kind == FailureKind::WorkerLost);
        assert!(lost || job.attempt == 1, "{id} neither taken over nor finished: {job:?}");
    }
    assert_eq!(delays.len(), taken_over.len(), "every job taken over started again");
    // The lease (five minutes) never decides here: a takeover is the registry's, in seconds.
    let bound = 30_000_000;
    assert!(taken_max < bound, "a job was taken over after {} ms", taken_max / 1000);
    drop(members);
    drop_schema(&spec).await;
}

/// The running jobs leased by `worker`, read right after it was killed (its heartbeat is
/// seconds from timing out, so none was taken over yet).
async fn running_of(store: &Arc<dyn WorkflowStore>, worker: WorkerId) -> HashSet<JobId> {
    let filter = JobFilter { state: Some(JobState::Running), ..JobFilter::default() };
    let mut page = PageRequest::first(1000);
    let mut running = HashSet::new();
    loop {
        let found = store.list_jobs(&filter, &page).await.expect("list_jobs");
        let owned = found.items.iter().filter(|j| j.lease.is_some_and(|l| l.owner == worker));
        running.extend(owned.map(|j| j.id));
        match PageRequest::next_of(&found, 1000) {
            Some(next) => page = next,
            None => return running,
        }
    }
}

async fn all_jobs(store: &Arc<dyn WorkflowStore>) -> Vec<dispatch::core::Job> {
    let mut page = PageRequest::first(1000);
    let mut jobs = Vec::new();
    loop {
        let found = store.list_jobs(&JobFilter::default(), &page).await.expect("list_jobs");
        jobs.extend(found.items.iter().cloned());
        match PageRequest::next_of(&found, 1000) {
            Some(next) => page = next,
            None => return jobs,
        }
    }
}

/// For each job in flight at a kill, µs from the kill to its next start (sorted).
fn restart_delays(kills: &[(i64, HashSet<JobId>)], logs: &[PathBuf]) -> Vec<i64> {
    let mut starts: HashMap<String, Vec<i64>> = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            if let (Some("start"), Some(id), Some(at)) = (parts.next(), parts.next(), parts.next())
                && let Ok(at) = at.parse::<i64>()
            {
                starts.entry(id.to_owned()).or_default().push(at);
            }
        }
    }
    let mut delays = Vec::new();
    for (killed_at, running) in kills {
        for id in running {
            let next =
                starts.get(&id.to_string()).into_iter().flatten().filter(|&&t| t > *killed_at);
            if let Some(at) = next.min() {
                delays.push(at - killed_at);
            }
        }
    }
    delays.sort_unstable();
    delays
}

/// For each job in flight at a kill, µs from the kill to its takeover (the `WorkerLost` error
/// the sweep recorded, in store time: the same machine's clock here), sorted.
fn takeover_delays(kills: &[(i64, HashSet<JobId>)], jobs: &[dispatch::core::Job]) -> Vec<i64> {
    let by_id: HashMap<JobId, &dispatch::core::Job> = jobs.iter().map(|j| (j.id, j)).collect();
    let mut delays = Vec::new();
    for (killed_at, running) in kills {
        for id in running {
            let errors = by_id.get(id).map(|j| j.errors.as_slice()).unwrap_or_default();
            let lost = errors.iter().filter(|e| e.kind == FailureKind::WorkerLost);
            let next = lost.map(|e| e.at.as_unix_micros()).filter(|&at| at > *killed_at).min();
            if let Some(at) = next {
                delays.push(at - killed_at);
            }
        }
    }
    delays.sort_unstable();
    delays
}

/// One logged leader write: when it began and when its answer came, under which term, and
/// whether the store accepted it.
struct Write {
    at: i64,
    answered: i64,
    term: u64,
    outcome: String,
}

fn writes(member: &Member) -> Vec<Write> {
    let parse = |line: &String| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["write", at, answered, term, outcome] => Some(Write {
                at: at.parse().ok()?,
                answered: answered.parse().ok()?,
                term: term.parse().ok()?,
                outcome: (*outcome).to_owned(),
            }),
            _ => None,
        }
    };
    member.lines().iter().filter_map(parse).collect()
}

/// The leader of the test's leadership now, when one of `members` holds a valid term.
pub(super) async fn leading(
    store: &Arc<dyn ClusterStore>,
    members: &[Member],
) -> Option<(usize, u64)> {
    let leader = store.leader(DEFAULT_LEADERSHIP).await.expect("leader")?;
    let index = members.iter().position(|m| m.id == leader.holder)?;
    Some((index, leader.term))
}

/// Two cluster processes; the leader, writing without pause, is stopped with SIGSTOP past its
/// lease; the other takes over under the next term and writes; the first is continued. No
/// write it attempts after resuming is accepted, at least one is refused by the store's term
/// check (counted), and the store's record of accepted writes never goes back to the old term.
pub(super) async fn a_paused_leader_is_fenced_when_it_resumes(kind: Kind) {
    let spec = fresh(kind, "cluster-pause");
    let store = cluster_store(&spec).await;
    let members: Vec<Member> = (0..2)
        .map(|n| {
            let log =
                scratch_file(&format!("cluster-pause-{kind:?}-{}-{n}.log", std::process::id()));
            Member::start("leader", &spec, &["2"], log)
        })
        .collect();
    let mut leader = None;
    // A settled leader: the store's current term, whose holder's latest 20 writes were all
    // accepted under it (so it is not being deposed as it is stopped).
    wait_until("a settled leader that writes", Duration::from_secs(60), async || {
        leader = leading(&store, &members).await;
        leader.is_some_and(|(i, term)| {
            let log = writes(&members[i]);
            let last = &log[log.len().saturating_sub(20)..];
            last.len() == 20 && last.iter().all(|w| w.term == term && w.outcome == "accepted")
        })
    })
    .await;
    let (paused, old_term) = leader.expect("a leader");
    members[paused].signal("STOP");
    let before = writes(&members[paused]);
    assert!(
        before.iter().all(|w| w.outcome == "accepted"),
        "the leader was deposed before it was stopped; the scenario did not happen"
    );
    wait_until("the other process to take over and write", Duration::from_secs(60), async || {
        let records = store.leader_writes(DEFAULT_LEADERSHIP, 1000).await.expect("writes");
        records.iter().any(|w| w.term > old_term)
    })
    .await;
    let resumed_at = wall_micros();
    members[paused].signal("CONT");
    // The fence is met by the first write answered after the resume: one begun after it, or
    // one sent just before the SIGSTOP that the server ran only after the term had expired.
    wait_until("the resumed leader to meet the fence", Duration::from_secs(60), async || {
        writes(&members[paused]).iter().any(|w| w.answered > resumed_at && w.outcome == "refused")
    })
    .await;

    let after: Vec<Write> =
        writes(&members[paused]).into_iter().filter(|w| w.answered > resumed_at).collect();
    let refused = after.iter().filter(|w| w.outcome == "refused").count();
    println!(
        "{kind:?}: the resumed leader (term {old_term}) attempted {} writes, {refused} refused",
        after.len()
    );
    assert!(refused >= 1, "the resumed leader attempted no write under its old term");
    for write in after.iter().filter(|w| w.term == old_term && w.at > resumed_at) {
        // Refused by the term check, or failed before reaching it (PostgreSQL ends the session
        // of a client paused inside a transaction): never accepted.
        assert_ne!(write.outcome, "accepted", "a write under the old term after resuming");
    }
    let records = store.leader_writes(DEFAULT_LEADERSHIP, 1000).await.expect("writes");
    let late = records.iter().filter(|w| w.term == old_term && w.at.as_unix_micros() > resumed_at);
    assert_eq!(late.count(), 0, "the store recorded a write under the old term after resuming");
    let leader = store.leader(DEFAULT_LEADERSHIP).await.expect("leader").expect("held");
    assert!(leader.term > old_term, "the term grew");
    assert_terms_never_interleave(&store).await;
    drop(members);
    drop_schema(&spec).await;
}

/// Three cluster processes contend; the leader is SIGKILLed and started again four times.
/// From the store's own record of accepted leader writes: terms never go back, and the periods
/// in which two terms wrote never overlap.
pub(super) async fn contending_leaders_never_write_under_two_terms(kind: Kind) {
    let spec = fresh(kind, "cluster-contend");
    let store = cluster_store(&spec).await;
    let mut started = 0;
    let mut start = |spec: &StoreSpec| {
        started += 1;
        let log =
            scratch_file(&format!("cluster-contend-{kind:?}-{}-{started}.log", std::process::id()));
        Member::start("leader", spec, &["20"], log)
    };
    let mut members: Vec<Member> = (0..3).map(|_| start(&spec)).collect();
    let mut terms_seen = Vec::new();
    for _ in 0..4 {
        let mut leader = None;
        let newer = terms_seen.last().copied().unwrap_or(0);
        wait_until("a new leader that writes", Duration::from_secs(60), async || {
            leader = leading(&store, &members).await.filter(|&(_, term)| term > newer);
            let Some((_, term)) = leader else { return false };
            let records = store.leader_writes(DEFAULT_LEADERSHIP, 1000).await.expect("writes");
            records.iter().any(|w| w.term == term)
        })
        .await;
        let (index, term) = leader.expect("a leader");
        terms_seen.push(term);
        members.remove(index).kill();
        members.push(start(&spec));
    }
    println!("{kind:?}: terms {terms_seen:?} each killed after writing");
    assert_terms_never_interleave(&store).await;
    drop(members);
    drop_schema(&spec).await;
}

/// The store's record of accepted leader writes: terms never decrease in the order the store
/// accepted them, and each term's writes lie between the previous term's last and the next
/// term's first.
async fn assert_terms_never_interleave(store: &Arc<dyn ClusterStore>) {
    let records = store.leader_writes(DEFAULT_LEADERSHIP, 1000).await.expect("writes");
    assert!(!records.is_empty(), "no accepted writes recorded");
    let terms: Vec<u64> = records.iter().map(|w| w.term).collect();
    assert!(terms.windows(2).all(|p| p[0] <= p[1]), "terms went back: {terms:?}");
    let mut periods: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    for write in &records {
        let at = write.at.as_unix_micros();
        let period = periods.entry(write.term).or_insert((at, at));
        period.0 = period.0.min(at);
        period.1 = period.1.max(at);
    }
    let periods: Vec<(u64, (i64, i64))> = periods.into_iter().collect();
    for pair in periods.windows(2) {
        let ((a, (_, a_last)), (b, (b_first, _))) = (pair[0], pair[1]);
        assert!(a_last <= b_first, "term {a} wrote after term {b} began writing");
    }
}
