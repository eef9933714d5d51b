"""SCoder study library: every stage's logic lives here; notebooks only tell the story."""

import os

# Why: with the default (ACTIVE) wait policy, 2-thread OpenMP decoding on small CPUs randomly runs
# 3-25x slower (measured on the 2-core reference machine). It must be set before torch loads,
# and every notebook and entry point imports scoder_lib first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Why: tokenizers' own thread pool fights torch for the two cores and warns after fork().
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Per-tensor loading bars and advisory chatter: thousands of lines in papermill output. Set here,
# read by transformers when it loads, so that no light process has to import it to silence it.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import warnings

# Library chatter that says nothing about this study, printed into every report otherwise.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*pin_memory.*")

__version__ = "0.1.0"
