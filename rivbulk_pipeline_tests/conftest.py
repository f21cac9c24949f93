import os
from pathlib import Path

import pytest

from rivbulk_pipeline.settings import Settings


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials so boto3 never looks for real ones (moto accepts any)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch) -> Settings:
    """The local default under a temporary home, as the environment would configure it."""
    for name in list(os.environ):
        if name.startswith("RIVBULK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RIVBULK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RIVBULK_INDEX_RATE", "200")
    return Settings.from_env()
