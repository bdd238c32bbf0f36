"""Griffe extension: render Sphinx cross-reference roles of the docstrings as code.

The docstrings name code with roles such as ``:func:`load_config``` (readable in an editor and in
``help()``). Markdown has no roles, so the API reference would show them verbatim; this turns
each into a code span (``load_config``). The targets are often short names, which is why they
are not turned into links (an unresolved link fails the strict build).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj|ref):`~?([^`]+)`")


class SphinxRolesAsCode(griffe.Extension):
    """Replace ``:role:`target``` with ```target``` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each loaded object (griffe event)."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
