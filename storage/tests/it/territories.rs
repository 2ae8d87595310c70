use unitas_storage::{StorageError, Store, Territories};

pub async fn ensure_is_idempotent(store: Store) {
    let first = store
        .ensure_territory("DK", "dk.example", 10)
        .await
        .unwrap();
    let again = store
        .ensure_territory("DK", "dk.example", 20)
        .await
        .unwrap();
    // The second call changes nothing, not even the creation time.
    assert_eq!(first, again);
    assert_eq!(again.created_ts, 10);
    store
        .ensure_territory("NO", "no.example", 30)
        .await
        .unwrap();
    let codes: Vec<_> = store
        .list_territories()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.code)
        .collect();
    assert_eq!(codes, ["DK", "NO"]);
}

pub async fn server_name_is_fixed_once_stored(store: Store) {
    store
        .ensure_territory("DK", "dk.example", 10)
        .await
        .unwrap();
    let err = store
        .ensure_territory("DK", "other.example", 20)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
    let row = store.get_territory("DK").await.unwrap().unwrap();
    assert_eq!(row.server_name, "dk.example");
}

pub async fn server_name_belongs_to_one_territory(store: Store) {
    store
        .ensure_territory("DK", "dk.example", 10)
        .await
        .unwrap();
    let err = store
        .ensure_territory("NO", "dk.example", 20)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
    assert!(store.get_territory("NO").await.unwrap().is_none());
}
