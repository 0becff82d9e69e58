"""The script line: the hot path's one script call per request, on a lean pipelined connection.

redis-py spends about a quarter of the gateway's CPU per request on its command machinery around
a single EVALSHA (see bench/). The line writes calls onto one shared connection
(gateway/net/redisconn.py: those of one turn of the event loop in one write, replies matched in
order), so any number of requests in flight share one socket, no pool, no locks.

Failure is loud and fast. Every call answers or fails within `timeout` (connect, send, reply and
a NOSCRIPT reload together) with redis-py's ConnectionError / TimeoutError, so the proxy answers
503 (fail closed). A connected line costs no timer per call (the connection's watchdog); only a
call that must wait for a connection (or reload the script) sets a deadline of its own. A
reconnect is one shared task that every waiting call joins with its own deadline, so an outage
costs each call at most `timeout`, never one reconnect after another.

With `cluster`, the URL may name any node: `MOVED` moves the line (the balancer's keys share one
hash tag), `ASK` is answered on a one-off connection, `TRYAGAIN`/`CLUSTERDOWN` are retried, all
within `timeout`. With `sentinels`, the master is asked of them at every connect and checked with
`ROLE`; `READONLY` (a demoted master) or a lost connection asks again. A connection left behind
finishes its calls in flight. TLS options of the URL become redis-py's own SSL context
(`SSLConnection`), as `parse_url` reads them: the line and the redis-py client never disagree.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url

from gateway.net.redisconn import IDLE_SECONDS, RedisConnection, ignore
from gateway.net.resp import Redirect, encode

RETRY_PAUSE = 0.05  # between tries while a cluster reshards (TRYAGAIN, CLUSTERDOWN)
# Replies that say the script must run elsewhere, or a little later (see ScriptLine._reroute).
REROUTES = (
    Redirect,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _ssl_context(params: dict[str, Any]) -> RedisSSLContext | None:
    """redis-py's own context for a rediss:// URL, built from the same options and defaults."""
    cls = params.get("connection_class")
    if not (isinstance(cls, type) and issubclass(cls, SSLConnection)):
        return None
    return SSLConnection(**{k: v for k, v in params.items() if k.startswith("ssl_")}).ssl_context


