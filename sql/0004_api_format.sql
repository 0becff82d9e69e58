-- Keys that speak Anthropic's Messages API, and the prompt-cache tokens of a call (issue #13).
--
-- api_format  openai     called with Authorization: Bearer at {base}/chat/completions …
--             anthropic  called with x-api-key and anthropic-version at {base}/messages
-- A model may be served by keys of both formats: the balancer treats them as one pool, and the
-- relay translates between the formats where the client's and the key's differ.

ALTER TABLE shared_keys ADD COLUMN api_format text NOT NULL DEFAULT 'openai'
    CHECK (api_format IN ('openai', 'anthropic'));

-- Prompt tokens read from or written to the upstream's prompt cache, where the upstream says
-- (Anthropic: cache_read_input_tokens / cache_creation_input_tokens; OpenAI:
-- prompt_tokens_details.cached_tokens). prompt_tokens counts the whole prompt, these included.
ALTER TABLE key_usage_logs ADD COLUMN cache_read_tokens integer;
ALTER TABLE key_usage_logs ADD COLUMN cache_creation_tokens integer;
