"""Shard patterns: ``{00..03}`` / ``{a,b}`` brace expansion and globs, as WebDataset users write them.

Why our own: the ``braceexpand`` package is not a dependency, and its rules are small: numeric ranges
keep the width of the wider bound (``{0..10}`` → ``0``…``10``, ``{00..10}`` → ``00``…``10``),
comma lists expand in order, braces nest.
"""

from __future__ import annotations

import glob
import os
import re

from mimic_explorer.data.errors import DataSourceError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?$")


def _matching_close(text: str, start: int) -> int:
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _split_top(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current.append(ch)
    parts.append("".join(current))
    return parts


def expand_braces(pattern: str) -> list[str]:
    """All strings a brace pattern names, in order (no filesystem access)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = _matching_close(pattern, start)
    if end < 0:
        raise DataSourceError(f"unbalanced brace in shard pattern {pattern!r}")
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _RANGE.match(body)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        step = int(match.group(3) or 1)
        padded = any(b.lstrip("-").startswith("0") and len(b.lstrip("-")) > 1 for b in match.group(1, 2))
        width = max(len(match.group(1)), len(match.group(2))) if padded else 0
        direction = 1 if hi >= lo else -1
        options = [str(v).zfill(width) for v in range(lo, hi + direction, step * direction)]
    elif "," in body:
        options = _split_top(body)
    else:
        options = ["{" + body + "}"]  # a literal brace, e.g. a file really named a{b}.tar
        return [head + options[0] + t for t in expand_braces(tail)]
    tails = expand_braces(tail)
    return [head + x + t for o in options for x in expand_braces(o) for t in tails]


def resolve_shards(pattern: str, spec: str) -> list[str]:
    """Absolute paths of the shard files a pattern names; a missing file or empty glob is an error."""
    pattern = os.path.expanduser(pattern)
    shards: list[str] = []
    for item in expand_braces(pattern):
        if glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise DataSourceError(f"{spec}: no shard files match {item}")
            shards.extend(found)
        elif not os.path.exists(item):
            raise DataSourceError(f"{spec}: shard {item} does not exist")
        elif not os.path.isfile(item):
            raise DataSourceError(f"{spec}: shard {item} is not a file")
        else:
            shards.append(item)
    resolved, seen = [], set()
    for path in shards:
        path = os.path.realpath(path)
        if path not in seen:
            seen.add(path)
            resolved.append(path)
    if not resolved:
        raise DataSourceError(f"{spec}: the pattern names no shard files")
    return resolved
