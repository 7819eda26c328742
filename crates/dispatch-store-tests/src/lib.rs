//! The conformance suite every Dispatch store runs: the executable form of the contracts in
//! `dispatch-core`'s [`store`](dispatch_core::store) module ([`JobStore`] with its
//! [`DlqStore`](dispatch_core::DlqStore), [`WorkflowStore`], the cluster traits,
//! [`CronStore`](dispatch_core::CronStore) and [`RetentionStore`](dispatch_core::RetentionStore)).
//!
//! A store author runs it on their store from a test binary declared with `harness = false`:
//! implement [`StoreFactory`] (how to make a fresh, empty store in its own namespace reading a
//! given clock) and hand it to [`run_conformance`] (a store that keeps workflows too) or
//! [`run_job_conformance`] (a store of jobs only):
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::sync::Arc;
//!
//! use dispatch_core::{SharedClock, SystemClock};
//! use dispatch_store_memory::MemoryStore;
//! use dispatch_store_tests::{StoreFactory, run_conformance};
//!
//! struct MyStore;
//!
//! #[async_trait::async_trait]
//! impl StoreFactory for MyStore {
//!     type Store = MemoryStore;
//!
//!     fn name(&self) -> &str {
//!         "mine"
//!     }
//!     async fn create(&self, clock: Option<SharedClock>) -> dispatch_core::Result<MemoryStore> {
//!         // A fresh store in its own namespace, reading `clock` (or its default); here the
//!         // memory store.
//!         let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
//!         Ok(MemoryStore::with_clock(clock))
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     run_conformance(MyStore)
//! }
//! ```
//!
//! Every test is a plain `pub async fn(TestContext)` in a module named after the trait it pins
//! ([`job`], [`dlq`], [`cluster`], [`cron`], [`flow`], [`retention`], [`workflow`]); [`job_tests`],
//! [`cluster_tests`], [`cron_tests`], [`retention_tests`] and [`workflow_tests`] list them. Tests are
//! deterministic: time moves only through the [`ManualClock`](dispatch_core::ManualClock) in the
//! [`TestContext`], never by sleeping, and each test touches only its own store, so they run in
//! parallel against one server.
//!
//! Beside the suite, the runners run the [`runtime`] scenarios ([`job_scenarios`]: the job
//! runtime of `dispatch-job` driven end to end over a fresh store on its default clock: retry,
//! snooze, cancel, shutdown release, fencing, push wake-ups) and, for a workflow store, the
//! [`runs`] scenarios ([`workflow_scenarios`]), so a new store is exercised under real workers
//! without writing a test of its own. [`fixtures`] holds what those scenarios share with
//! `dispatch-job`'s own tests.
//!
//! This is not a benchmark or a fuzzer: it checks what a store promises, one behaviour per test,
//! against the trait docs. A behaviour that is not in the trait docs is not pinned here.

mod harness;
mod support;

pub mod faults;
pub mod fixtures;
pub mod runs;
pub mod runtime;
pub mod server;

pub mod cluster;
pub mod cron;
pub mod dlq;
pub mod flow;
pub mod job;
pub mod retention;
pub mod workflow;

use std::sync::Arc;

use dispatch_core::{ClusterStore, JobStore, WorkflowStore};
use futures::future::BoxFuture;

pub use harness::{StoreFactory, TestContext, run_conformance, run_job_conformance};

/// A runtime scenario: the job runtime (or workflows on it) driven over a fresh store on the
/// system clock.
pub struct Scenario<S: ?Sized> {
    /// `runtime::<function>` (job runtime) or `runs::<function>` (workflows).
    pub name: &'static str,
    /// The scenario.
    pub run: fn(Arc<S>) -> BoxFuture<'static, ()>,
}

