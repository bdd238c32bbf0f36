"""The container image every component runs in on a cluster, and the decorator that sets it."""

from __future__ import annotations

import os

from kfp import dsl

DEFAULT_COMPONENTS_IMAGE = "ghcr.io/garbage-classifier/components:0.1.0"

#: Image of every pipeline step; set GARBAGE_COMPONENTS_IMAGE before compiling to use your own.
COMPONENTS_IMAGE = os.environ.get("GARBAGE_COMPONENTS_IMAGE", DEFAULT_COMPONENTS_IMAGE)

#: ``@component``: a lightweight Python component that runs in :data:`COMPONENTS_IMAGE`, where
#: the project is installed (so KFP installs nothing at run time).
component = dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
