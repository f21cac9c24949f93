"""No secret in Dagster's storage or output (issue 17, item 3): a provider's secrets are given by
reference, `{"env": "VARIABLE"}` or `{"secret": "<Secrets Manager id>"}`; the provider gets the
values, Dagster stores only the references. The storage scan reads every row of every SQLite
file in DAGSTER_HOME, zlib-compressed snapshots decompressed, and first proves it would find a
secret stored the way options used to be."""

from __future__ import annotations

import json
import sqlite3
import zlib
from datetime import datetime, timezone
from pathlib import Path

import boto3
import dagster as dg
import pytest
from moto import mock_aws

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.cli.inventory import write_report
from rivbulk_pipeline.core.errors import DeploymentError
from rivbulk_pipeline.core.model import RegistrationInfo
from rivbulk_pipeline.core.rules.tags import tag_lookup
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.resources.registration import CustomRegistrationProvider
from rivbulk_pipeline.settings import Settings, SettingsError
from rivbulk_pipeline_tests.support.aws import fake_aws

DSN = "postgresql://hr:Hunter2-SeKrEt-dsn@db.example.internal/people"
TOKEN = "tok-SeKrEt-from-secrets-manager"
SECRET_ID = "rivbulk/roster-token"
OPTIONS = json.dumps({"dsn": {"env": "ROSTER_DSN"}, "token": {"secret": SECRET_ID}, "team": "blue"})


class DsnRosterProvider:
    """A provider of one's own that needs a DSN and a token: it registers nobody unless it got
    the real values (so a passing run proves the references were read)."""

    def __init__(self, dsn: str, token: str, team: str) -> None:
        self.ready = (dsn, token, team) == (DSN, TOKEN, "blue")

    def registration_for(self, obj, tags):
        user = tag_lookup(tags, "UserId")
        return RegistrationInfo(user_id=user) if self.ready and user else None

    def load_properties(self, properties_ref):
        return {}


def storage_text(dagster_home: Path) -> str:
    """Every cell of every SQLite file under DAGSTER_HOME as text, compressed blobs decompressed,
    plus every other file's bytes."""
    parts = []
    for path in dagster_home.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix != ".db":
            parts.append(path.read_bytes().decode("utf-8", "replace"))
            continue
        with sqlite3.connect(path) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    for cell in row:
                        if isinstance(cell, bytes):
                            try:
                                cell = zlib.decompress(cell)
                            except zlib.error:
                                pass
                            cell = cell.decode("utf-8", "replace")
                        parts.append(str(cell))
    return "\n".join(parts)


@pytest.fixture
def roster_env(local_settings, monkeypatch, tmp_path):
    fake_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("ROSTER_DSN", DSN)
    monkeypatch.setenv("RIVBULK_PROVIDER", f"{__name__}:DsnRosterProvider")
    monkeypatch.setenv("RIVBULK_PROVIDER_OPTIONS", OPTIONS)
    with mock_aws():
        boto3.client("secretsmanager", region_name="us-east-1").create_secret(Name=SECRET_ID, SecretString=TOKEN)
        settings = Settings.from_env()
        resources = build_resources(settings)
        store = resources["store"]
        for bucket in (settings.image_bucket, settings.inventory_bucket):
            store.create_bucket(bucket)
        for n, user in enumerate(["ann", "ben"]):
            store.put_bytes(settings.image_bucket, f"people/{user}.png", face_image(60 + n))
            store.put_tags(settings.image_bucket, f"people/{user}.png", {"UserId": user})
        created_at = datetime.now(timezone.utc)
        write_report(store, settings, created_at)
        yield settings, resources, created_at.date().isoformat()


def _load(resources, date: str, dagster_home: Path) -> dg.ExecuteInProcessResult:
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        instance.add_dynamic_partitions(inventory_dates.name, [date])
        return dg.materialize(
            bulk_load_assets, partition_key=date, resources=resources, instance=instance, raise_on_error=False
        )


