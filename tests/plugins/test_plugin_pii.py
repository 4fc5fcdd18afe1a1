"""The built-in "pii" plugin: what it finds, what it must not, and that it never
reveals the values."""

from __future__ import annotations

import io
import json
import random

import pytest
from ingestd.plugins import PluginConfigError
from ingestd.plugins.builtin import pii
from ingestd.plugins.testing import run_plugins

pytestmark = pytest.mark.unit

BUILTINS = {"detect": "ingestd.plugins.builtin.detect", "pii": "ingestd.plugins.builtin.pii"}
NO_FINDINGS = dict.fromkeys(pii.KINDS, 0)


async def run(data: bytes, filename: str = "data.jsonl", **config):
    return await run_plugins(data, filename, builtins=BUILTINS, config={"pii": config})


def jsonl(*texts: str) -> bytes:
    return b"".join(json.dumps({"text": text}).encode() + b"\n" for text in texts)


def counts(data: bytes, **options) -> dict[str, int]:
    return pii.scan(io.BytesIO(data), **options).counts


# kind -> (text with findings, how many, text with look-alikes that are not)
CASES = {
    "email": (
        "mail alice@example.com or bob.smith+ml@mail.example.co.uk today",
        2,
        "see @alice, user@localhost, icon@2x.png, a@b.c, name@@example.com",
    ),
    "phone": (
        "call +1 (415) 555-2671, (212) 555-0199, 1-800-555-0199, 020 7946 0958, +44 20 7946 0958",
        5,
        "ids 4155552671 and 1700000000, date 2024-05-01 10:30, +123, v1.2.3, (012) 345-6789",
    ),
    "credit_card": (
        "pay with 4111 1111 1111 1111 or 5555-5555-5555-4444 or 378282246310005",
        3,
        "not 4111 1111 1111 1112, 1700000000000 ms, 1234 5678 9012 3456, 4111-1111 1111-1111",
    ),
    "iban": (
        "to GB82 WEST 1234 5698 7654 32 or DE89370400440532013000 now",
        2,
        "not GB82 WEST 1234 5698 7654 33, XX82WEST12345698765432, DE8937040044053201300",
    ),
    "ssn": (
        "ssn 078-05-1120 and 123-45-6789",
        2,
        "not 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000 123456789 12-345-6789",
    ),
    "ipv4": (
        "hosts 192.168.1.20 and 10.0.0.1.",
        2,
        "not 999.1.1.1, 1.2.3, 192.168.001.1, 1.2.3.4.5, v10.0.0.1",
    ),
    "ipv6": (
        "hosts fe80::1, 2001:db8:85a3::8a2e:370:7334 and ::1.",
        3,
        "not std::vector, Foo::bar, 12:34:56, 00:1A:2B:3C:4D:5E, dead::beef, ::",
    ),
}


@pytest.mark.parametrize("kind", pii.KINDS)
async def test_each_kind_is_found_and_counted(kind):
    text, expected, _ = CASES[kind]

    outcome = await run(jsonl(text))

    assert outcome.accepted
    assert outcome.results["pii"]["scan"]["found"] == {**NO_FINDINGS, kind: expected}


@pytest.mark.parametrize("kind", pii.KINDS)
def test_look_alikes_are_not_counted(kind):
    _, _, look_alikes = CASES[kind]

    assert counts(jsonl(look_alikes)) == NO_FINDINGS


def test_luhn():
    assert pii.luhn_valid(b"4111111111111111")
    assert pii.luhn_valid(b"378282246310005")
    assert not pii.luhn_valid(b"4111111111111112")


def test_iban_check():
    assert pii.iban_valid(b"GB82WEST12345698765432")
    assert pii.iban_valid(b"NO9386011117947")
    assert not pii.iban_valid(b"GB82WEST12345698765433")  # check digits wrong
    assert not pii.iban_valid(b"GB82WEST1234569876543")  # too short for GB


