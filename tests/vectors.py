"""
Where the shared test vectors are, read in place (never copied here).

They live in C{../shared/vectors} next to the checkout; C{BOTD2_SHARED} names
another C{shared} directory.  A missing directory is a test failure with a
clear message, not a skip: the vectors are the point of these tests.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))


def shared_dir() -> str:
    candidates = []
    if os.environ.get("BOTD2_SHARED"):
        candidates.append(os.environ["BOTD2_SHARED"])
    candidates.append(os.path.join(_HERE, os.pardir, os.pardir, "shared"))
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "WIRE.md")):
            return os.path.normpath(candidate)
    raise RuntimeError(
        "the shared vectors are not found: looked in "
        + ", ".join(map(os.path.normpath, candidates))
        + " (set BOTD2_SHARED to the directory holding WIRE.md and vectors/)"
    )


@cache
def load(*parts: str) -> Any:
    """Load C{shared/vectors/<parts>} as JSON."""
    with open(os.path.join(shared_dir(), "vectors", *parts), encoding="utf-8") as f:
        return json.load(f)


def botd2(name: str) -> Any:
    return load("botd2", name)


def wycheproof(name: str) -> Any:
    return load("wycheproof", "testvectors_v1", name)


def h(text: str) -> bytes:
    return bytes.fromhex(text)
