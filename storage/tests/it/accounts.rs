use unitas_storage::{Accounts, NewAccount, StorageError, Store};

use crate::with_territory;

fn alice() -> NewAccount<'static> {
    NewAccount {
        user_id: "@alice:dk.example",
        territory: "DK",
        localpart: "alice",
        password_hash: Some("$argon2id$v=19$stub"),
        is_admin: false,
        is_guest: false,
        created_ts: 1_700_000_000_000,
    }
}

pub async fn create_get_and_conflict(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    let created = store.create_account(&alice()).await.unwrap();
    assert_eq!(created.user_id, "@alice:dk.example");
    assert_eq!(
        created.password_hash.as_deref(),
        Some("$argon2id$v=19$stub")
    );
    assert!(!created.is_admin);
    assert_eq!(created.deactivated_ts, None);
    assert_eq!(
        store.get_account("@alice:dk.example").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.get_account("@bob:dk.example").await.unwrap(), None);

    let err = store.create_account(&alice()).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
    // The failed insert left the first row as it was.
    assert_eq!(
        store.get_account("@alice:dk.example").await.unwrap(),
        Some(created)
    );
}

pub async fn account_needs_a_known_territory(store: Store) {
    let err = store.create_account(&alice()).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert_eq!(store.get_account("@alice:dk.example").await.unwrap(), None);
}

pub async fn password_and_deactivation(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    store.create_account(&alice()).await.unwrap();
    store
        .set_password_hash("@alice:dk.example", Some("new"))
        .await
        .unwrap();
    let account = store
        .get_account("@alice:dk.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.password_hash.as_deref(), Some("new"));

    store
        .deactivate_account("@alice:dk.example", 5)
        .await
        .unwrap();
    store
        .deactivate_account("@alice:dk.example", 9)
        .await
        .unwrap();
    let account = store
        .get_account("@alice:dk.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        account.deactivated_ts,
        Some(5),
        "the first deactivation time is kept"
    );
    assert_eq!(account.password_hash, None);

    let err = store
        .set_password_hash("@nobody:dk.example", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
}

pub async fn count_per_territory(store: Store) {
    with_territory(&store, "DK", "dk.example").await;
    with_territory(&store, "NO", "no.example").await;
    store.create_account(&alice()).await.unwrap();
    let bob = NewAccount {
        user_id: "@bob:no.example",
        territory: "NO",
        localpart: "bob",
        ..alice()
    };
    store.create_account(&bob).await.unwrap();
    // Same localpart in another territory is another account.
    let alice_no = NewAccount {
        user_id: "@alice:no.example",
        territory: "NO",
        localpart: "alice",
        ..alice()
    };
    store.create_account(&alice_no).await.unwrap();
    assert_eq!(store.count_accounts("DK").await.unwrap(), 1);
    assert_eq!(store.count_accounts("NO").await.unwrap(), 2);
    assert_eq!(store.count_accounts("SE").await.unwrap(), 0);
}
