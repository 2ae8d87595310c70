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
