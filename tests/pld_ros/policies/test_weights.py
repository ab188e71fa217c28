from __future__ import annotations

import functools
import hashlib
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pld_ros.policies.weights import Versioned, WeightsError, WeightsSlot, fetch, load_verified

REFERENCE = {"layer.weight": torch.zeros(4, 3), "layer.bias": torch.zeros(4)}


def write(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[str, int]:
    save_file(tensors, str(path), metadata=metadata)
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def announce(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def test_a_good_file_loads_with_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"layer.weight": torch.ones(4, 3), "layer.bias": torch.arange(4.0)}
    sha, size = write(path, tensors, {"version": "2", "updates": "10"})
    weights = load_verified(path, sha, size, REFERENCE)
    assert weights.metadata == {"version": "2", "updates": "10"}
    assert torch.equal(weights.tensors["layer.bias"], torch.arange(4.0))
    assert weights.sha256 == sha


def test_checksum_mismatch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    _, size = write(path, dict(REFERENCE))
    with pytest.raises(WeightsError, match="sha256"):
        load_verified(path, "0" * 64, size)


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sha, size = write(path, dict(REFERENCE))
    path.write_bytes(path.read_bytes()[: size - 10])
    with pytest.raises(WeightsError, match="truncated"):
        load_verified(path, sha, size)
    # Announced as it is now (a trainer that wrote half a file): the format check catches it.
    with pytest.raises(WeightsError, match="safetensors"):
        load_verified(path, *announce(path))


def test_pickles_and_other_formats_are_rejected(tmp_path: Path) -> None:
    pickled = tmp_path / "w.pkl"
    pickled.write_bytes(pickle.dumps(REFERENCE))
    with pytest.raises(WeightsError, match="pickle"):
        load_verified(pickled, *announce(pickled))
    zipped = tmp_path / "w.pt"
    torch.save(REFERENCE, zipped)
    with pytest.raises(WeightsError, match="zip"):
        load_verified(zipped, *announce(zipped))
    text = tmp_path / "w.txt"
    text.write_bytes(b"hello, these are not weights")
    with pytest.raises(WeightsError, match="not safetensors"):
        load_verified(text, *announce(text))


def test_tensors_must_match_the_model(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    with pytest.raises(WeightsError, match=r"missing layer\.bias"):
        load_verified(path, *write(path, {"layer.weight": torch.zeros(4, 3)}), REFERENCE)
    with pytest.raises(WeightsError, match=r"'layer\.weight' is \(4, 2\)"):
        load_verified(
            path, *write(path, {"layer.weight": torch.zeros(4, 2), "layer.bias": torch.zeros(4)}), REFERENCE
        )
    with pytest.raises(WeightsError, match="float16"):
        load_verified(
            path,
            *write(path, {"layer.weight": torch.zeros(4, 3).half(), "layer.bias": torch.zeros(4)}),
            REFERENCE,
        )


def test_missing_file_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="cannot read"):
        load_verified(tmp_path / "none.safetensors", "0" * 64, 1)


def test_file_uri_resolves_and_unknown_schemes_are_rejected(tmp_path: Path) -> None:
    assert fetch(f"file://{tmp_path}/a%20b.safetensors", tmp_path, 1.0) == tmp_path / "a b.safetensors"
    with pytest.raises(WeightsError, match="scheme"):
        fetch("ftp://host/w.safetensors", tmp_path, 1.0)


def test_http_uri_is_downloaded_and_verified(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    sha, size = write(served / "w.safetensors", dict(REFERENCE))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = fetch(
            f"http://127.0.0.1:{server.server_address[1]}/w.safetensors", tmp_path / "downloads", 5.0
        )
    finally:
        server.shutdown()
        server.server_close()
    assert path.parent == tmp_path / "downloads"
    assert load_verified(path, sha, size, REFERENCE).sha256 == sha


def test_a_dead_http_server_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="download failed"):
        fetch("http://127.0.0.1:9/w.safetensors", tmp_path / "downloads", 1.0)


def test_slot_swaps_only_when_acquired_and_versions_must_increase() -> None:
    slot = WeightsSlot(Versioned(0, "zero"))
    slot.offer(Versioned(2, "two"))
    assert slot.newest_version == 2
    with pytest.raises(WeightsError, match="not newer"):
        slot.offer(Versioned(2, "again"))
    with pytest.raises(WeightsError, match="not newer"):
        slot.check_version(1)
    assert slot.acquire() == Versioned(2, "two")
    assert slot.acquire() == Versioned(2, "two")
    slot.offer(Versioned(3, "three"))
    slot.offer(Versioned(5, "five"))  # the tick never saw 3: the newest wins
    assert slot.acquire().value == "five"


def test_a_rejected_file_leaves_the_old_weights(tmp_path: Path) -> None:
    slot = WeightsSlot(Versioned(1, "good"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(WeightsError):
        slot.offer(Versioned(2, load_verified(bad, *announce(bad)).sha256))
    assert slot.acquire() == Versioned(1, "good")


def test_concurrent_offers_and_acquires_see_increasing_versions() -> None:
    slot = WeightsSlot(Versioned(0, 0))

    def offer() -> None:
        for version in range(1, 2000):
            slot.offer(Versioned(version, version))

    thread = threading.Thread(target=offer)
    thread.start()
    seen = [slot.acquire().version for _ in range(5000)]
    thread.join()
    assert seen == sorted(seen)
    assert slot.acquire().version == 1999
