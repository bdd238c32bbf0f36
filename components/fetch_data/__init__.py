"""The `fetch data` component."""

from components.fetch_data.component import fetch_data

__all__ = ["fetch_data"]
