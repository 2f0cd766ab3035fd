"""Prefect flows: thin orderings of crux calls, one task per side effect."""
