//! The schema, as one ordered migration list per backend, embedded in the binary.
//!
//! Both lists must have the same versions with the same meaning; only the DDL dialect differs.
//! A test checks that the two lists name the same versions.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One migration: version, description, SQL.
type Step = (i64, &'static str, &'static str);

pub(crate) const SQLITE: &[Step] = &[
    (
        1,
        "foundation",
        include_str!("../migrations/sqlite/0001_foundation.sql"),
    ),
    (
        2,
        "rooms",
        include_str!("../migrations/sqlite/0002_rooms.sql"),
    ),
    (
        3,
        "client",
        include_str!("../migrations/sqlite/0003_client.sql"),
    ),
    (
        4,
        "client_more",
        include_str!("../migrations/sqlite/0004_client_more.sql"),
    ),
    (
        5,
        "refresh_tokens",
        include_str!("../migrations/sqlite/0005_refresh_tokens.sql"),
    ),
    (
        6,
        "remote_key_documents",
        include_str!("../migrations/sqlite/0006_remote_key_documents.sql"),
    ),
    (
        7,
        "federation_outbound",
        include_str!("../migrations/sqlite/0007_federation_outbound.sql"),
    ),
    (
        8,
        "remote_invites",
        include_str!("../migrations/sqlite/0008_remote_invites.sql"),
    ),
    (
        9,
        "remote_media",
        include_str!("../migrations/sqlite/0009_remote_media.sql"),
    ),
    (
        10,
        "device_keys",
        include_str!("../migrations/sqlite/0010_device_keys.sql"),
    ),
    (
        11,
        "to_device",
        include_str!("../migrations/sqlite/0011_to_device.sql"),
    ),
    (
        12,
        "remote_knocks",
        include_str!("../migrations/sqlite/0012_remote_knocks.sql"),
    ),
    (
        13,
        "outbound_edus",
        include_str!("../migrations/sqlite/0013_outbound_edus.sql"),
    ),
    (
        14,
        "territory_moves",
        include_str!("../migrations/sqlite/0014_territory_moves.sql"),
    ),
    (
        15,
        "key_backup",
        include_str!("../migrations/sqlite/0015_key_backup.sql"),
    ),
    (
        16,
        "cross_signing",
        include_str!("../migrations/sqlite/0016_cross_signing.sql"),
    ),
    (
        17,
        "reports",
        include_str!("../migrations/sqlite/0017_reports.sql"),
    ),
    (
        18,
        "search",
        include_str!("../migrations/sqlite/0018_search.sql"),
    ),
    (
        19,
        "relations",
        include_str!("../migrations/sqlite/0019_relations.sql"),
    ),
    (
        20,
        "named_version",
        include_str!("../migrations/sqlite/0020_named_version.sql"),
    ),
    (
        21,
        "index_existing",
        include_str!("../migrations/sqlite/0021_index_existing.sql"),
    ),
    (
        22,
        "push",
        include_str!("../migrations/sqlite/0022_push.sql"),
    ),
    (
        23,
        "push_highlights",
        include_str!("../migrations/sqlite/0023_push_highlights.sql"),
    ),
    (
        24,
        "narrower_event_indexes",
        include_str!("../migrations/sqlite/0024_narrower_event_indexes.sql"),
    ),
    (
        25,
        "transaction_ids_keyed",
        include_str!("../migrations/sqlite/0025_transaction_ids_keyed.sql"),
    ),
    (
        26,
        "appended_keys",
        include_str!("../migrations/sqlite/0026_appended_keys.sql"),
    ),
    (
        27,
        "search_indexed_in_batches",
        include_str!("../migrations/sqlite/0027_search_indexed_in_batches.sql"),
    ),
    (
        28,
        "highlights_only",
        include_str!("../migrations/sqlite/0028_highlights_only.sql"),
    ),
    (
        29,
        "search_pending_by_position",
        include_str!("../migrations/sqlite/0029_search_pending_by_position.sql"),
    ),
];

