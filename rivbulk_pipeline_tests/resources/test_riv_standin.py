"""The RIV stand-in behaves as RIV's code does (FACTS.md, "The RIV gateway as its code really behaves").

Plain `requests` against the stand-in on 127.0.0.1: no rivbulk client is involved, so these tests pin
the stand-in itself, the ground the gateway client's tests stand on. Timeouts are scaled down.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import requests
from moto import mock_aws
from PIL import Image as PILImage

from rivbulk_pipeline_tests.support.riv_standin import (
    STATE_LIMIT_BYTES,
    RivStandIn,
    execution_input_bytes,
    make_jpeg,
    make_png,
    pad_png,
)


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")


def body(user_id: str, image: bytes, **extra: object) -> dict:
    """A body both RIV versions take: the head version needs Bucket, Name and Properties."""
    return {
        "UserId": user_id,
        "Image": b64(image),
        "Properties": {"team": "x"},
        "Bucket": "photos",
        "Name": "a.png",
        **extra,
    }


def register(riv: RivStandIn, payload: object, **kwargs: object) -> requests.Response:
    return requests.post(riv.url + "/register", json=payload, timeout=10, **kwargs)


def cause_message(answer: dict) -> str:
    return json.loads(answer["cause"])["errorMessage"]


@pytest.fixture
def riv():
    with RivStandIn(version="head", integration_timeout=2.0) as standin:
        yield standin


# -- the answer -------------------------------------------------------------------------------------


def test_success_answers_startsyncexecution_fields_with_output_as_a_json_string(riv):
    image = make_png("alice")
    response = register(riv, body("Alice.B", image))

    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "SUCCEEDED"
    assert {"executionArn", "stateMachineArn", "name", "startDate", "stopDate", "input", "billingDetails"} <= set(
        answer
    )
    assert "error" not in answer and "cause" not in answer
    assert isinstance(answer["startDate"], float) and answer["startDate"] <= answer["stopDate"]
    output = json.loads(answer["output"])  # a string holding JSON, not an object
    assert output["UserId"] == "Alice.B" and output["Status"] == "Registered" and output["ImageId"]
    assert json.loads(answer["input"]) == {"inputRequest": body("Alice.B", image)}  # image echoed
    assert riv.faces_for("alice.b") == 1
    assert riv.rekognition_calls == {"DetectFaces": 1, "SearchFacesByImage": 1, "IndexFaces": 1}
    recorded = riv.requests[0]
    assert recorded.status == 200 and recorded.execution_status == "SUCCEEDED"
    assert b64(image) not in json.dumps(recorded.body)  # the record keeps no image


@pytest.mark.parametrize("version", ["pre-98f4a0d", "head"])
def test_a_body_with_image_bucket_and_name_registers_on_both_versions(version):
    with RivStandIn(version=version) as riv:
        answer = register(riv, body("carol", make_png("carol"), Unknown="ignored")).json()
        assert answer["status"] == "SUCCEEDED", answer
        assert riv.faces_for("carol") == 1


def test_the_old_body_fails_on_head_with_keyerror_after_two_paid_calls():
    old_body = {"UserId": "dave", "Image": b64(make_png("dave")), "Properties": {}}
    with RivStandIn(version="head") as head:
        answer = register(head, old_body).json()
        assert (answer["status"], answer["error"]) == ("FAILED", "KeyError")
        assert cause_message(answer) == "'Bucket'"
        assert head.rekognition_calls == {"DetectFaces": 1, "SearchFacesByImage": 1}
        assert head.faces_for("dave") == 0
    with RivStandIn(version="pre-98f4a0d") as pre:
        assert register(pre, old_body).json()["status"] == "SUCCEEDED"


# -- the workflow's error names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [
        ("no_face", "NoFacesDetectedException", ""),
        ("low_confidence", "NoFacesDetectedException", ""),
        ("two_faces", "TooManyFacesDetectedException", ""),
        ("pose", "InvalidPoseDetectedException", "Yaw"),
        ("sunglasses", "SunglassesDetectedException", ""),
    ],
)
def test_face_checks_fail_at_detect_faces_with_rivs_names(riv, behaviour, error, message):
    image = make_png("erin-" + behaviour)
    riv.face_behaviour(image, behaviour)
    answer = register(riv, body("erin", image)).json()
    assert (answer["status"], answer["error"]) == ("FAILED", error)
    cause = json.loads(answer["cause"])
    assert cause["errorType"] == error and cause["errorMessage"] == message and cause["stackTrace"]
    assert riv.rekognition_calls == {"DetectFaces": 1}


def test_face_behaviour_can_ride_in_the_image_itself(riv):
    png = register(riv, body("f1", make_png("f1", face="sunglasses"))).json()
    jpeg = register(riv, body("f2", make_jpeg("f2", face="two_faces"))).json()
    plain_jpeg = register(riv, body("f3", make_jpeg("f3"))).json()
    assert png["error"] == "SunglassesDetectedException"
    assert jpeg["error"] == "TooManyFacesDetectedException"
    assert plain_jpeg["status"] == "SUCCEEDED"


def gif_bytes() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (96, 96)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("image_field", "error", "paid_detect"),
    [
        (b64(gif_bytes()), "InvalidImageFormatException", 0),
        (b64(b"not an image at all"), "InvalidImageFormatException", 0),
        (b64(make_png("tiny", size=40)), "InvalidParameterException", 0),
        ("", "ParamValidationError", 0),
        ("abc", "Error", 0),  # binascii.Error: RIV's b64decode fails on bad padding
    ],
)
def test_bytes_rekognition_refuses_keep_their_names(riv, image_field, error, paid_detect):
    answer = register(riv, {**body("gina", make_png("gina")), "Image": image_field}).json()
    assert (answer["status"], answer["error"]) == ("FAILED", error)
    assert riv.rekognition_calls["DetectFaces"] == paid_detect
    assert riv.rekognition_calls["SearchFacesByImage"] == 0


@pytest.mark.parametrize("user_id", ["bob@example.com", "two words", "jos\u00e9", "x" * 256])
def test_an_id_outside_externalimageid_fails_at_index_faces_as_clienterror(riv, user_id):
    answer = register(riv, body(user_id, make_png("id-" + user_id))).json()
    assert (answer["status"], answer["error"]) == ("FAILED", "ClientError")
    assert "ValidationException" in cause_message(answer)
    assert riv.rekognition_calls == {"DetectFaces": 1, "SearchFacesByImage": 1}  # two paid, index refused
    assert riv.faces_for(user_id) == 0


def test_a_second_registration_of_a_lower_case_id_adds_a_second_face(riv):
    image = make_png("hank")
    assert register(riv, body("hank", image)).json()["status"] == "SUCCEEDED"
    assert register(riv, body("hank", image)).json()["status"] == "SUCCEEDED"
    assert riv.faces_for("hank") == 2  # unconditional PutItem: no UserAlreadyRegistered in RIV


def test_a_mixed_case_id_matching_its_own_face_is_refused_as_user_already_exists(riv):
    image = make_png("ivy")
    assert register(riv, body("Ivy", image)).json()["status"] == "SUCCEEDED"
    again = register(riv, body("Ivy", image)).json()
    assert (again["status"], again["error"]) == ("FAILED", "UserAlreadyExists")
    assert again["cause"] == "Cannot register double faces in same collections."  # a Fail state, not JSON
    assert riv.faces_for("ivy") == 1
    assert riv.rekognition_calls["IndexFaces"] == 1


def test_the_same_face_under_another_id_is_user_already_exists(riv):
    first, second_photo = make_png("jo-1"), make_png("jo-2")
    riv.same_person(first, second_photo)
    assert register(riv, body("jo", first)).json()["status"] == "SUCCEEDED"
    assert register(riv, body("joanne", second_photo)).json()["error"] == "UserAlreadyExists"
    assert register(riv, body("kim", make_png("kim"))).json()["status"] == "SUCCEEDED"  # another person


def test_properties_that_are_not_an_object_fail_after_the_face_was_indexed(riv):
    answer = register(riv, body("lee", make_png("lee"), Properties="s3://b/p.json")).json()
    assert (answer["error"], cause_message(answer)) == ("NotImplementedError", "AttributeError")
    assert riv.collection_faces_for("lee") == 1 and riv.faces_for("lee") == 0
    missing = {k: v for k, v in body("lea", make_png("lea")).items() if k != "Properties"}
    assert register(riv, missing).json()["error"] == "KeyError"


# -- API Gateway ------------------------------------------------------------------------------------


def test_an_apostrophe_anywhere_is_a_500_and_starts_no_workflow(riv):
    image = make_png("obrien")
    plain = register(riv, body("obrien", image, Properties={"name": "O'Brien"}))
    escaped = requests.post(  # \u0027 in the raw body is still an apostrophe once API Gateway re-serialises it
        riv.url + "/register",
        data=json.dumps(body("obrien", image, Properties={"name": "O'Brien"})).replace("'", "\\u0027"),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    for response in (plain, escaped):
        assert (response.status_code, response.json()) == (500, {"message": "Internal server error"})
    assert riv.workflow_starts == []


def test_unknown_paths_and_methods_are_403_missing_authentication_token(riv):
    for method, path in [("POST", "/nope"), ("GET", "/register"), ("POST", "/../register"), ("POST", "/REGISTER")]:
        response = requests.request(method, riv.url + path, json={}, timeout=10)
        assert (response.status_code, response.json()) == (403, {"message": "Missing Authentication Token"}), path
    bare = requests.post(riv.url.rsplit("/", 1)[0] + "/register", json={}, timeout=10)  # no stage
    assert bare.status_code == 403


def test_non_json_and_other_media_types_are_refused_before_the_workflow(riv):
    not_json = requests.post(
        riv.url + "/register", data=b"UserId=bob", headers={"Content-Type": "application/json"}, timeout=10
    )
    assert not_json.status_code == 400 and not_json.json()["message"].startswith(
        "Could not parse request body into json"
    )
    form = requests.post(riv.url + "/register", data={"UserId": "bob"}, timeout=10)
    assert (form.status_code, form.json()) == (415, {"message": "Unsupported Media Type"})
    assert riv.workflow_starts == []


def test_an_expected_api_key_is_checked_only_when_configured():
    with RivStandIn(api_key="s3cret") as riv:
        denied = register(riv, body("max", make_png("max")))
        allowed = register(riv, body("max", make_png("max")), headers={"x-api-key": "s3cret"})
        assert (denied.status_code, denied.json()) == (403, {"message": "Forbidden"})
        assert allowed.json()["status"] == "SUCCEEDED"
    with RivStandIn() as stock:  # stock RIV takes any caller
        assert register(stock, body("max", make_png("max"))).json()["status"] == "SUCCEEDED"


def test_a_504_at_the_integration_timeout_while_the_workflow_still_registers():
    with RivStandIn(integration_timeout=0.3, latency=0.9) as riv:
        started = time.monotonic()
        response = register(riv, body("nina", make_png("nina")))
        waited = time.monotonic() - started
        assert (response.status_code, response.json()) == (504, {"message": "Endpoint request timed out"})
        assert 0.25 < waited < 0.8
        assert riv.faces_for("nina") == 0  # not yet
        assert riv.wait_for_workflows(5)
        assert riv.faces_for("nina") == 1
        check = requests.post(riv.url + "/check-userid", json={"UserId": "nina"}, timeout=10)
        assert check.json() == {"Reason": "User Exist"}


def test_the_workflow_timeout_answers_timed_out_when_it_comes_before_api_gateways():
    with RivStandIn(integration_timeout=2.0, workflow_timeout=0.3, latency=0.9) as riv:
        answer = register(riv, body("otto", make_png("otto"))).json()
        assert answer["status"] == "TIMED_OUT" and "output" not in answer
        assert riv.wait_for_workflows(5)
        assert riv.rekognition_calls["IndexFaces"] == 0  # stopped at a step boundary after detect


def test_a_dropped_connection_after_the_workflow_still_registers(riv):
    riv.drop_next(1, when="after")
    with pytest.raises(requests.ConnectionError):
        register(riv, body("pia", make_png("pia")))
    assert riv.faces_for("pia") == 1
    assert riv.requests[-1].status is None
    assert register(riv, body("quinn", make_png("quinn"))).status_code == 200  # only the next one


# -- the 256 KiB limit ------------------------------------------------------------------------------


def sized_body(user_id: str, input_bytes: int) -> dict:
    """A body whose execution input is `input_bytes` long (within 4 bytes: base64 grows in fours)."""
    png = make_png(user_id, size=120, noise=True)
    payload = body(user_id, png)
    raw_size = len(png) + (input_bytes - execution_input_bytes(payload)) * 3 // 4
    payload["Image"] = b64(pad_png(png, raw_size))
    return payload


def test_the_request_plus_detect_faces_result_over_256_kib_is_data_limit_exceeded(riv):
    near = sized_body("rosa", STATE_LIMIT_BYTES - 1000)
    assert STATE_LIMIT_BYTES - 1004 <= execution_input_bytes(near) <= STATE_LIMIT_BYTES
    answer = register(riv, near).json()
    assert (answer["status"], answer["error"]) == ("FAILED", "States.DataLimitExceeded")
    assert "Check-ImageQuality" in answer["cause"]
    assert riv.rekognition_calls == {"DetectFaces": 1}

    fits = register(riv, sized_body("sam", STATE_LIMIT_BYTES - 30_000)).json()
    assert fits["status"] == "SUCCEEDED"


def test_the_limit_can_strike_after_index_faces_so_a_failed_answer_hides_a_registration(riv):
    # Each step adds its result to the state: detect ~4.4 KB, search ~1.6 KB, index ~3.9 KB.
    answers = {}
    for offset in range(4500, 10500, 250):
        user_id = f"t{offset}"
        answers[user_id] = register(riv, sized_body(user_id, STATE_LIMIT_BYTES - offset)).json()
    failed_at = {uid: a["cause"].split("'")[1] for uid, a in answers.items() if a["status"] == "FAILED"}
    assert set(failed_at.values()) == {"Search-ExistingFaces", "Index-FaceInfo"}
    assert all(a["error"] == "States.DataLimitExceeded" for uid, a in answers.items() if uid in failed_at)
    after_index = [uid for uid, step in failed_at.items() if step == "Index-FaceInfo"]
    assert all(riv.faces_for(uid) == 1 for uid in after_index)  # FAILED, yet registered
    assert any(a["status"] == "SUCCEEDED" for a in answers.values())


def test_a_request_over_256_kib_is_a_500_from_api_gateway(riv):
    over = sized_body("tess", STATE_LIMIT_BYTES + 100)
    response = register(riv, over)
    assert (response.status_code, response.json()) == (500, {"message": "Internal server error"})
    assert riv.workflow_starts == []


# -- throttling and service errors ------------------------------------------------------------------


def test_throttling_fails_the_next_workflows_at_detect_faces_unpaid(riv):
    riv.throttle(2)
    answers = [register(riv, body(f"u{i}", make_png(f"u{i}"))).json() for i in range(3)]
    assert [a["status"] for a in answers] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert answers[0]["error"] == "ThrottlingException" and "ThrottlingException" in cause_message(answers[0])
    assert riv.rekognition_calls["DetectFaces"] == 1
    assert riv.rekognition_attempts["DetectFaces"] == 3


def test_transient_error_leaves_the_face_in_the_collection_without_a_row(riv):
    image = make_png("vera")
    riv.inject(1, "TransientError")
    answer = register(riv, body("Vera", image)).json()
    assert answer["error"] == "TransientError"
    assert riv.rekognition_calls["IndexFaces"] == 1
    assert (riv.collection_faces_for("vera"), riv.faces_for("vera")) == (1, 0)
    assert requests.post(riv.url + "/check-userid", json={"UserId": "vera"}, timeout=10).json() == {
        "Reason": "User not Exist"
    }
    # Retrying the mixed-case id now meets its own face: RIV refuses it.
    assert register(riv, body("Vera", image)).json()["error"] == "UserAlreadyExists"
    assert register(riv, body("vera", image)).json()["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        ("Lambda.TooManyRequestsException", {}),
        ("ResourceNotFoundException", {"DetectFaces": 1, "SearchFacesByImage": 1}),
        ("ProvisionedThroughputExceededException", {"DetectFaces": 1}),
    ],
)
def test_service_and_deployment_faults_keep_their_names(riv, error, attempts):
    riv.inject(1, error)
    answer = register(riv, body("walt", make_png("walt"))).json()
    assert (answer["status"], answer["error"]) == ("FAILED", error)
    assert riv.rekognition_attempts == attempts
    assert riv.faces_for("walt") == 0


# -- check-userid -----------------------------------------------------------------------------------


def test_check_userid_finds_only_lower_case_ids(riv):
    register(riv, body("Xena", make_png("xena")))
    answers = {
        uid: requests.post(riv.url + "/check-userid", json={"UserId": uid}, timeout=10).json()["Reason"]
        for uid in ("xena", "Xena", "nobody")
    }
    assert answers == {"xena": "User Exist", "Xena": "User not Exist", "nobody": "User not Exist"}


def test_versions_before_98f4a0d_have_no_check_userid_route():
    with RivStandIn(version="pre-98f4a0d") as riv:
        response = requests.post(riv.url + "/check-userid", json={"UserId": "x"}, timeout=10)
        assert (response.status_code, response.json()) == (403, {"message": "Missing Authentication Token"})


# -- by reference (S3) ------------------------------------------------------------------------------


def test_without_image_head_reads_s3_and_lower_cases_bucket_and_name_at_index(aws_env):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="photos")
        s3.put_object(Bucket="photos", Key="people/yuri.png", Body=make_png("yuri"))
        s3.put_object(Bucket="photos", Key="People/Zoe.png", Body=make_png("zoe"))
        with RivStandIn(version="head", s3_client=s3) as riv:
            ok = register(
                riv, {"UserId": "yuri", "Bucket": "photos", "Name": "people/yuri.png", "Properties": {}}
            ).json()
            capitals = register(
                riv, {"UserId": "zoe", "Bucket": "photos", "Name": "People/Zoe.png", "Properties": {}}
            ).json()
            assert ok["status"] == "SUCCEEDED" and riv.faces_for("yuri") == 1
            assert (capitals["status"], capitals["error"]) == ("FAILED", "InvalidS3ObjectException")
            # detect and search read People/Zoe.png as sent (paid); index read people/zoe.png (absent)
            assert riv.rekognition_calls == {"DetectFaces": 2, "SearchFacesByImage": 2, "IndexFaces": 1}


# -- speed ------------------------------------------------------------------------------------------


def test_latency_is_honoured_for_many_concurrent_calls():
    with RivStandIn(latency=0.6, latency_jitter=0.1, integration_timeout=5.0) as riv:
        images = [make_png(f"c{i}") for i in range(40)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(lambda i: register(riv, body(f"c{i}", images[i])).json(), range(40)))
        elapsed = time.monotonic() - started
        assert all(a["status"] == "SUCCEEDED" for a in answers)
        assert 0.5 <= elapsed < 2.5  # 40 calls of 0.5-0.7 s each, served side by side
        assert riv.max_concurrency >= 30
        assert len(riv.workflow_starts) == 40
        assert min(r.answered_at - r.received_at for r in riv.requests) >= 0.49
