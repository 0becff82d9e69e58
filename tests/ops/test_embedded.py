"""The fresh-machine path: `sharekey serve` with no URLs starts real PostgreSQL and Redis under
data_dir, other commands attach to them, Ctrl-C leaves no server behind, and the data stays."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.clirun import clean_env, sharekey


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and ("postgres" in cmdline or "redis" in cmdline):
            found.append(f"{pid}: {cmdline}")
    return found


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            status, body = get(url)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the gateway did not become ready")


def test_serve_embedded_attach_and_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = clean_env(SHAREKEY_STORAGE_DATA_DIR=str(data), SHAREKEY_LOGGING_FORMAT="json")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        body = wait_ready(f"http://127.0.0.1:{port}/readyz", serve, log_path)
        assert body == {"status": "ready", "draining": False, "postgres": "ok", "redis": "ok"}
        secret = data / "secret.key"
        assert secret.stat().st_mode & 0o777 == 0o600
        assert (data / "embedded.json").is_file()

        # Other commands attach to the running servers (and leave them running).
        assert sharekey("users", "add", "alice", env=env).code == 0
        token = sharekey("tokens", "create", "alice", env=env)
        assert token.code == 0 and token.out.startswith("shk_")
        r = sharekey(
            "keys",
            "add",
            "--user",
            "alice",
            "--name",
            "k1",
            "--base-url",
            "https://api.example.com",
            "--api-key",
            "sk-embedded-secret-abcd",
            "--models",
            "gpt-4o-mini",
            "--no-test",
            env=env,
        )
        assert r.code == 0, r.err
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200, "attaching must not stop the servers"

        serve.send_signal(signal.SIGINT)
        assert serve.wait(60) == 0, log_path.read_text()
        assert '"event":"stopped"' in log_path.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    deadline = time.monotonic() + 10
    while processes_under(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(data) == [], "Ctrl-C must stop both embedded servers"

    # A command run while nothing is serving starts the servers itself, then stops them; data stays.
    r = sharekey("keys", "list", env=env)
    assert r.code == 0, r.err
    assert "alice" in r.out and "sk-…abcd" in r.out and "sk-embedded-secret" not in r.out
    assert processes_under(data) == []


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(SHAREKEY_STORAGE_DATA_DIR=str(tmp_path / "data"))
        r = sharekey("serve", "--port", str(port), "--workers", "1", env=env)
    assert r.code == 1 and f"port {port} on 127.0.0.1 is already in use" in r.err
    assert "Traceback" not in r.err
    assert processes_under(tmp_path / "data") == []
