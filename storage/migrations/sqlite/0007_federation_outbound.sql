-- The durable outbound federation queue: one row per (event, destination), written in the same
-- transaction as the event, deleted when the destination acknowledged the transaction with 200.
CREATE TABLE federation_outbound (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT NOT NULL,
    destination TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    created_ts  INTEGER NOT NULL
);
CREATE INDEX federation_outbound_destination ON federation_outbound (origin, destination, id);
