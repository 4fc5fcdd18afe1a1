"""The PII plugin's patterns: where a candidate starts, what each notation
looks like, and the checks that tell a finding from a look-alike (Luhn for
card numbers, ISO 7064 for IBANs, address syntax). Pure functions over bytes;
the plugin (`pii`) reads the file and keeps the findings."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Matcher", "iban_valid", "luhn_valid", "matcher"]


# --- Candidates ---------------------------------------------------------------
#
# Each branch is a pattern for one notation, starting at given characters:
# e-mails and IPv6 addresses at their "@" and first ":", IBANs at their first
# check digit (the text before is found by looking back). One regular
# expression, the union of all branches, finds where a candidate starts; the
# branches are then tried there in order, and their findings validated in
# Python. The union is factored so that the regex engine skips the bytes that
# start nothing in a tight loop, and gives up quickly inside ordinary numbers.

# Checks shared by the number branches, made once per position, after the
# first digit:
_NUMBER_CHECKS = (
    # Not preceded by a word character, "+" or ".": not inside a longer
    # number. (A letter after a backslash is an escape like \n in JSON: a
    # separator.)
    rb"(?<!(?<!\\)[0-9A-Za-z_+.][0-9])",
    # Six more digits or separators follow. Most numbers in datasets (ids,
    # counts, scores) fail this at once.
    rb"(?=[0-9\ .\-)/]{6})",
)
# Not followed by a word character or by a separator and more digits.
_NUMBER_END = rb"(?![0-9A-Za-z_]|[\-.][0-9])"
# A card number after its first digit: 13 to 19 digits, or printed in groups
# of 4-4-4-4(-3), 4-6-5 (Amex) or 4-6-4 (Diners).
_CARD = (
    rb"(?:[0-9]{12,18}|[0-9]{3}(?:[\ \-][0-9]{4}){3}(?:[\ \-][0-9]{3})?"
    rb"|[0-9]{3}[\ \-][0-9]{6}[\ \-][0-9]{4,5})" + _NUMBER_END
)
_DIGITS = b"0123456789"


@dataclass(frozen=True)
class _Branch:
    name: str
    kind: str
    # The characters a match starts with.
    first: bytes
    # The pattern after that character.
    rest: bytes
    # A number: _NUMBER_CHECKS come before `rest`.
    number: bool = False

    def pattern(self) -> bytes:
        checks = b"".join(_NUMBER_CHECKS) if self.number else b""
        return _char_class(self.first) + checks + self.rest


# In the order they are tried at one position.
_BRANCHES: tuple[_Branch, ...] = (
    _Branch(
        "iban",
        "iban",
        _DIGITS,
        # The first check digit, after the two-letter country code; then the
        # compact form, or the printed one in groups of four.
        rb"(?<=[A-Z]{2}[0-9])(?<!(?<!\\)[0-9A-Za-z][A-Z]{2}[0-9])[0-9]"
        rb"(?:[A-Z0-9]{11,30}|(?:\ [A-Z0-9]{4}){2,7}(?:\ [A-Z0-9]{1,3})?)(?![A-Za-z0-9])",
    ),
    _Branch(
        "ipv4",
        "ipv4",
        _DIGITS,
        rb"[0-9]{0,2}(?:\.[0-9]{1,3}){3}" + _NUMBER_END,
        number=True,
    ),
    _Branch(
        "ssn",
        "ssn",
        b"012345678",  # area numbers 9xx are not issued
        # 123-45-6789 or 123 45 6789; a bare 9-digit number is too often something else.
        rb"[0-9]{2}(?:-[0-9]{2}-|\ [0-9]{2}\ )[0-9]{4}(?![0-9A-Za-z_]|[\-\ ][0-9])",
        number=True,
    ),
    _Branch(
        "credit_card",
        "credit_card",
        b"3456",  # issuer prefixes; see _credit_card
        _CARD,
        number=True,
    ),
    _Branch(
        "credit_card_2",
        "credit_card",
        b"2",  # Mastercard's 2221-2720 (and not years: 2019 2020 2021 2022)
        rb"(?=2[2-9]|[3-6]|7[0-2])" + _CARD,
        number=True,
    ),
    _Branch(
        "phone_nanp",
        "phone",
        b"23456789",  # area codes
        # 415-555-2671, 415.555.2671, 415 555 2671, also after a 1: 1-800-555-0199
        rb"[0-9]{2}[\-.\ ][0-9]{3}[\-.\ ][0-9]{4}" + _NUMBER_END,
        number=True,
    ),
    _Branch(
        "phone_nanp_paren",
        "phone",
        b"23456789",
        # (415) 555-2671, from the first digit inside the parenthesis.
        rb"(?<=\([0-9])(?<!(?<!\\)[0-9A-Za-z_]\([0-9])[0-9]{2}\)\ ?[0-9]{3}[\-.\ ][0-9]{4}"
        + _NUMBER_END,
        number=True,
    ),
    _Branch(
        "phone_eu",
        "phone",
        b"0",
        # National numbers with a trunk 0 (030 12345678, 020 7946 0958,
        # 06-12345678), or international ones with a 00 prefix (0044 20 7946 0958).
        rb"[0-9]{1,5}(?:[\ /.\-][0-9]{2,8}){1,4}(?![0-9A-Za-z_]|[\ /.\-][0-9])",
        number=True,
    ),
    _Branch(
        "phone_intl",
        "phone",
        b"+",
        # Digits with single separators or parentheses: +1 (415) 555-2671,
        # +44 (0)20 7946 0958. Possessive: a longer run is not cut short.
        rb"(?<!(?<!\\)[0-9A-Za-z_]\+)[1-9]"
        rb"(?:[0-9]|[\ .\-](?=[0-9(])|\ ?\((?=[0-9])|\)(?:\ (?=[0-9]))?){6,24}+"
        rb"(?![0-9A-Za-z])",
    ),
    _Branch(
        "email",
        "email",
        b"@",
        # The domain: up to 8 labels, then a top-level domain of letters.
        rb"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}"
        rb"(?![A-Za-z0-9\-])",
    ),
    _Branch(
        "ipv6",
        "ipv6",
        b":",
        # From the first colon: a "::" within 7 groups, or 6 colons (the full
        # form, maybe ending in an IPv4 address). Times (12:34:56) do not match.
        rb"(?:(?:[0-9A-Fa-f]{1,4}:){0,6}:|(?:[0-9A-Fa-f]{1,4}:){5})[0-9A-Fa-f:.]{0,41}+",
    ),
)

# A validator gets the buffer and a branch's match, and returns the span of
# the finding in the buffer, or None.
Validator = Callable[[bytes, "re.Match[bytes]"], "tuple[int, int] | None"]


@dataclass(frozen=True)
class Matcher:
    # Where candidates start.
    candidates: re.Pattern[bytes]
    # First byte -> (kind, branch pattern, validator), in the order to try.
    branches: dict[int, tuple[tuple[str, re.Pattern[bytes], Validator], ...]]

    def find(self, buf: bytes, start: int) -> tuple[str, int, int] | None:
        """The finding starting at `start` (a candidate start), if any."""
        for kind, pattern, validate in self.branches[buf[start]]:
            m = pattern.match(buf, start)
            if m is not None and (span := validate(buf, m)) is not None:
                return kind, *span
        return None


@lru_cache(maxsize=16)
def matcher(kinds: tuple[str, ...]) -> Matcher:
    chosen = [branch for branch in _BRANCHES if branch.kind in kinds]
    branches: dict[int, list[tuple[str, re.Pattern[bytes], Validator]]] = {}
    for branch in chosen:
        compiled = (branch.kind, re.compile(branch.pattern()), _VALIDATORS[branch.name])
        for char in branch.first:
            branches.setdefault(char, []).append(compiled)
    return Matcher(
        _candidate_regex(chosen), {char: tuple(found) for char, found in branches.items()}
    )


def _candidate_regex(branches: list[_Branch]) -> re.Pattern[bytes]:
    """The union of `branches`, factored: every alternative starts with a
    literal byte, which lets the engine skip to the next byte that can start
    one, and each of _NUMBER_CHECKS is made once per position."""
    alternatives = []
    for char in dict.fromkeys(char for branch in branches for char in branch.first):
        here = [branch for branch in branches if char in branch.first]
        numbers = [branch.rest for branch in here if branch.number]
        # The numbers first: their checks fail fastest inside numbers.
        parts = [b"".join(_NUMBER_CHECKS) + _either(numbers)] if numbers else []
        parts += [branch.rest for branch in here if not branch.number]
        alternatives.append(re.escape(bytes([char])) + _either(parts))
    return re.compile(b"|".join(alternatives))


def _either(patterns: list[bytes]) -> bytes:
    return b"(?:" + b"|".join(patterns) + b")"


def _char_class(chars: bytes) -> bytes:
    return b"[" + b"".join(re.escape(bytes([char])) for char in chars) + b"]"


# --- Validators ---------------------------------------------------------------

_WORD_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_HEX = frozenset(b"0123456789ABCDEFabcdef")

# An e-mail's local part, ending where the "@" is (the search's endpos).
_LOCAL_PART = re.compile(rb"[A-Za-z0-9._%+\-]+\Z")
_MAX_LOCAL_PART = 64
# "icon@2x.png" is a file name, not an address.
_FILE_SUFFIXES = frozenset({b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"ico", b"bmp"})


def _email(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    at = m.start()
    window = max(0, at - _MAX_LOCAL_PART - 1)
    local = _LOCAL_PART.search(buf, window, at)
    if local is None or (local.start() == window and window > 0):
        return None  # no local part, or a longer one than allowed
    start = local.start()
    if _escape_letter(buf, start):  # "\njohn@..." in JSON: the address starts after \n
        start += 1
    while buf[start] == 0x2E:  # leading dots are punctuation, not the address
        start += 1
    part = buf[start:at]
    if not part.strip(b"._%+-") or part.endswith(b".") or b".." in part:
        return None
    if buf[at + 1 : m.end()].rsplit(b".", 1)[1].lower() in _FILE_SUFFIXES:
        return None
    return start, m.end()


def _ipv6(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    colon, end = m.start(), m.end()
    start = colon
    while start > max(0, colon - 4) and buf[start - 1] in _HEX:
        start -= 1
    before = buf[start - 1] if start > 0 else 0x20
    if before in b".:" or (before in _WORD_CHARS and not _escape_letter(buf, start - 1)):
        return None  # inside a longer token (std::vector, a MAC address)
    if end < len(buf) and (buf[end] in _WORD_CHARS or buf[end] in b".:"):
        return None
    text = buf[start:end].rstrip(b".")
    if text.endswith(b":") and not text.endswith(b"::"):
        text = text[:-1]
    # Hex words around "::" (A::B, Face::Bad) are code, not addresses.
    if text.count(b":") < 3 and not any(c in _DIGITS for c in text):
        return None
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return None
    return start, start + len(text)


# Digits _after_number looks back at most (CONTEXT must cover them).
_LONG_NUMBER = 24


def _after_number(buf: bytes, start: int) -> bytes | None:
    """The number right before `start` and one separator ("2019 4111 ..."), if
    any: one of a run of numbers (token ids, years, a table) is not a phone or
    card number; those are full of 4-4-4-4 and 3-3-4 windows. Times, versions
    and codes ("10:30 ", "v3.14 ") do not count."""
    if start < 2 or buf[start - 1] not in b" -/" or buf[start - 2] not in _DIGITS:
        return None
    first = start - 2
    # Bounded, so that the answer never depends on how much of the buffer is left.
    while first > max(0, start - 2 - _LONG_NUMBER) and buf[first - 1] in _DIGITS:
        first -= 1
    before = buf[first - 1] if first > 0 else 0x20
    if before not in _DIGITS and (before in b".:," or before in _WORD_CHARS):
        return None
    return buf[first : start - 1]


def _number_follows(buf: bytes, m: re.Match[bytes]) -> bool:
    """Whether a number printed with spaces is followed by a space and more
    digits: "… 3621 7196 4982 3700 1259 …" is a run of numbers, not a card."""
    end = m.end()
    return b" " in m.group() and buf[end : end + 1] == b" " and buf[end + 1 : end + 2].isdigit()


def _escape_letter(buf: bytes, i: int) -> bool:
    """Whether buf[i] is the letter of a backslash escape, like the n of \\n in JSON."""
    return i > 0 and buf[i - 1] == 0x5C and buf[i] in b"nrt"


def _ipv4(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    try:
        ipaddress.IPv4Address(m.group().decode("ascii"))  # no octet > 255, no leading 0
    except ValueError:
        return None
    return m.span()


def _ssn(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    text = m.group()
    area, group, serial = text[0:3], text[4:6], text[7:11]
    if text[3] != text[6] or area in (b"000", b"666") or area[0] == 0x39:  # 9xx
        return None
    if group == b"00" or serial == b"0000":
        return None
    if text[3] == 0x20 and _after_number(buf, m.start()) is not None:
        return None  # "123 45 6789" in a run of numbers
    return m.span()


def _credit_card(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    text = m.group()
    digits = text.translate(None, b" -")
    if b" " in text and b"-" in text:
        return None
    if _after_number(buf, m.start()) is not None or _number_follows(buf, m):
        return None
    if not (digits[0] in b"3456" or (digits[0] == 0x32 and 2221 <= int(digits[:4]) <= 2720)):
        return None  # no issuer uses this prefix (2: Mastercard 2221-2720)
    return m.span() if luhn_valid(digits) else None


def luhn_valid(digits: bytes) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        digit = char - 0x30
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _phone_intl(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    digits = m.group().translate(None, b"+ .-()")
    return m.span() if 8 <= len(digits) <= 15 else None  # E.164: at most 15


def _phone_nanp(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    digits = m.group().translate(None, b" .-()")
    # Area code and exchange start with 2-9.
    if digits[0] in b"01" or digits[3] in b"01":
        return None
    before = _after_number(buf, m.start())
    if (before is not None and before != b"1") or _number_follows(buf, m):  # 1-800-555-0199
        return None
    return m.span()


def _phone_nanp_paren(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    span = _phone_nanp(buf, m)
    return (span[0] - 1, span[1]) if span is not None else None  # include the "("


def _phone_eu(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    text = m.group()
    digits = text.translate(None, b" /.-")
    if len(set(text.translate(None, _DIGITS))) != 1:
        return None  # mixed separators: a date and a time, a version, ...
    if _after_number(buf, m.start()) is not None:
        return None
    if digits.startswith(b"00"):  # 00 + an E.164 number of at most 15 digits
        return m.span() if digits[2] != 0x30 and 10 <= len(digits) <= 17 else None
    return m.span() if 9 <= len(digits) <= 12 else None


def _iban(buf: bytes, m: re.Match[bytes]) -> tuple[int, int] | None:
    start = m.start() - 2  # the country code
    groups = buf[start : m.end()].split(b" ")
    # A printed IBAN may be followed by an upper-case word: try shorter ones.
    for n in range(len(groups), 0, -1):
        if iban_valid(b"".join(groups[:n])):
            return start, start + len(b" ".join(groups[:n]))
    return None


def iban_valid(iban: bytes) -> bool:
    if IBAN_LENGTHS.get(iban[:2].decode("ascii")) != len(iban):
        return False
    rearranged = (iban[4:] + iban[:4]).decode("ascii")
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


_VALIDATORS: dict[str, Validator] = {
    "iban": _iban,
    "ipv4": _ipv4,
    "ssn": _ssn,
    "credit_card": _credit_card,
    "credit_card_2": _credit_card,
    "phone_nanp": _phone_nanp,
    "phone_nanp_paren": _phone_nanp_paren,
    "phone_eu": _phone_eu,
    "phone_intl": _phone_intl,
    "email": _email,
    "ipv6": _ipv6,
}

# IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
