-- Callers' tokens with scopes (DESIGN.md "Callers' tokens and balances"). NULL / empty: no such limit.
--   models              the public names (and aliases) the token may ask for; empty: every model
--   expires_at          past it the token answers 401 token_expired
--   daily_requests, requests_per_minute   counted in the pick's one Redis call, like the user's
--   daily_budget_usd    the token's calls' estimated cost a day, at most
--   allowed_ips         the client addresses (CIDRs) the token may be used from; empty: any
ALTER TABLE api_tokens
    ADD COLUMN models text[] NOT NULL DEFAULT '{}',
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN daily_requests integer CHECK (daily_requests > 0),
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN daily_budget_usd numeric(12, 2) CHECK (daily_budget_usd > 0),
    ADD COLUMN allowed_ips cidr[] NOT NULL DEFAULT '{}';

-- Which token made a call: budgets and the balance endpoints are per token.
ALTER TABLE key_usage_logs ADD COLUMN token_id uuid;

-- The balance endpoints' rollup: each token's committed calls and estimated cost per day (the
-- balancer's day), upserted by the usage flusher in the statement that inserts the rows, so a
-- balance costs a few rows whatever the log holds. A revoked token's days stay; a deleted one's go.
CREATE TABLE token_usage_daily (
    token_id   uuid NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    day        date NOT NULL,
    calls      int NOT NULL DEFAULT 0,
    tokens     bigint NOT NULL DEFAULT 0,
    value_usd  numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, day)
);
