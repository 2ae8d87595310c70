-- transaction_ids was a rowid table plus the index of its primary key: two B-trees, both
-- written by every client send. WITHOUT ROWID it is stored once, in its key's order (it is read
-- by that key, and a device's latest by `created_ts` after a start).
CREATE TABLE transaction_ids_keyed (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
) WITHOUT ROWID;
INSERT INTO transaction_ids_keyed (user_id, device_id, txn_id, event_id, created_ts)
    SELECT user_id, device_id, txn_id, event_id, created_ts FROM transaction_ids;
DROP TABLE transaction_ids;
ALTER TABLE transaction_ids_keyed RENAME TO transaction_ids;
