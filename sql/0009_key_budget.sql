-- Donor budgets in money (issue #17): a key may carry `daily_budget_usd` (NULL: none) beside
-- `daily_limit`. The usage flusher keeps the key's estimated spend for its latest day
-- (`spend_today_usd` for `spend_day`, the balancer's day, like usage_count_today/usage_day) in
-- the same statement that writes the rows; once it reaches the budget the key index leaves the
-- key out until its day is over.

ALTER TABLE shared_keys
    ADD COLUMN daily_budget_usd numeric(12, 2) CHECK (daily_budget_usd > 0 AND daily_budget_usd <= 1000000),
    ADD COLUMN spend_today_usd  numeric NOT NULL DEFAULT 0,
    ADD COLUMN spend_day        date;
