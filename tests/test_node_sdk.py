"""The official Node SDK passes the same scenario as the Python SDK (tests/test_e2e_sdk.py).

tests/node/sdk_scenario.cjs drives the relay with the `openai` npm package;
this test installs that package (once, into test-artifacts/, which git ignores)
and checks the audit rows the scenario left. It needs `node` and `npm` and the
npm registry: without node it skips; a failed install skips locally and fails
under CI (CI=true), where the Node check must run.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from audit_app.models import ApiCall, Outcome
from tests.conftest import ROOT, finished_calls

# The newest release that still runs on Node 20 (Debian's); 7.x requires Node 22.
NODE_OPENAI_VERSION = "6.49.0"
SCENARIO = ROOT / "tests" / "node" / "sdk_scenario.cjs"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="session")
def node_openai() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed")
    target = ROOT / "test-artifacts" / f"node-openai-{NODE_OPENAI_VERSION}"
    if not (target / "node_modules" / "openai" / "package.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["npm", "install", "--prefix", str(target), "--no-package-lock", "--no-save", "--no-audit",
             "--no-fund", "--loglevel=error", f"openai@{NODE_OPENAI_VERSION}"],
            capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            message = f"npm install openai@{NODE_OPENAI_VERSION} failed: {result.stderr[-1000:]}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return target / "node_modules" / "openai"


def test_the_node_sdk_passes_the_python_sdk_scenario(node_openai, relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    result = subprocess.run(
        ["node", str(SCENARIO)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RELAY_URL": relay_url, "RELAY_KEY": plaintext, "OPENAI_NODE": str(node_openai),
             "TRACEPARENT": TRACEPARENT})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, result.stdout.splitlines())}
    assert "done" in steps

    rows = [r for r in finished_calls(14) if r.key_id == key.id]
    assert len(rows) == 14, [(r.method, r.path) for r in rows]
    assert all(r.outcome == Outcome.OK and r.user_agent.startswith("OpenAI/JS") for r in rows), [
        (r.method, r.path, r.stream, r.outcome, r.error, r.user_agent[:20]) for r in rows]
    # The SDK's calls (not the relay's own lookups, such as a file's purpose before its content).
    relayed = [r for r in upstream.requests if r.header("x-stainless-lang") == "js"]
    assert len(relayed) == 14, [(r.method, r.path) for r in upstream.requests]
    assert all(r.header("traceparent") == TRACEPARENT for r in relayed)

    def row(path: str, stream: bool = False, status: int = 200) -> ApiCall:
        return next(r for r in rows if r.path == path and r.stream == stream and r.status == status)

    assert row("/v1/responses").input_tokens == steps["responses"]["input"]
    assert row("/v1/responses", stream=True).output_tokens == steps["responses_streamed"]["output"]
    assert row("/v1/chat/completions").input_tokens == steps["chat"]["input"]
    streamed_chat = row("/v1/chat/completions", stream=True)
    assert streamed_chat.input_tokens and streamed_chat.output_tokens  # usage the client never asked for
    assert row("/v1/embeddings").input_tokens == steps["embeddings"]["input"]
    content = f"/v1/files/{steps['files']['id']}/content"
    assert row(content, status=206).bytes_out == 19
    assert row(content).bytes_out == 19_000


def test_the_envelope_pattern_means_the_same_in_javascript():
    """JSON Schema patterns are ECMA-262: the Actions editor's engine must read it as Python does."""
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    import random
    import re

    from proxy_app.actions_schema import ENVELOPE_PATH_PATTERN
    from tests.test_actions_schema import AGREEMENT_CASES, server_accepts

    rng = random.Random(20)
    alphabet = "/.:%2eEfF35cC0a1d7\\?# \n\x00é\u2028x"
    cases = AGREEMENT_CASES + ["/v1/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
                               for _ in range(2000)]
    script = ("const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "const out = ['', 'u'].map(f => cases.map(c => new RegExp(process.argv[1], f).test(c)));"
              "console.log(JSON.stringify(out));")
    result = subprocess.run(["node", "-e", script, ENVELOPE_PATH_PATTERN], input=json.dumps(cases),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plain, unicode = json.loads(result.stdout)
    expected = [server_accepts(c) for c in cases]
    assert plain == expected == unicode
    assert [bool(re.search(ENVELOPE_PATH_PATTERN, c)) for c in cases] == expected
