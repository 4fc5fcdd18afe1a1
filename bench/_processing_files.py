"""bench/processing.py's JSONL file: deterministic chat-style records with sparse
PII (an e-mail address about every EMAIL_EVERY lines, a phone number about every
PHONE_EVERY), and the counts of what was written."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from _common import MIB

JSONL_SEED = 20240604
EMAIL_EVERY = 10_000  # lines, on average
PHONE_EVERY = 50_000


FIRST_NAMES = ["maria", "james", "wei", "fatima", "olga", "kenji", "amara", "lucas", "priya"]
LAST_NAMES = ["garcia", "smith", "chen", "haddad", "petrova", "tanaka", "okafor", "silva"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example"]
SOURCES = ["forum", "support", "wiki", "qa", "chat", "docs"]
TAGS = ["science", "code", "math", "history", "cooking", "travel", "health", "law", "music"]
NON_ASCII = ["café", "naïve", "über", "déjà", "façade", "smörgåsbord", "東京", "données", "niño"]


def _sentences(rng: random.Random, n: int = 8192) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(6000)]
    vocab += NON_ASCII
    out = []
    for _ in range(n):
        words = rng.choices(vocab, k=rng.randint(6, 22))
        out.append(" ".join(words).capitalize() + rng.choice(".?!"))
    return out


class JsonlWriter:
    """Deterministic, realistic JSONL records with sparse PII; counts what it wrote."""

    def __init__(self, seed: int = JSONL_SEED) -> None:
        self.rng = random.Random(seed)
        self.sentences = _sentences(self.rng)
        self.lines = 0
        self.emails = 0
        self.phones = 0

    def _record(self, i: int, next_email: int, next_phone: int) -> tuple[bytes, bool, bool]:
        rng = self.rng
        choices, randint = rng.choices, rng.randint
        prompt = " ".join(choices(self.sentences, k=randint(1, 3)))
        response = " ".join(choices(self.sentences, k=randint(2, 6)))
        email = i == next_email
        phone = i == next_phone
        if email:
            who = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}{randint(1, 99)}"
            response += f" You can reach me at {who}@{rng.choice(DOMAINS)} if that helps."
        if phone:
            response += f" Or call +1 555 {randint(200, 999)} {randint(1000, 9999)} after six."
        tags = ", ".join(f'"{t}"' for t in rng.sample(TAGS, randint(1, 3)))
        line = (
            f'{{"id": {i}, "source": "{rng.choice(SOURCES)}", "lang": "en", '
            f'"prompt": "{prompt}", "response": "{response}", '
            f'"score": {rng.random():.4f}, "tokens": {randint(40, 900)}, '
            f'"turns": {randint(1, 8)}, "created": {1_700_000_000 + i * 7}, '
            f'"tags": [{tags}]}}\n'
        )
        return line.encode(), email, phone

    def write(self, path: Path, size: int) -> None:
        """Exactly `size` bytes of whole lines; a final {"pad": "..."} line fills the rest."""
        rng = self.rng
        pad_min = len(b'{"pad": ""}\n')
        next_email = rng.randint(1, 2 * EMAIL_EVERY)
        next_phone = rng.randint(1, 2 * PHONE_EVERY)
        written = 0
        i = 0
        with open(path, "wb", buffering=8 * MIB) as f:
            while True:
                line, email, phone = self._record(i, next_email, next_phone)
                if written + len(line) + pad_min > size:
                    break
                f.write(line)
                written += len(line)
                self.lines += 1
                if email:
                    self.emails += 1
                    next_email = i + rng.randint(1, 2 * EMAIL_EVERY - 1)
                if phone:
                    self.phones += 1
                    next_phone = i + rng.randint(1, 2 * PHONE_EVERY - 1)
                i += 1
            f.write(b'{"pad": "' + b"x" * (size - written - pad_min) + b'"}\n')
            self.lines += 1
            f.flush()
            os.fsync(f.fileno())

    def facts(self, path: Path) -> dict[str, Any]:
        return {
            "path_name": path.name,
            "size_bytes": path.stat().st_size,
            "lines": self.lines,
            "emails": self.emails,
            "phones": self.phones,
            "seed": JSONL_SEED,
        }