pub(crate) const POSTGRES: &[Step] = &[
    (
        1,
        "foundation",
        include_str!("../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        "rooms",
        include_str!("../migrations/postgres/0002_rooms.sql"),
    ),
    (
        3,
        "client",
        include_str!("../migrations/postgres/0003_client.sql"),
    ),
    (
        4,
        "client_more",
        include_str!("../migrations/postgres/0004_client_more.sql"),
    ),
    (
        5,
        "refresh_tokens",
        include_str!("../migrations/postgres/0005_refresh_tokens.sql"),
    ),
    (
        6,
        "remote_key_documents",
        include_str!("../migrations/postgres/0006_remote_key_documents.sql"),
    ),
    (
        7,
        "federation_outbound",
        include_str!("../migrations/postgres/0007_federation_outbound.sql"),
    ),
    (
        8,
        "remote_invites",
        include_str!("../migrations/postgres/0008_remote_invites.sql"),
    ),
    (
        9,
        "remote_media",
        include_str!("../migrations/postgres/0009_remote_media.sql"),
    ),
    (
        10,
        "device_keys",
        include_str!("../migrations/postgres/0010_device_keys.sql"),
    ),
    (
        11,
        "to_device",
        include_str!("../migrations/postgres/0011_to_device.sql"),
    ),
    (
        12,
        "remote_knocks",
        include_str!("../migrations/postgres/0012_remote_knocks.sql"),
    ),
    (
        13,
        "outbound_edus",
        include_str!("../migrations/postgres/0013_outbound_edus.sql"),
    ),
    (
        14,
        "territory_moves",
        include_str!("../migrations/postgres/0014_territory_moves.sql"),
    ),
    (
        15,
        "key_backup",
        include_str!("../migrations/postgres/0015_key_backup.sql"),
    ),
    (
        16,
        "cross_signing",
        include_str!("../migrations/postgres/0016_cross_signing.sql"),
    ),
    (
        17,
        "reports",
        include_str!("../migrations/postgres/0017_reports.sql"),
    ),
    (
        18,
        "search",
        include_str!("../migrations/postgres/0018_search.sql"),
    ),
    (
        19,
        "relations",
        include_str!("../migrations/postgres/0019_relations.sql"),
    ),
    (
        20,
        "named_version",
        include_str!("../migrations/postgres/0020_named_version.sql"),
    ),
    (
        21,
        "index_existing",
        include_str!("../migrations/postgres/0021_index_existing.sql"),
    ),
    (
        22,
        "push",
        include_str!("../migrations/postgres/0022_push.sql"),
    ),
    (
        23,
        "push_highlights",
        include_str!("../migrations/postgres/0023_push_highlights.sql"),
    ),
    (
        24,
        "narrower_event_indexes",
        include_str!("../migrations/postgres/0024_narrower_event_indexes.sql"),
    ),
    (
        25,
        "transaction_ids_keyed",
        include_str!("../migrations/postgres/0025_transaction_ids_keyed.sql"),
    ),
    (
        26,
        "appended_keys",
        include_str!("../migrations/postgres/0026_appended_keys.sql"),
    ),
    (
        27,
        "search_indexed_in_batches",
        include_str!("../migrations/postgres/0027_search_indexed_in_batches.sql"),
    ),
    (
        28,
        "highlights_only",
        include_str!("../migrations/postgres/0028_highlights_only.sql"),
    ),
    (
        29,
        "search_pending_by_position",
        include_str!("../migrations/postgres/0029_search_pending_by_position.sql"),
    ),
];

/// A migration source over an embedded list (sqlx's `migrate!` macro would pull in the whole
/// compile-time macro machinery for both drivers; this is the same data without it).
#[derive(Debug)]
struct Embedded(&'static [Step]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>,
    > {
        let list = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(list) })
    }
}

/// The migrator for one backend's list.
pub(crate) async fn migrator(
    steps: &'static [Step],
) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(steps)).await
}

/// The newest version in a list.
pub(crate) fn latest(steps: &'static [Step]) -> i64 {
    steps.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_versions() {
        let versions = |steps: &[Step]| steps.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
    }

    #[test]
    fn versions_strictly_increase() {
        for steps in [SQLITE, POSTGRES] {
            assert!(steps.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    /// Every file in the migrations folders is in its list, under its number and name (a new
    /// file that is not listed is never applied).
    #[test]
    fn every_migration_file_is_listed() {
        for (folder, steps) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(folder);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<String> = steps
                .iter()
                .map(|(version, name, _)| format!("{version:04}_{name}.sql"))
                .collect();
            assert_eq!(files, listed, "{folder}");
        }
    }
}
