"""Foundations every layer uses: the one config object and its loader, a run and its stage table,
typed records, atomic IO, hashing, logging and statistics. Imports nothing else of the library."""
