"""The built-in "datasets" plugin: JSONL, CSV/TSV and Parquet, valid and broken."""

from __future__ import annotations

import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingestd.plugins import PluginConfigError
from ingestd.plugins.testing import run_plugins

pytestmark = pytest.mark.unit

BUILTINS = {
    "detect": "ingestd.plugins.builtin.detect",
    "datasets": "ingestd.plugins.builtin.datasets",
}


async def process(data: bytes, filename: str, **config):
    return await run_plugins(data, filename, builtins=BUILTINS, config={"datasets": config})


def jsonl(*rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def validated(outcome) -> dict:
    return outcome.results["datasets"]["validate"]


# JSON Lines -------------------------------------------------------------------


async def test_valid_jsonl_counts_rows_and_collects_keys():
    data = jsonl({"id": 1, "text": "a"}, {"id": 2, "text": "b", "label": "x"}, {"id": 3})
    outcome = await process(data, "train.jsonl")

    assert outcome.accepted, outcome.reason
    assert validated(outcome)["rows"] == 3
    assert outcome.metadata["datasets"] == {
        "format": "jsonl",
        "rows": 3,
        "columns": ["id", "text", "label"],
        "columns_from_rows": 3,
    }


async def test_blank_lines_and_crlf_are_allowed_and_not_rows():
    data = b'{"a": 1}\r\n\r\n   \n{"a": 2}\r\n{"a": 3}'  # no final newline either
    outcome = await process(data, "x.jsonl")
    assert outcome.accepted, outcome.reason
    assert outcome.metadata["datasets"]["rows"] == 3


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b'{"a": 1}\n{"a": 2,}\n{"a": 3}\n', 2, "invalid JSON"),
        (b'{"a": 1}\n\n[1, 2]\n', 3, "expected a JSON object, got an array"),
        (b'{"a": 1}\n"text"\n', 2, "expected a JSON object, got a string"),
        (b'{"a": 1}\n[1, 2\n', 2, "invalid JSON"),
        (b'{"a": 1}\n{"a": 1} {"b": 2}\n', 2, "invalid JSON"),
        # An object spread over two lines is not JSON Lines.
        (b'{"a":\n 1}\n', 1, "invalid JSON"),
        (b'{"a": 1}\n{"a": "\xff"}\n', 2, "invalid UTF-8"),
        # A truncated upload: the last record stops mid-way.
        (b'{"a": 1}\n{"a": 2}\n{"a": ', 3, "invalid JSON"),
    ],
)
async def test_broken_jsonl_names_the_first_bad_line(data, line, message):
    outcome = await process(data, "x.jsonl")

    assert not outcome.accepted
    assert outcome.reason.startswith(f"datasets: line {line}: {message}")
    assert validated(outcome)["line"] == line
    assert "datasets" not in outcome.metadata


@pytest.mark.parametrize("config", [{}, {"sample_rows": 0}, {"schemas": {"*": {}}}])
async def test_numbers_json_allows_are_accepted_in_every_path(config):
    # Beyond float range or int64: valid JSON, whatever a given decoder thinks.
    data = b'{"a": 1e999, "b": 123456789012345678901234567890, "c": -0.0}\n' * 3
    outcome = await process(data, "x.jsonl", **config)
    assert outcome.accepted, outcome.reason
    assert outcome.metadata["datasets"]["rows"] == 3


async def test_line_numbers_stay_right_across_blocks_and_the_fast_path():
    # Tiny blocks split records everywhere; after the first 5 rows the
    # keys-free fast path takes over, and must still find the exact line.
    rows = [{"id": i, "text": "é" * (i % 7)} for i in range(500)]
    data = bytearray(jsonl(*rows))
    lines = data.split(b"\n")
    lines[436] = b'{"id": 436, "text": oops}'
    outcome = await process(bytes(b"\n".join(lines)), "x.jsonl", block_bytes=37, sample_rows=5)

    assert not outcome.accepted
    assert validated(outcome)["line"] == 437


