"""The built-in "metadata" plugin, run in-process through `run_plugins`."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

import blake3
import pytest
from ingestd.plugins import Detection, hookimpl
from ingestd.plugins.builtin import metadata
from ingestd.plugins.testing import run_plugins

pytestmark = pytest.mark.unit

DATA = b'{"prompt": "hi", "completion": "hello"}\n'
OWN_ID = "f" * 32  # the id `run_plugins` gives the file under test
PARENT_A = "a" * 32
PARENT_B = "b" * 32


class JsonlDetector:
    """Stands in for the detect built-in, so these tests depend on this plugin only."""

    @hookimpl
    def ingestd_detect(self, ctx):
        return Detection("dataset", "jsonl", "application/jsonl")


async def run(metadata_declared=None, existing_files=None, detect=True):
    plugins = {"metadata": metadata}
    if detect:
        plugins["detector"] = JsonlDetector()
    return await run_plugins(
        DATA,
        "train.jsonl",
        builtins={},
        plugins=plugins,
        metadata=metadata_declared,
        existing_files=existing_files,
    )


async def test_describe_records_facts_format_and_declared_metadata():
    before = time.time()
    outcome = await run({"project": "chat", "license": "cc-by-4.0", "parents": [PARENT_A]})

    assert outcome.accepted, outcome.reason
    described = outcome.metadata["metadata"]
    assert described["file_id"] == OWN_ID
    assert described["filename"] == "train.jsonl"
    assert described["size"] == len(DATA)
    assert described["checksums"] == {
        "blake3": blake3.blake3(DATA).hexdigest(),
        "sha256": hashlib.sha256(DATA).hexdigest(),
    }
    assert described["format"] == {
        "kind": "dataset",
        "format": "jsonl",
        "mime_type": "application/jsonl",
    }
    assert described["tenant"] == "default"
    uploaded = datetime.fromisoformat(described["uploaded_at"])
    assert described["uploaded_at"].endswith("Z")
    assert before - 1 <= uploaded.timestamp() <= time.time()
    # Reserved keys steer lineage; they are not repeated as declared metadata.
    assert described["declared"] == {"project": "chat", "license": "cc-by-4.0"}
    # What describe said is also what the job's results hold.
    assert outcome.results["metadata"]["describe"] == described


async def test_describe_without_detection_or_metadata():
    outcome = await run(detect=False)

    described = outcome.metadata["metadata"]
    assert described["format"] is None
    assert described["declared"] == {}
    assert described["lineage"] == {"declared": [], "same_content_as": [], "invalid": []}
    assert outcome.parents == ()
    # No parents: lineage says nothing rather than an empty list.
    assert "lineage" not in outcome.results.get("metadata", {})


async def test_declared_parents_become_lineage():
    outcome = await run({"parents": [PARENT_A, PARENT_B, PARENT_A]})

    assert outcome.parents == (PARENT_A, PARENT_B)
    assert outcome.metadata["metadata"]["lineage"] == {
        "declared": [PARENT_A, PARENT_B],
        "same_content_as": [],
        "invalid": [],
    }


async def test_invalid_declared_parents_are_recorded_not_linked():
    outcome = await run({"parents": [PARENT_A, 42, "", "../etc/passwd", OWN_ID, "x" * 500]})

    assert outcome.accepted, "a bad parents entry is the client's note, not a reason to reject"
    assert outcome.parents == (PARENT_A,)
    invalid = outcome.metadata["metadata"]["lineage"]["invalid"]
    assert [entry["error"] for entry in invalid] == [
        "not a string",
        "not a file id",
        "not a file id",
        "a file cannot be its own parent",
        "not a file id",
    ]
    assert invalid[0]["value"] == "42"
    # Echoed client input is truncated.
    assert len(invalid[-1]["value"]) < 100


async def test_parents_that_is_not_a_list_is_recorded():
    outcome = await run({"parents": PARENT_A})

    assert outcome.parents == ()
    assert outcome.metadata["metadata"]["lineage"]["invalid"] == [
        {"value": PARENT_A, "error": "parents must be a list of file ids"}
    ]


async def test_reupload_links_files_with_the_same_content():
    same = blake3.blake3(DATA).hexdigest()
    other = blake3.blake3(b"other").hexdigest()
    existing = {"e" * 32: same, "d" * 32: other, OWN_ID: same, "c" * 32: same}

    outcome = await run({"parents": [PARENT_A, "c" * 32]}, existing_files=existing)

    # Declared first, then same-content links; the file itself and files
    # with other content are never linked, and duplicates collapse.
    assert outcome.parents == (PARENT_A, "c" * 32, "e" * 32)
    assert outcome.metadata["metadata"]["lineage"] == {
        "declared": [PARENT_A, "c" * 32],
        "same_content_as": ["e" * 32, "c" * 32],
        "invalid": [],
    }
    assert outcome.results["metadata"]["lineage"] == {"value": list(outcome.parents)}
