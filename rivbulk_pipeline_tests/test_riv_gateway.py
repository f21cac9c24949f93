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
from rivbulk_pipeline.core.model import GatewayResult, Outcome
from rivbulk_pipeline.resources.gateway import GatewayResource, RivHttpGateway

from .gateway_server import Answer, FakeRivGateway, SigV4Expectation

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
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hermetic AWS credential chain: no real files, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
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


def test_body_is_userid_base64_image_and_properties(riv: FakeRivGateway) -> None:
    image = face(2)
    assert gateway(riv).register("bob", image, PROPS).outcome is Outcome.INDEXED
    [req] = riv.requests
    assert req.image_sha256 == hashlib.sha256(image).hexdigest()  # the server decoded our base64
    expected = json.dumps({"UserId": "bob", "Image": base64.b64encode(image).decode(), "Properties": PROPS})
    assert req.body_size == len(expected.encode())


@pytest.mark.parametrize("key", ["reason", "Reason", "error", "Error", "message"])
def test_http_200_failed_is_permanent_with_the_gateway_reason(riv: FakeRivGateway, key: str) -> None:
    riv.script(Answer.failed("No face detected in the image", key=key))
    result = gateway(riv).register("carol", face(3), PROPS)
    assert result == GatewayResult.permanent("No face detected in the image")
    assert riv.registrations == {}


def test_failed_reason_nested_or_missing(riv: FakeRivGateway) -> None:
    riv.script(
        Answer.json_answer(200, {"status": "FAILED", "Error": {"Code": "FaceHasSunglasses"}}),
        Answer.json_answer(200, {"status": "FAILED"}),
    )
    gw = gateway(riv)
    assert gw.register("u1", face(4), {}) == GatewayResult.permanent("FaceHasSunglasses")
    result = gw.register("u2", face(5), {})
    assert result.outcome is Outcome.FAILED_PERMANENT and "no reason" in result.reason


def test_user_already_exists_is_permanent(riv: FakeRivGateway) -> None:
    riv.answer_for("dave", Answer.user_already_exists())
    gw = gateway(riv)
    assert gw.register("dave", face(6), {}) == GatewayResult.permanent("UserAlreadyExists")
    assert gw.register("erin", face(7), {}).outcome is Outcome.INDEXED  # only dave is scripted
    assert riv.registrations == {"erin": 1}


def test_emulated_registry_rejects_a_face_of_another_user() -> None:
    with FakeRivGateway(emulate_registry=True) as riv:
        gw = gateway(riv)
        image = face(8)
        assert gw.register("frank", image, {}).outcome is Outcome.INDEXED
        assert gw.register("grace", image, {}) == GatewayResult.permanent("UserAlreadyExists")
        assert gw.register("FRANK", face(9), {}) == GatewayResult.permanent("UserAlreadyRegistered")
        assert gw.register("frank", image, {}).outcome is Outcome.INDEXED
        assert riv.registrations == {"frank": 2}  # counted honestly: two SUCCEEDED answers


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_throttling_and_server_errors_are_transient(riv: FakeRivGateway, status: int) -> None:
    riv.script(Answer.http(status))
    assert gateway(riv).register("hank", face(10), {}) == GatewayResult.transient(f"HTTP {status}")


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
def test_other_4xx_are_permanent_with_the_gateways_reason(riv: FakeRivGateway, status: int) -> None:
    riv.script(Answer.http(status, {"message": "detail the gateway gave"}))
    assert gateway(riv).register("ivan", face(11), {}) == GatewayResult.permanent(f"HTTP {status}: detail the gateway gave")


def test_a_redirect_is_not_followed_and_stops_the_run(riv: FakeRivGateway) -> None:
    riv.script(Answer.raw(302, b"", "text/plain"))
    with pytest.raises(DeploymentError, match="HTTP 302, a redirect"):
        gateway(riv).register("judy", face(12), {})
    assert len(riv.requests) == 1


def test_http_200_that_is_not_json_or_has_no_status_is_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.raw(200, b"<html>gateway hiccup</html>"), Answer.json_answer(200, {"ok": True}))
    gw = gateway(riv)
    first = gw.register("kim", face(13), {})
    assert first.outcome is Outcome.FAILED_TRANSIENT and "not JSON" in first.reason
    second = gw.register("kim", face(13), {})
    assert second.outcome is Outcome.FAILED_TRANSIENT and "unreadable" in second.reason


def test_a_slow_answer_times_out_as_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.succeeded().slow(2.0))
    gw = gateway(riv, timeout_seconds=0.5)
    assert gw.register("leo", face(14), {}) == GatewayResult.transient("timeout after 0.5s")
    assert riv.calls_for("leo") == 1  # it did reach the gateway: one attempt, no hidden retry
    assert gw.register("leo", face(14), {}).outcome is Outcome.INDEXED  # the client recovers