async def test_fast_path_counts_every_row_across_blocks():
    data = jsonl(*({"id": i} for i in range(10_000)))
    outcome = await process(data, "x.jsonl", block_bytes=4096, sample_rows=10)
    assert outcome.accepted
    assert outcome.metadata["datasets"]["rows"] == 10_000
    assert outcome.metadata["datasets"]["columns_from_rows"] == 10


async def test_a_line_longer_than_the_limit_is_rejected_without_reading_it_all():
    data = jsonl({"a": 1}, {"a": 2}, {"text": "x" * 5000}, {"a": 4})
    outcome = await process(data, "x.jsonl", max_line_bytes=1000, block_bytes=256)
    assert not outcome.accepted
    assert "line 3: line longer than max_line_bytes (1000 bytes)" in outcome.reason


SCHEMA = {
    "type": "object",
    "required": ["text", "label"],
    "properties": {"text": {"type": "string"}, "label": {"enum": ["pos", "neg"]}},
}


async def test_json_schema_for_matching_files_rejects_the_first_failing_record():
    data = jsonl(
        {"text": "good", "label": "pos"},
        {"text": "fine", "label": "neg"},
        {"text": "bad", "label": "maybe"},
        {"label": "pos"},
    )
    outcome = await process(data, "train-001.jsonl", schemas={"train-*.jsonl": SCHEMA})

    assert not outcome.accepted
    assert outcome.reason.startswith("datasets: line 3: does not match the schema: ")
    assert "data.label must be one of" in outcome.reason
    assert validated(outcome)["schema"] == "train-*.jsonl"
    assert validated(outcome)["line"] == 3


async def test_json_schema_applies_only_to_matching_names():
    data = jsonl({"anything": True})
    schemas = {"train-*.jsonl": SCHEMA}
    outcome = await process(data, "eval.jsonl", schemas=schemas)
    assert outcome.accepted
    outcome = await process(data, "train-2.jsonl", schemas=schemas)
    assert not outcome.accepted
    assert "line 1: does not match the schema: data must contain" in outcome.reason


async def test_records_matching_the_schema_are_accepted():
    data = jsonl(*({"text": str(i), "label": "pos"} for i in range(100)))
    outcome = await process(data, "train-1.jsonl", schemas={"train-*": SCHEMA})
    assert outcome.accepted, outcome.reason
    assert validated(outcome)["schema"] == "train-*"


@pytest.mark.parametrize("schema", [{"type": "no-such-type"}, {"properties": 3}, {"pattern": "("}])
async def test_an_invalid_schema_stops_at_start_naming_the_pattern(schema):
    with pytest.raises(PluginConfigError, match=r"plugins\.datasets.*schemas\['\*\.jsonl'\]"):
        await process(b"{}\n", "x.jsonl", schemas={"*.jsonl": schema})


async def test_unknown_config_keys_are_refused():
    with pytest.raises(PluginConfigError, match="max_line_byte"):
        await process(b"{}\n", "x.jsonl", max_line_byte=10)


# CSV / TSV --------------------------------------------------------------------


async def test_valid_csv_with_header_and_quoted_fields():
    data = b'id,text,score\r\n1,"hello, world",0.5\r\n2,"two\nlines",0.25\r\n3,"say ""hi""",1.0\r\n'
    outcome = await process(data, "scores.csv")

    assert outcome.accepted, outcome.reason
    assert outcome.metadata["datasets"] == {
        "format": "csv",
        "rows": 3,
        "column_count": 3,
        "header": True,
        "delimiter": ",",
        "columns": ["id", "text", "score"],
    }


async def test_tsv_and_semicolon_dialects_are_sniffed():
    tsv = await process(b"a\tb\n1\t2\n3\t4\n", "t.tsv")
    assert tsv.accepted and tsv.metadata["datasets"]["delimiter"] == "\t"
    semi = await process(b"name;age\nann;31\nbob;42\n", "people.csv")
    assert semi.accepted, semi.reason
    assert semi.metadata["datasets"]["columns"] == ["name", "age"]
    assert semi.metadata["datasets"]["rows"] == 2


