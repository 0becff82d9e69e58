"""The `/v1` path: handlers, one attempt, the stream relay, the balancer and its Lua script,
the key index, SSE, the usage queue.
"""
