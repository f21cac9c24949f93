"""A tiny run of every benchmark measurement: the figures are computed and plausible, and our
inventory reader decodes the generated keys exactly as `unquote_plus` does. No timing asserted."""

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

import pytest

from benchmarks.data import encoded_key, original_key, truth_keys, write_csv_report
from benchmarks.run import Sizes, build_lines, format_table, run_measurements
from rivbulk_pipeline.core.inventory.reader import iter_inventory_batches, load_manifest
from rivbulk_pipeline.resources.object_store import LocalObjectStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]

TINY = Sizes(
    ingest_rows=3_000,
    ingest_large_rows=6_000,
    ingest_repeats=1,
    qualification_objects=60,
    qualification_baseline_objects=5,
    store_latency=0.002,
    concurrency=16,
    incremental_objects=200,
    rate_objects=12,
    rate_baseline_objects=3,
    rate=50.0,
    gateway_latency=0.01,
    summary_records=3_000,
    summary_dates=3,
    summary_table_rows=500,
)


def _space_only_rows(rows: int) -> int:
    """Rows whose encoded key has '+' but no '%': the ones the baseline gets wrong."""
    return sum(1 for i in range(rows) if "+" in encoded_key(i) and "%" not in encoded_key(i))


def test_generated_keys_cover_every_flavour_and_encode_like_quote_plus():
    keys = [original_key(i) for i in range(24)]
    assert len(set(keys)) == 24
    assert sum(encoded_key(i) != original_key(i) for i in range(24)) == 8  # a third need decoding
    assert any(" " in k for k in keys) and any("+" in k for k in keys) and any("%" in k for k in keys)
    assert any(not k.isascii() for k in keys)
    assert all(encoded_key(i) == quote_plus(original_key(i), safe="/") for i in range(24))


def test_our_reader_decodes_the_report_exactly_like_unquote_plus(tmp_path):
    report = write_csv_report(str(tmp_path / "store"), 2_500, rows_per_file=1_000)
    assert len(report.data_keys) == 3
    truth = list(truth_keys(report))
    assert truth == [unquote_plus(encoded_key(i)) for i in range(2_500)]
    assert truth == [original_key(i) for i in range(2_500)]

    store = LocalObjectStore(root=report.store_root)
    manifest = load_manifest(store, report.bucket, report.folder)
    ours = [
        key
        for batch in iter_inventory_batches(store, manifest, spool_dir=str(tmp_path))
        for key in batch.column("key").to_pylist()
    ]
    assert ours == truth


def _peak_rss(code: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._launch", sys.executable, "-c", code],
        capture_output=True, check=True, cwd=PROJECT_ROOT, text=True,
    ).stdout  # fmt: skip
    return int(out.strip().splitlines()[-1].split(":")[1].strip(" }"))


def test_launcher_reports_the_childs_own_peak_not_the_parents():
    idle = _peak_rss("pass")
    busy = _peak_rss("block = bytearray(150_000_000); block[::4096] = b'x' * len(block[::4096])")
    assert idle < 80_000_000  # a bare interpreter, not this (dagster-sized) test process
    assert busy - idle >= 140_000_000


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    return run_measurements(
        TINY, ["ingest", "qualification", "incremental", "rate", "summary"], str(workdir), log=lambda m: None
    )


def test_ingest_figures(tiny_results):
    r = tiny_results["ingest"]
    assert r["ours_checked"] == r["baseline_checked"] == TINY.ingest_rows
    assert r["ours_wrong_keys"] == 0
    assert r["baseline_wrong_keys"] == _space_only_rows(TINY.ingest_rows) > 0
    for name in ("ours_rows_per_s", "baseline_rows_per_s", "ours_large_rows_per_s"):
        assert r[name] > 0
    assert r["ours_large_rss"] >= r["ours_startup_rss"] > 10_000_000
    assert r["ours_rss"] >= r["ours_startup_rss"]


def test_qualification_and_incremental_figures(tiny_results):
    q = tiny_results["qualification"]
    assert q["ours_per_s"] > 0 and q["baseline_per_s"] > 0
    assert q["ours_tag_reads"] == TINY.qualification_objects  # one read per object
    assert q["baseline_tag_reads"] == 3 * TINY.qualification_baseline_objects

    i = tiny_results["incremental"]
    assert i["objects"] == TINY.incremental_objects + i["new_objects"] and i["new_objects"] == 2
    assert i["ours_tag_reads"] == i["new_objects"]  # the history answers for every day-1 object
    assert i["baseline_tag_reads"] == 3 * i["objects"]


