"""Keep secrets out of logs, XCom and rendered output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PASSWORD_IN_TEXT = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
_SECRET_PARAM = r"(?i)(password|passwd|secret|token|key)=[^&]*"
_SECRET_PARAM_IN_TEXT = re.compile(r"(?i)([?&][\w.\-]*(?:password|passwd|secret|token|key)=)[^&\s]*")


def mask_uri(uri: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``; query-string secrets masked too."""
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


def mask_text(text: str) -> str:
    """Mask credentials of any URI embedded in free text (e.g. a driver's error message)."""
    text = _PASSWORD_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_PARAM_IN_TEXT.sub(r"\1***", text)