class ScriptLine:
    """`await line(keys=[...], args=[...])` runs the script, like redis-py's registered script."""

    def __init__(
        self,
        url: str,
        script: str,
        *,
        timeout: float = 2.0,
        idle: float = IDLE_SECONDS,
        cluster: bool = False,
        sentinels: Sequence[tuple[str, int]] = (),
        service: str = "",
        sentinel_password: str = "",
    ) -> None:
        self._params: dict[str, Any] = dict(parse_url(url))
        self._ssl = _ssl_context(self._params)
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._timeout = timeout
        self._idle = idle
        self._cluster = cluster
        self._sentinels = tuple(sentinels)
        self._service = service.encode()
        self._sentinel_password = sentinel_password
        self._node: tuple[str, int] | None = None  # where MOVED sent us (cluster)
        self._proto: RedisConnection | None = None
        self._connecting: asyncio.Task[RedisConnection] | None = None
        self._closed = False

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        payload = encode([b"EVALSHA", self._sha, len(keys), *keys, *args])
        start = time.monotonic()
        proto = self._proto
        if proto is not None and not proto.lost:
            try:
                return await proto.send(payload)  # the connection's watchdog bounds this
            except redis.exceptions.NoScriptError:
                pass
            except REROUTES as e:
                self._reroute(proto, e)
        return await self._within(start, self._slow(payload))

    async def _slow(self, payload: bytes) -> Any:
        while True:
            proto = await self._connected()
            try:
                return await self._run(proto, payload)
            except Redirect as e:
                if e.ask and self._cluster and e.address is not None:
                    try:
                        return await self._asking(e.address, payload)
                    except redis.exceptions.TryAgainError:  # the slot's keys are split mid-migration
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                self._reroute(proto, e)
            except REROUTES as e:
                self._reroute(proto, e)
                await asyncio.sleep(RETRY_PAUSE)

    async def _run(self, proto: RedisConnection, payload: bytes, asking: bool = False) -> Any:
        try:
            if asking:
                proto.send(encode([b"ASKING"])).add_done_callback(ignore)
            return await proto.send(payload)
        except redis.exceptions.NoScriptError:
            await proto.send(encode([b"SCRIPT", b"LOAD", self._script]))
            if asking:
                proto.send(encode([b"ASKING"])).add_done_callback(ignore)
            return await proto.send(payload)

    def _reroute(self, proto: RedisConnection, error: Exception) -> None:
        """After a reply that says the script must run elsewhere (or not yet): MOVED moves the
        line; READONLY asks the sentinels again; TRYAGAIN and CLUSTERDOWN keep the connection.
        Without the topology that explains it, the error is the caller's."""
        moved = isinstance(error, Redirect) and not error.ask and error.address is not None
        if self._cluster and isinstance(
            error, Redirect | redis.exceptions.TryAgainError | redis.exceptions.ClusterDownError
        ):
            if not moved:
                return  # ASK, TRYAGAIN, CLUSTERDOWN: the same node, once more
            self._node = error.address
        elif not (isinstance(error, redis.exceptions.ReadOnlyError) and self._sentinels):
            raise error
        if self._proto is proto:
            self._proto = None
        proto.retire()

    async def _asking(self, address: tuple[str, int], payload: bytes) -> Any:
        """One call on the node a slot is migrating to, on a connection of its own."""
        proto = await self._dial(*address)
        try:
            return await self._run(proto, payload, asking=True)
        finally:
            proto.retire()

    async def ping(self) -> None:
        """`ROLE` over the line (connecting if need be), within `timeout`: is the line usable, on a
        master (a replica would refuse every pick)? Where the keys live is for a script call to
        say (MOVED); see `Balancer.ping`."""
        await self._within(time.monotonic(), self._ping())

    async def _ping(self) -> None:
        proto = await self._connected()
        role = await proto.send(encode([b"ROLE"]))
        if not (isinstance(role, list) and role and role[0] == b"master"):
            if self._sentinels:
                self._reroute(proto, redis.exceptions.ReadOnlyError("a replica"))
            raise redis.exceptions.ConnectionError("the script line is on a replica, not a master")

    async def _within(self, start: float, work: Any) -> Any:
        try:
            async with asyncio.timeout(start + self._timeout - time.monotonic()):
                return await work
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from None

    async def _connected(self) -> RedisConnection:
        """The live connection, or a share in the one reconnect under way."""
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._closed:
            raise redis.exceptions.ConnectionError("the Redis line is closed")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._opened)
        # shield: a waiter that gives up (its deadline, a cancelled request) leaves the connect to the others.
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[RedisConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        proto = task.result()
        if self._closed:
            proto.abort(redis.exceptions.ConnectionError("the Redis line is closed"))
        else:
            self._proto = proto

    async def _open(self) -> RedisConnection:
        """A connection where the script must run: the URL's node, the node MOVED named, or the
        master the sentinels name (and that says so itself)."""
        if self._sentinels:
            host, port = await self._master()
            return await self._dial(host, port, master=True)
        if self._node is not None:
            return await self._dial(*self._node)
        return await self._dial(self._params.get("host", "localhost"), self._params.get("port", 6379))

    async def _master(self) -> tuple[str, int]:
        """The master's address, from the first sentinel that knows it."""
        errors = []
        for host, port in self._sentinels:
            proto: RedisConnection | None = None
            try:
                proto = await self._dial(host, port, sentinel=True)
                reply = await proto.send(encode([b"SENTINEL", b"get-master-addr-by-name", self._service]))
                if isinstance(reply, list) and len(reply) == 2:
                    return reply[0].decode(), int(reply[1])
                errors.append(f"{host}:{port} does not know the master")
            except (redis.exceptions.RedisError, ValueError) as e:
                errors.append(f"{host}:{port}: {e}")
            finally:
                if proto is not None:
                    proto.retire()
        raise redis.exceptions.ConnectionError("no sentinel named the master: " + "; ".join(errors))

    async def _dial(self, host: str, port: int, *, sentinel: bool = False, master: bool = False) -> RedisConnection:
        """A connection to one server with the URL's TLS, AUTH and SELECT (a sentinel: its own
        password, no TLS options, no SELECT), within `timeout`; `master` checks ROLE too."""
        p = self._params
        host = host or p.get("host", "localhost")  # MOVED may leave the host out: the one we asked
        loop = asyncio.get_running_loop()
        timeout, idle = self._timeout, self._idle
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(timeout):
                if p.get("path") and not sentinel:
                    transport, proto = await loop.create_unix_connection(
                        lambda: RedisConnection(timeout, idle), p["path"]
                    )
                else:
                    ssl = self._ssl.get() if self._ssl is not None and not sentinel else None
                    transport, proto = await loop.create_connection(
                        lambda: RedisConnection(timeout, 0 if sentinel else idle), host, port, ssl=ssl
                    )
                setup = []
                password = self._sentinel_password if sentinel else p.get("password")
                username = None if sentinel else p.get("username")
                if password:
                    auth = [b"AUTH", username, password] if username else [b"AUTH", password]
                    setup.append((b"AUTH", proto.send(encode(auth))))
                if p.get("db") and not sentinel:
                    setup.append((b"SELECT", proto.send(encode([b"SELECT", p["db"]]))))
                if master:
                    setup.append((b"ROLE", proto.send(encode([b"ROLE"]))))
                for _, reply in setup:
                    reply.add_done_callback(ignore)  # after a refused AUTH, nobody awaits SELECT's reply
                for command, reply in setup:
                    try:
                        answer = await reply
                    except redis.exceptions.ResponseError as e:
                        if command == b"AUTH":
                            raise redis.exceptions.AuthenticationError(f"Redis refused AUTH: {e}") from None
                        raise redis.exceptions.ConnectionError(f"Redis refused {command.decode()}: {e}") from None
                    if command == b"ROLE" and not (isinstance(answer, list) and answer and answer[0] == b"master"):
                        raise redis.exceptions.ConnectionError("the server the sentinels named is not a master")
        except BaseException as e:
            # Whatever failed after the connect (AUTH, SELECT, the deadline, a cancel), the socket goes.
            if transport is not None:
                transport.abort()
            if isinstance(e, TimeoutError):
                raise redis.exceptions.TimeoutError("timed out connecting to Redis") from None
            if isinstance(e, OSError):  # ssl.SSLError included: a certificate the URL's options reject
                raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {e.strerror or e}") from None
            raise
        return proto

    async def close(self) -> None:
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            proto.fail(redis.exceptions.ConnectionError("the Redis line is closed"))
