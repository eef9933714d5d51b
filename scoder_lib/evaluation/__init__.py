"""Evaluation on the benchmarks (EvalPlus rules): prompts, sanitizing answers, sandboxed checks, pass@k."""
