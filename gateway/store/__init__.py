"""PostgreSQL: the migration runner (SQL in the top-level `sql/`), users, keys, tokens, crypto, field validation."""
