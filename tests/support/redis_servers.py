"""redis-server processes of a test's own (the machine's binary, loopback TCP), to stop, freeze,
thaw and configure as a test needs; plus a throwaway CA for TLS. Every server is stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.certs import TestCA

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate (127.0.0.1, localhost), signed by the CA
    key: Path


def make_certs(directory: Path) -> Certs:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    authority = TestCA(directory)
    cert, key = authority.leaf("localhost", "localhost", "127.0.0.1")
    return Certs(authority.ca, cert, key)


class RedisServer:
    """One redis-server on 127.0.0.1: plain, or TLS only (`certs`), with an optional password."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str = "",
        certs: Certs | None = None,
        port: int = 0,
        extra: tuple[str, ...] = (),
        conf: Path | None = None,
    ) -> None:
        """`extra`: more redis-server options (cluster mode, replicaof, …); `conf`: a config file
        given first (a sentinel's, with `extra` = ("--sentinel",))."""
        self.dir = directory
        self.password = password
        self.certs = certs
        self.port = port or free_port()
        args = [str(conf)] if conf is not None else []
        args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory), *extra]
        if certs is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key)]
            args += ["--tls-ca-cert-file", str(certs.ca)]
        if password:
            args += ["--requirepass", password]
        log = directory / f"redis-{self.port}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen([REDIS_SERVER, *args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.proc.poll() is None, "redis-server exited at start: " + log.read_text(errors="replace")[-300:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def url(self, db: int = 0, query: str = "") -> str:
        scheme = "rediss" if self.certs else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def _answers(self) -> bool:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        except OSError:
            return False
        sock: socket.socket = raw
        try:
            if self.certs is not None:
                ctx = ssl.create_default_context(cafile=str(self.certs.ca))
                sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")  # takes raw's descriptor over
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
            return reply.startswith((b"+PONG", b"-NOAUTH", b"-LOADING"))
        except OSError:
            return False
        finally:
            sock.close()
            raw.close()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server would hold SIGTERM; SIGKILL needs no thaw
            self.proc.kill()
        self.proc.wait()
