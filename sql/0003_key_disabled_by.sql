-- Who took a key out of the pool, as a value instead of a sentence (issue #12).
--
--   owner     its owner (reserved: an owner pauses with is_active = false today, status unchanged)
--   operator  `sharekey keys disable`: never revived by a health check
--   upstream  the proxy got a 401/403 with the key: a passing health check revives it
--   health    a health check got a 401/403 with the key: a passing health check revives it
--
-- NULL exactly when the key is not disabled. status_reason stays prose for the owner to read;
-- what the gateway does with a disabled key is decided by this column alone.

ALTER TABLE shared_keys ADD COLUMN disabled_by text
    CHECK (disabled_by IN ('owner', 'operator', 'upstream', 'health'));

-- Backfill, once, from the reasons written so far. Both the proxy and the health check wrote
-- exactly "the upstream rejected the key (HTTP <status>)" (keytest.INVALID_KEY and the status),
-- so the reason cannot tell them apart; the last error can: the health check also wrote
-- last_error = 'health check: ' || reason, the proxy last_error = reason. Either may be revived,
-- so a wrong guess between the two changes nothing. Any other reason on a disabled key (none at
-- all, an operator's, one that merely starts with those words) is an operator's: never revived
-- (fail safe). An operator's reason written exactly like the proxy's cannot be told apart.
UPDATE shared_keys
SET disabled_by = CASE
    WHEN coalesce(status_reason, '') !~ '^the upstream rejected the key \(HTTP [0-9]{3}\)$' THEN 'operator'
    WHEN last_error IS NOT DISTINCT FROM 'health check: ' || status_reason THEN 'health'
    ELSE 'upstream'
END
WHERE status = 'disabled';

ALTER TABLE shared_keys ADD CONSTRAINT shared_keys_disabled_by_iff_disabled
    CHECK ((status = 'disabled') = (disabled_by IS NOT NULL));
