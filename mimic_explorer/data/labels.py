"""Class labels as users write them: strict integer parsing, integers-or-names, and how many classes
labels may imply.

Why strict: a label column used to become class names as soon as one cell was not a clean integer
(``NaN``, ``inf``, ``3.5``), and names are sorted as text, so ``"10"`` came before ``"2"`` and every
class was renumbered without a word; a label of 1000000 silently built a million classes. The rules,
shared by manifests (``label``, ``true_label``) and WebDataset ``.cls`` members:

- **An integer label** is a whole number written in ASCII digits (``7``, ``-1``, ``+3``, surrounding
  blanks ignored) or a decimal whose value is whole (``7.0``, ``1e3``: pandas writes an integer column
  that held a missing value as floats). ``nan``, ``inf``, ``3.5``, ``1_000``, non-ASCII digits and
  booleans are not integers.
- **A column holds integers** when its type is numeric, or when any of its cells is an integer; it
  holds class names only when no cell is one. In an integer column, a cell that is not an integer is
  one bad sample (recorded with its row and value, like a row without a path), and every other label
  keeps its number. A column where the non-integers are not a minority is mixed beyond repair: an
  error naming an example of each (``mixed_column_error``).
- **Declared classes** (a ``class_names`` argument, or ``classes.txt`` beside the manifest or shards)
  bound the labels: one outside ``0..K-1`` is an error naming the row or sample.
- **Without declared classes** the classes are ``0..max label``, and that range may not exceed
  ``max(N, MIN_IMPLIED_CLASSES)`` for a pool of ``N`` usable samples (``implied_class_limit``).
  Why that bound: a pool of N samples cannot fill more than N classes, so a longer implied list is
  certain to hold classes no sample has; when nobody declared them that is almost always a typo or a
  garbled cell (a label of 99 among digits 0..9 would silently make 100 classes and a 100-way head),
  and a label of 1e23 would ask for an impossible class list. The floor of 10 lets a handful of
  images of a 10-class set (CIFAR-10, MNIST, digits) open without a class file. A real label set
  larger than the pool (a few ImageNet images) only needs its ``classes.txt``, which the error says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

#: Without declared classes, labels may imply at most max(samples, this) classes (module docstring).
MIN_IMPLIED_CLASSES = 10
#: An integer label with more digits than this is beyond every class range; it is not converted
#: (Python refuses int() of very long digit strings) but kept as a value no range admits.
_MAX_DIGITS = 40
BEYOND_EVERY_RANGE = 10**_MAX_DIGITS

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_label(value: object) -> int | None:
    """The integer a label cell holds (module rules), or None when it is not an integer."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    text = str(value).strip()
    if _INTEGER.fullmatch(text):
        digits = text.lstrip("+-")
        if len(digits) > _MAX_DIGITS:
            return -BEYOND_EVERY_RANGE if text.startswith("-") else BEYOND_EVERY_RANGE
        return int(text)
    if _DECIMAL.fullmatch(text):
        number = float(text)
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return None


def cell_text(value: object, limit: int = 40) -> str:
    """A label cell as an error message quotes it (stripped, cut to ``limit`` characters)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    text = str(value).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def parse_column(values: Sequence, numeric_dtype: bool = False) -> tuple[bool, list[int | None]]:
    """``(holds integers, each cell's integer or None)`` of a label column (module rules).

    ``numeric_dtype``: the column's type is numeric (a parquet int/float column), which makes it an
    integer column whatever its cells hold."""
    parsed = [parse_label(v) for v in values]
    return numeric_dtype or any(p is not None for p in parsed), parsed


def mixed_beyond_repair(parsed: Sequence[int | None]) -> bool:
    """True when the cells that are not integers are not a minority: the column is neither integers
    with a few bad cells nor class names, so no reading of it is safe."""
    bad = sum(p is None for p in parsed)
    return bad > 0 and 2 * bad >= len(parsed)


def implied_class_limit(samples: int) -> int:
    """How many classes labels may imply (``max label + 1``) when no class list is declared."""
    return max(int(samples), MIN_IMPLIED_CLASSES)


def too_many_implied(top: int, samples: int) -> bool:
    """True when a largest label of ``top`` implies more classes than ``samples`` can justify."""
    return top + 1 > implied_class_limit(samples)


def implied_classes_message(value_text: str, where: str, top: int, samples: int, declare: str) -> str:
    """The one-line reason a label range is refused: ``where`` names the row or sample, ``declare``
    says how to declare the classes (e.g. "in classes.txt beside the manifest")."""
    if abs(top) >= BEYOND_EVERY_RANGE:
        count = f"more than 10^{_MAX_DIGITS}"
    elif top + 1 >= 10**12:
        count = f"about {float(top + 1):.0e}"
    else:
        count = f"{top + 1:,}"
    return (
        f"label {value_text} {where} would make {count} classes for {samples} sample(s); without a class list "
        f"labels may span at most max(samples, {MIN_IMPLIED_CLASSES}) = {implied_class_limit(samples)} classes, "
        f"so this looks like a typo: fix the label or list the classes {declare}"
    )