def test_numbers_in_a_run_of_numbers_are_not_cards_or_phones():
    # Token ids, years, a table: a 4-4-4-4 or 3-3-4 window is a coincidence.
    tokens = " ".join(["101", "2019", "4111", "1111", "1111", "1111", "415", "555", "2671", "7"])

    assert counts(jsonl(tokens)) == NO_FINDINGS


def test_numbers_after_times_and_versions_are_still_found():
    text = "at 10:30 4111 1111 1111 1111 and v3.14 415-555-2671, mc 2221 0000 0000 0009"

    assert counts(jsonl(text)) == {**NO_FINDINGS, "credit_card": 2, "phone": 1}


def test_values_after_json_escapes_are_found():
    data = jsonl("card:\n4111 1111 1111 1111\nmail:\njohn@example.com\n\t+1 415 555 2671")

    assert b"\\n4111" in data  # escaped in the JSON text, not a real newline
    assert counts(data) == {**NO_FINDINGS, "credit_card": 1, "email": 1, "phone": 1}


def test_samples_give_byte_offsets_and_line_numbers():
    lines = [b'{"a": 1}\n', b'{"b": "x alice@example.com"}\n', b'{"c": "4111111111111111 y"}\n']
    data = b"".join(lines)

    found = pii.scan(io.BytesIO(data))

    assert found.samples == {
        "email": [{"offset": data.index(b"alice"), "line": 2}],
        "credit_card": [{"offset": data.index(b"4111"), "line": 3}],
    }


SECRETS = [
    "alice.secret@example.com",
    "+1 415 555 2671",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "078-05-1120",
    "192.168.77.31",
    "2001:db8:85a3::8a2e:370:7334",
]


@pytest.mark.parametrize("policy", ["report", "reject"])
async def test_values_never_appear_in_the_outcome(policy, caplog):
    data = jsonl(*(f"record {i}: {secret}" for i, secret in enumerate(SECRETS)))
    caplog.set_level("DEBUG")

    outcome = await run(data, policy=policy)

    assert outcome.results["pii"]["scan"]["found"] == dict.fromkeys(pii.KINDS, 1)
    shown = repr(outcome) + caplog.text
    for secret in SECRETS:
        assert secret not in shown
        assert secret.replace(" ", "") not in shown


async def test_report_policy_accepts_with_counts_and_samples():
    data = jsonl("a alice@example.com", "b bob@example.com", "card 4111 1111 1111 1111")

    outcome = await run(data)

    assert outcome.accepted
    scan = outcome.results["pii"]["scan"]
    assert scan["ok"] is True
    assert scan["found"] == {**NO_FINDINGS, "email": 2, "credit_card": 1}
    assert [s["line"] for s in scan["samples"]["email"]] == [1, 2]
    assert scan["scanned_bytes"] == len(data)
    assert "truncated" not in scan


async def test_reject_policy_rejects_naming_the_counts():
    data = jsonl("a alice@example.com", "b bob@example.com", "card 4111 1111 1111 1111")

    outcome = await run(data, policy="reject")

    assert not outcome.accepted
    assert outcome.reason == "pii: PII found: 2 emails, 1 credit card"
    assert outcome.results["pii"]["scan"]["found"]["email"] == 2


async def test_reject_policy_accepts_a_clean_file():
    outcome = await run(jsonl("nothing personal here", "order 12 of 2024-05-01"), policy="reject")

    assert outcome.accepted, outcome.reason
    assert outcome.results["pii"]["scan"]["found"] == NO_FINDINGS


async def test_kinds_limits_what_is_looked_for():
    data = jsonl("alice@example.com, 4111 1111 1111 1111, 192.168.1.20")

    outcome = await run(data, kinds=["credit_card", "ipv4"])

    assert outcome.results["pii"]["scan"]["found"] == {"credit_card": 1, "ipv4": 1}


async def test_max_samples_caps_samples_not_counts():
    data = jsonl(*(f"user{i}@example.com" for i in range(10)))

    outcome = await run(data, max_samples=2)

    scan = outcome.results["pii"]["scan"]
    assert scan["found"]["email"] == 10
    assert len(scan["samples"]["email"]) == 2