impl<S: ?Sized> std::fmt::Debug for Scenario<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The job runtime's scenarios, in a stable order: they need a [`JobStore`] only.
pub fn job_scenarios() -> Vec<Scenario<dyn JobStore>> {
    macro_rules! scenarios {
        ($($test:ident),* $(,)?) => {
            vec![$(Scenario {
                name: concat!("runtime::", stringify!($test)),
                run: |store| Box::pin(runtime::$test(store)),
            },)*]
        };
    }
    scenarios![
        retry_then_succeed,
        snooze_gives_the_attempt_back,
        cancel_reaches_the_running_handler,
        shutdown_releases_long_jobs,
        fenced_out_completion_is_refused,
        store_wake_up_starts_an_idle_worker,
        delayed_job_starts_when_due,
        slow_finish_replies_never_run_a_job_twice,
        ambiguous_finishes_never_run_a_job_twice,
        outage_shorter_than_the_lease_loses_no_finish,
        lost_claim_answers_cost_no_attempt,
    ]
}

/// The flow control scenarios (workers over the store, real time), in a stable order: they
/// need a [`JobStore`] that answers [`JobStore::as_flow_store`].
pub fn flow_scenarios() -> Vec<Scenario<dyn JobStore>> {
    macro_rules! scenarios {
        ($($test:ident),* $(,)?) => {
            vec![$(Scenario {
                name: concat!("flow::", stringify!($test)),
                run: |store| Box::pin(flow::scenarios::$test(store)),
            },)*]
        };
    }
    scenarios![
        a_running_limit_holds_across_four_workers,
        a_concurrency_key_never_runs_two_at_once,
        pause_stops_claims_and_resume_restarts_them,
        a_small_tenant_is_not_starved_by_a_backlog,
        progress_reaches_the_record_and_the_retry,
    ]
}

/// The workflow scenarios, in a stable order: they need a [`WorkflowStore`].
pub fn workflow_scenarios() -> Vec<Scenario<dyn WorkflowStore>> {
    macro_rules! scenarios {
        ($($test:ident),* $(,)?) => {
            vec![$(Scenario {
                name: concat!("runs::", stringify!($test)),
                run: |store| Box::pin(runs::$test(store)),
            },)*]
        };
    }
    scenarios![
        interrupted_at_every_step_boundary_resumes_exactly,
        a_step_in_a_loop_gets_a_checkpoint_per_call,
        parallel_branches_keep_their_own_results,
        resume_cost_does_not_grow_with_finished_steps,
        panics_fail_attempts_or_runs_not_workers,
        sleep_wakes_after_its_duration,
        sleeping_runs_hold_no_worker_slot,
        step_retry_is_durable_and_holds_no_slot,
        fifty_keys_fifty_events,
        four_events_for_ten_waiters,
        early_event_is_received,
        broadcast_reaches_all_current_waiters,
        a_dropped_wait_takes_no_event,
        saga_compensates_in_reverse_once,
        children_loop_fan_out_and_fail,
        deterministic_helpers_keep_their_values_across_drives,
        run_timeout_ends_a_sleeping_run,
        runs_stay_on_their_version,
        cancel_of_a_suspended_run_compensates_and_cascades,
        cancel_through_the_drive_job_compensates,
        cancel_of_a_running_run_stops_at_a_step_boundary,
        rewind_to_a_step_reruns_what_follows,
        migrate_a_failed_run_to_a_fixed_version,
        a_run_waiting_for_an_event_says_so,
        a_run_says_it_waits_for_a_sleep_a_retry_or_a_child,
    ]
}

/// One test of the suite: its name and the function that runs it.
pub struct SuiteTest<S: ?Sized> {
    /// The test's name, `module::function`, e.g. `job::claim_order_priority_then_fifo`.
    pub name: &'static str,
    /// Runs the test on a context; panics (a failed assertion) when the store misbehaves.
    pub run: fn(TestContext<S>) -> BoxFuture<'static, ()>,
}

impl<S: ?Sized> std::fmt::Debug for SuiteTest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuiteTest").field("name", &self.name).finish_non_exhaustive()
    }
}

