"""The export formats, and the one a file name asks for: what `/export PATH` and `chatapp
export` accept, checked before anything is written (`chatapp.storage.export` writes them).

Pure Python: no torch, no Textual, no files.
"""

from __future__ import annotations

import os
from pathlib import Path

EXPORT_FORMATS = ("md", "json")
"""Formats an export can have (`chatapp export ID --format md|json`)."""
SUFFIX_FORMATS = {".md": "md", ".markdown": "md", ".json": "json"}
"""Format chosen from a file name when none is given."""


class ExportError(ValueError):
    """The export format cannot be chosen (one line)."""


def export_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format to write: `fmt` when given, else the one the file suffix names.

    Raises:
        ExportError: unknown format, or no format given and an unknown suffix.
    """
    if fmt is None:
        fmt = SUFFIX_FORMATS.get(Path(path).suffix.lower())
        if fmt is None:
            raise ExportError(f"{path}: cannot tell the format from the suffix; use .md or .json")
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
    return fmt
