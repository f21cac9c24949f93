"""Fixtures every folder uses: fake AWS credentials, the local settings, both import histories."""

import os
from pathlib import Path
from typing import Iterator

import pytest
from moto import mock_aws

from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.history import (
    DynamoImportHistory,
    ImportHistoryResource,
    SqliteImportHistory,
    create_history_table,
)
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.aws import HISTORY_TABLE, REGION, fake_aws

pytest_plugins = ["rivbulk_pipeline_tests.support.workers"]  # how `make test -n 2` shares the suite


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials through the standard chain (moto accepts any), and nothing of the machine
    running the tests: no profile, config file or instance metadata."""
    fake_aws(monkeypatch, tmp_path)


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch) -> Settings:
    """The local default under a temporary home, as the environment would configure it."""
    for name in list(os.environ):
        if name.startswith("RIVBULK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RIVBULK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RIVBULK_INDEX_RATE", "200")
    return Settings.from_env()


@pytest.fixture(params=["sqlite", "dynamodb"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImportHistoryResource]:
    """Each import history in turn: SQLite, then DynamoDB on moto."""
    if request.param == "sqlite":
        store = SqliteImportHistory(db_path=str(tmp_path / "history" / "history.db"))
        yield store
        store.close()
    else:
        request.getfixturevalue("aws_env")
        with mock_aws():
            create_history_table(HISTORY_TABLE, AwsClients(region_name=REGION))
            yield DynamoImportHistory(table_name=HISTORY_TABLE, aws=AwsClients(region_name=REGION))
