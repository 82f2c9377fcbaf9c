"""Fixtures for the whole suite: one fake OpenAI server and one app server per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before the app is imported: the in-process servers' EMF lines would only clutter test output.
# (Tests of the runtime loop turn metrics back on in their child processes and check them.)
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
# What the template sets; Powertools reads them (the app and the runtime loop share its instances through them).
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "chat-stream")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ChatStream")

import boto3
import pytest
from moto import mock_aws

from chat.snapstart import forget_powertools_caches
from tests.harness import dynamodb
from tests.harness.app_process import AWS_TEST_ENV
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.moto_atomic import atomic_items
from tests.harness.sam_cli import build_package
from tests.harness.support import AppServer, settings_for


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def server(fake: FakeOpenAI) -> Iterator[AppServer]:
    with AppServer(settings_for(fake)) as app_server:
        yield app_server


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh Secrets Manager (moto: AWS itself cannot run here), and empty Powertools caches."""
    for name, value in {**AWS_TEST_ENV, "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    forget_powertools_caches()
    with mock_aws():
        yield boto3.client("secretsmanager")
    forget_powertools_caches()


@pytest.fixture(scope="session")
def x86_64_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Lambda package as the project's build makes it, for this machine's architecture: built once a session."""
    return build_package(tmp_path_factory.mktemp("twin"), "x86_64")


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """CHAT_STORE_URL of each backend: SQLite on a temp file, or DynamoDB as moto in process (AWS itself
    cannot run here) with the table template.yaml deploys and DynamoDB's per-item atomicity."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'chat.sqlite3'}"
        return
    for name, value in dynamodb.TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with mock_aws(), atomic_items():
        dynamodb.create_table(dynamodb.client(), "chat")
        yield "dynamodb://chat"
