"""Logging set-up and a progress logger that reads well in papermill's captured output."""

from __future__ import annotations

import logging
import sys
import time

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Route scoder_lib logs to stderr once (notebook kernels and CLIs alike)."""
    root = logging.getLogger("scoder")
    if not any(getattr(h, "_scoder", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._scoder = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # Third-party chatter (per-tensor GGUF bars, HTTP lines) drowns the story in reports.
    for noisy in ("httpx", "urllib3", "datasets", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"scoder.{name.removeprefix('scoder_lib.')}")


class Progress:
    """Logs `done/total, rate, ETA` at most every `every_s` seconds, and once at the end.

    Why not tqdm: carriage-return bars turn into thousands of lines in papermill output and HTML.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "items",
        every_s: float = 15.0,
        logger: logging.Logger | None = None,
    ):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.log = logger or get_logger("progress")
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        if n <= 0:
            return
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s or (self.total is not None and self.done >= self.total):
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:  # streaming sources: count and rate only
            return f"{self.desc}: {self.done} {self.unit}, {rate:.2f} {self.unit}/s, elapsed {elapsed:.0f}s"
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.2f} {self.unit}/s, elapsed {elapsed:.0f}s, ETA {eta}"
        )

    def close(self) -> None:
        """Final line for streams of unknown length."""
        if self.total is None:
            self.log.info(self.line())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
