"""Pydantic v2 models, one module per workflow family: one input and one output type per
workflow, activity, signal and query (see docs/architecture.md)."""
