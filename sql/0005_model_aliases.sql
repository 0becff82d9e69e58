-- Gateway-wide model aliases set by admins (`PUT /api/models/aliases`), beside the configured
-- `[models] aliases` (issue #14). A request for `public_name` may be served by any key serving
-- `public_name` or one of `targets`, each key getting the name it serves.

CREATE TABLE model_aliases (
    public_name text PRIMARY KEY CHECK (length(public_name) BETWEEN 1 AND 200),
    targets     text[] NOT NULL CHECK (cardinality(targets) BETWEEN 1 AND 100),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
