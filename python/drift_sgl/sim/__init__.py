"""Discrete-event simulator of drift-sgl and the alternatives (docs/dispatcher.md)."""
