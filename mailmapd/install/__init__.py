"""Placeholder: `mailmapd install` is being written."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``install`` (not yet)."""
