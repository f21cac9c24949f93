"""Reason codes are tokens (issue 17, item 4): the UI (metadata keys, counts, warnings, failed
rows, logs) shows a code from a bounded set; free text from the gateway, which may name the
user, stays in the stored tables."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.cli.inventory import write_report
from rivbulk_pipeline.core.rules.gateway_errors import KNOWN_ERRORS
from rivbulk_pipeline.core.rules.reasons import shown_code
from rivbulk_pipeline.core.steps.summary import reason_codes
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.resources.gateway import RivHttpGateway
from rivbulk_pipeline.ui_metadata import FailedRows
from rivbulk_pipeline_tests.support.gateway_server import Answer, FakeRivGateway

NAMED = "Mallory Smith is on the watch list and may not enrol"  # a gateway's sentence, no colon


def test_codes_come_from_a_bounded_set_and_anything_else_is_gateway_error():
    reasons = [
        "too_small: the image is 40x40 px, user zed",  # an image rule
        "not_in_roster: zed left",  # a provider's own token
        "NoFacesDetectedException: no face in zed's photo",  # RIV's own name, shown as RIV says it
        "States.Timeout",
        "UserAlreadyRegistered: a different image",  # not a name RIV gives
        "http_503",
        NAMED,
        "Zed: refused",  # a name before the colon is no code either
        "HTTP 5034: x",
        None,
    ]
    assert reason_codes(pa.array(reasons)).to_pylist() == [
        "too_small", "not_in_roster", "NoFacesDetectedException", "States.Timeout", "gateway_error",
        "http_503", "gateway_error", "gateway_error", "gateway_error", "",
    ]  # fmt: skip
    assert all(shown_code(name) == name for name in KNOWN_ERRORS)


def test_failed_rows_and_counts_never_show_a_sentence_without_a_colon():
    failed = FailedRows()
    failed.add(
        pa.array(["k1", "k2"]),
        pa.array(["failed_permanent"] * 2),
        pa.array([NAMED, "too_small: zed"]),
        pa.array([1, 1]),
    )
    metadata = failed.metadata()
    assert {r.data["reason"] for r in metadata["failed_rows"].value.records} == {"gateway_error", "too_small"}
    assert set(metadata) >= {"reason_gateway_error", "reason_too_small"}
    assert "Mallory" not in repr(metadata) and "zed" not in repr(metadata)


def test_a_gateway_sentence_naming_the_user_reaches_no_metadata_warning_or_log(local_settings, tmp_path: Path):
    settings = local_settings
    resources = build_resources(settings)
    store = resources["store"]
    for bucket in (settings.image_bucket, settings.inventory_bucket):
        store.create_bucket(bucket)
    for n, user in enumerate(["mallory", "trent"]):
        store.put_bytes(settings.image_bucket, f"people/{user}.png", face_image(40 + n))
        store.put_tags(settings.image_bucket, f"people/{user}.png", {"UserId": user})
    created_at = datetime.now(timezone.utc)
    write_report(store, settings, created_at)
    date = created_at.date().isoformat()
    (tmp_path / "dagster_home").mkdir()

    with FakeRivGateway() as riv, dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        riv.answer_for("mallory", Answer.failed(NAMED))  # a sentence as the error name: unknown, so transient
        riv.answer_for("trent", Answer.failed("NoFacesDetectedException", NAMED))  # RIV's name, the user in the cause
        resources["gateway"] = RivHttpGateway(url=riv.url, timeout_seconds=5)
        instance.add_dynamic_partitions(inventory_dates.name, [date])
        result = dg.materialize(bulk_load_assets, partition_key=date, resources=resources, instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("indexed_users")[0].metadata
        shown_rows = sorted((r.data["key"], r.data["reason"]) for r in metadata["failed_rows"].value.records)
        assert shown_rows == [("people/mallory.png", "gateway_error"), ("people/trent.png", "NoFacesDetectedException")]
        assert metadata["reason_gateway_error"].value == 1 and metadata["reason_NoFacesDetectedException"].value == 1
        logs = instance.all_logs(result.run_id)
        warnings = [e.user_message for e in logs if e.level == 30 and "permanent failure" in e.user_message]
        assert warnings == [
            f"permanent failure: s3://{settings.image_bucket}/people/trent.png: NoFacesDetectedException"
            " (not retried for this image; details in indexed_users)"
        ]
        shown = repr(metadata) + "".join(e.user_message for e in logs)
    assert "Mallory" not in shown and "watch list" not in shown
    blob = b"".join(p.read_bytes() for p in (tmp_path / "dagster_home").rglob("*") if p.is_file())
    assert b"Mallory" not in blob and b"watch list" not in blob
    # the free text is kept where it belongs: the stored table (and the import history)
    stored = {r["key"]: r["reason"] for r in pq.read_table(Path(metadata["table_location"].value)).to_pylist()}
    assert NAMED in stored["people/trent.png"] and NAMED in stored["people/mallory.png"]
