-- The highest registry record version that named this node for the territory: a newer record
-- naming another node means the territory was moved away (kept across restarts).
ALTER TABLE territories ADD COLUMN named_version INTEGER;
