-- EDUs that must reach a peer even across its downtime or our restart (to-device messages,
-- device list updates): one row per (EDU, destination), deleted after the peer's 200 for the
-- transaction that carried it. Typing, receipts and presence stay in memory.
CREATE TABLE federation_outbound_edus (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin      TEXT NOT NULL,
    destination TEXT NOT NULL,
    edu         TEXT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX federation_outbound_edus_destination
    ON federation_outbound_edus (origin, destination, id);
