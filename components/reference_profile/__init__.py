"""The `reference profile` component."""

from components.reference_profile.component import reference_profile

__all__ = ["reference_profile"]
