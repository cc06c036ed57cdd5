"""The wire contract from another language: every golden MessagePack vector pinned by the
`messages` crate decodes, with Python's msgpack, to the same named fields and values as its
JSON twin. A renamed field, a changed type or an array instead of a map fails here."""

import json
import pathlib

import msgpack
import pytest

TESTDATA = pathlib.Path(__file__).resolve().parents[2] / "messages" / "testdata"
VECTORS = sorted(p.stem for p in TESTDATA.glob("*.msgpack"))


def test_there_are_vectors_for_every_message_type():
    assert set(VECTORS) >= {
        "sensor_reading",
        "work_result",
        "replay_request",
        "replay_unavailable",
        "sensor_status",
        "dead_letter",
        "epoch_complete",
    }


@pytest.mark.parametrize("name", VECTORS)
def test_vector_decodes_to_its_json_twin(name):
    raw = (TESTDATA / f"{name}.msgpack").read_bytes()
    expected = json.loads((TESTDATA / f"{name}.json").read_text())
    decoded = msgpack.unpackb(raw, raw=False)
    assert isinstance(decoded, dict), "messages are maps with named fields"
    if isinstance(decoded.get("original"), bytes):
        decoded["original"] = list(decoded["original"])
    assert decoded == expected
    assert decoded["schema"] >= 1
