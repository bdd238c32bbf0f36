"""Shipped config profiles (YAML)."""
