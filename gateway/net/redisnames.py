"""Every Redis key name the gateway uses, built in one place.

    <prefix>:<version>:{<prefix>}:<name>[:<part>…]

`prefix` is `redis.key_prefix` ("sk" by default). `{<prefix>}` is a Redis Cluster hash tag: only
it is hashed, so every key of one gateway lands in one slot, and a Lua script or a MULTI may
touch any of them together. The version moves a family's state aside when its layout changes:
old and new processes of a rolling deploy then do not misread each other's.

    family                                 type     written by            version
    counts:<YYYY-MM-DD>                    hash     relay/lua/*.lua       BALANCER_VERSION
    cooldown, probation, fails             hash     relay/lua/*.lua       BALANCER_VERSION
    udaily:<YYYY-MM-DD>                    hash     relay/lua/*.lua       BALANCER_VERSION
    urpm:<YYYY-MM-DDTHH:MM>                hash     relay/lua/*.lua       BALANCER_VERSION
    ustreams:<user_id>                     zset     relay/lua/*.lua       BALANCER_VERSION
    tdaily:<YYYY-MM-DD>, tspend:<YYYY-MM-DD>  hash  relay/lua/*.lua       BALANCER_VERSION
    trpm:<YYYY-MM-DDTHH:MM>                hash     relay/lua/*.lua       BALANCER_VERSION
    pool:<pid>                             hash     relay/lua/*.lua       BALANCER_VERSION
    avail:<pid>, resting:<pid>             zset     relay/lua/*.lua       BALANCER_VERSION
    revived                                zset     relay/lua/*.lua       BALANCER_VERSION
    aff:<digest>, resp:<digest>            string   relay/lua/*.lua       BALANCER_VERSION
    kwin:, kfly:, ktok:<key_id>            zset     relay/lua/*.lua       BALANCER_VERSION
    ktoksum:<key_id>                       string   relay/lua/*.lua       BALANCER_VERSION
    mcounts:<YYYY-MM-DD>                   hash     relay/lua/*.lua       BALANCER_VERSION
    events                                 pub/sub  net/events.py         VERSION
    usage:spool                            list     relay/usage.py        VERSION
    health                                 hash     ops/keychecks.py      VERSION
    lease:<job>                            string   ops/jobs.py           VERSION
    keyrings                               hash     ops/rotation.py       VERSION
    session:<session_id>                   string   web/signin/sessions.py  VERSION
    oauth:<state>                          string   web/signin/flow.py      VERSION
    loginlink:<sha256 of the token>        string   web/signin/loginlink.py VERSION
    keytests:<user_id>:<YYYY-MM-DDTHH:MM>  counter  web/api/keytests.py     VERSION

The balancer's families are every key its script touches (`relay/lua/`, joined into one script by
relay/balancer.py); what each holds, and which operation touches it, is documented in the header
of `relay/lua/prelude.lua`. With the default prefix a session is `sk:v1:{sk}:session:<id>`;
tests/net/test_redisnames.py pins every name.
"""

from __future__ import annotations

VERSION = "v1"  # bump to start every family but the balancer's afresh (sessions, leases, …)
BALANCER_VERSION = "v5"  # bump with any change to the balancer script's behaviour, key layout or return shape


def name(prefix: str, *parts: str, version: str = VERSION) -> str:
    """`<prefix>:<version>:{<prefix>}:<parts joined by ":">`."""
    return ":".join((prefix, version, "{" + prefix + "}", *parts))


# --- the balancer's state (relay/lua/, the balancer script) ---------------------------------------


def counts(prefix: str, day: str) -> str:
    return name(prefix, "counts", day, version=BALANCER_VERSION)


def cooldown(prefix: str) -> str:
    return name(prefix, "cooldown", version=BALANCER_VERSION)


def probation(prefix: str) -> str:
    return name(prefix, "probation", version=BALANCER_VERSION)


def fails(prefix: str) -> str:
    return name(prefix, "fails", version=BALANCER_VERSION)


