-- Google AI Studio keys (DESIGN.md "Gemini"): `api_format = 'gemini'` is called with Gemini's own
-- API (x-goog-api-key, the model in the URL).
ALTER TABLE shared_keys DROP CONSTRAINT shared_keys_api_format_check;
ALTER TABLE shared_keys ADD CONSTRAINT shared_keys_api_format_check CHECK (api_format IN ('openai', 'anthropic', 'gemini'));
