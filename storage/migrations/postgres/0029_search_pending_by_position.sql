-- SQLite's pending full-text rows are found by position now; PostgreSQL's GIN index is
-- maintained by PostgreSQL itself: nothing to change.
SELECT 1;
