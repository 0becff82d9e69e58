"""Gemini CLI itself (`@google/gemini-cli` from npm, headless: `gemini -p`) answering through the
gateway with API-key auth: once on a `gemini` key (passed through), once on an `openai` key
(translated; skipped until gateway/relay/formats/gemini_on_openai.py lands). Real PostgreSQL and
Redis, a fake upstream behind the gateway, and a recording pass-through between the CLI and the
gateway, so the test sees every request the CLI makes (404s on paths the gateway lacks included).

The package is installed once into ~/.cache/sharekey-tests/gemini-cli-<version> (outside the
repository) and reused; the tests skip, saying why, when node/npm are missing, node is older
than the package's `engines` or the install fails. HOME is a temporary directory holding the only
settings.json it reads (system settings point at files that do not exist), with telemetry, usage
statistics (Clearcut), auto-update and IDE integration off; no proxy variables are passed on.

The environment Gemini CLI 0.61.0 needs: `GEMINI_API_KEY=<gateway token>`,
`GOOGLE_GEMINI_BASE_URL=<gateway origin>` (no `/v1beta`: the SDK adds it), and
`security.auth.selectedType: "gemini-api-key"` in settings.json. Without that setting a base URL
makes it pick its `gateway` auth type, which headless mode then refuses ("Invalid auth method
selected.", exit 41: validateAuthMethod knows no `gateway`); with it, the API-key path still
takes its base URL from GOOGLE_GEMINI_BASE_URL. `--skip-trust` (or GEMINI_CLI_TRUST_WORKSPACE)
is needed only when folder trust is on; it is passed anyway.

What Gemini CLI 0.61.0 sent, per `gemini -p "Say hello." -m gemini-2.5-flash` (one turn, no
tool call):
* exactly one request, `POST /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`; no
  `GET /v1beta/models`, no model get, no `countTokens`, no `loadCodeAssist` (that is OAuth's),
  no second model for routing or for a "next speaker" check.
* headers: `x-goog-api-key: <GEMINI_API_KEY>`, `User-Agent: GeminiCLI-tui/0.61.0/<model> (linux;
  x64; terminal)`, `x-goog-api-client: google-genai-sdk/1.30.0 gl-node/v<node>`; with usage
  statistics on it adds `x-gemini-api-privileged-user-id: <installation id>` (off here).
* body: `contents` (one user turn: a `<session_context>` text part — date, OS, workspace
  directories, a directory listing — then the prompt), `systemInstruction` (role user, one long
  text part: "You are a non-interactive CLI agent …"), `tools` (one entry, eight
  `functionDeclarations`: update_topic, list_directory, read_file, grep_search, glob,
  google_web_search, enter_plan_mode, invoke_agent), `generationConfig` {temperature 1, topP
  0.95, topK 64, thinkingConfig {includeThoughts: true, thinkingBudget: 8192}}: no
  maxOutputTokens. When the model calls a tool, the next turn echoes the call with an `id` and a
  `thoughtSignature` part field and answers it with a `functionResponse` carrying that `id`.
The gateway forwards none of the caller's headers to the donor's key.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.relay.test_gemini import gemini_key
from tests.support.fake_gemini import KEY, FakeGemini
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateways import DONOR_KEY, Gateway

VERSION = "0.61.0"
PACKAGE = f"@google/gemini-cli@{VERSION}"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sharekey-tests" / f"gemini-cli-{VERSION}"
TIMEOUT = 60.0
MODEL = "gemini-2.5-flash"
PROMPT = "Say hello."
SETTINGS: dict[str, Any] = {
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "telemetry": {"enabled": False},
    "privacy": {"usageStatisticsEnabled": False},
    "ide": {"enabled": False},
    "security": {"auth": {"selectedType": "gemini-api-key"}},
}


def _translation_ready() -> bool:
    return importlib.util.find_spec("gateway.relay.formats.gemini_on_openai") is not None


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no proxies, no keys or settings of the developer's, telemetry off."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "GEMINI_CLI_SYSTEM_SETTINGS_PATH": str(home / "no-system-settings.json"),
        "GEMINI_CLI_SYSTEM_DEFAULTS_PATH": str(home / "no-system-defaults.json"),
        "GEMINI_TELEMETRY_ENABLED": "false",
        "NO_COLOR": "1",
        **extra,
    }


def _runs(binary: Path) -> bool:
    with tempfile.TemporaryDirectory() as home:
        try:
            done = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=30, env=_env(Path(home))
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0 and done.stdout.strip() == VERSION


def _find(root: Path) -> Path | None:
    binary = root / "node_modules" / ".bin" / "gemini"
    return binary if binary.exists() and _runs(binary) else None


def _node_too_old(root: Path) -> str | None:
    """Why this node cannot run the installed package (its `engines.node`, `>=N` as it has been)."""
    engines = json.loads((root / "node_modules" / "@google" / "gemini-cli" / "package.json").read_text())
    wanted = re.fullmatch(r">=\s*(\d+)(?:\.\d+)*", engines.get("engines", {}).get("node", ""))
    done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    have = re.match(r"v(\d+)", done.stdout.strip())
    if wanted and have and int(have[1]) < int(wanted[1]):
        return f"{PACKAGE} needs node {engines['engines']['node']}, this is {done.stdout.strip()}"
    return None


@pytest.fixture(scope="session")
def gemini_bin() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to install Gemini CLI")
    found = _find(CACHE)
    if found is not None:
        return found
    staging = CACHE.with_name(f"{CACHE.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(staging), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"`npm install {PACKAGE}` took over 600 s")
    if done.returncode == 0 and (staging / "node_modules" / "@google" / "gemini-cli" / "package.json").exists():
        too_old = _node_too_old(staging)
        if too_old:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip(too_old)
    if done.returncode != 0 or _find(staging) is None:
        shutil.rmtree(staging, ignore_errors=True)
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip() not in ("", "npm error")]
        said = " / ".join(lines[:4]) or "no working gemini after the install"
        pytest.skip(f"`npm install {PACKAGE}` failed (exit {done.returncode}): {said}")
    try:
        staging.rename(CACHE)
    except OSError:  # another session got there first
        shutil.rmtree(staging, ignore_errors=True)
    found = _find(CACHE)
    assert found is not None, f"Gemini CLI was installed but {CACHE} has no working gemini"
    return found


class Tap:
    """A pass-through in front of the gateway recording every request the CLI makes, answers
    (streams included) relayed as they come."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.url = ""  # where the CLI is pointed, once served
        self.seen: list[tuple[Recorded, int]] = []  # each request and the gateway's status
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._relay)

    def summary(self) -> list[tuple[str, str, str, int]]:
        return [(r.method, r.path, r.query, status) for r, status in self.seen]

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        headers["Accept-Encoding"] = "identity"
        async with self.gw.client.request(request.method, request.path_qs, data=raw, headers=headers) as got:
            self.seen.append(
                (Recorded(request.method, request.path, dict(request.headers), body, request.query_string), got.status)
            )
            resp = web.StreamResponse(status=got.status, headers={"Content-Type": got.content_type})
            await resp.prepare(request)
            async for chunk in got.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp


