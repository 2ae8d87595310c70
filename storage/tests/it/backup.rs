use unitas_storage::{BackupKey, BackupScope, KeyBackups, StorageError, Store};

fn key(
    room: &str,
    session: &str,
    index: i64,
    forwards: i64,
    verified: bool,
    data: &str,
) -> BackupKey {
    BackupKey {
        room_id: room.into(),
        session_id: session.into(),
        first_message_index: index,
        forwarded_count: forwards,
        is_verified: verified,
        session_data: data.into(),
    }
}

/// Versions count up; keys replace stored ones only when better; etag moves with each change;
/// deleting a version deletes its keys and the latest is the newest left.
pub async fn backups_keep_the_best_key_and_count_changes(store: Store) {
    let user = "@alice:dk.example";
    assert!(
        store
            .get_backup_version(user, None)
            .await
            .unwrap()
            .is_none()
    );
    let v1 = store
        .create_backup_version(user, "m.megolm_backup.v1.curve25519-aes-sha2", "{}")
        .await
        .unwrap();
    let v2 = store
        .create_backup_version(user, "m.megolm_backup.v1.curve25519-aes-sha2", "{\"a\":1}")
        .await
        .unwrap();
    assert_eq!((v1, v2), (1, 2));
    let latest = store.get_backup_version(user, None).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.etag, latest.count), (2, 0, 0));

    let (count, etag) = store
        .put_backup_keys(
            user,
            2,
            &[
                key("!r", "s1", 5, 1, false, "a"),
                key("!r", "s2", 0, 0, true, "b"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((count, etag), (2, 1));
    // Worse keys change nothing (etag stays); a better one replaces.
    let (count, etag) = store
        .put_backup_keys(
            user,
            2,
            &[
                key("!r", "s1", 6, 0, false, "worse"),
                key("!r", "s2", 0, 0, false, "unverified"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((count, etag), (2, 1));
    let (_, etag) = store
        .put_backup_keys(user, 2, &[key("!r", "s1", 5, 0, false, "fewer forwards")])
        .await
        .unwrap();
    assert_eq!(etag, 2);
    let one = store
        .get_backup_keys(user, 2, BackupScope::Session("!r", "s1"))
        .await
        .unwrap();
    assert_eq!(one[0].session_data, "fewer forwards");
    store
        .put_backup_keys(user, 2, &[key("!other", "s3", 0, 0, false, "c")])
        .await
        .unwrap();
    assert_eq!(
        store
            .get_backup_keys(user, 2, BackupScope::Room("!r"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .get_backup_keys(user, 2, BackupScope::All)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(
        store
            .get_backup_keys(user, 1, BackupScope::All)
            .await
            .unwrap()
            .is_empty()
    );

    let (count, etag) = store
        .delete_backup_keys(user, 2, BackupScope::Room("!r"))
        .await
        .unwrap();
    assert_eq!((count, etag), (1, 4));
    store
        .update_backup_version(user, 2, "{\"b\":2}")
        .await
        .unwrap();
    assert_eq!(
        store
            .get_backup_version(user, Some(2))
            .await
            .unwrap()
            .unwrap()
            .auth_data,
        "{\"b\":2}"
    );

    store.delete_backup_version(user, 2).await.unwrap();
    assert!(
        store
            .get_backup_version(user, Some(2))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .get_backup_version(user, None)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        store
            .put_backup_keys(user, 2, &[key("!r", "s", 0, 0, false, "x")])
            .await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_backup_version(user, 2).await,
        Err(StorageError::NotFound { .. })
    ));
    // A new version never reuses a deleted one's number.
    assert_eq!(
        store
            .create_backup_version(user, "m.megolm_backup.v1.curve25519-aes-sha2", "{}")
            .await
            .unwrap(),
        3
    );
    // Another user's backups are their own.
    assert!(
        store
            .get_backup_version("@bob:dk.example", None)
            .await
            .unwrap()
            .is_none()
    );
}
