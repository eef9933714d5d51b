"""Untrusted code: the parent side (`execution`: worker pool, verdicts), the isolation each worker
starts in (`isolation`), the wire protocol (`protocol`), and the child side (`harness/`), which
runs inside the sandbox. Kept import-light: the worker imports this package inside the sandbox."""
