-- The same key is never stored twice, across donors (DESIGN.md "Gemini", bulk donation):
-- key_fingerprint is an HMAC-SHA256 of the key under a key derived from the current encryption
-- secret (store/crypto.py `KeyRing.fingerprint`), never the key or a plain hash of it. Keys stored
-- before this migration cannot be fingerprinted in SQL (they are sealed): they get one when their
-- key is entered again, or at the next `sharekey rotate-secret`; the index covers those that have one.
ALTER TABLE shared_keys ADD COLUMN key_fingerprint text;
CREATE UNIQUE INDEX shared_keys_key_fingerprint ON shared_keys (key_fingerprint) WHERE key_fingerprint IS NOT NULL;
