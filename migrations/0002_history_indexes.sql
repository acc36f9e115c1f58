-- inhouse schema, version 2: indexes for the two hot queries on requests.

-- History pages: WHERE uid = ? AND id < ? ORDER BY id DESC LIMIT ?.
CREATE INDEX requests_uid_id ON requests (uid, id);

-- Retention: DELETE ... WHERE created_at < ?.
CREATE INDEX requests_created_at ON requests (created_at);

-- Rotation batches: WHERE key_id = ? (the old key) LIMIT ?.
CREATE INDEX users_keys_key_id ON users_keys (key_id);
