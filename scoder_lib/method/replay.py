"""A stand-in teacher for rehearsals: an OpenAI-compatible endpoint that answers with committed teacher samples.

    python -m scoder_lib.method.replay --seed-file data/seed/seed_compact_v2.jsonl --port 8011

It lets a rehearsal buy "teacher" samples through the real OpenAI-compatible client, over real HTTP,
with real token accounting, without a paid API: each request gets the canonical response of one
committed training sample, chosen by a hash of the request (deterministic, independent of order).
The answer is a valid sample (it passes its own tests) but is not about the snippet asked for: a
plumbing check, never data for a study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scoder_lib.core.config import REPO_ROOT
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.logs import setup_logging
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult
from scoder_lib.llm.openai_server import OpenAIServer, api_key, serve_until_stopped
from scoder_lib.method import seed


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, responses: list[str], source: str):
        if not responses:
            raise ValueError(f"replay teacher: no responses in {source}")
        self.responses = responses
        self.fingerprint = fingerprint({"replay": source, "n": len(responses)})

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for req in requests:
            text = self.responses[int(req.key(), 16) % len(self.responses)]
            prompt_words = sum(len(c.split()) for _, c in req.messages) or len((req.prompt or "").split())
            out.append(GenResult([Completion(text, "stop", len(text.split()))] * req.n, prompt_words))
        return out


def from_seed_file(path: Path) -> ReplayBackend:
    """Replay the training split of a committed seed file."""
    return ReplayBackend([seed.response(r) for r in seed.load(path).train], str(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m scoder_lib.method.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seed-file", default=str(REPO_ROOT / "data/seed/seed_compact_v2.jsonl"))
    ap.add_argument("--served-name", default="replay-teacher")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the key clients must send")
    args = ap.parse_args(argv)
    setup_logging()
    server = OpenAIServer(
        from_seed_file(Path(args.seed_file)), args.served_name, port=args.port, api_key=api_key(args.api_key_env)
    ).start()
    serve_until_stopped(server)


if __name__ == "__main__":
    main()
