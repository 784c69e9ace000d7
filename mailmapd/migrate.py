"""Placeholder: the `mailmapd` commands of this module are being written."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register this module's subcommands (none yet)."""
