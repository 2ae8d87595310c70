use unitas_storage::{
    AccessTokens, Accounts, Devices, NewAccessToken, NewAccount, NewDevice, StorageError, Store,
};

use crate::with_territory;

const ALICE: &str = "@alice:dk.example";

async fn alice(store: &Store) {
    with_territory(store, "DK", "dk.example").await;
    store
        .create_account(&NewAccount {
            user_id: ALICE,
            territory: "DK",
            localpart: "alice",
            password_hash: None,
            is_admin: false,
            is_guest: false,
            created_ts: 1,
        })
        .await
        .unwrap();
}

fn device(id: &str) -> NewDevice<'_> {
    NewDevice {
        user_id: ALICE,
        device_id: id,
        territory: "DK",
        display_name: Some("phone"),
        created_ts: 2,
    }
}

fn token<'a>(hash: &'a [u8], device_id: &'a str) -> NewAccessToken<'a> {
    NewAccessToken {
        token_hash: hash,
        territory: "DK",
        user_id: ALICE,
        device_id,
        created_ts: 3,
        expires_ts: None,
    }
}

pub async fn create_list_rename_delete(store: Store) {
    alice(&store).await;
    store.create_device(&device("BBB")).await.unwrap();
    store.create_device(&device("AAA")).await.unwrap();
    let err = store.create_device(&device("AAA")).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");

    let ids: Vec<_> = store
        .list_devices(ALICE)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, ["AAA", "BBB"]);

    store
        .set_device_display_name(ALICE, "AAA", Some("laptop"))
        .await
        .unwrap();
    store
        .touch_device(ALICE, "AAA", 50, Some("192.0.2.1"))
        .await
        .unwrap();
    store.touch_device(ALICE, "AAA", 60, None).await.unwrap();
    let aaa = store.get_device(ALICE, "AAA").await.unwrap().unwrap();
    assert_eq!(aaa.display_name.as_deref(), Some("laptop"));
    assert_eq!(aaa.last_seen_ts, Some(60));
    assert_eq!(
        aaa.last_seen_ip.as_deref(),
        Some("192.0.2.1"),
        "an unknown IP keeps the last one"
    );

    let err = store
        .set_device_display_name(ALICE, "ZZZ", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");

    assert!(store.delete_device(ALICE, "AAA").await.unwrap());
    assert!(!store.delete_device(ALICE, "AAA").await.unwrap());
    assert!(store.get_device(ALICE, "AAA").await.unwrap().is_none());
}

pub async fn device_needs_an_account(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    let err = store.create_device(&device("AAA")).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
}

