"""``python -m monitoring collector ...`` and ``python -m monitoring drift ...``.

The same commands as ``garbage collector`` and ``garbage drift``, for an image that holds the core
and monitoring without the rest of the project.
"""

from __future__ import annotations

from monitoring.cli import build_app


def main() -> None:
    """Run the monitoring command line."""
    build_app()(prog_name="python -m monitoring")


if __name__ == "__main__":
    main()