async def test_max_bytes_scans_only_the_start():
    first = jsonl("early alice@example.com")
    data = first + jsonl("padding " * 20) + jsonl("late bob@example.com")

    outcome = await run(data, max_bytes=len(first))

    scan = outcome.results["pii"]["scan"]
    assert scan["found"]["email"] == 1
    assert scan["scanned_bytes"] == len(first)
    assert scan["truncated"] is True


@pytest.mark.parametrize("filename", ["notes.txt", "table.csv", "train.jsonl"])
async def test_text_formats_are_scanned(filename):
    data = b"id,email\n1,alice@example.com\n2,bob@example.com\n"

    outcome = await run(data, filename)

    assert outcome.results["pii"]["scan"]["found"]["email"] == 2


async def test_binary_formats_are_skipped():
    # A Parquet magic number: the detector says "parquet", and pii stays silent.
    data = b"PAR1" + b"alice@example.com 4111 1111 1111 1111" + b"PAR1"

    outcome = await run(data, "data.parquet")

    assert outcome.detection is not None and outcome.detection.format == "parquet"
    assert "pii" not in outcome.results


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kinds": ["passport"]}, "kinds"),
        ({"policy": "block"}, "policy"),
        ({"max_samples": -1}, "max_samples"),
        ({"max_byte": 10}, "max_byte"),
    ],
)
async def test_invalid_config_stops_start_up(table, message):
    with pytest.raises(PluginConfigError, match=message):
        await run(b"", **table)


# --- Block boundaries ---------------------------------------------------------

SMALL_BLOCK = pii.OVERLAP + 100


@pytest.mark.parametrize("secret", ["alice.secret@example.com", "4111 1111 1111 1111"])
def test_match_split_across_a_block_boundary_is_found_once(secret):
    found_at = []
    # Every split of the value, and the bytes around it, across the boundary.
    for cut in range(-3, len(secret) + 3):
        padding = b"x " * ((SMALL_BLOCK - cut) // 2) + b" " * ((SMALL_BLOCK - cut) % 2)
        data = padding + secret.encode() + b" end\n"
        assert len(padding) + cut == SMALL_BLOCK

        result = pii.scan(io.BytesIO(data), block_size=SMALL_BLOCK)

        assert sum(result.counts.values()) == 1, cut
        found_at.append(next(iter(result.samples.values()))[0]["offset"])
    assert set(found_at) == {SMALL_BLOCK - cut for cut in range(-3, len(secret) + 3)}


def test_results_do_not_depend_on_the_block_size():
    rng = random.Random(7)
    # Two numbers with only a space between may be one: keep them apart. And
    # no bare numbers: a card or phone number right after one is not counted.
    pieces = [f"{value}," for value in SECRETS for _ in range(30)]
    filler = ["lorem", "ipsum", "2024-05-01T10:30", "v3.14", "id:7x", "\n", '"', ",", "(", "+"]
    words = pieces + [rng.choice(filler) for _ in range(6000)]
    rng.shuffle(words)
    data = " ".join(words).encode()

    whole = pii.scan(io.BytesIO(data), max_samples=1000, block_size=len(data) + 1)

    assert whole.counts == dict.fromkeys(pii.KINDS, 30)
    for block_size in (SMALL_BLOCK, 1500, 4096, 10_000):
        split = pii.scan(io.BytesIO(data), max_samples=1000, block_size=block_size)
        assert split.counts == whole.counts, block_size
        assert split.samples == whole.samples, block_size


class TrickleStream(io.BytesIO):
    """Returns at most 100 bytes per read, like a socket or a pipe."""

    def read(self, size=-1):
        return super().read(100 if size < 0 else min(size, 100))


def test_short_reads_are_not_taken_for_the_end():
    data = b"x " * 5000 + b"alice@example.com\n"

    assert pii.scan(TrickleStream(data), block_size=SMALL_BLOCK).counts["email"] == 1
