"""RivHttpGateway against a real loopback HTTP server (gateway_server.FakeRivGateway)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest
from PIL import Image

from rivbulk_pipeline.core.errors import DeploymentError
from rivbulk_pipeline.core.model import GatewayResult, ObjectRef, Outcome
from rivbulk_pipeline.core.rules.riv_protocol import DETECT_FACES_RESULT_RESERVE
from rivbulk_pipeline.resources.gateway import GatewayResource, RivHttpGateway
from rivbulk_pipeline_tests.support.gateway_server import Answer, FakeRivGateway, SigV4Expectation

PROPS = {"name": "Private Person", "employee": "E-1234"}

DENIED = "answered HTTP 403: the gateway forbade the call"


def face(seed: int = 0, size: tuple[int, int] = (96, 96)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, (seed * 7) % 256, 99)).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def riv() -> Iterator[FakeRivGateway]:
    with FakeRivGateway() as server:
        yield server


@pytest.fixture
def no_aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hermetic AWS credential chain: no real files, no instance metadata."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def gateway(riv: FakeRivGateway, **kwargs: object) -> RivHttpGateway:
    return RivHttpGateway(url=riv.url, **kwargs)  # type: ignore[arg-type]


# ---- answers ----


def test_success_sends_the_contract_body(riv: FakeRivGateway) -> None:
    image = face(1)
    result = gateway(riv).register("alice", image, PROPS)
    assert result == GatewayResult.succeeded()
    [req] = riv.requests
    assert (req.method, req.path, req.user_id) == ("POST", "/register", "alice")
    assert req.headers["content-type"] == "application/json"
    assert riv.registrations == {"alice": 1}


def test_body_is_what_both_riv_versions_take(riv: FakeRivGateway) -> None:
    image = face(2)
    source = ObjectRef("faces", "People/Bob's photo.png")
    assert gateway(riv).register("Bob", image, PROPS, source=source).outcome is Outcome.INDEXED
    [req] = riv.requests
    assert req.image_sha256 == hashlib.sha256(image).hexdigest()  # the server decoded our base64
    body = json.loads(riv.bodies[0])
    # The id lower-cased (RIV keys User::<lower>); Bucket and Name, which RIV since 98f4a0d reads
    # unconditionally; the key's apostrophe percent-encoded (RIV's mapping cannot take one, and
    # reads Name only when no Image is sent).
    assert body == {
        "UserId": "bob",
        "Image": base64.b64encode(image).decode(),
        "Properties": PROPS,
        "Bucket": "faces",
        "Name": "People/Bob%27s photo.png",
    }


@pytest.mark.parametrize(
    "error,outcome",
    [
        ("NoFacesDetectedException", Outcome.FAILED_PERMANENT),
        ("UserAlreadyExists", Outcome.FAILED_PERMANENT),
        ("States.DataLimitExceeded", Outcome.FAILED_PERMANENT),
        ("ThrottlingException", Outcome.FAILED_TRANSIENT),
        ("ProvisionedThroughputExceededException", Outcome.FAILED_TRANSIENT),
        ("TransientError", Outcome.FAILED_TRANSIENT),
        ("Lambda.TooManyRequestsException", Outcome.FAILED_TRANSIENT),
        ("SomethingNobodyKnows", Outcome.FAILED_TRANSIENT),  # an unknown error is never permanent
    ],
)
def test_the_error_name_decides(riv: FakeRivGateway, error: str, outcome: Outcome) -> None:
    riv.script(Answer.failed(error, "a message the Lambda wrote"))
    result = gateway(riv).register("carol", face(3), PROPS)
    assert result.outcome is outcome
    code = error if error != "SomethingNobodyKnows" else "gateway_error"
    assert result.reason.startswith(f"{code}: ") and "a message the Lambda wrote" in result.reason
    assert riv.registrations == {}


@pytest.mark.parametrize("error", ["KeyError", "ResourceNotFoundException", "AccessDeniedException"])
def test_errors_about_the_deployment_stop_the_run_naming_the_error(riv: FakeRivGateway, error: str) -> None:
    riv.script(Answer.failed(error, "'Bucket'"))
    with pytest.raises(DeploymentError, match=f"answered FAILED with error {error}: .+") as raised:
        gateway(riv).register("carol", face(3), PROPS)
    assert riv.url in str(raised.value)


def test_timed_out_and_failed_without_a_name_are_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.json_answer(200, {"status": "TIMED_OUT"}), Answer.json_answer(200, {"status": "FAILED"}))
    gw = gateway(riv)
    timed_out = gw.register("u1", face(4), {})
    assert timed_out.outcome is Outcome.FAILED_TRANSIENT and timed_out.unknown  # it may have registered
    nameless = gw.register("u2", face(5), {})
    assert nameless.outcome is Outcome.FAILED_TRANSIENT and not nameless.unknown


def test_user_already_exists_is_permanent(riv: FakeRivGateway) -> None:
    riv.answer_for("dave", Answer.user_already_exists())
    gw = gateway(riv)
    assert gw.register("dave", face(6), {}).reason.startswith("UserAlreadyExists")
    assert gw.register("erin", face(7), {}).outcome is Outcome.INDEXED  # only dave is scripted
    assert riv.registrations == {"erin": 1}


def test_emulated_registry_rejects_a_face_of_another_user() -> None:
    with FakeRivGateway(emulate_registry=True) as riv:
        gw = gateway(riv)
        image = face(8)
        assert gw.register("frank", image, {}).outcome is Outcome.INDEXED
        assert gw.register("grace", image, {}).reason.startswith("UserAlreadyExists")
        assert gw.register("FRANK", face(9), {}).outcome is Outcome.INDEXED  # a second face, as RIV stores it
        assert riv.registrations == {"frank": 2}  # counted honestly: two SUCCEEDED answers


@pytest.mark.parametrize(
    "status,unknown",
    [(408, False), (409, False), (425, False), (429, False), (500, False), (503, False), (502, True), (504, True)],
)
def test_throttling_and_server_errors_are_transient(riv: FakeRivGateway, status: int, unknown: bool) -> None:
    riv.script(Answer.http(status))
    result = gateway(riv).register("hank", face(10), {})
    assert result == GatewayResult.transient(result.reason, unknown=unknown) and result.reason.startswith(
        f"http_{status}"
    )


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusals_stop_the_run_as_deployment_errors(riv: FakeRivGateway, status: int) -> None:
    riv.script(Answer.http(status, {"message": "detail the gateway gave"}))
    with pytest.raises(DeploymentError) as raised:
        gateway(riv).register("ivan", face(11), {})
    assert f"POST {riv.url}/register answered HTTP {status}" in str(raised.value)
    assert "detail the gateway gave" not in str(raised.value)


@pytest.mark.parametrize("status", [404, 405])
def test_a_wrong_url_or_stage_is_a_deployment_error_not_a_users_failure(riv: FakeRivGateway, status: int) -> None:
    riv.script(Answer.http(status, {"message": "Missing Authentication Token"}))
    with pytest.raises(DeploymentError, match=f"HTTP {status}: .*RIVBULK_GATEWAY_URL"):
        gateway(riv).register("ivan", face(11), {})


@pytest.mark.parametrize("status", [400, 413])
def test_other_4xx_are_permanent_without_the_gateways_text(riv: FakeRivGateway, status: int) -> None:
    riv.script(Answer.http(status, {"message": "detail the gateway gave"}))
    result = gateway(riv).register("ivan", face(11), {})
    assert result.outcome is Outcome.FAILED_PERMANENT and result.reason.startswith(f"http_{status}: ")
    assert "detail the gateway gave" not in result.reason


def test_a_403_after_successes_is_that_requests_failure_not_the_deployments(riv: FakeRivGateway) -> None:
    gw = gateway(riv)
    riv.script(Answer.succeeded(), Answer.http(403, {"message": "Forbidden"}))
    assert gw.register("ivan", face(11), {}).outcome is Outcome.INDEXED
    refused = gw.register("jane", face(12), {})  # e.g. a WAF rule matching this body
    assert refused.outcome is Outcome.FAILED_PERMANENT and refused.reason.startswith("http_403")


def test_a_redirect_is_not_followed_and_stops_the_run(riv: FakeRivGateway) -> None:
    riv.script(Answer.raw(302, b"", "text/plain"))
    with pytest.raises(DeploymentError, match="HTTP 302, a redirect"):
        gateway(riv).register("judy", face(12), {})
    assert len(riv.requests) == 1


def test_http_200_that_is_not_json_or_has_no_status_is_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.raw(200, b"<html>gateway hiccup</html>"), Answer.json_answer(200, {"ok": True}))
    gw = gateway(riv)
    first = gw.register("kim", face(13), {})
    assert first.outcome is Outcome.FAILED_TRANSIENT and "not a JSON object" in first.reason
    second = gw.register("kim", face(13), {})
    assert second.outcome is Outcome.FAILED_TRANSIENT and "unreadable" in second.reason


def test_a_slow_answer_times_out_as_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.succeeded().slow(2.0))
    gw = gateway(riv, timeout_seconds=0.5)
    assert gw.register("leo", face(14), {}) == GatewayResult.transient("timeout: no answer within 0.5s", unknown=True)
    assert riv.calls_for("leo") == 1  # it did reach the gateway: one attempt, no hidden retry
    assert gw.register("leo", face(14), {}).outcome is Outcome.INDEXED  # the client recovers


def test_a_dropped_connection_is_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.drop())
    gw = gateway(riv)
    result = gw.register("mia", face(15), {})
    # The request left: the registration may have happened, so the outcome is unknown.
    assert result.outcome is Outcome.FAILED_TRANSIENT and result.unknown
    assert result.reason.startswith("connection_error")
    assert riv.calls_for("mia") == 1  # no hidden retry
    assert gw.register("mia", face(15), {}).outcome is Outcome.INDEXED


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = RivHttpGateway(url=f"http://127.0.0.1:{port}", timeout_seconds=2).register("ned", face(16), {})
    # Nothing left: nothing can have been registered.
    assert result.outcome is Outcome.FAILED_TRANSIENT and not result.unknown
    assert result.reason.startswith("connection_error: could not connect")


# ---- payload limit and local checks: nothing is sent ----


def test_payload_over_the_step_functions_limit_is_never_sent(riv: FakeRivGateway) -> None:
    image = noise_png(400)  # ~480 KB of PNG, ~640 KB as base64: valid for Rekognition, too big for RIV
    result = gateway(riv).register("olga", image, {})
    assert result.outcome is Outcome.FAILED_PERMANENT
    assert result.reason.startswith("too_large_for_riv: ") and "by_reference" in result.reason
    assert riv.requests == []


def test_payload_limit_leaves_room_for_detect_faces_result(riv: FakeRivGateway) -> None:
    image = face(17)
    assert gateway(riv, max_payload_bytes=10**6).register("pia", image, PROPS).outcome is Outcome.INDEXED
    size = riv.requests[0].body_size
    fits = size + DETECT_FACES_RESULT_RESERVE
    assert gateway(riv, max_payload_bytes=fits).register("pia", image, PROPS).outcome is Outcome.INDEXED
    too_small = gateway(riv, max_payload_bytes=fits - 1).register("pia", image, PROPS)
    assert too_small.outcome is Outcome.FAILED_PERMANENT and too_small.reason.startswith("too_large_for_riv")
    assert len(riv.requests) == 2


def test_an_apostrophe_in_the_properties_is_refused_before_the_call(riv: FakeRivGateway) -> None:
    # RIV's mapping turns ' into \' (not JSON): HTTP 500 every time, so never send it.
    result = gateway(riv).register("quinn", face(18), {"surname": "O'Brien"})
    assert result.outcome is Outcome.FAILED_PERMANENT and result.reason.startswith("apostrophe_in_request:")
    assert "O'Brien" not in result.reason and riv.requests == []


def test_by_reference_sends_no_image_and_refuses_keys_riv_cannot_read(riv: FakeRivGateway) -> None:
    gw = gateway(riv, image_mode="by_reference")
    assert not gw.needs_image_bytes
    assert gw.register("rae", None, {}, source=ObjectRef("faces", "people/rae.png")).outcome is Outcome.INDEXED
    assert json.loads(riv.bodies[0]) == {"UserId": "rae", "Properties": {}, "Bucket": "faces", "Name": "people/rae.png"}
    capital = gw.register("rae", None, {}, source=ObjectRef("faces", "People/Rae.png"))  # RIV lower-cases Name
    assert capital.outcome is Outcome.FAILED_PERMANENT and capital.reason.startswith("key_not_readable_by_riv")
    assert len(riv.requests) == 1


def test_check_userid_answers_and_a_riv_without_the_route(riv: FakeRivGateway) -> None:
    gw = gateway(riv)
    riv.script(Answer.json_answer(200, {"Reason": "User Exist"}), Answer.json_answer(200, {"Reason": "User not Exist"}))
    assert gw.user_exists("Sam") is True
    assert gw.user_exists("sam") is False
    assert [json.loads(b) for b in riv.bodies] == [
        {"UserId": "sam"},
        {"UserId": "sam"},
    ]  # lower-cased: RIV finds only those
    assert [r.path for r in riv.requests] == ["/check-userid", "/check-userid"]
    riv.script(Answer.http(403, {"message": "Missing Authentication Token"}))  # a RIV before check-userid
    assert gw.user_exists("sam") is None
    assert gw.user_exists("sam") is None and len(riv.requests) == 3  # not asked again


def test_bad_input_is_rejected_locally(riv: FakeRivGateway) -> None:
    gw = gateway(riv)
    bad_id = gw.register("x" * 129, face(18), {})
    assert bad_id.outcome is Outcome.FAILED_PERMANENT and bad_id.reason.startswith("bad_user_id:")
    email = gw.register("bob@example.com", face(18), {})  # fails at IndexFaces after two paid calls
    assert email.outcome is Outcome.FAILED_PERMANENT and email.reason.startswith("bad_user_id:")
    bad_image = gw.register("quinn", b"GIF89a" + b"\0" * 100, {})
    assert bad_image.outcome is Outcome.FAILED_PERMANENT and bad_image.reason.startswith("unsupported_format:")
    small = gw.register("quinn", face(19, (40, 40)), {})
    assert small.reason.startswith("too_small:")
    bad_props = gw.register("quinn", face(19), {"age": 42})  # type: ignore[dict-item]
    assert bad_props.outcome is Outcome.FAILED_PERMANENT and bad_props.reason.startswith("bad_properties:")
    assert "42" not in bad_props.reason and "age" not in bad_props.reason
    assert riv.requests == []


# ---- auth ----


def test_api_key_right_and_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeRivGateway(api_key="k-right-0123", api_key_header="x-riv-key") as riv:
        good = RivHttpGateway(url=riv.url, auth="api_key", api_key="k-right-0123", api_key_header="x-riv-key")
        assert good.register("rita", face(20), {}).outcome is Outcome.INDEXED
        bad = RivHttpGateway(url=riv.url, auth="api_key", api_key="k-wrong-9999", api_key_header="x-riv-key")
        with pytest.raises(DeploymentError, match=DENIED):
            bad.register("sam", face(21), {})
        none = RivHttpGateway(url=riv.url)
        with pytest.raises(DeploymentError, match=DENIED):
            none.register("sam", face(21), {})
        assert [r.authorized for r in riv.requests] == [True, False, False]
        assert riv.registrations == {"rita": 1}
        assert "k-right-0123" not in repr(good)


def test_secrets_and_personal_data_never_reach_the_logs(riv: FakeRivGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    image = face(22)
    gw = gateway(riv, auth="api_key", api_key="very-secret-key-777")
    riv.script(Answer.succeeded(), Answer.drop(), Answer.failed("InvalidPoseDetectedException"), Answer.http(401))
    results = [gw.register("tom", image, PROPS) for _ in range(3)]
    assert [r.outcome for r in results] == [Outcome.INDEXED, Outcome.FAILED_TRANSIENT, Outcome.FAILED_PERMANENT]
    with pytest.raises(DeploymentError) as refused:
        gw.register("tom", image, PROPS)
    text = caplog.text + " ".join(r.reason for r in results) + str(refused.value)
    assert caplog.records  # urllib3 did log at DEBUG: the check below is not vacuous
    for secret in ("very-secret-key-777", "Private Person", "E-1234", base64.b64encode(image).decode()[:40]):
        assert secret not in text


def test_sigv4_verified_by_the_server(no_aws_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "right-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-1")
    expect = SigV4Expectation("AKIDEXAMPLE", "right-secret", "eu-west-1", token="session-token-1")
    with FakeRivGateway(sigv4=expect) as riv:
        gw = RivHttpGateway(url=riv.url, auth="sigv4", region_name="eu-west-1")
        assert gw.register("uma", face(23), PROPS).outcome is Outcome.INDEXED
        [req] = riv.requests
        assert req.authorized and req.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/eu-west-1/execute-api/aws4_request" in req.headers["authorization"]
        assert req.headers["x-amz-security-token"] == "session-token-1"

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        wrong = RivHttpGateway(url=riv.url, auth="sigv4", region_name="eu-west-1")
        with pytest.raises(DeploymentError, match=DENIED):
            wrong.register("uma", face(23), PROPS)
        other_region = RivHttpGateway(url=riv.url, auth="sigv4", region_name="us-east-1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "right-secret")
        with pytest.raises(DeploymentError, match=DENIED):
            other_region.register("uma", face(23), PROPS)
        assert [r.authorized for r in riv.requests] == [True, False, False]


def test_sigv4_region_from_the_environment(no_aws_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    with FakeRivGateway(sigv4=SigV4Expectation("AKIDEXAMPLE", "s3cr3t", "ap-south-1")) as riv:
        assert RivHttpGateway(url=riv.url, auth="sigv4").register("vic", face(24), {}).outcome is Outcome.INDEXED


def test_sigv4_credentials_are_refreshed_per_call(no_aws_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A credential_process that hands out short-lived keys: botocore must refresh before each call.
    key_file = no_aws_credentials / "current-key"
    script = no_aws_credentials / "creds.py"
    script.write_text(
        "import datetime, json, pathlib\n"
        f"key = pathlib.Path({str(key_file)!r}).read_text()\n"
        "expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': key, 'SecretAccessKey': 'secret-' + key,\n"
        "                  'Expiration': expires.strftime('%Y-%m-%dT%H:%M:%SZ')}))\n"
    )
    (no_aws_credentials / "config").write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(no_aws_credentials / "config"))
    key_file.write_text("AKIDFIRST")
    with FakeRivGateway(sigv4=SigV4Expectation("AKIDFIRST", "secret-AKIDFIRST", "eu-west-1")) as riv:
        gw = RivHttpGateway(url=riv.url, auth="sigv4", region_name="eu-west-1")
        assert gw.register("wes", face(25), {}).outcome is Outcome.INDEXED
        key_file.write_text("AKIDSECOND")
        riv.sigv4 = SigV4Expectation("AKIDSECOND", "secret-AKIDSECOND", "eu-west-1")
        assert gw.register("xia", face(26), {}).outcome is Outcome.INDEXED
        assert [r.authorized for r in riv.requests] == [True, True]


# ---- configuration, threads, Dagster ----


def test_configuration_errors_raise_clearly(no_aws_credentials: Path) -> None:
    with pytest.raises(DeploymentError, match="auth must be one of"):
        RivHttpGateway(url="http://127.0.0.1:9", auth="basic").register("a", face(27), {})
    with pytest.raises(DeploymentError, match="needs api_key"):
        RivHttpGateway(url="http://127.0.0.1:9", auth="api_key").register("a", face(27), {})
    with pytest.raises(DeploymentError, match="no AWS credentials"):
        RivHttpGateway(url="http://127.0.0.1:9", auth="sigv4", region_name="eu-west-1").register("a", face(27), {})
    with pytest.raises(DeploymentError, match="http:// or https://"):
        RivHttpGateway(url="ftp://127.0.0.1:9").register("a", face(27), {})


def test_many_threads_share_one_session(riv: FakeRivGateway) -> None:
    gw = gateway(riv)
    users = [f"user-{i}" for i in range(64)]
    images = {u: face(i) for i, u in enumerate(users)}
    sessions: set[int] = set()
    lock = threading.Lock()

    def call(user: str) -> GatewayResult:
        result = gw.register(user, images[user], {"n": user})
        with lock:
            sessions.add(id(gw._client()[0]))
        return result

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, users))
    assert all(r.outcome is Outcome.INDEXED for r in results)
    assert riv.registrations == {u: 1 for u in users}
    assert len(sessions) == 1
    gw.close()


def test_binds_as_the_base_gateway_resource_in_dagster(riv: FakeRivGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIV_TEST_API_KEY", "env-key-42")
    riv.api_key = "env-key-42"
    image = face(28)

    @dg.asset
    def registered(gateway: GatewayResource) -> str:
        return gateway.register("yara", image, {}).outcome.value

    result = dg.materialize(
        [registered],
        resources={"gateway": RivHttpGateway(url=riv.url, auth="api_key", api_key=dg.EnvVar("RIV_TEST_API_KEY"))},
    )
    assert result.success
    assert result.output_for_node("registered") == "indexed"
    assert riv.registrations == {"yara": 1}


def test_an_env_var_key_is_read_from_the_environment_outside_dagster(monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    monkeypatch.setenv("RIV_TEST_KEY", "k-from-env-42")
    with FakeRivGateway(api_key="k-from-env-42") as riv:
        gw = RivHttpGateway(url=riv.url, auth="api_key", api_key=dg.EnvVar("RIV_TEST_KEY"))
        assert gw.register("vera", face(24), {}).outcome is Outcome.INDEXED
        assert riv.requests[0].authorized
