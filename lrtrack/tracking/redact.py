"""Credentials never leave the process: ``scheme://user:secret@host`` becomes ``scheme://***@host``.

A tracking URI may carry a user and password (``http://user:pass@host:5000``), a user config may
hold a token (``api_key: ...``, ``${oc.env:MY_TOKEN}``), and they reach params, tags, config
artifacts, Hydra's saved config, log lines and the report. Everything lrtrack writes or prints
passes through :func:`redact` (text) or :func:`redact_tree` (a config) first, which mask:

- the whole userinfo of every URL (``scheme://<anything up to the host's @>@host``), found by
  parsing the URL's authority, so a password holding ``@``, ``:`` or ``/`` is masked whole;
- the value of every setting whose name says it is secret (``*password*``, ``*token*``,
  ``*secret*``, ``*api_key*``): as a key of a config, as ``key=value`` in a command line or an
  override, as ``?key=value`` in a query string;
- every value registered with :func:`register_secret` (the app registers what a user config takes
  from the environment with ``${oc.env:...}``), wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

MASK = "***"
_WORDS = r"passw(?:or)?d|pwd|token(?!iz)|secret|api[_-]?key|access[_-]?key|credential"
_SECRET_NAME = re.compile(rf"(?i)(?:{_WORDS})")
_SECRET_NAME_END = re.compile(rf"(?i)(?:{_WORDS})$")
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")
# user:pa/ss@host: a colon not followed by a port ends the user; the password runs to the last @.
_USER_COLON = re.compile(r"^[^/?#@]*:(?!\d*(?:[/?#]|$))")
_QUERY = re.compile(rf"(?i)(?P<key>[?&;][^=&\s#]*(?:{_WORDS})[^=&\s#]*=)(?P<value>[^&\s#]*)")
# A key starts after a space, a brace or a comma, quoted or not; not after "=": in "train.resume='xpasswdx':
# no such run" the quoted text is a value, and "no" is not a secret.
_KEYED = re.compile(rf"(?i)(?P<key>(?:(?<![\w?&;=])['\"]|(?<![\w?&;='\"]))[\w.\-+~/]*(?:{_WORDS})[\w.\-]*"
                    rf"(?P<q>['\"]?)(?:=|:[ \t]+))"
                    rf"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;}}\]]+)")
_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d*)?(?:e[+-]?\d+)?$", re.IGNORECASE)
_LITERALS: set[str] = set()
_LONGEST_FIRST: list[str] = []  # _LITERALS, longest first (a password that holds another secret): kept sorted once
MIN_SECRET_LENGTH = 4  # shorter registered values would mask common words


def register_secret(value: Any) -> None:
    """Mask ``value`` wherever :func:`redact` sees it from now on (in this process)."""
    text = str(value) if value is not None else ""
    if len(text) >= MIN_SECRET_LENGTH and text != MASK:
        _LITERALS.add(text)
        _LONGEST_FIRST[:] = sorted(_LITERALS, key=len, reverse=True)


def clear_secrets() -> None:
    """Forget every :func:`register_secret` value (a new job registers its own)."""
    _LITERALS.clear()
    _LONGEST_FIRST.clear()


def is_secret_name(key: str) -> bool:
    """A setting whose name says it holds a credential (``db.password``, ``hf_token``, ``api_key``)."""
    return bool(_SECRET_NAME.search(str(key)))


def _mask_url(m: re.Match[str]) -> str:
    rest = m["rest"]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        at = authority.rfind("@")
    elif "@" in rest and _HOST_AFTER_AT.match(rest[rest.rfind("@") + 1:]):
        # "bob:7731/pw@host", "bob:pw?x#y@host": a password holding "/", "?" or "#" (a user typed it
        # unescaped) ends the authority early for urllib; the userinfo still runs to the last "@".
        at = rest.rfind("@")
    else:
        return m.group(0)
    return f"{m['scheme']}{MASK}{rest[at:]}"


# A host after the last "@": an IPv6 literal, a name with a dot or a port, or localhost ("http://h:5/a@b" has none).
_HOST_AFTER_AT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\](?::\d*)?|[A-Za-z0-9\-_]+(?:\.[A-Za-z0-9\-_]+)+(?::\d*)?"
                            r"|[A-Za-z0-9\-_]+:\d+|localhost)(?:[/?#].*)?$")


def register_url_credentials(text: Any) -> None:
    """Register the userinfo of every URL in ``text`` (a setting's whole value, an environment
    variable) as a secret: a password holding a space or a quote ends a URL found in free text,
    so it is masked as a literal wherever it appears; its password alone, and both URL-decoded, too."""
    from urllib.parse import unquote

    value = str(text) if text is not None else ""
    for found in re.finditer(r"[A-Za-z][A-Za-z0-9+.\-]*://", value):
        rest = value[found.end():]
        line_end = min(i for i in (rest.find("\n"), len(rest)) if i >= 0)
        rest = rest[:line_end]
        if "@" not in rest:
            continue
        userinfo = rest[:rest.rfind("@")]
        password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
        for secret in (userinfo, password, unquote(userinfo), unquote(password)):
            register_secret(secret)


def _mask_keyed(m: re.Match[str]) -> str:
    value = m["value"]
    if value in (MASK, f"'{MASK}'", f'"{MASK}"') or value.startswith("${"):
        return m.group(0)
    key = m["key"].rstrip("=: \t'\"")
    if _NUMBER.match(value) and not _SECRET_NAME_END.search(key):  # max_tokens=512 is no secret
        return m.group(0)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{m['key']}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """``text`` with URL userinfo, secret settings' values and registered secrets masked."""
    for literal in _LONGEST_FIRST:  # redact() runs on every printed line (stdout is wrapped): no sort here
        text = text.replace(literal, MASK)
    text = _URL.sub(_mask_url, text)
    text = _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    return _KEYED.sub(_mask_keyed, text)