macro_rules! suite {
    ($($module:ident :: $test:ident),* $(,)?) => {
        vec![$(
            SuiteTest {
                name: concat!(stringify!($module), "::", stringify!($test)),
                run: |ctx| Box::pin($module::$test(ctx)),
            },
        )*]
    };
}

/// The job and DLQ tests, in a stable order: they need a [`JobStore`] only.
pub fn job_tests() -> Vec<SuiteTest<dyn JobStore>> {
    suite![
        // enqueue
        job::enqueue_rejects_oversized_payload,
        job::enqueue_oversized_item_fails_whole_batch,
        job::enqueue_accepts_payload_at_limit,
        job::enqueue_rejects_invalid_options,
        job::enqueue_rejects_duplicate_ids,
        job::enqueue_empty_batch_is_empty,
        job::enqueue_retry_answers_as_the_first_call,
        // claim
        job::claim_order_priority_then_fifo,
        job::claim_order_run_at_breaks_priority_ties,
        job::claim_order_spans_names_and_queues,
        job::claim_waits_for_run_at,
        job::claim_filters_names_and_queues,
        job::claim_with_empty_names_or_queues_claims_nothing,
        job::claim_writes_lease,
        job::release_claim_gives_back_that_claims_leases,
        job::claim_respects_limit,
        job::claim_is_exclusive,
        job::next_due_reports_time_until_the_next_job,
        // finish
        job::finish_complete,
        job::finish_retry_schedules_next_attempt,
        job::finish_fail_promotes_to_dlq,
        job::finish_retry_exhausted_promotes_to_dlq,
        job::finish_snooze_gives_attempt_back,
        job::finish_release_gives_attempt_back,
        job::finish_cancel_by_handler,
        job::finish_repeat_is_already_applied,
        job::finish_repeat_after_reclaim,
        job::finish_batch_answers_per_item,
        job::finish_given_back_attempts_do_not_count,
        job::finish_concurrent_repeats_apply_once,
        // leases
        job::lease_fencing_refuses_old_token,
        job::heartbeat_extends_lease,
        job::heartbeat_reports_lost_leases,
        job::rescue_makes_expired_job_available,
        job::rescued_job_keeps_its_place_in_the_queue,
        job::rescue_leaves_live_leases_alone,
        job::rescue_respects_limit,
        job::rescue_keeps_attempt_spent_and_promotes_after_last,
        job::expired_lease_finishes_until_rescued,
        job::finish_races_rescue,
        job::heartbeat_races_rescue,
        job::rescue_is_exclusive,
        // cancel
        job::cancel_available_job,
        job::cancel_scheduled_job,
        job::cancel_running_job_through_holder,
        job::cancel_request_wins_over_running_again,
        job::cancel_final_job_is_already_final,
        job::cancel_unknown_job_is_not_found,
        job::cancel_requested_expired_lease_is_cancelled_by_rescue,
        job::cancel_by_rescue_records_lease_expired,
        job::cancel_requested_on_last_attempt_is_cancelled_not_dead,
        job::cancel_races_claim,
        // unique keys
        job::unique_concurrent_enqueues_create_one,
        job::unique_duplicate_within_batch,
        job::unique_key_scoped_by_name,
        job::unique_key_freed_by_final_state,
        job::unique_window_holds_key_after_finish,
        job::unique_window_does_not_free_live_holder,
        job::unique_duplicate_leaves_holder_untouched,
        // lookups
        job::list_jobs_keyset_pagination,
        job::list_jobs_full_last_page_has_no_next,
        job::list_jobs_page_limit_is_at_least_one,
        job::list_jobs_filters,
        job::list_jobs_stable_while_rows_change,
        job::count_jobs_per_queue_and_state,
        job::get_job_round_trips_every_field,
        job::get_job_round_trips_edge_values,
        job::get_job_unknown_is_none,
        job::store_clock_stamps_times,
        // push wake-ups
        job::wakeups_follow_enqueues_and_replays,
        // dead letter queue
        dlq::entry_written_with_death,
        dlq::death_and_entry_are_never_apart,
        dlq::replayed_job_dies_again_with_own_entry,
        dlq::replay_once_under_concurrency,
        dlq::replay_unknown_is_not_found,
        dlq::purge_removes_what_filter_says,
        dlq::list_filters_and_paginates,
        dlq::list_continues_after_purged_cursor,
        dlq::get_unknown_is_none,
        dlq::filters_by_scope_time_and_error,
        dlq::count_groups_by_queue_and_name,
        dlq::replay_options_change_queue_and_delay,
        dlq::bulk_replay_takes_exactly_the_matching_entries,
        dlq::bulk_replay_under_concurrency_replays_each_once,
        dlq::purge_is_bounded_oldest_first,
        dlq::pages_over_ten_thousand_entries,
    ]
}

