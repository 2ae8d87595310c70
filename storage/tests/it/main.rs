//! The storage conformance suite: every test runs on SQLite and on PostgreSQL.
//!
//! Each case is an `async fn(Store)` in a module below; `both_backends!` turns it into one test
//! per backend (`sqlite::name`, `postgres::name`), each on a fresh, migrated database.

// Test helpers panic on setup failures: that is how a test reports them.
#![allow(clippy::unwrap_used)]

mod accounts;
mod backup;
mod devices;
mod keys;
mod rooms;
mod sqlite_wal;
mod store;
mod territories;
mod transfer;

use unitas_storage::{Store, Territories};

/// A territory most cases need; accounts and keys refer to it.
pub async fn with_territory(store: &Store, code: &str, server_name: &str) {
    store
        .ensure_territory(code, server_name, 1)
        .await
        .expect("store territory");
}

unitas_storage::both_backends!(
    rooms::failed_batch_writes_nothing,
    rooms::an_event_written_twice_is_found_once,
    rooms::outbound_queue_follows_its_events,
    rooms::outbound_edus_wait_per_destination,
    store::migrations_make_the_store_ready,
    store::migrating_twice_is_a_no_op,
    store::push_actions_pushers_and_queue,
    territories::ensure_is_idempotent,
    territories::server_name_is_fixed_once_stored,
    territories::server_name_belongs_to_one_territory,
    accounts::create_get_and_conflict,
    accounts::account_needs_a_known_territory,
    accounts::password_and_deactivation,
    accounts::count_per_territory,
    devices::create_list_rename_delete,
    devices::device_needs_an_account,
    devices::tokens_find_and_delete,
    devices::deleting_a_device_deletes_its_tokens,
    devices::token_needs_a_device,
    devices::one_time_keys_are_handed_out_once_then_the_fallback,
    keys::current_key_retires_the_previous_one,
    keys::key_id_cannot_change_material,
    keys::remote_keys_keep_the_longest_validity,
    transfer::a_territorys_rows_move_to_another_store,
    backup::backups_keep_the_best_key_and_count_changes,
);
