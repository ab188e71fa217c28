"""Our openpi protocol client against a local server speaking the protocol (no VLA runs here)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from pld_ros.core.observation import Observation
from pld_ros.policies.base_policy import PolicyOutputError, make_base_policy
from pld_ros.policies.openpi_client import (
    OpenpiClient,
    OpenpiConnectionError,
    OpenpiPolicy,
    OpenpiProtocolError,
    OpenpiServerError,
    pack,
    unpack,
)
from pld_ros.profile import BasePolicy as BasePolicyConfig
from pld_ros.profile import OpenpiKeys
from tests.openpi_server import OpenpiTestServer, ramp_chunk


@pytest.fixture
def openpi_server() -> Iterator[OpenpiTestServer]:
    """A running server answering 10-row ramp chunks at once; stopped after the test."""
    server = OpenpiTestServer().start()
    try:
        yield server
    finally:
        server.stop()


def config(uri: str, **changes: object) -> BasePolicyConfig:
    fields: dict[str, object] = {
        "backend": "openpi",
        "uri": uri,
        "prompt": "pick the cube",
        "chunk_horizon": 10,
    }
    fields.update(changes)
    return BasePolicyConfig.model_validate(fields)


def observation() -> Observation:
    return Observation(
        views={"wrist": np.full((4, 5, 3), 7, np.uint8), "side": np.full((4, 5, 3), 9, np.uint8)},
        proprio=np.arange(8, dtype=np.float32),
        prompt="pick the cube",
        stamp=3.0,
    )


def test_numpy_values_are_encoded_as_openpis_msgpack_numpy_maps() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(pack({"a": array, "s": np.int64(5), "t": "text"}), raw=False)
    assert raw["a"] == {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 5, b"dtype": "<i8"} and raw["t"] == "text"
    # A message as openpi's own packer writes it (binary keys, shape as a tuple) decodes to numpy.
    theirs = msgpack.packb(
        {"actions": {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": "<f4", b"shape": (2, 3)}},
        use_bin_type=True,
    )
    decoded = unpack(theirs)["actions"]
    assert decoded.dtype == np.float32 and decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)


def test_object_arrays_are_refused_both_ways() -> None:
    with pytest.raises(TypeError, match="dtype object"):
        pack({"a": np.array([object()], dtype=object)})
    hostile = msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]})
    with pytest.raises(OpenpiProtocolError, match="not allowed"):
        unpack(hostile)


def test_the_observation_is_sent_under_the_profiles_keys_and_the_chunk_comes_back(
    openpi_server: OpenpiTestServer,
) -> None:
    keys = OpenpiKeys(images={"wrist": "observation/wrist_image_left"}, state="observation/cartesian")
    policy = make_base_policy(config(openpi_server.uri, openpi=keys))
    actions = policy.infer(observation())
    assert actions.shape == (10, 7) and actions.dtype == np.float32 and actions[0, 1] == 1.0
    (request,) = openpi_server.requests
    assert set(request) == {
        "observation/wrist_image_left",
        "observation/side_image",
        "observation/cartesian",
        "prompt",
    }
    np.testing.assert_array_equal(request["observation/side_image"], np.full((4, 5, 3), 9, np.uint8))
    assert request["observation/cartesian"].dtype == np.float32 and request["prompt"] == "pick the cube"
    assert policy.connected and policy.name == f"openpi:{openpi_server.uri}"


def test_the_servers_metadata_is_read_on_connect(openpi_server: OpenpiTestServer) -> None:
    client = OpenpiClient(openpi_server.uri)
    assert not client.connected
    client.infer({"x": np.zeros(1)})
    assert client.metadata == {"policy": "test_ramp"} and client.connections == 1


def test_a_dropped_connection_raises_once_and_the_next_call_reconnects() -> None:
    server = OpenpiTestServer(drop_after=2).start()
    try:
        policy = OpenpiPolicy(config(server.uri))
        policy.infer(observation())
        policy.infer(observation())
        with pytest.raises(OpenpiConnectionError, match="lost the connection"):
            policy.infer(observation())
        assert not policy.connected
        assert policy.infer(observation())[0, 1] == 4.0  # request 3 was never answered
        assert server.connections == 2
    finally:
        server.stop()


def test_a_server_error_reply_is_raised_with_its_text() -> None:
    server = OpenpiTestServer(fail_after=0).start()
    try:
        client = OpenpiClient(server.uri)
        with pytest.raises(OpenpiServerError, match="RuntimeError: test failure"):
            client.infer({"x": 1})
        assert client.infer({"x": 1})["actions"].shape == (10, 7)
    finally:
        server.stop()


def test_a_missing_actions_key_is_a_clear_error() -> None:
    server = OpenpiTestServer().start()
    try:
        keys = OpenpiKeys(actions="action_chunk")
        with pytest.raises(PolicyOutputError, match=r"no 'action_chunk'.*'actions'"):
            OpenpiPolicy(config(server.uri, openpi=keys)).infer(observation())
    finally:
        server.stop()


def test_a_stopped_server_is_retried_with_backoff_and_found_again_on_the_same_port() -> None:
    server = OpenpiTestServer(chunks=ramp_chunk(10)).start()
    client = OpenpiClient(server.uri, backoff_initial=0.2, backoff_max=0.4)
    try:
        client.infer({"x": 1})
        server.stop()
        with pytest.raises(OpenpiConnectionError, match="lost the connection"):
            client.infer({"x": 1})
        with pytest.raises(OpenpiConnectionError, match="cannot connect"):
            client.infer({"x": 1})
        # Within the backoff the call fails at once, without touching the network.
        start = time.monotonic()
        with pytest.raises(OpenpiConnectionError, match="next attempt in"):
            client.infer({"x": 1})
        assert time.monotonic() - start < 0.05
        server.start()
        deadline = time.monotonic() + 3.0
        while True:
            try:
                assert client.infer({"x": 1})["actions"].shape == (10, 7)
                break
            except OpenpiConnectionError:
                assert time.monotonic() < deadline, "did not reconnect"
                time.sleep(0.05)
        assert client.connections == 2
    finally:
        server.stop()


def test_a_bad_uri_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="ws://"):
        OpenpiClient("http://gpu-box:8000")
