-- Nothing to do here: SQLite's migration stores transaction_ids WITHOUT ROWID (one B-tree
-- instead of two); a PostgreSQL table has no rowid B-tree to save. (Kept so both backends'
-- migrations stay numbered alike.)
SELECT 1;