async def test_inconsistent_column_count_names_the_row():
    data = b"a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n"
    outcome = await process(data, "t.csv")

    assert not outcome.accepted
    assert outcome.reason == "datasets: line 4 has 2 fields, expected 3"
    assert validated(outcome)["line"] == 4
    assert validated(outcome)["row"] == 4


async def test_header_can_be_declared_instead_of_sniffed():
    # All-text columns defeat the header sniffer; the config settles it.
    data = b"city,country\nParis,France\nLima,Peru\n"
    outcome = await process(data, "t.csv", csv_header=True)
    assert outcome.metadata["datasets"]["columns"] == ["city", "country"]
    assert outcome.metadata["datasets"]["rows"] == 2


async def test_csv_fields_larger_than_the_csv_module_default_are_fine():
    data = b'id,text\n1,"' + b"x" * 300_000 + b'"\n2,short\n'
    outcome = await process(data, "big.csv")
    assert outcome.accepted, outcome.reason
    assert outcome.metadata["datasets"]["rows"] == 2


async def test_csv_with_invalid_utf8_is_rejected():
    outcome = await process(b"a,b\n1,2\n3,\xff\xfe\n", "t.csv")
    assert not outcome.accepted
    assert "invalid UTF-8" in outcome.reason


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        # Truncated inside a quoted field: without strict parsing the rest of
        # the file would become one field and the row count would still match.
        (b'a,b\n1,2\n3,"four\n5,6\n', 4, "unexpected end of data"),
        (b'a,b\n1,"2"x\n', 2, "',' expected after '\"'"),
    ],
)
async def test_malformed_csv_quoting_is_rejected_with_its_line(data, line, message):
    outcome = await process(data, "t.csv")
    assert not outcome.accepted
    assert outcome.reason == f"datasets: line {line}: {message}"


# Parquet ----------------------------------------------------------------------


def parquet_bytes(rows: int = 1000, row_group_size: int = 400) -> bytes:
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "text": [f"row {i}" for i in range(rows)],
            "score": [i / rows for i in range(rows)],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


async def test_valid_parquet_reports_schema_rows_and_row_groups():
    outcome = await process(parquet_bytes(), "rows.parquet")

    assert outcome.accepted, outcome.reason
    described = outcome.metadata["datasets"]
    assert described["rows"] == 1000
    assert described["row_groups"] == 3
    assert described["columns"] == ["id", "text", "score"]
    assert described["types"] == {"id": "int64", "text": "string", "score": "double"}
    assert described["created_by"].startswith("parquet-cpp-arrow")


async def test_truncated_parquet_is_rejected_with_pyarrows_message():
    data = parquet_bytes()
    outcome = await process(data[: len(data) - 100], "rows.parquet")

    assert not outcome.accepted
    assert outcome.reason.startswith("datasets: invalid Parquet: ")
    assert "magic bytes not found" in outcome.reason.lower()


async def test_parquet_with_a_corrupt_footer_is_rejected():
    data = bytearray(parquet_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    footer_start = len(data) - 8 - footer_len
    data[footer_start : footer_start + 40] = b"\xff" * 40
    outcome = await process(bytes(data), "rows.parquet")
    assert not outcome.accepted
    assert outcome.reason.startswith("datasets: invalid Parquet: ")


async def test_without_pyarrow_parquet_is_accepted_and_marked_skipped(monkeypatch):
    # None in sys.modules makes `import pyarrow` raise ImportError.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    outcome = await process(b"PAR1 not really PAR1", "rows.parquet")

    assert outcome.accepted
    assert validated(outcome)["skipped"] == "pyarrow not installed"
    assert "datasets" not in outcome.metadata


# Other files ------------------------------------------------------------------


async def test_other_formats_are_left_alone():
    outcome = await process(b"\x00\x01binary", "blob.bin")
    assert outcome.accepted
    assert "datasets" not in outcome.results
