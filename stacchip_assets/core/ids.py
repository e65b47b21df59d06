"""Ids that become paths or object keys, checked before they do."""

from __future__ import annotations

import re

from stacchip_assets.errors import InvalidIdentifierError

#: The longest file name an id becomes is ``quicklook_{id}.png`` / ``index_{id}.parquet`` (14
#: characters around the id); 255 bytes is the name limit of ext4, XFS, APFS and S3 key segments
#: in practice, so an id of 242 characters or more would fail later with "File name too long".
MAX_ID_LENGTH = 255 - len("quicklook_.png")

_SAFE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:+=@,-]{{0,{MAX_ID_LENGTH - 1}}}")


def validate_id(value: str, what: str = "item") -> str:
    """Return `value` if it is safe as one path segment; raise InvalidIdentifierError otherwise.

    Allowed: letters, digits and `. _ : + = @ , -`, not starting with a dot or dash, at most
    MAX_ID_LENGTH (241) characters, and never `..` (so no separators, NUL, newline or traversal can
    be smuggled in). The whole string must match: a trailing newline is refused.
    """
    if not isinstance(value, str) or _SAFE_ID.fullmatch(value) is None or ".." in value:
        shown = repr(value)[:80]
        raise InvalidIdentifierError(
            f"{what} id {shown} cannot be used as a path segment (allowed: letters, digits, . _ : + = @ , -; "
            f"at most {MAX_ID_LENGTH} characters; no '/', '..' or control characters)"
        )
    return value