def test_secrets_given_by_reference_reach_the_provider_and_no_storage(roster_env, tmp_path: Path):
    settings, resources, date = roster_env
    result = _load(resources, date, tmp_path / "dagster_home")
    assert result.success
    metadata = result.asset_materializations_for_node("qualified_objects")[0].metadata
    assert metadata["qualified"].value == 2  # the provider had the real DSN and token
    assert result.asset_materializations_for_node("indexed_users")[0].metadata["outcome_indexed"].value == 2
    stored = storage_text(tmp_path / "dagster_home")
    assert '"ROSTER_DSN"' in stored.replace('\\"', '"') and SECRET_ID in stored  # what Dagster keeps: the references
    for secret in ("Hunter2-SeKrEt", TOKEN):
        assert secret not in stored

    # The scan finds a secret stored the way a literal option would be: it can fail.
    leaky = dict(
        resources,
        registration=CustomRegistrationProvider(
            class_path=settings.provider, options={"dsn": DSN, "token": TOKEN, "team": "blue"}, store=resources["store"]
        ),
    )
    assert _load(leaky, date, tmp_path / "leaky_home").success
    leaked = storage_text(tmp_path / "leaky_home")
    assert DSN in leaked and TOKEN in leaked


def test_a_reference_that_cannot_be_read_stops_the_run_naming_it_never_a_value(roster_env, tmp_path: Path, monkeypatch):
    settings, resources, date = roster_env
    monkeypatch.delenv("ROSTER_DSN")
    result = _load(build_resources(settings), date, tmp_path / "home_no_env")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.cause.message
    assert (
        "RIVBULK_PROVIDER_OPTIONS: option 'dsn' names the environment variable ROSTER_DSN, which is not set" in message
    )

    monkeypatch.setenv("ROSTER_DSN", DSN)
    provider = CustomRegistrationProvider(class_path=settings.provider, options={"token": {"secret": "no/such/secret"}},
                                          store=resources["store"])  # fmt: skip
    with pytest.raises(
        DeploymentError,
        match="option 'token': cannot read the secret 'no/such/secret' from Secrets Manager: ResourceNotFoundException",
    ):
        provider.registration_for(None, {})


@pytest.mark.parametrize(
    "options, says",
    [
        ({"dsn": DSN}, "option 'dsn' looks like a secret and holds a value"),
        ({"password": "Hunter2-SeKrEt"}, "option 'password' looks like a secret"),
        ({"roster": {"url": DSN}}, "option 'roster' holds a URL with credentials"),
        ({"dsn": {"env": "ROSTER_DSN", "default": "Hunter2-SeKrEt"}}, "mixes a reference with other keys"),
        ({"dsn": {"env": "not a variable"}}, "names no valid environment variable"),
    ],
)
def test_provider_options_that_hold_a_secret_are_refused_at_load(options: dict, says: str):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RIVBULK_PROVIDER": "pkg.mod:Cls", "RIVBULK_PROVIDER_OPTIONS": json.dumps(options)})
    message = str(caught.value)
    assert "RIVBULK_PROVIDER_OPTIONS is not valid" in message and says in message
    assert "Hunter2" not in message


def postgres_text(url: str) -> str:
    """Every cell of every table of a Postgres database as text, compressed blobs decompressed."""
    import psycopg2

    parts = []
    with psycopg2.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT * FROM "{table}"')
            for row in cursor.fetchall():
                for cell in row:
                    if isinstance(cell, memoryview):
                        cell = bytes(cell)
                        try:
                            cell = zlib.decompress(cell)
                        except zlib.error:
                            pass
                        cell = cell.decode("utf-8", "replace")
                    parts.append(str(cell))
    return "\n".join(parts)


def test_secrets_given_by_reference_reach_no_postgres_storage(roster_env, tmp_path: Path):
    from rivbulk_pipeline_tests.support.postgres_server import running_postgres

    settings, resources, date = roster_env
    (tmp_path / "pg_home").mkdir()
    with running_postgres() as pg:
        overrides = {
            "storage": {"postgres": {"postgres_url": pg.url.replace("postgresql://", "postgresql+psycopg2://")}}
        }
        with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "pg_home")) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            instance.add_dynamic_partitions(inventory_dates.name, [date])
            result = dg.materialize(bulk_load_assets, partition_key=date, resources=resources, instance=instance)
            assert result.success
        stored = postgres_text(pg.url)
    assert result.run_id in stored and SECRET_ID in stored  # the scan reads the runs and their snapshots
    for secret in ("Hunter2-SeKrEt", TOKEN):
        assert secret not in stored
