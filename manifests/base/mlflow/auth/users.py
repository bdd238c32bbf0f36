"""Create the MLflow users the cluster's clients log in as, or reset their passwords.

Run by the Job mlflow-users in the MLflow server image, as MLflow's admin
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); safe to re-run (the Job retries while the
server starts). Each argument is ``USERNAME=ENV``: the user and the environment variable that
holds its password.
"""

from __future__ import annotations

import os
import sys

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient


def ensure_user(client: AuthServiceClient, username: str, password: str) -> str:
    """Create ``username`` with ``password``, or set its password; returns what was done."""
    try:
        client.get_user(username)
    except RestException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "password set"


def main(argv: list[str]) -> int:
    """Ensure every ``USERNAME=ENV`` user; 0 when all are, 1 or 2 for a bad argument."""
    if not argv or any("=" not in a for a in argv):
        print("usage: users.py USERNAME=PASSWORD_ENV [...]", file=sys.stderr)
        return 2
    client = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
    for arg in argv:
        username, env = arg.split("=", 1)
        password = os.environ.get(env, "")
        if len(password) < 12:
            print(
                f"{username}: ${env} must hold a password of 12 or more characters (MLflow's "
                "minimum); create the Secret with scripts/kind/secrets.sh",
                file=sys.stderr,
            )
            return 1
        print(f"{username}: {ensure_user(client, username, password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
