-- Invites of our users into rooms this node is not in (received through /invite): what their
-- clients show until they join (through the inviting server) or decline.
CREATE TABLE remote_invites (
    user_id      TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    -- The invite event, signed by both servers.
    event_json   TEXT NOT NULL,
    -- JSON array of stripped state events for the client.
    invite_state TEXT NOT NULL,
    -- The server to join or decline through (the inviter's).
    via          TEXT NOT NULL,
    -- Aux stream position when it arrived (sync returns it once).
    position     INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
