"""LocalRegistryGateway: a real SQLite registry, real images, real threads and processes."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import sqlite3
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from rivbulk_pipeline.core.model import GatewayResult, Outcome
from rivbulk_pipeline.resources.gateway import DYNAMODB_ITEM_LIMIT, GatewayResource, LocalRegistryGateway


def face(seed: int, size: tuple[int, int] = (96, 96), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, (seed // 256) % 256, 77)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistryGateway:
    return LocalRegistryGateway(db_path=str(tmp_path / "registry" / "users.db"))


def test_register_stores_the_user_without_the_image(registry: LocalRegistryGateway) -> None:
    buf = io.BytesIO()
    Image.effect_noise((120, 90), 80).convert("RGB").save(buf, format="JPEG")  # noise: unique bytes
    image = buf.getvalue()
    assert registry.register("alice", image, {"team": "blue-secret-team"}) == GatewayResult.succeeded()
    [user] = registry.users()
    assert user["user_id"] == "alice"
    assert user["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert user["registered_at"].endswith("+00:00")
    assert (user["registrations"], user["attempts"]) == (1, 1)
    with sqlite3.connect(registry.db_path) as conn:
        row = conn.execute(
            "SELECT user_key, image_size, image_format, image_width, image_height, properties_json FROM faces"
        ).fetchone()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert row == ("User::alice", len(image), "JPEG", 120, 90, '{"team":"blue-secret-team"}')
    # Biometric data never lands on disk: not in the database, not in its WAL.
    middle = len(image) // 2
    for path in Path(registry.db_path).parent.iterdir():
        assert image[middle : middle + 64] not in path.read_bytes(), path.name


def test_the_same_face_again_for_a_lower_case_id_is_a_second_face_as_riv_does(registry: LocalRegistryGateway) -> None:
    image = face(2)
    assert registry.register("bob", image, {}).outcome is Outcome.INDEXED
    assert registry.register("bob", image, {}).outcome is Outcome.INDEXED  # RIV indexes its own face again
    [user] = registry.users()
    assert (user["user_id"], user["registrations"], user["attempts"]) == ("bob", 2, 2)
    assert registry.register_calls() == 2


def test_ids_that_differ_only_in_case_are_one_user(registry: LocalRegistryGateway) -> None:
    # Sent lower-cased, as the HTTP gateway sends them: RIV would refuse a mixed-case id that
    # matches its own face (search-faces compares the id as sent) with UserAlreadyExists.
    image = face(2)
    assert registry.register("bob", image, {}).outcome is Outcome.INDEXED
    assert registry.register("BOB", image, {}).outcome is Outcome.INDEXED
    assert [(u["user_id"], u["registrations"]) for u in registry.users()] == [("bob", 2)]


def test_a_second_image_of_a_registered_user_is_a_second_face(registry: LocalRegistryGateway) -> None:
    assert registry.register("carol", face(3), {}).outcome is Outcome.INDEXED
    assert registry.register("carol", face(4), {}).outcome is Outcome.INDEXED  # RIV has no UserAlreadyRegistered
    [user] = registry.users()
    assert user["image_sha256"] == hashlib.sha256(face(3)).hexdigest()  # the first face
    assert (user["registrations"], user["attempts"]) == (2, 2)


def test_check_userid_answers_for_the_user_whatever_the_case(registry: LocalRegistryGateway) -> None:
    assert registry.user_exists("carol") is False
    assert registry.register("Carol", face(3), {}).outcome is Outcome.INDEXED
    assert registry.user_exists("carol") is True
    assert registry.user_exists("CAROL") is True  # asked lower-cased, as the HTTP gateway asks RIV


def test_same_image_for_another_user_is_permanent(registry: LocalRegistryGateway) -> None:
    image = face(5)
    assert registry.register("dave", image, {}).outcome is Outcome.INDEXED
    result = registry.register("erin", image, {})
    assert result.outcome is Outcome.FAILED_PERMANENT and result.reason.startswith("UserAlreadyExists")
    assert "dave" not in result.reason  # never reveal who owns a face
    assert [u["user_id"] for u in registry.users()] == ["dave"]


@pytest.mark.parametrize(
    "image,code",
    [
        (b"GIF89a" + b"\0" * 200, "unsupported_format"),
        (b"", "unsupported_format"),
        (face(6, (79, 200)), "too_small"),
        (face(7)[:60], "corrupt_image"),
    ],
)
def test_bad_images_are_permanent_with_the_reason_code(registry: LocalRegistryGateway, image: bytes, code: str) -> None:
    result = registry.register("frank", image, {})
    assert result.outcome is Outcome.FAILED_PERMANENT
    assert result.reason.startswith(f"{code}: the image for user frank")
    assert registry.users() == [] and registry.register_calls() == 0  # refused before the call


@pytest.mark.parametrize("user_id", ["", "x" * 129, "bad\nid", 7, "bob@example.com"])
def test_bad_user_ids_are_permanent(registry: LocalRegistryGateway, user_id: object) -> None:
    result = registry.register(user_id, face(8), {})  # type: ignore[arg-type]
    assert result.outcome is Outcome.FAILED_PERMANENT and result.reason.startswith("bad_user_id:")
    assert registry.users() == []


def test_an_id_outside_rivs_rule_fails_at_index_faces_as_riv_does(tmp_path: Path) -> None:
    # A client configured with a looser rule than RIV's: the registry refuses as RIV would.
    loose = LocalRegistryGateway(db_path=str(tmp_path / "loose.db"), user_id_pattern=r"[a-z@.]+")
    result = loose.register("bob@example.com", face(8), {})
    assert result.outcome is Outcome.FAILED_PERMANENT
    assert result.reason.startswith("ClientError:") and "ValidationException" in result.reason
    assert loose.users() == [] and loose.register_calls() == 1


@pytest.mark.parametrize("properties", [["a", "b"], {"age": 42}, {1: "one"}, {"nested": {"k": "v"}}, "not-a-mapping"])
def test_properties_must_be_a_mapping_of_str_to_str(registry: LocalRegistryGateway, properties: object) -> None:
    result = registry.register("gina", face(9), properties)  # type: ignore[arg-type]
    assert result.outcome is Outcome.FAILED_PERMANENT and result.reason.startswith("bad_properties:")
    for content in ("age", "42", "nested", "one"):
        assert content not in result.reason
    assert registry.users() == []


def test_the_user_record_must_fit_a_dynamodb_item(registry: LocalRegistryGateway) -> None:
    almost = {"notes": "n" * (DYNAMODB_ITEM_LIMIT - 1_000)}
    assert registry.register("hank", face(10), almost).outcome is Outcome.INDEXED
    result = registry.register("ivan", face(11), {"notes": "n" * DYNAMODB_ITEM_LIMIT})
    assert result.outcome is Outcome.FAILED_PERMANENT
    assert result.reason.startswith("ClientError:") and "Item size has exceeded" in result.reason
    assert result.reason.endswith(f" bytes > {DYNAMODB_ITEM_LIMIT})")
    # Multi-byte characters count as UTF-8 bytes, not characters.
    wide = registry.register("judy", face(12), {"notes": "é" * (DYNAMODB_ITEM_LIMIT // 2 + 10)})
    assert "Item size has exceeded" in wide.reason
    assert [u["user_id"] for u in registry.users()] == ["hank"]


def test_bad_input_is_refused_before_the_call(registry: LocalRegistryGateway) -> None:
    assert registry.register("kim", face(13), {}).outcome is Outcome.INDEXED
    assert registry.register("kim", b"not an image", {}).outcome is Outcome.FAILED_PERMANENT
    assert registry.register("kim", face(13), {"x": 1}).outcome is Outcome.FAILED_PERMANENT  # type: ignore[dict-item]
    [user] = registry.users()
    assert (user["registrations"], user["attempts"]) == (1, 1)
    assert registry.register_calls() == 1


def test_the_registry_persists_across_instances(registry: LocalRegistryGateway) -> None:
    assert registry.register("leo", face(14), {}).outcome is Outcome.INDEXED
    reopened = LocalRegistryGateway(db_path=registry.db_path)
    assert reopened.register("leo", face(14), {}).outcome is Outcome.INDEXED  # a second face
    assert reopened.register("mia", face(14), {}).reason.startswith("UserAlreadyExists")
    assert reopened.register_calls() == 3


def test_a_locked_database_is_transient(registry: LocalRegistryGateway) -> None:
    registry.register_calls()  # create the schema
    quick = LocalRegistryGateway(db_path=registry.db_path, busy_timeout_seconds=0.1)
    holder = sqlite3.connect(registry.db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        result = quick.register("ned", face(15), {})
        assert result.outcome is Outcome.FAILED_TRANSIENT and "database is locked" in result.reason
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert quick.register("ned", face(15), {}).outcome is Outcome.INDEXED


def test_threads_register_every_call_exactly_once(registry: LocalRegistryGateway) -> None:
    images = {f"user-{i}": face(100 + i) for i in range(24)}
    calls = [user for user in images for _ in range(4)]  # every user four times, interleaved

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda u: registry.register(u, images[u], {"k": u}), calls))
    assert all(r.outcome is Outcome.INDEXED for r in results)
    users = {u["user_id"]: u for u in registry.users()}
    assert set(users) == set(images)
    # Every call lands as one face, none lost, none merged: 4 calls, 4 faces (RIV stores repeats).
    assert all((u["registrations"], u["attempts"]) == (4, 4) for u in users.values())
    assert registry.register_calls() == len(calls)


def test_threads_racing_for_one_face_leave_one_owner(registry: LocalRegistryGateway) -> None:
    image = face(200)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: registry.register(f"racer-{i}", image, {}), range(16)))
    assert sum(r.outcome is Outcome.INDEXED for r in results) == 1
    assert sum(r.reason.startswith("UserAlreadyExists") for r in results) == 15
    assert len(registry.users()) == 1


def _register_in_another_process(db_path: str, user_ids: list[str]) -> list[str]:
    gateway = LocalRegistryGateway(db_path=db_path)
    return [gateway.register(u, face(300 + int(u.split("-")[1])), {}).outcome.value for u in user_ids]


def test_processes_share_the_registry(registry: LocalRegistryGateway) -> None:
    users = [f"proc-{i}" for i in range(12)]
    context = multiprocessing.get_context("spawn")  # separate interpreters, as Dagster's executor uses
    with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        outcomes = list(pool.map(_register_in_another_process, [registry.db_path] * 3, [users] * 3))
    assert all(o == "indexed" for batch in outcomes for o in batch)
    rows = registry.users()
    assert sorted(u["user_id"] for u in rows) == sorted(users)
    assert all((u["registrations"], u["attempts"]) == (3, 3) for u in rows)
    assert registry.register_calls() == 36


def test_binds_as_the_base_gateway_resource_in_dagster(tmp_path: Path) -> None:
    image = face(400)

    @dg.asset
    def registered(gateway: GatewayResource) -> list[str]:
        return [gateway.register(u, image, {}).outcome.value for u in ("olga", "pia")]

    db_path = str(tmp_path / "dagster-registry.db")
    result = dg.materialize([registered], resources={"gateway": LocalRegistryGateway(db_path=db_path)})
    assert result.success
    assert result.output_for_node("registered") == ["indexed", "failed_permanent"]
    assert [u["user_id"] for u in LocalRegistryGateway(db_path=db_path).users()] == ["olga"]
