"""Keep secrets out of logs, XCom and rendered output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PASSWORD_IN_TEXT = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
_SECRET_PARAM = r"(?i)(password|passwd|secret|token|key)=[^&]*"
_SECRET_PARAM_IN_TEXT = re.compile(r"(?i)([?&][\w.\-]*(?:password|passwd|secret|token|key)=)[^&\s]*")
# ``user:pass@host/db`` written without a scheme: everything up to the last "@" before the path is userinfo
_SCHEMELESS_USERINFO = re.compile(r"^(?P<user>[^:/@\s]*):(?P<pw>[^/\s]*)@(?P<rest>[^@]*)$")


def mask_uri(uri: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``; query-string secrets masked too. A URI
    written without a scheme (``u:secret@h/db``) has its password masked as well."""
    if "://" not in uri:
        return _mask_schemeless(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    # Edit the original text rather than urlunsplit() it: that drops an empty authority and turns
    # sqlite:////abs/path.db into sqlite://abs/path.db.
    masked = uri
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        masked = masked.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{host}", 1)
    if parts.query:
        masked = masked.replace(f"?{parts.query}", "?" + re.sub(_SECRET_PARAM, r"\1=***", parts.query), 1)
    return masked


def _mask_schemeless(uri: str) -> str:
    """``u:secret@h/db`` → ``u:***@h/db``; anything else without ``://`` that holds an ``@`` is masked whole
    (it cannot be told apart from a password)."""
    found = _SCHEMELESS_USERINFO.match(uri)
    if found:
        return f"{found['user']}:***@{found['rest']}"
    return "***" if "@" in uri else uri


def mask_text(text: str) -> str:
    """Mask credentials of any URI embedded in free text (e.g. a driver's error message)."""
    text = _PASSWORD_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM_IN_TEXT.sub(r"\1***", text)
