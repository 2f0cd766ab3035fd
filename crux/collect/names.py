"""Name rules shared by the API, the station registry and the edge outbox.

Names end up in storage keys, Label Studio project titles and log lines, so they are kept to a
small alphabet: no path separators, no `..`, no control characters, no leading dot or dash.
"""

from __future__ import annotations

import re

from crux.errors import CruxError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Idempotency keys come from clients (the edge uses uuid4 hex); allow the usual token alphabets.
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")


class InvalidNameError(CruxError, ValueError):
    """A station/line/file name is empty, too long or contains path or control characters."""


def check_name(value: str, what: str) -> str:
    """Return `value` when it is a safe name, else raise with a message naming `what`."""
    if not NAME.match(value) or ".." in value:
        raise InvalidNameError(
            f"{what} {value!r} is not a valid name: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', '\\', '..' or spaces)"
        )
    return value
