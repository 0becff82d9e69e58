"""RESP2, as much of it as the script line needs: commands encoded, replies parsed, error replies
as redis-py's exceptions (`MOVED`/`ASK` as `Redirect`, with the node they name)."""

from __future__ import annotations

from typing import Any

import redis.exceptions

CRLF = b"\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"


class Redirect(redis.exceptions.ResponseError):
    """`MOVED <slot> <host>:<port>` or `ASK …`: the keys live (or, for one command, are) elsewhere."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        kind, _, rest = text.partition(" ")
        host, _, port = rest.rpartition(" ")[2].rpartition(":")
        self.ask = kind == "ASK"
        self.address = (host.strip("[]"), int(port)) if port.isdigit() else None


_ERRORS: dict[str, type[redis.exceptions.ResponseError]] = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "MOVED": Redirect,
    "ASK": Redirect,
    "READONLY": redis.exceptions.ReadOnlyError,
    "TRYAGAIN": redis.exceptions.TryAgainError,
    "CLUSTERDOWN": redis.exceptions.ClusterDownError,
}


class Incomplete(Exception):
    """More bytes are needed for a whole reply."""

    pass


def text(value: Any) -> str:
    """A bulk string reply (bytes) or an integer as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def encode(args: list[bytes | str | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 value from buf at pos; raises Incomplete when more bytes are needed. Error replies
    are returned (not raised) as redis-py's exception for their kind."""
    end = buf.find(CRLF, pos)
    if end < 0:
        raise Incomplete
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise Incomplete
        return buf[pos : pos + n], pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        text = line.decode(errors="replace")
        return _ERRORS.get(text.partition(" ")[0], redis.exceptions.ResponseError)(text), pos
    raise redis.exceptions.InvalidResponse(f"unexpected reply type {kind!r}")