/// The cluster tests (worker registry, leader election), in a stable order: they need a
/// [`ClusterStore`].
pub fn cluster_tests() -> Vec<SuiteTest<dyn ClusterStore>> {
    suite![
        cluster::register_list_and_deregister,
        cluster::heartbeat_renews_the_worker_and_its_leases,
        cluster::heartbeat_of_an_unknown_worker_answers_gone,
        cluster::drain_is_told_at_the_next_heartbeat,
        cluster::sweep_takes_over_a_silent_workers_jobs,
        cluster::sweep_reclaims_in_bounded_batches,
        cluster::single_leader_under_contention,
        cluster::term_grows_on_takeover,
        cluster::renewal_by_a_non_holder_fails,
        cluster::a_write_under_an_old_term_is_rejected,
        cluster::terms_never_overlap_under_churn,
    ]
}

/// The flow control tests, in a stable order: they need a [`JobStore`] that answers
/// [`JobStore::as_flow_store`].
pub fn flow_tests() -> Vec<SuiteTest<dyn JobStore>> {
    suite![
        flow::a_rate_starts_its_burst_then_its_rate,
        flow::a_running_limit_holds_and_every_exit_frees_it,
        flow::a_first_config_counts_what_already_runs,
        flow::a_paused_queue_claims_nothing_until_resumed,
        flow::a_paused_name_waits_while_others_run,
        flow::a_concurrency_key_limits_its_running_jobs,
        flow::a_concurrency_key_holds_across_queues,
        flow::tenant_limits_hold_for_each_tenant,
        flow::a_fair_queue_serves_tenants_round_robin,
        flow::other_queues_are_claimed_beside_a_full_one,
        flow::configs_round_trip_list_and_delete,
        flow::progress_is_fenced_and_survives_a_retry,
    ]
}

/// The cron store tests, in a stable order: they need a [`JobStore`] that answers
/// [`JobStore::as_cron_store`] and [`JobStore::as_cluster_store`].
pub fn cron_tests() -> Vec<SuiteTest<dyn JobStore>> {
    suite![
        cron::save_inserts_then_updates_by_scope_and_name,
        cron::save_round_trips_every_field,
        cron::list_filters_and_paginates,
        cron::enable_disable_and_delete,
        cron::due_lists_enabled_entries_by_next_fire,
        cron::fire_enqueues_and_advances_in_one_step,
        cron::fire_of_a_changed_entry_is_stale,
        cron::fire_is_fenced_by_the_term,
        cron::overlap_skip_waits_for_the_previous_job,
        cron::a_fired_time_is_never_enqueued_twice,
        cron::an_empty_fire_only_advances,
        cron::catch_up_skip_fires_only_what_is_on_time,
        cron::catch_up_once_fires_the_latest_missed_time,
        cron::catch_up_each_fires_missed_times_up_to_its_limit,
        cron::a_late_fire_within_the_grace_is_on_time,
        cron::overlap_skip_skips_while_the_job_runs,
    ]
}

