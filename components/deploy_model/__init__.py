"""The `deploy to KServe` component."""

from components.deploy_model.component import deploy_model

__all__ = ["deploy_model"]
