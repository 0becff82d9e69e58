"""Talking to the outside: the upstream HTTP client, its SSRF guard and egress proxy, the live key
probe, the Redis line and cross-process events.
"""
