"""The aws deployment as an operator configures it, on fake credentials: every RIVBULK_* setting it
reads, an environment holding nothing of the host's, and the definitions loaded from it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import dagster as dg
import pytest

REGION = "eu-west-1"  # not us-east-1: buckets need a LocationConstraint, tables live per region
DECOY_REGION = "us-west-2"  # AWS_DEFAULT_REGION: RIVBULK_REGION must win over it
API_KEY = "k3y-for-the-fake-gateway"
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "AKIDRIVBULKTEST", "rivbulk-test-secret", "rivbulk-test-token"
OUTPUT_PREFIX = "rivbulk-out"

# Every setting the aws deployment reads, as an operator would export them.
RIVBULK_ENV = {
    "RIVBULK_DEPLOYMENT": "aws",
    "RIVBULK_REGION": REGION,
    "RIVBULK_IMAGE_BUCKET": "riv-aws-images",
    "RIVBULK_INVENTORY_BUCKET": "riv-aws-inventory",
    "RIVBULK_INVENTORY_PREFIX": "inventory/reports",
    "RIVBULK_INVENTORY_CONFIG_ID": "nightly",
    "RIVBULK_OUTPUT_BUCKET": "riv-aws-output",
    "RIVBULK_OUTPUT_PREFIX": OUTPUT_PREFIX,
    "RIVBULK_HISTORY_TABLE": "riv-aws-import-history",
    "RIVBULK_GATEWAY_AUTH": "api_key",
    "RIVBULK_GATEWAY_API_KEY": API_KEY,
    "RIVBULK_INDEX_RATE": "50",
}


def hermetic_aws_env(mp: pytest.MonkeyPatch, scratch: Path) -> None:
    """Only our settings and fake credentials: nothing from the host's environment or ~/.aws."""
    for name in list(os.environ):
        if name.startswith(("RIVBULK_", "AWS_")):
            mp.delenv(name)
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    mp.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    mp.setenv("AWS_DEFAULT_REGION", DECOY_REGION)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "no-credentials"))
    mp.setenv("AWS_CONFIG_FILE", str(scratch / "no-config"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


def load_definitions() -> dg.Definitions:
    """Run definitions.py afresh under the current environment, as loading the code location
    does, without replacing the module object that other tests may hold."""
    spec = importlib.util.find_spec("rivbulk_pipeline.definitions")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs
