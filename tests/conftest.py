"""The test harness's fixtures (see infra/harness.py): one set of services per session,
a private topic prefix / database / index prefix per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.harness import Services, isolated_settings, provide_services
from infra.settings import InfraSettings


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Real Kafka, Postgres and Meilisearch: testcontainers with Docker, else the launcher."""
    with provide_services() as svc:
        yield svc


@pytest.fixture(scope="module")
def infra_settings(services: Services, request: pytest.FixtureRequest) -> Iterator[InfraSettings]:
    """Settings pointing at this module's own topics, database and search index prefix."""
    with isolated_settings(services, request.module.__name__) as settings:
        yield settings
