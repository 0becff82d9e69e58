-- Keyset paging of `GET /api/shared-keys` and `/keys` (issue #15): a page is the next `limit` keys
-- after a cursor in (created_at, id) order, one owner's or (for admins, `?all=1`) everyone's. Each
-- index serves its query as a range scan that stops after the page, so a page costs the same at
-- 50 keys as at 5,000.

CREATE INDEX idx_shared_keys_user_created ON shared_keys(user_id, created_at, id);
CREATE INDEX idx_shared_keys_created ON shared_keys(created_at, id);
