"""Fixtures for the whole suite: one fake OpenAI server and one app server per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import AppServer, settings_for
from tools.fake_openai import FakeOpenAI


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def server(fake: FakeOpenAI) -> Iterator[AppServer]:
    with AppServer(settings_for(fake)) as app_server:
        yield app_server
