from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.smart_launch.httpfake import FakeServer


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server
