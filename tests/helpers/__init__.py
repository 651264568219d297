"""Importable helpers for the tests (run in subprocesses by ``python -c``)."""
