"""Which daemon a client talks to, and with which token: flags, then the
environment (`INGESTD_URL`, `INGESTD_TOKEN`, `INGESTD_CACERT`), then the file
`ingestd login` writes in the user's config directory (mode 0600).

The login file's token (and CA certificate) go only to the URL saved with
them: pointing a command at another daemon with `--url` does not hand that
daemon the team's token.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
LOGIN_FILE = "client.toml"


def normalise_url(url: str) -> str:
    """The daemon's base URL: `http(s)://host:port[/prefix]`, without a trailing
    slash or `/v1` (people paste the API's address as often as the daemon's)."""
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the daemon's URL must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url.removesuffix("/v1").rstrip("/")
    return url


@dataclass(frozen=True)
class Login:
    """A daemon's URL, and the token and CA certificate to use with it."""

    url: str
    token: str | None = None
    cacert: str | None = None


def login_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("ingestd")) / LOGIN_FILE


def load_login(path: Path | None = None) -> Login | None:
    path = path or login_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc}); run `ingestd login` again") from None
    url = data.get("url")
    if not isinstance(url, str):
        raise ValueError(f"{path}: no url; run `ingestd login` again")
    token, cacert = data.get("token"), data.get("cacert")
    return Login(
        url=normalise_url(url),
        token=token if isinstance(token, str) and token else None,
        cacert=cacert if isinstance(cacert, str) and cacert else None,
    )


def save_login(login: Login, path: Path | None = None) -> Path:
    """Write the login file atomically, readable by its owner only."""
    path = path or login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = ["# Written by `ingestd login`; read by the ingestd command and Client()."]
    for key in ("url", "token", "cacert"):
        value = getattr(login, key)
        if value is not None:
            # A JSON string is a valid TOML basic string.
            lines.append(f"{key} = {json.dumps(value)}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".client-", suffix=".toml")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_login(path: Path | None = None) -> bool:
    path = path or login_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def resolve(
    url: str | None = None,
    token: str | None = None,
    cacert: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Login:
    """The URL, token and CA certificate to use: arguments, else the
    environment, else the login file (its token only for its own URL)."""
    login = load_login()
    chosen = url or environ.get("INGESTD_URL") or (login.url if login else None) or DEFAULT_URL
    chosen = normalise_url(chosen)
    same_daemon = login is not None and login.url == chosen
    if token is None:
        token = environ.get("INGESTD_TOKEN") or (login.token if same_daemon else None)
    if cacert is None:
        cacert = environ.get("INGESTD_CACERT") or (login.cacert if same_daemon else None)
    return Login(chosen, token or None, cacert or None)
