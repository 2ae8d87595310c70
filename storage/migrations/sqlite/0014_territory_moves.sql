-- Moving a territory to another node: `unitas territory export` turns the territory read-only
-- here (writes refused, reads served) and notes the registry record version in force, so a
-- later record naming this node again (a rollback) ends the read-only state.
ALTER TABLE territories ADD COLUMN read_only_since INTEGER;
ALTER TABLE territories ADD COLUMN read_only_version INTEGER;
