"""The `register and promote` component."""

from components.register_model.component import register_model

__all__ = ["register_model"]
