-- Paid features an operator allowed ([upstream] allowed_features) that ran on a call: server tool
-- calls by feature, e.g. {"web_search": 3}, priced per call into cost_estimate (relay/features.py).
ALTER TABLE key_usage_logs ADD COLUMN server_tool_calls jsonb;
