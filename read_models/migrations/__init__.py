"""Versioned SQL migrations of the read store (schema read_models)."""
