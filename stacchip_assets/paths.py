"""Ids that become paths or object keys, checked before they do."""

from __future__ import annotations

import re

from .errors import InvalidIdentifierError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=@,-]{0,254}$")


def validate_id(value: str, what: str = "item") -> str:
    """Return `value` if it is safe as one path segment; raise InvalidIdentifierError otherwise.

    Allowed: letters, digits and `. _ : + = @ , -`, not starting with a dot or dash, at most 255
    characters, and never `..` (so no separators, NUL or traversal can be smuggled in).
    """
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        shown = repr(value)[:80]
        raise InvalidIdentifierError(
            f"{what} id {shown} cannot be used as a path segment (allowed: letters, digits, . _ : + = @ , -; "
            "at most 255 characters; no '/', '..' or control characters)"
        )
    return value
