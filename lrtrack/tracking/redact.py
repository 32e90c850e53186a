"""Credentials never leave the process: ``scheme://user:secret@host`` becomes ``scheme://***@host``.

A tracking URI may carry a user and password (``http://user:pass@host:5000``), and it reaches
params, tags, config artifacts, Hydra's saved config, log lines and the report. Everything
lrtrack writes or prints about a URI or a command line passes through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|token|secret|access_token|api_key)=)[^&\s#]*")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the user:password part of every URL and secret query values masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_tree(value: Any) -> Any:
    """:func:`redact` applied to every string inside nested dicts and lists."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value
