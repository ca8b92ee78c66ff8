"""Keep passwords out of every output: DSN redaction and a process-wide set of secret strings.

Anything bluegreen prints, logs, journals or reports goes through :func:`redact`, which replaces
each registered secret (DSN passwords, values of secret-looking environment variables the plan
expands) with ``***``. :func:`redact_dsn` rewrites a DSN itself without its password.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote, unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"
_SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PGPASS", "_KEY", "DSN", "_URL")

_lock = threading.Lock()
_secrets: set[str] = set()


def register(value: str | None) -> None:
    """Remember ``value`` as a secret: from now on :func:`redact` masks it (and its URL-quoted form).

    :param value: a password or token; empty and very short values are ignored (they would mask
        innocent text and were never secret).
    """
    if not value or len(value) < 4:
        return
    with _lock:
        _secrets.add(value)
        quoted = quote(value, safe="")
        if quoted != value:
            _secrets.add(quoted)


def register_dsn(dsn: str) -> None:
    """Register the password a DSN carries (URI or key=value form), if any."""
    password = dsn_password(dsn)
    if password:
        register(password)


def register_env(name: str, value: str) -> None:
    """Register what an environment variable's value hides: a DSN's password, or the whole value.

    ``*_DSN`` / ``*_URL`` values are connection strings whose password alone is secret; any other
    secret-looking name (``*PASSWORD*``, ``*TOKEN*``, ``*_KEY``...) is secret as a whole.
    """
    register_dsn(value)
    upper = name.upper()
    if is_secret_name(name) and not upper.endswith(("DSN", "URL")):
        register(value)


def is_secret_name(name: str) -> bool:
    """Tell whether an environment variable's name says its value is a secret or holds one."""
    upper = name.upper()
    return any(part in upper for part in _SECRET_NAME_PARTS)


def dsn_password(dsn: str) -> str | None:
    """Return the password in a DSN, or None (for a DSN libpq rejects, the URI form only)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return _uri_password(dsn)
    value = params.get("password")
    return str(value) if value is not None else None


def _uri_password(dsn: str) -> str | None:
    match = re.match(r"^[a-z]+://[^:/@]*:([^@]*)@", dsn)
    return unquote(match.group(1)) if match else None


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with its password replaced by ``***``; key=value form when it parses.

    >>> redact_dsn("postgresql://app:s3cret@db:5432/hydra")
    'user=app password=*** host=db port=5432 dbname=hydra'
    """
    try:
        params: dict[str, Any] = conninfo_to_dict(dsn)
    except Exception:
        return redact(_mask_uri_password(dsn))
    if "password" in params:
        params["password"] = MASK
    return redact(make_conninfo("", **params))


def _mask_uri_password(dsn: str) -> str:
    """Mask a password in a DSN libpq cannot parse: the URI form, or any ``password=`` pair."""
    dsn = re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1" + MASK + "@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1" + MASK, dsn)


def redact(text: str) -> str:
    """Mask every registered secret in ``text``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_obj(value: Any) -> Any:
    """Return a copy of a JSON-like structure with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_obj(v) for v in value]
    return value