def user_daily(prefix: str, day: str) -> str:
    return name(prefix, "udaily", day, version=BALANCER_VERSION)


def user_rpm(prefix: str, minute: str) -> str:
    return name(prefix, "urpm", minute, version=BALANCER_VERSION)


def user_streams(prefix: str, user_id: str) -> str:
    return name(prefix, "ustreams", user_id, version=BALANCER_VERSION)


def token_daily(prefix: str, day: str) -> str:
    """Requests today per gateway token (a token's daily_requests)."""
    return name(prefix, "tdaily", day, version=BALANCER_VERSION)


def token_rpm(prefix: str, minute: str) -> str:
    """Requests in one minute (UTC) per gateway token (a token's requests_per_minute)."""
    return name(prefix, "trpm", minute, version=BALANCER_VERSION)


def token_spend(prefix: str, day: str) -> str:
    """Estimated spend today per gateway token with a daily_budget_usd, in micro-USD."""
    return name(prefix, "tspend", day, version=BALANCER_VERSION)


def pool_meta(prefix: str, pool_id: str) -> str:
    return name(prefix, "pool", pool_id, version=BALANCER_VERSION)


def pool_avail(prefix: str, pool_id: str) -> str:
    return name(prefix, "avail", pool_id, version=BALANCER_VERSION)


def pool_resting(prefix: str, pool_id: str) -> str:
    return name(prefix, "resting", pool_id, version=BALANCER_VERSION)


def revived(prefix: str) -> str:
    return name(prefix, "revived", version=BALANCER_VERSION)


def conversation(prefix: str, digest: str) -> str:
    """The key that last served a conversation (per user and model asked for), for affinity."""
    return name(prefix, "aff", digest, version=BALANCER_VERSION)


def response(prefix: str, digest: str) -> str:
    """The user a Responses API response was made for and the key that produced it
    (`previous_response_id`)."""
    return name(prefix, "resp", digest, version=BALANCER_VERSION)


def key_window(prefix: str, key_id: str) -> str:
    """Calls started on a capped key in the last 60 s (rpm_limit); the script builds the name."""
    return name(prefix, "kwin", key_id, version=BALANCER_VERSION)


def key_in_flight(prefix: str, key_id: str) -> str:
    """Calls in flight on a capped key (max_concurrent), by lease end."""
    return name(prefix, "kfly", key_id, version=BALANCER_VERSION)


def key_tokens(prefix: str, key_id: str) -> str:
    """Tokens of the calls that ended on a capped key in the last 60 s (tpm_limit), and their sum."""
    return name(prefix, "ktok", key_id, version=BALANCER_VERSION)


def key_tokens_sum(prefix: str, key_id: str) -> str:
    return name(prefix, "ktoksum", key_id, version=BALANCER_VERSION)


def model_counts(prefix: str, day: str) -> str:
    """Reservations today per key and model, for keys with model_daily_limits."""
    return name(prefix, "mcounts", day, version=BALANCER_VERSION)


# --- everything else -------------------------------------------------------------------------------


def events(prefix: str) -> str:
    """The pub/sub channel of cache invalidations (a channel, not a key, but named alike)."""
    return name(prefix, "events")


def usage_spool(prefix: str) -> str:
    return name(prefix, "usage", "spool")


def health_backoff(prefix: str) -> str:
    return name(prefix, "health")


def job_lease(prefix: str, job: str) -> str:
    return name(prefix, "lease", job)


def keyrings(prefix: str) -> str:
    return name(prefix, "keyrings")


def session(prefix: str, session_id: str) -> str:
    return name(prefix, "session", session_id)


def oauth_state(prefix: str, state: str) -> str:
    return name(prefix, "oauth", state)


def login_link(prefix: str, token_hash: str) -> str:
    return name(prefix, "loginlink", token_hash)


def key_tests(prefix: str, user_id: str, minute: str) -> str:
    return name(prefix, "keytests", user_id, minute)
