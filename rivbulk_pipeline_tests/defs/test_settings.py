"""Settings: one declaration each, read from RIVBULK_*, checked when the code loads."""

from pathlib import Path

import pytest

from rivbulk_pipeline.cli import main
from rivbulk_pipeline.settings import Settings, SettingsError

SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_empty_prefixes_stay_empty_so_a_report_at_the_bucket_root_is_found() -> None:
    settings = Settings.from_env({"RIVBULK_INVENTORY_PREFIX": "", "RIVBULK_OUTPUT_PREFIX": ""})
    assert settings.inventory_prefix == "" and settings.output_prefix == ""
    assert settings.report_root == "rivbulk-images/daily"


def test_an_unset_or_empty_ordinary_setting_takes_its_default() -> None:
    settings = Settings.from_env({"RIVBULK_IMAGE_BUCKET": ""})
    assert settings.image_bucket == "rivbulk-images"
    assert Settings.from_env({}).inventory_prefix == "inventory"


@pytest.mark.parametrize(
    "variable, value, says",
    [
        ("RIVBULK_INDEX_RATE", "five", "valid number"),
        ("RIVBULK_INDEX_RATE", "0", "greater than 0"),
        ("RIVBULK_INDEX_CONCURRENCY", "0", "greater than or equal to 1"),
        ("RIVBULK_DEPLOYMENT", "prod", "'local' or 'aws'"),
        ("RIVBULK_GATEWAY_AUTH", "basic", "'none', 'api_key' or 'sigv4'"),
        ("RIVBULK_PROVIDER_OPTIONS", "[1, 2]", "JSON object"),
        ("RIVBULK_PROVIDER_OPTIONS", "{rows: 5}", "not JSON"),
        ("RIVBULK_PROVIDER", "mycompany.roster", "package.module:ClassName"),
        ("RIVBULK_COLUMNAR_KEYS_URL_ENCODED", "maybe", "'auto', 'true' or 'false'"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_rule_never_the_value(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    message = str(raised.value)
    assert f"{variable} is not valid" in message and repr(value) not in message
    assert says in message


def test_aws_needs_a_gateway_url() -> None:
    with pytest.raises(SettingsError, match="RIVBULK_GATEWAY_URL must be set"):
        Settings.from_env({"RIVBULK_DEPLOYMENT": "aws"})


def test_provider_options_take_any_json_keyword_arguments() -> None:
    settings = Settings.from_env({"RIVBULK_PROVIDER_OPTIONS": '{"rows": 5, "path": "roster.csv"}'})
    assert settings.provider_kwargs == {"rows": 5, "path": "roster.csv"}


def test_fractional_rate_is_kept_exactly() -> None:
    assert Settings.from_env({"RIVBULK_INDEX_RATE": "1.5"}).index_rate == 1.5


def test_region_falls_back_to_the_aws_variables() -> None:
    assert Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"
    assert Settings.from_env({"AWS_REGION": "eu-west-2", "RIVBULK_REGION": "us-east-2"}).region == "us-east-2"


def test_the_code_location_refuses_to_load_with_a_bad_setting(monkeypatch) -> None:
    import importlib
    import sys

    monkeypatch.setenv("RIVBULK_INDEX_RATE", "0")
    sys.modules.pop("rivbulk_pipeline.definitions", None)
    with pytest.raises(SettingsError, match="RIVBULK_INDEX_RATE is not valid"):
        importlib.import_module("rivbulk_pipeline.definitions")
    sys.modules.pop("rivbulk_pipeline.definitions", None)


def test_the_cli_reports_a_bad_setting_and_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RIVBULK_INDEX_MAX_ATTEMPTS", "many")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert "RIVBULK_INDEX_MAX_ATTEMPTS is not valid" in err and "many" not in err


def test_the_readme_table_is_the_declared_settings() -> None:
    """Each setting's line in docs/settings.md follows from its declaration (`rivbulk settings` prints it)."""
    assert Settings.markdown_table() in SETTINGS_DOC.read_text()
