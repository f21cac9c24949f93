"""Worked examples of extension points (see docs/providers.md)."""
