"""SnapStart hooks: heavy imports land in the snapshot; a restore rebuilds what it froze.

Lambda's snapshot and restore cannot run here; the hooks go through the real
`snapshot_restore_py` registry and are driven by the runtime loop's own
`run_snapstart_hooks` against the Runtime API double; Secrets Manager is moto's.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import snapshot_restore_py

from chat import snapstart
from chat.app import create_app
from chat.runtime.client import RuntimeClient
from chat.runtime.loop import run_snapstart_hooks
from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.runtime_api_double import RuntimeAPIDouble
from tests.harness.support import AppServer, post_stream, settings_for, unique

ROOT = Path(__file__).resolve().parent.parent
OLD_TOKEN, NEW_TOKEN = "tok-before-Hq3Zr8Lm1Wc5", "tok-after-Xv7Nd2Kp9Gs4"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty hook registries, so this test's hooks don't outlive it."""
    monkeypatch.setattr(snapshot_restore_py, "_before_snapshot_registry", [])
    monkeypatch.setattr(snapshot_restore_py, "_after_restore_registry", [])


def test_handler_defers_openai_until_the_snapshot_hook() -> None:
    script = (
        "import sys\n"
        "import chat.handler\n"
        "assert 'openai' not in sys.modules, 'openai imported on the cold path'\n"
        "from chat.runtime.client import RuntimeClient\n"
        "from chat.runtime.loop import run_snapstart_hooks\n"
        "run_snapstart_hooks(RuntimeClient(sys.argv[1]))\n"
        "assert 'openai' in sys.modules\n"
        "print('ok')\n"
    )
    with RuntimeAPIDouble() as api:
        result = subprocess.run(
            [sys.executable, "-c", script, api.address],
            cwd=ROOT / "functions" / "chat",
            env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-unused"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.stdout.strip() == "ok", result.stderr
    assert api.calls == ["GET /runtime/restore/next"]


def test_restore_rebuilds_clients_secrets_and_random_state(registry: None, aws: Any, fake: FakeOpenAI) -> None:
    arn = aws.create_secret(Name="chat/token", SecretString=OLD_TOKEN)["ARN"]
    app = create_app(settings_for(fake, auth_token_secret_id=arn))
    assert snapstart.register(app.state.upstream)
    first, second = fake.script(unique(), deltas("one")), fake.script(unique(), deltas("two"))
    with AppServer(app=app) as server:
        old = {"authorization": f"Bearer {OLD_TOKEN}"}
        assert post_stream(server.url, {"message": first}, headers=old).status == 200
        aws.put_secret_value(SecretId=arn, SecretString=NEW_TOKEN)
        random.seed(1234)
        frozen = random.random()
        random.seed(1234)

        with RuntimeAPIDouble() as api:
            run_snapstart_hooks(RuntimeClient(api.address))
        assert api.calls == ["GET /runtime/restore/next"]
        assert "openai" in sys.modules  # the before-snapshot hook ran

        assert random.random() != frozen
        stale = post_stream(server.url, {"message": second}, headers=old)
        assert stale.status == 401
        fresh = post_stream(server.url, {"message": second}, headers={"authorization": f"Bearer {NEW_TOKEN}"})
        assert fresh.events == [("message", "two"), ("message", "[DONE]")]
    before, after = fake.requests_for(first)[0], fake.requests_for(second)[0]
    assert after.connection != before.connection, "the pre-snapshot HTTP connection was reused"