def test_a_dropped_connection_is_transient(riv: FakeRivGateway) -> None:
    riv.script(Answer.drop())
    gw = gateway(riv)
    result = gw.register("mia", face(15), {})
    assert result.outcome is Outcome.FAILED_TRANSIENT and result.reason.startswith("connection error")
    assert riv.calls_for("mia") == 1  # no hidden retry
    assert gw.register("mia", face(15), {}).outcome is Outcome.INDEXED


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = RivHttpGateway(url=f"http://127.0.0.1:{port}", timeout_seconds=2).register("ned", face(16), {})
    assert result.outcome is Outcome.FAILED_TRANSIENT and result.reason.startswith("connection error")


# ---- payload limit and local checks: nothing is sent ----


def test_payload_over_the_step_functions_limit_is_never_sent(riv: FakeRivGateway) -> None:
    image = noise_png(400)  # ~480 KB of PNG, ~640 KB as base64: valid for Rekognition, too big for RIV
    result = gateway(riv).register("olga", image, {})
    assert result.outcome is Outcome.FAILED_PERMANENT
    assert result.reason.startswith("PayloadTooLarge: ") and result.reason.endswith(" bytes > 262144")
    assert riv.requests == []


def test_payload_limit_is_exact(riv: FakeRivGateway) -> None:
    image = face(17)
    assert gateway(riv, max_payload_bytes=10**6).register("pia", image, PROPS).outcome is Outcome.INDEXED
    size = riv.requests[0].body_size
    assert gateway(riv, max_payload_bytes=size).register("pia", image, PROPS).outcome is Outcome.INDEXED
    too_small = gateway(riv, max_payload_bytes=size - 1).register("pia", image, PROPS)
    assert too_small == GatewayResult.permanent(f"PayloadTooLarge: {size} bytes > {size - 1}")
    assert len(riv.requests) == 2


def test_bad_input_is_rejected_locally(riv: FakeRivGateway) -> None:
    gw = gateway(riv)
    bad_id = gw.register("x" * 129, face(18), {})
    assert bad_id.outcome is Outcome.FAILED_PERMANENT and bad_id.reason.startswith("InvalidUserId:")
    bad_image = gw.register("quinn", b"GIF89a" + b"\0" * 100, {})
    assert bad_image.outcome is Outcome.FAILED_PERMANENT and bad_image.reason.startswith("unsupported_format:")
    small = gw.register("quinn", face(19, (40, 40)), {})
    assert small.reason.startswith("too_small:")
    bad_props = gw.register("quinn", face(19), {"age": 42})  # type: ignore[dict-item]
    assert bad_props.outcome is Outcome.FAILED_PERMANENT and bad_props.reason.startswith("InvalidProperties:")
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
    riv.script(Answer.succeeded(), Answer.drop(), Answer.failed("pose"), Answer.http(403))
    results = [gw.register("tom", image, PROPS) for _ in range(3)]
    assert [r.outcome for r in results] == [Outcome.INDEXED, Outcome.FAILED_TRANSIENT, Outcome.FAILED_PERMANENT]
    with pytest.raises(DeploymentError) as refused:
        gw.register("tom", image, PROPS)
    text = caplog.text + " ".join(r.reason for r in results) + str(refused.value)
    assert caplog.records  # urllib3 did log at DEBUG: the check below is not vacuous
    for secret in ("very-secret-key-777", "Private Person", "E-1234", base64.b64encode(image).decode()[:40]):
        assert secret not in text


def test_sigv4_verified_by_the_server(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_sigv4_region_from_the_environment(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    with FakeRivGateway(sigv4=SigV4Expectation("AKIDEXAMPLE", "s3cr3t", "ap-south-1")) as riv:
        assert RivHttpGateway(url=riv.url, auth="sigv4").register("vic", face(24), {}).outcome is Outcome.INDEXED


def test_sigv4_credentials_are_refreshed_per_call(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A credential_process that hands out short-lived keys: botocore must refresh before each call.
    key_file = aws_env / "current-key"
    script = aws_env / "creds.py"
    script.write_text(
        "import datetime, json, pathlib\n"
        f"key = pathlib.Path({str(key_file)!r}).read_text()\n"
        "expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': key, 'SecretAccessKey': 'secret-' + key,\n"
        "                  'Expiration': expires.strftime('%Y-%m-%dT%H:%M:%SZ')}))\n"
    )
    (aws_env / "config").write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_env / "config"))
    key_file.write_text("AKIDFIRST")
    with FakeRivGateway(sigv4=SigV4Expectation("AKIDFIRST", "secret-AKIDFIRST", "eu-west-1")) as riv:
        gw = RivHttpGateway(url=riv.url, auth="sigv4", region_name="eu-west-1")
        assert gw.register("wes", face(25), {}).outcome is Outcome.INDEXED
        key_file.write_text("AKIDSECOND")
        riv.sigv4 = SigV4Expectation("AKIDSECOND", "secret-AKIDSECOND", "eu-west-1")
        assert gw.register("xia", face(26), {}).outcome is Outcome.INDEXED
        assert [r.authorized for r in riv.requests] == [True, True]


# ---- configuration, threads, Dagster ----


def test_configuration_errors_raise_clearly(aws_env: Path) -> None:
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
