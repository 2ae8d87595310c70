-- The last verified key server document of each other server, exactly as it signed it: the
-- notary endpoint (/_matrix/key/v2/query) hands it on with our signature added.
CREATE TABLE remote_key_documents (
    server_name    TEXT PRIMARY KEY NOT NULL,
    json           TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    fetched_ts     INTEGER NOT NULL
);
