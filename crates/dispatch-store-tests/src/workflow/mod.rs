//! Tests of [`WorkflowStore`], by theme: `runs`
//! (starts, the payload limit, listing, run ends, a dying drive job failing its run), `drive`
//! (checkpoints, fencing by the drive job's lease, suspension), `events` (correlated delivery:
//! one event one waiter, broadcast, kept events and their expiry, scope, wait resolution),
//! `cancel` (cancel, replay, migration) and `waiting` (what a suspended run says it waits for).
//! This module holds the helpers they share; every test is re-exported here, so the suite lists
//! it as `workflow::<name>`.

use dispatch_core::{
    EventId, EventWait, LeaseRef, NewEvent, NewJob, NewRun, RunId, RunState, Scope, Started,
    Suspend, SuspendOutcome, WorkflowStore,
};

use dispatch_core::Clock as _;

use crate::TestContext;
use crate::support::{lease, secs};

/// The drive jobs of the suite's runs.
const DRIVE: &str = "wf-drive";

fn new_run(name: &str) -> (NewRun, NewJob) {
    let run = NewRun {
        id: RunId::new(),
        name: name.to_owned(),
        version: 2,
        input: b"{\"order\":7}".to_vec(),
        scope: Scope::default(),
        idempotency_key: None,
        parent: None,
    };
    let drive = NewJob::new(DRIVE, run.id.to_string().into_bytes());
    (run, drive)
}

impl TestContext<dyn WorkflowStore> {
    /// Start a run of `name` in `scope`; its ID.
    async fn start_in(&self, name: &str, scope: Scope) -> RunId {
        let (mut run, mut drive) = new_run(name);
        run.scope = scope.clone();
        drive.scope = scope;
        let started = self.store.start_run(run, drive).await.expect("start_run");
        assert!(matches!(started, Started::Created(_)), "{started:?}");
        started.id()
    }

    async fn start(&self, name: &str) -> RunId {
        self.start_in(name, Scope::default()).await
    }

    /// Claim the drive job of `run` (the only due drive job), as a drive does.
    async fn drive(&self, run: RunId) -> LeaseRef {
        let drive_job = self.store.get_run(run).await.expect("get_run").expect("run").drive_job;
        let claimed = self.claim(&[DRIVE], 1).await;
        assert_eq!(claimed.len(), 1, "the drive job of {run} is due");
        assert_eq!(claimed[0].job.id, drive_job, "claimed the drive job of {run}");
        lease(&claimed[0])
    }

    async fn run_state(&self, run: RunId) -> RunState {
        self.store.get_run(run).await.expect("get_run").expect("run").state
    }

    async fn wait_for(
        &self,
        lease: LeaseRef,
        run: RunId,
        key: &str,
        name: &str,
        corr: &str,
    ) -> SuspendOutcome {
        let wait = EventWait {
            key: key.to_owned(),
            name: name.to_owned(),
            correlation: corr.to_owned(),
            deadline: self.clock.now() + secs(60),
        };
        let suspend = Suspend { run, until: None, waits: vec![wait], waiting: vec![] };
        self.store.suspend_run(lease, suspend).await.expect("suspend_run")
    }

    async fn publish(
        &self,
        name: &str,
        corr: &str,
        payload: &str,
        broadcast: bool,
    ) -> dispatch_core::Published {
        self.publish_in(name, corr, payload, broadcast, Scope::default()).await
    }

    async fn publish_in(
        &self,
        name: &str,
        corr: &str,
        payload: &str,
        broadcast: bool,
        scope: Scope,
    ) -> dispatch_core::Published {
        let event = NewEvent {
            id: EventId::new(),
            name: name.to_owned(),
            correlation: corr.to_owned(),
            payload: payload.as_bytes().to_vec(),
            scope,
            broadcast,
            keep_for: secs(3600),
        };
        self.store.publish_event(event).await.expect("publish_event")
    }

    async fn checkpoint_keys(&self, run: RunId) -> Vec<String> {
        let checkpoints = self.store.get_checkpoints(run).await.expect("checkpoints");
        checkpoints.into_iter().map(|c| c.key).collect()
    }
}

fn wait_on(ctx: &TestContext<dyn WorkflowStore>, key: &str, name: &str) -> EventWait {
    EventWait {
        key: key.to_owned(),
        name: name.to_owned(),
        correlation: "k".to_owned(),
        deadline: ctx.clock.now() + secs(60),
    }
}

mod cancel;
mod drive;
mod events;
mod runs;
mod waiting;

pub use cancel::*;
pub use drive::*;
pub use events::*;
pub use runs::*;
pub use waiting::*;
