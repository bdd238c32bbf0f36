"""Defaults shared by the monitoring modules, importable without their heavy dependencies."""

#: The collector's store: SQLite in the project's work dir; PostgreSQL by URL on a cluster.
DEFAULT_DB_URL = "sqlite:///work/monitoring/inferences.db"
