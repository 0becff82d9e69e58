"""Claude Code itself (`@anthropic-ai/claude-code` from npm, headless: `claude -p`) answering
through the gateway: once on an `openai` key (translated), once on an `anthropic` key (passed
through). Real PostgreSQL and Redis, the fake upstream behind the gateway.

The package is installed once into ~/.cache/sharekey-tests/claude-code-<version> (outside the
repository) and reused; the tests skip, saying why, when node/npm are missing or the install
fails. Telemetry, the autoupdater, error reporting and all non-essential traffic are off, HOME
and the XDG directories are a temporary directory, no proxy variables are passed on.

What Claude Code 2.1.332 sent, per `claude -p` (one turn, no tool call):
* exactly one request, `POST /v1/messages?beta=true` with `stream: true`; no `HEAD`, no
  `/v1/models`, no `count_tokens`, no second model. (Without
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC it first sends `HEAD <base>/api/hello`, a preconnect
  whose answer it ignores; older versions sent `HEAD /`. Both are checked here by hand.)
* headers: `Authorization: Bearer <ANTHROPIC_AUTH_TOKEN>`, `anthropic-version: 2023-06-01`,
  `anthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14,
  context-management-2025-06-27,…` (seven names), `x-app: cli`, `User-Agent: claude-cli/2.1.332
  (external, sdk-cli)`, `X-Claude-Code-Session-Id: <uuid>`,
  `anthropic-dangerous-direct-browser-access: true` and the SDK's `X-Stainless-*`.
* body: `model` (ANTHROPIC_MODEL), `max_tokens` 32000 unless CLAUDE_CODE_MAX_OUTPUT_TOKENS says
  less (the gateway here caps output at 4096: without that variable Claude Code meets a 400),
  `system` as text blocks (the first an `x-anthropic-billing-header: cc_version=…` line, one with
  `cache_control`), about a dozen `tools` (Agent, Bash, Edit, Read, Write, …), `metadata.user_id`
  (JSON text with device_id and session_id), `thinking: {type: adaptive, display: omitted}`,
  `context_management`, `output_config: {effort: …}`, and `messages`: the user turn (system
  reminders, then the prompt) followed by a `system`-role entry (working directory, platform,
  date). On an openai key that entry becomes a trailing system message, after the user's: fine
  for OpenAI, but chat templates that want the system message first may refuse it.
The gateway forwards none of the caller's headers but anthropic-version/-beta (and those only to
an anthropic key); the session id header is accepted and not passed on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.relay.test_messages import MODEL, add, upstream
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import DONOR_KEY, Gateway

__all__ = ["upstream"]  # the fixture, shared with test_messages (`gw` is in conftest.py)

VERSION = "2.1.332"
PACKAGE = f"@anthropic-ai/claude-code@{VERSION}"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sharekey-tests" / f"claude-code-{VERSION}"
TIMEOUT = 90.0
MAX_OUTPUT = 4096  # the gateway's cap in test_messages' `gw`


def _runs(binary: Path) -> str | None:
    """The version line, or None when this file is not a working `claude`."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, env=_env(CACHE))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and VERSION in done.stdout else None


def _find(root: Path) -> Path | None:
    """`.bin/claude` (the postinstall copies the native binary over it), else the platform
    package's binary itself, for an npm that did not run the postinstall."""
    candidates = [root / "node_modules" / ".bin" / "claude"]
    candidates += sorted((root / "node_modules" / "@anthropic-ai").glob("claude-code-*/claude"))
    return next((c for c in candidates if c.exists() and _runs(c)), None)


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    found = _find(CACHE)
    if found is not None:
        return found
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to install Claude Code")
    staging = CACHE.with_name(f"{CACHE.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(staging), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"`npm install {PACKAGE}` took over 600 s")
    if done.returncode != 0 or _find(staging) is None:
        shutil.rmtree(staging, ignore_errors=True)
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip() not in ("", "npm error")]
        said = " / ".join(lines[:4]) or "no working claude binary after the install"
        pytest.skip(f"`npm install {PACKAGE}` failed (exit {done.returncode}): {said}")
    try:
        staging.rename(CACHE)
    except OSError:  # another session got there first
        shutil.rmtree(staging, ignore_errors=True)
    found = _find(CACHE)
    assert found is not None, f"Claude Code was installed but {CACHE} has no working claude"
    return found


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no proxies, no keys of the developer's, everything non-essential off."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **extra,
    }


