"""What every command-line entry point shares: its parser, logging, and one-line params errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from scoder_lib.core.config import ConfigError
from scoder_lib.core.logs import setup_logging


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for `python -m <module>` whose help is the module's docstring."""
    setup_logging()
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run(command: Callable[[], int]) -> int:
    """Run a command; a params problem prints as one `error:` line and exits 2 (no traceback)."""
    try:
        return command()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
