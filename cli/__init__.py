"""The ``garbage`` command line: the one place that wires the project's packages together.

``cli.app`` builds the typer application from one module per command group; each command
imports what it runs only when it runs, so ``garbage --help`` stays fast.
"""