# Words that name a secret wherever they stand in a key (db_password_2: 86753091 is a password);
# "token" only ends one (max_tokens: 512 is a count).
_STRONG_NAME = re.compile(r"(?i)passw(?:or)?d|pwd|secret|api[_-]?key|access[_-]?key|credential")


def holds_secret_value(key: str) -> bool:
    """A key whose value is a secret whatever it looks like, a number included (``db_password_2``,
    ``api_key``; not ``max_tokens``, a count)."""
    return bool(_STRONG_NAME.search(key) or _SECRET_NAME_END.search(key))


def _mask_all(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_all(v) for v in value)
    return value if value is None or isinstance(value, bool) or value == "" else MASK


def register_secret_settings(value: Any, key: str = "") -> None:
    """Register the value of every secret-named setting in a config tree (resolved) as a secret, so it
    is masked where an interpolation copied it (``note: ${model.db_password}``)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            register_secret_settings(v, key if key and holds_secret_value(key) else str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            register_secret_settings(v, key)
    elif key and is_secret_name(key) and value is not None and not isinstance(value, bool):
        if isinstance(value, str) or _SECRET_NAME_END.search(key) or _STRONG_NAME.search(key):
            register_secret(value)
    elif isinstance(value, str) and "://" in value:
        register_url_credentials(value)


def redact_tree(value: Any, key: str = "") -> Any:
    """:func:`redact` applied to every string inside nested dicts and lists; the value of a key whose
    name says it is secret (:func:`is_secret_name`) is masked whole (a number only when the name ends
    with the word: ``api_key: 123`` but not ``max_tokens: 512``)."""
    if key and isinstance(value, (Mapping, list, tuple)) and holds_secret_value(key):
        return _mask_all(value)  # credentials: {github: ...}, secrets: [...]: all of it (special_tokens: not)
    if isinstance(value, Mapping):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v, key) for v in value)
    if key and value is not None and not isinstance(value, bool) and is_secret_name(key):
        if isinstance(value, str) or _SECRET_NAME_END.search(key) or _STRONG_NAME.search(key):
            return MASK if value != "" else value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in _LITERALS:
        return MASK  # a secret number copied by an interpolation (note: ${model.db_password})
    return value


class _RedactingFactory:
    """A log record factory that masks (:func:`redact`) every message before any handler sees it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to logging's own error report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        # log.exception's traceback: a formatter uses exc_text when it is set, so it is masked once, here
        # (an exception's message may quote a URI with its password: MLflow's and requests' do).
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record


def _redacting_excepthook(inner: Any) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        """An uncaught exception (a bug) keeps its traceback, with credentials masked."""
        import traceback

        try:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
        except Exception:  # a broken exception object: the interpreter's own report
            inner(exc_type, exc, tb)
            return
        sys.stderr.write(redact(text))

    hook.lrtrack_redacting = True  # type: ignore[attr-defined]
    return hook


def install_log_redaction() -> None:
    """Mask credentials in every log line of this process, in every handler (console, Hydra's job
    log file, tqdm's), log.exception's tracebacks and an uncaught exception's: idempotent."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    if not getattr(sys.excepthook, "lrtrack_redacting", False):
        sys.excepthook = _redacting_excepthook(sys.excepthook)
