"""Data: the snippet pool (mining, filters, exact and near dedup, decontamination) and the
evaluation benchmarks' release files."""
