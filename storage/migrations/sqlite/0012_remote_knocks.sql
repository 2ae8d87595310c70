-- Knocks of our users on rooms this node is not in share the table of remote invites: the row
-- says which ('invite' or 'knock'); an invite that answers a knock replaces it.
ALTER TABLE remote_invites ADD COLUMN membership TEXT NOT NULL DEFAULT 'invite';
