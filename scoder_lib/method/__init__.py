"""The SCoder method: the synthesis task and its seed set, multi-checkpoint sampling, multi-aspect
scoring, optimizer-aware influence, training, selection, the final instruction sets and their arms."""
