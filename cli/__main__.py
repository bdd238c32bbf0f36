"""``python -m cli``: the same as the ``garbage`` command."""

from cli.app import app

if __name__ == "__main__":
    app()
