#!/usr/bin/env bash
# Install the PostgreSQL server binaries (Debian's package) that tests/monitoring uses to start a
# throwaway cluster on a free loopback port (initdb + pg_ctl as the postgres user). Idempotent;
# needs root (CI runs as root). The service itself is not started: the tests start their own.
set -euo pipefail

binaries() { printf '%s ' /usr/lib/postgresql/*/bin; }

have_binaries() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null
}

if have_binaries && id postgres > /dev/null 2>&1 && command -v runuser > /dev/null; then
  echo "PostgreSQL server binaries present: $(binaries)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: installing PostgreSQL needs root (apt-get); run: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql util-linux > /dev/null
have_binaries || { echo "error: postgresql installed but initdb/pg_ctl not found" >&2; exit 1; }
echo "installed: $(binaries)"