@pytest.fixture
async def tap(gw: Gateway, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]) -> Tap:
    tapped = Tap(gw)
    tapped.url = str((await aiohttp_server(tapped.app)).make_url("")).rstrip("/")
    return tapped


async def ask(gemini: Path, gw: Gateway, tap: Tap, tmp_path: Path, output: str = "json") -> str:
    """`gemini -p` through the tap and the gateway; its stdout. The event loop keeps serving the
    gateway and the fake upstream meanwhile."""
    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".gemini").mkdir(parents=True)
    project.mkdir()
    (home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
    env = _env(home, GEMINI_API_KEY=gw.token, GOOGLE_GEMINI_BASE_URL=tap.url)
    process = await asyncio.create_subprocess_exec(
        gemini,
        "-p",
        PROMPT,
        "-m",
        MODEL,
        "--output-format",
        output,
        "--skip-trust",
        cwd=project,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # it relaunches itself in a child holding the same pipes: kill both
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = await process.communicate()
        pytest.fail(
            f"gemini -p gave no answer in {TIMEOUT:.0f} s\nstdout: {out.decode()}\nstderr: {err.decode()}\n"
            f"sent: {tap.summary()}"
        )
    assert process.returncode == 0, (
        f"gemini -p exited {process.returncode}\nstdout: {out.decode()}\nstderr: {err.decode()}\nsent: {tap.summary()}"
    )
    return out.decode()


def check_what_the_cli_sent(tap: Tap, gw: Gateway) -> Recorded:
    """One call, the streamed generate on the model asked, the gateway token as Google's header."""
    assert tap.summary() == [("POST", f"/v1beta/models/{MODEL}:streamGenerateContent", "alt=sse", 200)], tap.seen
    [(sent, _)] = tap.seen
    assert sent.headers["x-goog-api-key"] == gw.token
    assert sent.headers["User-Agent"].startswith(f"GeminiCLI-tui/{VERSION}/{MODEL} ")
    assert sent.headers["x-goog-api-client"].startswith("google-genai-sdk/")
    assert "x-gemini-api-privileged-user-id" not in sent.headers, "usage statistics are off"
    body = sent.body
    assert body["contents"][-1]["role"] == "user" and body["contents"][-1]["parts"][-1]["text"] == PROMPT
    assert "non-interactive CLI agent" in body["systemInstruction"]["parts"][0]["text"]
    names = {d["name"] for t in body["tools"] for d in t["functionDeclarations"]}
    assert {"read_file", "list_directory", "glob", "grep_search"} <= names
    assert body["generationConfig"]["thinkingConfig"]["includeThoughts"] is True
    assert "maxOutputTokens" not in body["generationConfig"]
    return sent


async def test_gemini_cli_on_a_gemini_key(
    gemini_bin: Path, gw: Gateway, fake_gemini: FakeGemini, tap: Tap, tmp_path: Path
) -> None:
    up = fake_gemini
    up.call_tools = False  # it answers "Say hello." with text: no tool loop in the CLI
    await gemini_key(gw, up)
    result = json.loads(await ask(gemini_bin, gw, tap, tmp_path))
    assert result["response"].strip() == up.reply, result
    tokens = result["stats"]["models"][MODEL]["tokens"]
    assert (tokens["prompt"], tokens["candidates"], tokens["thoughts"]) == (11, 8, up.thoughts), tokens

    sent = check_what_the_cli_sent(tap, gw)
    [got] = up.requests
    assert (got.method, got.path, got.query) == ("POST", f"/v1beta/models/{MODEL}:streamGenerateContent", "alt=sse")
    assert got.headers["x-goog-api-key"] == KEY and "Authorization" not in got.headers
    assert gw.token not in json.dumps(got.headers) and gw.token not in got.query
    assert not {"x-goog-api-client"} & set(got.headers) and "GeminiCLI" not in got.headers.get("User-Agent", "")
    assert got.body == sent.body, "a gemini key gets the CLI's body as it came"

    [row] = await gw.logs()
    assert (row["status"], row["committed"], row["model_used"]) == ("ok", True, MODEL)
    assert row["api_endpoint"] == "/v1beta/models:generateContent"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 8 + up.thoughts), "thoughts are billed as output"


@pytest.mark.skipif(not _translation_ready(), reason="Gemini in on openai keys (formats/gemini_on_openai) not here yet")
async def test_gemini_cli_on_an_openai_key(
    gemini_bin: Path, gw: Gateway, fake_upstream: FakeUpstream, tap: Tap, tmp_path: Path
) -> None:
    up = fake_upstream
    up.models, up.call_tools = [MODEL], False
    await gw.add_key(up, api_key=DONOR_KEY, models=[MODEL])
    result = json.loads(await ask(gemini_bin, gw, tap, tmp_path))
    assert result["response"].strip() == up.reply, result

    check_what_the_cli_sent(tap, gw)
    [got] = up.requests
    assert got.path == "/v1/chat/completions"
    assert got.headers["Authorization"] == f"Bearer {DONOR_KEY}" and "x-goog-api-key" not in got.headers
    assert gw.token not in json.dumps(got.headers)
    body = got.body
    assert (body["model"], body["stream"]) == (MODEL, True)
    assert body["messages"][0]["role"] == "system" and "non-interactive CLI agent" in body["messages"][0]["content"]
    assert body["messages"][-1]["role"] == "user" and PROMPT in json.dumps(body["messages"][-1]["content"])
    assert {"read_file", "glob"} <= {t["function"]["name"] for t in body["tools"]}

    [row] = await gw.logs()
    assert (row["status"], row["committed"], row["model_used"]) == ("ok", True, MODEL)
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