pub async fn tokens_find_and_delete(store: Store) {
    alice(&store).await;
    store.create_device(&device("AAA")).await.unwrap();
    store.create_device(&device("BBB")).await.unwrap();
    store
        .create_access_token(&token(&[1; 32], "AAA"))
        .await
        .unwrap();
    store
        .create_access_token(&token(&[2; 32], "BBB"))
        .await
        .unwrap();
    store
        .create_access_token(&token(&[3; 32], "BBB"))
        .await
        .unwrap();

    let found = store.find_access_token(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(
        (found.user_id.as_str(), found.device_id.as_str()),
        (ALICE, "AAA")
    );
    assert_eq!(found.token_hash, vec![1; 32]);
    assert!(store.find_access_token(&[9; 32]).await.unwrap().is_none());

    let err = store
        .create_access_token(&token(&[1; 32], "AAA"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");

    assert!(store.delete_access_token(&[1; 32]).await.unwrap());
    assert!(!store.delete_access_token(&[1; 32]).await.unwrap());

    // "Log out everywhere else" keeps the tokens of the named device.
    store
        .create_access_token(&token(&[4; 32], "AAA"))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_user_access_tokens(ALICE, Some("BBB"))
            .await
            .unwrap(),
        1
    );
    assert!(store.find_access_token(&[2; 32]).await.unwrap().is_some());
    assert_eq!(
        store.delete_user_access_tokens(ALICE, None).await.unwrap(),
        2
    );
    assert!(store.find_access_token(&[3; 32]).await.unwrap().is_none());
}

pub async fn deleting_a_device_deletes_its_tokens(store: Store) {
    alice(&store).await;
    store.create_device(&device("AAA")).await.unwrap();
    store.create_device(&device("BBB")).await.unwrap();
    store
        .create_access_token(&token(&[1; 32], "AAA"))
        .await
        .unwrap();
    store
        .create_access_token(&token(&[2; 32], "BBB"))
        .await
        .unwrap();
    assert!(store.delete_device(ALICE, "AAA").await.unwrap());
    assert!(store.find_access_token(&[1; 32]).await.unwrap().is_none());
    assert!(store.find_access_token(&[2; 32]).await.unwrap().is_some());
}

pub async fn token_needs_a_device(store: Store) {
    alice(&store).await;
    let err = store
        .create_access_token(&token(&[1; 32], "NOPE"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert!(store.find_access_token(&[1; 32]).await.unwrap().is_none());
}

fn key(algorithm: &str, id: &str) -> unitas_storage::KeyUpload {
    unitas_storage::KeyUpload {
        algorithm: algorithm.to_owned(),
        key_id: id.to_owned(),
        key_json: format!(r#"{{"key":"{id}"}}"#),
    }
}

pub async fn one_time_keys_are_handed_out_once_then_the_fallback(store: Store) {
    use unitas_storage::DeviceKeys;
    alice(&store).await;
    store.create_device(&device("AAA")).await.unwrap();
    assert_eq!(store.device_list_version(ALICE).await.unwrap(), 0);
    store
        .set_device_keys(ALICE, "AAA", r#"{"v":1}"#)
        .await
        .unwrap();
    store
        .set_device_keys(ALICE, "AAA", r#"{"v":2}"#)
        .await
        .unwrap();
    assert_eq!(
        store.list_device_keys(ALICE).await.unwrap(),
        vec![("AAA".to_owned(), r#"{"v":2}"#.to_owned())]
    );
    assert_eq!(store.device_list_version(ALICE).await.unwrap(), 2);

    let otk = "signed_curve25519";
    store
        .add_one_time_keys(ALICE, "AAA", &[key(otk, "k1"), key(otk, "k2")])
        .await
        .unwrap();
    // A second upload of the same ID keeps the first key.
    let mut again = key(otk, "k1");
    again.key_json = "{}".into();
    store
        .add_one_time_keys(ALICE, "AAA", &[again])
        .await
        .unwrap();
    assert_eq!(
        store.count_one_time_keys(ALICE, "AAA").await.unwrap(),
        vec![(otk.to_owned(), 2)]
    );
    store
        .set_fallback_keys(ALICE, "AAA", &[key(otk, "f1")])
        .await
        .unwrap();
    assert_eq!(
        store.key_counts(ALICE, "AAA").await.unwrap().1,
        vec![otk.to_owned()]
    );
    assert_eq!(
        store.key_counts(ALICE, "AAA").await.unwrap(),
        (vec![(otk.to_owned(), 2)], vec![otk.to_owned()])
    );

    let first = store.claim_key(ALICE, "AAA", otk).await.unwrap().unwrap();
    let second = store.claim_key(ALICE, "AAA", otk).await.unwrap().unwrap();
    assert_eq!(
        (first.0.as_str(), first.1.as_str(), second.0.as_str()),
        ("k1", r#"{"key":"k1"}"#, "k2")
    );
    // Out of one-time keys: the fallback, as often as asked, but now marked used.
    for _ in 0..2 {
        let fallback = store.claim_key(ALICE, "AAA", otk).await.unwrap().unwrap();
        assert_eq!(fallback.0, "f1");
    }
    assert!(store.key_counts(ALICE, "AAA").await.unwrap().1.is_empty());
    assert_eq!(
        store.key_counts(ALICE, "AAA").await.unwrap(),
        (Vec::new(), Vec::new())
    );
    assert!(
        store
            .claim_key(ALICE, "AAA", "other_alg")
            .await
            .unwrap()
            .is_none()
    );

    // Deleting the device deletes its keys and moves the device list on.
    assert!(store.delete_device(ALICE, "AAA").await.unwrap());
    assert!(store.list_device_keys(ALICE).await.unwrap().is_empty());
    assert!(store.claim_key(ALICE, "AAA", otk).await.unwrap().is_none());
    assert_eq!(store.device_list_version(ALICE).await.unwrap(), 3);
}
