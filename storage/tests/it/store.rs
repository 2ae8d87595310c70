use unitas_storage::Store;

pub async fn migrations_make_the_store_ready(store: Store) {
    assert!(store.is_ready().await.unwrap());
}

pub async fn migrating_twice_is_a_no_op(store: Store) {
    store.migrate().await.unwrap();
    assert!(store.is_ready().await.unwrap());
}

pub async fn unread_counts_on_an_empty_room(store: Store) {
    use unitas_storage::{ClientExtras, RoomEvents};
    assert_eq!(
        store
            .count_unread("!r:a.test", 0, "@u:a.test", "@u:a.test")
            .await
            .unwrap(),
        (0, 0)
    );
    assert_eq!(
        store
            .get_read_receipt("!r:a.test", "@u:a.test")
            .await
            .unwrap(),
        None
    );
}
