"""The `export ONNX` component."""

from components.export_model.component import export_model

__all__ = ["export_model"]
