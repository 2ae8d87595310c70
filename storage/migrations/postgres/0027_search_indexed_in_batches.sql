-- SQLite's FTS5 index now takes new rows in batches (search_pending); PostgreSQL's GIN index
-- has its own pending list. Kept numbered alike.
SELECT 1;
