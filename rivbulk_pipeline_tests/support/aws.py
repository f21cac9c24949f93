"""Fake AWS credentials for the tests that talk to moto, and the names those tests share."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REGION = "us-east-1"
HISTORY_TABLE = "rivbulk-history"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials only; no profile or config file of the machine running the tests."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
