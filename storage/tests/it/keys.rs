use unitas_storage::{RemoteServerKey, RemoteServerKeys, SigningKeys, StorageError, Store};

use crate::with_territory;

pub async fn current_key_retires_the_previous_one(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    store
        .record_current_signing_key("DK", "ed25519:a_one", "PUB1", 100)
        .await
        .unwrap();
    store
        .record_current_signing_key("DK", "ed25519:a_one", "PUB1", 150)
        .await
        .unwrap();
    let keys = store.list_signing_keys("DK").await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].created_ts, keys[0].expired_ts), (100, None));

    store
        .record_current_signing_key("DK", "ed25519:b_two", "PUB2", 200)
        .await
        .unwrap();
    let keys = store.list_signing_keys("DK").await.unwrap();
    let summary: Vec<_> = keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.expired_ts))
        .collect();
    assert_eq!(
        summary,
        [("ed25519:a_one", Some(200)), ("ed25519:b_two", None)]
    );

    // Rolling back to the old key makes it current again and retires the newer one.
    store
        .record_current_signing_key("DK", "ed25519:a_one", "PUB1", 300)
        .await
        .unwrap();
    let keys = store.list_signing_keys("DK").await.unwrap();
    let summary: Vec<_> = keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.expired_ts))
        .collect();
    assert_eq!(
        summary,
        [("ed25519:a_one", None), ("ed25519:b_two", Some(300))]
    );

    // Other territories are not touched.
    with_territory(&store, "NO", "no.example").await;
    store
        .record_current_signing_key("NO", "ed25519:n", "PUBN", 400)
        .await
        .unwrap();
    assert_eq!(store.list_signing_keys("DK").await.unwrap(), keys);
}

pub async fn key_id_cannot_change_material(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    store
        .record_current_signing_key("DK", "ed25519:a_one", "PUB1", 100)
        .await
        .unwrap();
    store
        .record_current_signing_key("DK", "ed25519:b_two", "PUB2", 200)
        .await
        .unwrap();
    let before = store.list_signing_keys("DK").await.unwrap();
    let err = store
        .record_current_signing_key("DK", "ed25519:a_one", "OTHER", 300)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.list_signing_keys("DK").await.unwrap(),
        before,
        "nothing changed"
    );
}

pub async fn remote_keys_keep_the_longest_validity(store: Store) {
    let key = |valid_until_ts, fetched_ts| RemoteServerKey {
        server_name: "remote.example".into(),
        key_id: "ed25519:k".into(),
        public_key: "PUB".into(),
        valid_until_ts,
        expired_ts: None,
        fetched_ts,
    };
    store.store_remote_server_key(&key(1_000, 1)).await.unwrap();
    store.store_remote_server_key(&key(500, 2)).await.unwrap();
    assert_eq!(
        store
            .get_remote_server_keys("remote.example")
            .await
            .unwrap(),
        [key(1_000, 1)]
    );
    store.store_remote_server_key(&key(2_000, 3)).await.unwrap();
    assert_eq!(
        store
            .get_remote_server_keys("remote.example")
            .await
            .unwrap(),
        [key(2_000, 3)]
    );
    assert!(
        store
            .get_remote_server_keys("other.example")
            .await
            .unwrap()
            .is_empty()
    );
}