/// The retention tests, in a stable order: they need a [`WorkflowStore`] that answers
/// [`JobStore::as_retention_store`] and [`JobStore::as_cluster_store`].
pub fn retention_tests() -> Vec<SuiteTest<dyn WorkflowStore>> {
    suite![
        retention::prunes_finished_jobs_by_state_and_age,
        retention::keep_all_prunes_nothing,
        retention::a_unique_window_keeps_its_job_and_its_key,
        retention::ended_runs_go_with_their_checkpoints_and_drive_job,
        retention::a_child_of_a_live_parent_is_kept,
        retention::expired_kept_events_are_pruned,
        retention::gone_workers_are_pruned_after_their_age,
        retention::prune_is_fenced_by_the_term,
        retention::batches_are_bounded_and_report_more,
    ]
}

/// The workflow tests, in a stable order: they need a [`WorkflowStore`].
pub fn workflow_tests() -> Vec<SuiteTest<dyn WorkflowStore>> {
    suite![
        workflow::start_creates_run_and_drive_job,
        workflow::start_is_idempotent_by_key,
        workflow::start_with_invalid_drive_job_stores_nothing,
        workflow::checkpoints_load_in_write_order,
        workflow::drive_calls_are_fenced,
        workflow::suspend_snoozes_the_drive_job,
        workflow::suspend_needs_something_to_wake_for,
        workflow::event_goes_to_the_oldest_waiter,
        workflow::event_before_its_wait_is_kept,
        workflow::kept_event_expires,
        workflow::broadcast_reaches_every_current_waiter,
        workflow::event_respects_name_key_and_scope,
        workflow::timed_out_wait_receives_nothing_later,
        workflow::end_run_records_the_outcome,
        workflow::dying_drive_job_fails_its_run,
        workflow::list_runs_filters_and_paginates,
        workflow::cancel_wakes_a_suspended_run,
        workflow::cancel_of_a_running_drive_refuses_its_suspend,
        workflow::rewind_reruns_from_a_checkpoint,
        workflow::migrate_moves_a_run_to_another_version,
        workflow::suspend_notices_a_delivery_made_during_the_drive,
        workflow::suspend_replaces_the_runs_earlier_waits,
        workflow::oversized_input_event_and_checkpoint_are_refused,
        workflow::keep_for_saturates,
        workflow::broadcast_lists_each_run_once,
        workflow::start_retry_answers_as_the_first_call,
        workflow::cancel_through_the_drive_job_cancels_the_run,
        // ported from the SQLite store's own tests
        workflow::start_with_a_held_drive_unique_key_is_a_conflict,
        workflow::drive_job_out_of_retries_fails_its_run_and_drops_its_waits,
        workflow::an_ended_run_stays_as_it_ended_when_its_drive_job_dies_later,
        workflow::many_checkpoints_in_one_call_keep_write_order,
        workflow::a_wait_on_a_key_replaces_the_earlier_wait_on_that_key,
        workflow::a_later_suspend_replaces_the_wait_on_a_key,
        workflow::suspend_after_a_cancel_of_the_drive_job_answers_cancel_requested,
        workflow::an_event_for_a_running_drive_writes_its_checkpoint_and_leaves_the_job_alone,
        workflow::an_unset_scope_part_matches_only_an_unset_part,
        workflow::a_kept_event_expires_at_the_end_of_keep_for,
        workflow::a_start_and_a_delivery_wake_the_drive_queue,
        workflow::suspended_run_says_what_it_waits_for,
        workflow::a_run_leaving_suspended_waits_for_nothing,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_qualified() {
        let job: Vec<&str> = job_tests().iter().map(|t| t.name).collect();
        let runs: Vec<&str> = workflow_tests().iter().map(|t| t.name).collect();
        assert!(job.iter().all(|n| n.starts_with("job::") || n.starts_with("dlq::")));
        assert!(runs.iter().all(|n| n.starts_with("workflow::")));
        let mut names: Vec<&str> = job.into_iter().chain(runs).collect();
        names.extend(job_scenarios().iter().map(|t| t.name));
        names.extend(workflow_scenarios().iter().map(|t| t.name));
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "duplicate test names");
    }
}
