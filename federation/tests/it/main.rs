//! The rooms crate's integration tests: the append path over real storage. Every case in
//! `both_backends!` runs on SQLite and on PostgreSQL.

// Test helpers panic on setup failures: that is how a test reports them.
#![allow(clippy::unwrap_used, clippy::cloned_ref_to_slice_refs)]

mod append;
mod format;
mod resolution;
mod support;

unitas_storage::both_backends!(
    append::rooms_of_every_version,
    append::rooms_made_at_once_are_different_rooms,
    append::a_message_writes_no_state_rows,
    append::appending_twice_is_a_no_op,
    append::a_sender_without_permission_is_rejected,
    append::soft_failed_events_are_stored_not_shown,
    append::outliers_stay_out_of_the_timeline,
    append::state_is_answerable_at_any_event,
    append::state_survives_a_restart,
    append::bad_events_change_nothing,
    append::waiters_wake_and_other_servers_get_the_event,
    append::only_concerned_users_are_woken,
    append::push_verdicts_ride_with_the_next_append,
    resolution::concurrent_ban_and_join,
    resolution::power_level_race,
    resolution::join_rule_change_against_a_join,
);
