use unitas_storage::{
    AccessTokens, Accounts, Devices, NewAccessToken, NewAccount, NewDevice, Store, TABLES,
    TerritoryTransfer,
};

async fn user(store: &Store, territory: &str, user_id: &str, admin: bool) {
    store
        .create_account(&NewAccount {
            user_id,
            territory,
            localpart: user_id.trim_start_matches('@').split(':').next().unwrap(),
            password_hash: Some("$argon2id$hash"),
            is_admin: admin,
            is_guest: false,
            created_ts: 5,
        })
        .await
        .unwrap();
    store
        .create_device(&NewDevice {
            user_id,
            device_id: "PHONE",
            territory,
            display_name: None,
            created_ts: 6,
        })
        .await
        .unwrap();
    let token_hash: Vec<u8> = [0u8, 1, 0xfe, 0xff]
        .iter()
        .chain(user_id.as_bytes())
        .copied()
        .collect();
    store
        .create_access_token(&NewAccessToken {
            token_hash: &token_hash,
            territory,
            user_id,
            device_id: "PHONE",
            created_ts: 7,
            expires_ts: None,
        })
        .await
        .unwrap();
}

/// A territory's rows, read from this backend, land unchanged in a fresh SQLite store (bytes,
/// booleans and NULLs included); another territory's rows stay behind; importing twice adds
/// nothing.
pub async fn a_territorys_rows_move_to_another_store(store: Store) {
    crate::with_territory(&store, "DK", "dk.example").await;
    crate::with_territory(&store, "NO", "no.example").await;
    user(&store, "DK", "@alice:dk.example", true).await;
    user(&store, "DK", "@bob:dk.example", false).await;
    user(&store, "NO", "@olav:no.example", false).await;
    // A user of another server whose name ends like ours is not ours.
    user(&store, "NO", "@eve:xdk.example", false).await;

    let mut exported = Vec::new();
    for table in TABLES {
        let lines = store.export_rows(table, "DK", "dk.example").await.unwrap();
        exported.push((*table, lines));
    }
    let count = |name: &str| {
        exported
            .iter()
            .find(|(t, _)| t.name == name)
            .map(|(_, lines)| lines.len())
            .unwrap()
    };
    assert_eq!(count("territories"), 1);
    assert_eq!(count("accounts"), 2);
    assert_eq!(count("access_tokens"), 2);

    let target = unitas_storage::testing::sqlite().await;
    let inserted = target.store.import_rows(&exported).await.unwrap();
    assert_eq!(inserted.iter().sum::<u64>(), 7, "{inserted:?}");
    for (table, lines) in &exported {
        let again = target
            .store
            .export_rows(table, "DK", "dk.example")
            .await
            .unwrap();
        assert_eq!(&again, lines, "{}", table.name);
    }
    let alice = target
        .store
        .get_account("@alice:dk.example")
        .await
        .unwrap()
        .unwrap();
    assert!(alice.is_admin);
    assert!(
        target
            .store
            .get_account("@olav:no.example")
            .await
            .unwrap()
            .is_none()
    );
    let repeated = target.store.import_rows(&exported).await.unwrap();
    assert_eq!(repeated.iter().sum::<u64>(), 0);

    // Read-only marks: set, listed, cleared.
    store
        .set_territory_read_only("DK", Some((100, 3)))
        .await
        .unwrap();
    assert_eq!(
        store.list_read_only_territories().await.unwrap(),
        [("DK".to_owned(), 100, 3)]
    );
    store.set_territory_read_only("DK", None).await.unwrap();
    assert!(store.list_read_only_territories().await.unwrap().is_empty());
    assert!(store.set_territory_read_only("SE", None).await.is_err());
}
