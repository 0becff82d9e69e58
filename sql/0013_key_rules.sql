-- Donors' rules for their keys (DESIGN.md "Donors' rules for their keys"). NULL: no such cap.
--   rpm_limit       calls started in any 60-second sliding window
--   tpm_limit       tokens (prompt + completion) used in any 60-second window
--   max_concurrent  calls in flight
--   model_daily_limits  {"<model the key serves>": calls a day} beside daily_limit
--   min_trust_level, allowed_users  who the key serves (allowed_users empty: everyone)
--   allowed_features  paid features (a subset of [upstream] allowed_features) the donor allows
--   upstream_kind   provider | relay (another pool: a 401/403 cools before it disables)
ALTER TABLE shared_keys
    ADD COLUMN rpm_limit integer CHECK (rpm_limit > 0),
    ADD COLUMN tpm_limit integer CHECK (tpm_limit > 0),
    ADD COLUMN max_concurrent integer CHECK (max_concurrent > 0),
    ADD COLUMN model_daily_limits jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN min_trust_level smallint NOT NULL DEFAULT 0 CHECK (min_trust_level BETWEEN 0 AND 4),
    ADD COLUMN allowed_users text[] NOT NULL DEFAULT '{}',
    ADD COLUMN allowed_features text[] NOT NULL DEFAULT '{}',
    ADD COLUMN upstream_kind text NOT NULL DEFAULT 'provider' CHECK (upstream_kind IN ('provider', 'relay')),
    -- auth failures of a relay key through consecutive cooldowns (reset by a success)
    ADD COLUMN auth_cooldowns smallint NOT NULL DEFAULT 0;
