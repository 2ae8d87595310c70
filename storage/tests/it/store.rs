use unitas_storage::Store;

pub async fn migrations_make_the_store_ready(store: Store) {
    assert!(store.is_ready().await.unwrap());
}

pub async fn migrating_twice_is_a_no_op(store: Store) {
    store.migrate().await.unwrap();
    assert!(store.is_ready().await.unwrap());
}
