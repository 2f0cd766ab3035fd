"""Edge runtime pieces that run on the inspection box (no torch, no prefect)."""
