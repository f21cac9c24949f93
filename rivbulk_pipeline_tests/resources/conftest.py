"""moto's server over HTTP, emptied for each test, and faulty front servers before it."""

from __future__ import annotations

import http.client
from typing import Callable, Iterator

import pytest
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import S3ObjectStore
from rivbulk_pipeline_tests.support.faulty_front import FaultyFront, Plan

BUCKET = "images"  # the bucket `direct` creates


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[tuple[str, int]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()
    server.stop()


@pytest.fixture
def moto_server(aws_env: None, moto_endpoint: tuple[str, int]) -> str:
    """The moto server's URL, its state emptied for this test."""
    reset = http.client.HTTPConnection(*moto_endpoint, timeout=30)
    reset.request("POST", "/moto-api/reset")
    assert reset.getresponse().status == 200
    reset.close()
    return "http://%s:%d" % moto_endpoint


@pytest.fixture
def direct(moto_server: str) -> S3ObjectStore:
    """A store talking straight to the moto server, to set objects up."""
    store = S3ObjectStore(aws=AwsClients(region_name="us-east-1", endpoint_url=moto_server))
    store.create_bucket(BUCKET)
    return store


@pytest.fixture
def front(moto_server: str) -> Iterator[Callable[[Plan], FaultyFront]]:
    started: list[FaultyFront] = []

    def start(plan: Plan) -> FaultyFront:
        host, port = moto_server.removeprefix("http://").split(":")
        started.append(FaultyFront((host, int(port)), plan))
        return started[-1]

    yield start
    for server in started:
        server.stop()
