-- What the pool is worth (issue #17): prices set by admins (`PUT /api/prices`), and the value of
-- each donor's day beside its calls and tokens.
--
-- `model_prices` overrides, per model, the price library and `[prices."<model>"]` (USD per million
-- tokens; a missing cache price falls back to the input price). The usage flusher writes each
-- row's `key_usage_logs.cost_estimate` and adds it to `donor_usage_daily.value_usd` in the same
-- statement. Days logged before this migration have no cost: their value stays 0.

CREATE TABLE model_prices (
    model       text PRIMARY KEY CHECK (length(model) BETWEEN 1 AND 200),
    input       numeric NOT NULL CHECK (input >= 0),
    output      numeric NOT NULL CHECK (output >= 0),
    cache_read  numeric CHECK (cache_read >= 0),
    cache_write numeric CHECK (cache_write >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE donor_usage_daily ADD COLUMN value_usd numeric NOT NULL DEFAULT 0;
