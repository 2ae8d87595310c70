-- Cross-signing keys of our users (master, self_signing, user_signing), as uploaded, with the
-- signatures added to them since (/keys/signatures/upload).
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
