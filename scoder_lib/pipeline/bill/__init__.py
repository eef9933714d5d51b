"""The bill before the run: per stage, the work a profile asks for and what it costs, without loading a model.

`build.make_bill(run)` counts prompts, generated and trained tokens, gradient passes, ratings and
sandbox programs from the config and the committed seed set; `cost` turns them into GPU-hours (a
named GPU), CPU minutes (the 2-core reference machine) and disk; `render` prints the table and the
JSON. Every constant is in `constants` (measured or published, with its source) or `assumptions`
(our guesses, overridable with `--assume NAME=VALUE`).
"""
