"""The `split data` component."""

from components.split_data.component import split_data

__all__ = ["split_data"]
