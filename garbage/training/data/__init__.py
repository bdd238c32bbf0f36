"""Data steps: fetch, validate, split."""