async def ask(claude: Path, gw: Gateway, tmp_path: Path, output: str) -> str:
    """`claude -p` through the gateway; its stdout. The event loop keeps serving the gateway and
    the fake upstream meanwhile."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = _env(
        home,
        ANTHROPIC_BASE_URL=str(gw.client.make_url("")).rstrip("/"),
        ANTHROPIC_AUTH_TOKEN=gw.token,
        ANTHROPIC_MODEL=MODEL,
        ANTHROPIC_SMALL_FAST_MODEL=MODEL,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=MODEL,
        ANTHROPIC_DEFAULT_SONNET_MODEL=MODEL,
        ANTHROPIC_DEFAULT_OPUS_MODEL=MODEL,
        CLAUDE_CODE_SUBAGENT_MODEL=MODEL,
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT),
    )
    process = await asyncio.create_subprocess_exec(
        claude,
        "-p",
        "Say hello.",
        "--output-format",
        output,
        "--no-session-persistence",
        cwd=project,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        pytest.fail(f"claude -p gave no answer in {TIMEOUT:.0f} s\nstdout: {out.decode()}\nstderr: {err.decode()}")
    assert process.returncode == 0, (
        f"claude -p exited {process.returncode}\nstdout: {out.decode()}\nstderr: {err.decode()}"
    )
    return out.decode()


async def preconnects_are_harmless(gw: Gateway) -> None:
    """What Claude Code sends before its first call when non-essential traffic is on (this
    version: `HEAD /api/hello`; older ones: `HEAD /`) gets an answer, not a failure."""
    for path in ("/", "/api/hello"):
        resp = await gw.client.head(path, headers={"Authorization": f"Bearer {gw.token}"})
        assert resp.status < 500, (path, resp.status)


@pytest.fixture
def quiet_upstream(upstream: FakeUpstream) -> FakeUpstream:
    upstream.call_tools = False  # it answers "Say hello." with text: no tool loop in Claude Code
    return upstream


async def test_claude_code_on_an_openai_key(
    claude_bin: Path, gw: Gateway, quiet_upstream: FakeUpstream, tmp_path: Path
) -> None:
    up = quiet_upstream
    await add(gw, up, "openai")
    result = json.loads(await ask(claude_bin, gw, tmp_path, "json"))
    assert result["is_error"] is False and result["result"] == up.reply, result
    assert result["usage"]["input_tokens"] == 9 and result["usage"]["output_tokens"] == up.chunks

    [sent] = up.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {DONOR_KEY}"
    assert not {"anthropic-beta", "anthropic-version", "X-Claude-Code-Session-Id"} & set(sent.headers)
    body = sent.body
    assert (body["model"], body["max_tokens"], body["stream"]) == (MODEL, MAX_OUTPUT, True)
    assert body["stream_options"] == {"include_usage": True}
    system = body["messages"][0]
    assert system["role"] == "system" and "Claude" in system["content"]
    # Claude Code's own trailing system entry (the environment: cwd, platform, date) stays one, in place
    assert [m["role"] for m in body["messages"]] == ["system", "user", "system"]
    assert body["messages"][1]["content"].endswith("Say hello.")
    assert "Primary working directory" in body["messages"][2]["content"]
    names = {t["function"]["name"] for t in body["tools"]}
    assert {"Bash", "Read", "Edit"} <= names and all(t["type"] == "function" for t in body["tools"])
    assert all("parameters" in t["function"] for t in body["tools"])
    assert not {"thinking", "metadata", "system", "context_management", "output_config"} & set(body)

    [row] = await gw.logs()
    assert (row["status"], row["api_endpoint"], row["model_used"]) == ("ok", "/v1/messages", MODEL)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (9, up.chunks)
    await preconnects_are_harmless(gw)


async def test_claude_code_on_an_anthropic_key(
    claude_bin: Path, gw: Gateway, quiet_upstream: FakeUpstream, tmp_path: Path
) -> None:
    up = quiet_upstream
    await add(gw, up, "anthropic")
    assert (await ask(claude_bin, gw, tmp_path, "text")).strip() == up.reply

    [sent] = up.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == DONOR_KEY and "Authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"].startswith("claude-code-20250219,"), sent.headers["anthropic-beta"]
    assert "X-Claude-Code-Session-Id" not in sent.headers
    body = sent.body
    assert (body["model"], body["max_tokens"], body["stream"]) == (MODEL, MAX_OUTPUT, True)
    assert isinstance(body["system"], list) and any("cache_control" in b for b in body["system"])
    assert {"Bash", "Read", "Edit"} <= {t["name"] for t in body["tools"]}
    assert body["thinking"]["type"] == "adaptive" and "output_config" in body and "context_management" in body
    assert "session_id" in json.loads(body["metadata"]["user_id"])
    assert [m["role"] for m in body["messages"]] == ["user", "system"]

    [row] = await gw.logs()
    assert (row["status"], row["api_endpoint"], row["model_used"]) == ("ok", "/v1/messages", MODEL)
    assert (row["prompt_tokens"], row["cache_read_tokens"], row["cache_creation_tokens"]) == (14, 3, 2)
    await preconnects_are_harmless(gw)
