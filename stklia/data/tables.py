"""Kaldi tables: whitespace-separated lines, checked line by line.

Every problem in a user's file is raised as an InputError naming the file and line, so a
run fails at start-up with one clear line instead of deep inside training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from stklia.core.errors import InputError


def read_table(path: str | os.PathLike, min_fields: int, max_fields: int | None = None
               ) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a whitespace-separated Kaldi table, skipping blank lines."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
                expected = str(min_fields) if min_fields == max_fields else f"at least {min_fields}"
                raise InputError(path, f"expected {expected} fields, found {len(fields)}", lineno)
            yield lineno, fields


def read_mapping(path: str | os.PathLike, max_fields: int | None) -> tuple[dict[str, str], dict[str, int]]:
    """key -> rest of line, and key -> line number; duplicate keys are an error."""
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, fields in read_table(path, 2, max_fields):
        key = fields[0]
        if key in values:
            raise InputError(path, f"duplicate key '{key}' (first on line {lines[key]})", lineno)
        values[key] = " ".join(fields[1:])
        lines[key] = lineno
    return values, lines