def test_rate_figures(tiny_results):
    r = tiny_results["rate"]
    assert 0 < r["ours_achieved"] and 0 < r["baseline_achieved"]
    assert 1 <= r["ours_max_window"] <= TINY.rate
    assert 1 <= r["baseline_max_window"] <= TINY.rate_baseline_objects


def test_summary_figures(tiny_results):
    s = tiny_results["summary"]
    assert s["records"] == TINY.summary_records and s["history_seconds"] > 0 and s["tables_seconds"] > 0
    # 90% indexed, 4% transient + 1% claims (live, so not backlog): the generated shares, roughly
    assert 0.85 < s["registered"] / s["records"] < 0.95 and 0.02 < s["backlog"] / s["records"] < 0.06


def test_table_has_a_verdict_and_a_target_for_every_figure(tiny_results):
    lines = build_lines(tiny_results)
    judged = [line for line in lines if line.passed is not None]
    assert {line.number for line in judged} == {"1", "2", "3", "4"}
    assert len(judged) == 7
    assert all(line.target != "-" for line in judged)
    wrong_keys = next(line for line in lines if line.measurement.startswith("wrong keys"))
    assert wrong_keys.passed is True and wrong_keys.ours == "0"
    table = format_table(lines)
    assert table.splitlines()[0].split()[:3] == ["#", "measurement", "OURS"]
    assert all(line.figure in table for line in lines)


def test_scale_section_runs_the_daily_job_and_counts_what_it_asked(tmp_path):
    from dataclasses import replace

    from benchmarks.run import _scale_lines

    sizes = replace(TINY, scale_objects=(2_000, 5_000), dynamo_records=300)
    r = run_measurements(sizes, ["scale"], str(tmp_path), log=lambda m: None)["scale"]
    for run in r["runs"]:
        old = run["objects"] - run["new"]
        assert run["success"] and run["candidates"] == run["objects"]
        assert run["decided_by_previous_date"] == old  # everything old was final the day before
        assert run["history_keys"] == run["tag_reads"] == run["indexed"] == run["new"]  # only the new ones asked
        assert set(run["asset_seconds"]) == {"inventory_report", "batch_manifest", "qualified_objects", "indexed_users"}
        assert run["peak_rss_bytes"] > 50_000_000
    by = {(d["share"], d["strategy"]): d for d in r["dynamo"]["runs"]}
    assert by[(1.0, "batch_get")]["read_units"] == 300 and by[(1.0, "batch_get")]["requests"] == 3
    assert by[(1.0, "scan")]["read_units"] < 300 / 4  # ~300-byte items, 4 KB a unit
    assert all(d["answered"] == d["day"] for d in r["dynamo"]["runs"])  # every item is final with its ETag
    assert by[(0.01, "batch_get")]["chosen_automatically"] == "batch_get"
    assert by[(1.0, "scan")]["chosen_automatically"] == "scan"
    assert len(_scale_lines(r)) == 3 * 2 + 1 + 4


def test_listing_section_runs_the_command_twice_and_checks_each_report(tmp_path):
    from dataclasses import replace

    sizes = replace(TINY, listing_objects=(2_500,))
    [run] = run_measurements(sizes, ["listing"], str(tmp_path), log=lambda m: None)["listing"]["runs"]
    assert run["objects"] == 2_500
    for case in ("never_listed", "already_listed"):
        assert run[case]["seconds"] > 0 and run[case]["peak_rss_bytes"] > 50_000_000
    lines = build_lines({"listing": {"runs": [run]}})
    assert [line.passed for line in lines] == [None, None]  # the target is for 1M files (--full)


def test_the_listing_check_catches_a_report_that_is_not_the_bucket(tmp_path):
    from benchmarks.listing import build_bucket, check_report, file_key, run_command

    home = str(tmp_path / "home")
    build_bucket(home, 50)
    run_command(home)
    check_report(home, 50)
    changed = tmp_path / "home" / "store" / "rivbulk-images" / file_key(7)
    changed.write_bytes(b"other bytes")
    with pytest.raises(AssertionError, match=file_key(7)):
        check_report(home, 50)
    with pytest.raises(AssertionError, match="lists 50 objects, the bucket holds 51"):
        check_report(home, 51)
