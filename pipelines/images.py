"""Container images the pipeline's components run in on a cluster."""

from __future__ import annotations

import os

DEFAULT_COMPONENTS_IMAGE = "ghcr.io/garbage-classifier/components:0.1.0"

#: Image of every pipeline step; set GARBAGE_COMPONENTS_IMAGE before compiling to use your own.
COMPONENTS_IMAGE = os.environ.get("GARBAGE_COMPONENTS_IMAGE", DEFAULT_COMPONENTS_IMAGE)
