-- The /keys page's rollup (issue #17): each key's committed calls and estimated spend per day.
--
-- One row per (key, day), where the day is the balancer's day the call counted on. The usage
-- flusher upserts it in the same statement that inserts the log rows, from the rows actually
-- inserted (committed ones only), so it counts every call exactly once, like donor_usage_daily.
-- The /keys page reads the last 30 days of its page's keys here (the primary key's range) instead
-- of scanning key_usage_logs, so its cost does not grow with the log. A deleted key's days go with it.

CREATE TABLE key_usage_daily (
    shared_key_id  uuid NOT NULL REFERENCES shared_keys(id) ON DELETE CASCADE,
    day            date NOT NULL,
    calls          int NOT NULL DEFAULT 0,
    value_usd      numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (shared_key_id, day)
);

-- The last 30 days logged before this migration (all the page shows). The log keeps no day
-- column, so days are taken in the configuration's default zone (Asia/Shanghai), as in 0002.
INSERT INTO key_usage_daily (shared_key_id, day, calls, value_usd)
SELECT l.shared_key_id, (l.created_at AT TIME ZONE 'Asia/Shanghai')::date, count(*), coalesce(sum(l.cost_estimate), 0)
FROM key_usage_logs l
WHERE l.committed AND l.shared_key_id IS NOT NULL AND l.created_at >= now() - interval '31 days'
GROUP BY 1, 2;
