-- Files of other servers fetched over federation for our users (the bytes are on disk under
-- <data_dir>/remote_media/<origin>/). One row per (origin, media ID); written after the file.
CREATE TABLE remote_media (
    origin       TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    content_type TEXT,
    filename     TEXT,
    size         INTEGER NOT NULL,
    fetched_ts   INTEGER NOT NULL,
    PRIMARY KEY (origin, media_id)
);
