-- events_membership serves lookups by state key (a user's membership events): messages, most
-- of the events, have none and need no entry. `state_key = $1` implies the condition, so those
-- queries keep the index. (SQLite's migration also stores event_edges once, WITHOUT ROWID;
-- PostgreSQL tables have no rowid B-tree to save.)
DROP INDEX events_membership;
CREATE INDEX events_membership ON events (state_key, event_type) WHERE state_key IS NOT NULL;
