"""A built wheel runs on its own: migrations, templates, static files and the Lua script come from
the installed package, not from the checkout.

The wheel is built from this checkout and installed into a fresh virtual environment outside it;
its dependencies are borrowed from the test environment's site-packages through a `.pth` line (the
editable install's own finder there is not activated that way), so nothing is downloaded. Then,
from an empty temporary directory, `sharekey migrate` and `sharekey serve` run against the test's
PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.support.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel installed; returns its bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "data", "build", "*.egg-info", "__pycache__", ".*cache"),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = work.glob("sharekey-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (purelib,) = venv.glob("lib/python3*/site-packages")
    (purelib / "borrowed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, token: str | None = None, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_the_wheel_migrates_serves_pages_and_answers_v1(
    installed: Path, cli_env: dict[str, str], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {**cli_env, "SHAREKEY_STORAGE_DATA_DIR": str(tmp_path / "data"), "KEY_ENCRYPTION_SECRET": TEST_SECRET}
    env.pop("PYTHONPATH", None)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()

    def sharekey(*args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [str(installed / "sharekey"), *args], cwd=run_dir, env=env, input=stdin, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    where = subprocess.run(  # noqa: ASYNC221 - a short command; nothing else runs on this loop yet
        [
            str(installed / "python"),
            "-c",
            "import gateway, gateway.resources as r; print(gateway.__file__, r.data_dir('sql'))",
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and str(installed.parent) in where, where

    sharekey("migrate")
    sharekey("users", "add", "alice")
    token = sharekey("tokens", "create", "alice")
    sharekey(
        "keys", "add", "--user", "alice", "--name", "k", "--base-url", fake_upstream.base_url,
        "--api-key", "-", "--models", "gpt-4o-mini", "--no-test", stdin="sk-wheel-donor-0001\n",
    )  # fmt: skip

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(  # noqa: ASYNC220 - started, then watched from here
        [str(installed / "sharekey"), "serve", "--port", str(port), "--workers", "1"],
        cwd=run_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await asyncio.to_thread(get, base + "/readyz"))[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not become ready"
            await asyncio.sleep(0.2)
        for path in ("/", "/thanks"):
            status, page = await asyncio.to_thread(get, base + path)
            assert status == 200 and b"<html" in page.lower(), (path, status)
        # Signed out, /keys leads to the sign-in page, which says (rendered from the templates) that
        # no sign-in provider is configured on this gateway.
        status, page = await asyncio.to_thread(get, base + "/keys")
        assert status == 503 and b"<html" in page.lower() and b"sharekey login-link" in page
        status, css = await asyncio.to_thread(get, base + "/static/app.css")
        assert status == 200 and css
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        status, answer = await asyncio.to_thread(get, base + "/v1/chat/completions", token, chat)
        assert status == 200, answer
        assert json.loads(answer)["choices"][0]["message"]["content"] == fake_upstream.reply
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(server.wait, 20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert not os.listdir(run_dir) or set(os.listdir(run_dir)) <= {"data"}
