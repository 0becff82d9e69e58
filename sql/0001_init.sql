-- The original design's tables (users, shared_keys, key_usage_logs) with their columns and
-- indexes, timestamptz instead of timestamp, plus what the gateway needs: key states, the
-- encrypted-key version, token counts, request ids, and hashed gateway tokens.

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    linux_do_id     text UNIQUE,
    username        text NOT NULL UNIQUE,
    display_name    text,
    avatar_url      text,
    email           text,
    trust_level     integer NOT NULL DEFAULT 0,
    is_admin        boolean NOT NULL DEFAULT false,
    anonymous       boolean NOT NULL DEFAULT false,  -- credited on the board without name or avatar
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shared_keys (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name                text NOT NULL,
    base_url            text NOT NULL,
    api_key_encrypted   text NOT NULL,           -- "<key id>:<base64 nonce|ciphertext|tag>"
    key_version         text NOT NULL,           -- the key id of the secret that sealed it
    api_key_hint        text NOT NULL,           -- the mask shown to the owner ("sk-…abcd"), never more
    available_models    text[] NOT NULL,
    daily_limit         integer NOT NULL DEFAULT 150 CHECK (daily_limit > 0),
    description         text,
    tags                text[] NOT NULL DEFAULT '{}',
    is_active           boolean NOT NULL DEFAULT true,   -- false: paused by its owner
    is_private          boolean NOT NULL DEFAULT false,  -- the owner's own fallback, never pooled
    stream_usage        boolean NOT NULL DEFAULT true,   -- upstream accepts stream_options
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cooling', 'disabled')),
    status_reason       text,
    last_error          text,
    last_error_at       timestamptz,
    last_checked_at     timestamptz,
    usage_count_today   integer NOT NULL DEFAULT 0,
    usage_day           date,                    -- the day usage_count_today counts
    total_usage_count   bigint NOT NULL DEFAULT 0,
    total_tokens        bigint NOT NULL DEFAULT 0,
    last_used_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

-- Usage outlives a deleted key: shared_key_id is cleared, donor_id keeps the credit.
CREATE TABLE key_usage_logs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    shared_key_id       uuid REFERENCES shared_keys(id) ON DELETE SET NULL,
    user_id             uuid REFERENCES users(id) ON DELETE CASCADE,   -- the caller
    donor_id            uuid REFERENCES users(id) ON DELETE SET NULL,  -- the key's owner
    api_endpoint        text,
    model_used          text,
    tokens_used         integer,
    prompt_tokens       integer,
    completion_tokens   integer,
    usage_estimated     boolean NOT NULL DEFAULT false,
    cost_estimate       numeric,
    success             boolean,
    committed           boolean NOT NULL DEFAULT false,  -- reached the client: counts against the key's limit
    status              text NOT NULL,           -- ok | upstream_error | client_error | cancelled | ...
    http_status         integer,
    attempt             smallint NOT NULL DEFAULT 1,
    latency_ms          integer,
    ttft_ms             integer,
    request_id          text NOT NULL,
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, attempt)                 -- written exactly once, even when retried
);

CREATE TABLE api_tokens (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    label           text NOT NULL DEFAULT '',
    token_hash      bytea NOT NULL UNIQUE,       -- SHA-256 of the token; the token is shown once
    token_hint      text NOT NULL,               -- the prefix and last characters, for lists
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz
);

CREATE INDEX idx_shared_keys_active ON shared_keys(is_active, usage_count_today, daily_limit);
CREATE INDEX idx_shared_keys_user ON shared_keys(user_id);
CREATE INDEX idx_usage_logs_key ON key_usage_logs(shared_key_id);
CREATE INDEX idx_usage_logs_user ON key_usage_logs(user_id);
CREATE INDEX idx_usage_logs_created ON key_usage_logs(created_at);
CREATE INDEX idx_usage_logs_donor_created ON key_usage_logs(donor_id, created_at);
CREATE INDEX idx_api_tokens_user ON api_tokens(user_id);
