#!/usr/bin/env bash
# System packages and services the test suite uses, installed idempotently (CI runs as root on
# a fresh machine). Each script says what it installs and why; the tests that need a missing
# piece skip with the reason.
set -euo pipefail
cd "$(dirname "$0")"

./install-postgres.sh          # PostgreSQL server binaries: monitoring storage tests
./install-pushgateway.sh       # Prometheus Pushgateway + promtool: drift metrics, alert rule tests
./container-engine-setup.sh    # podman + runc + a local Debian base image: container build test
if ! command -v shellcheck > /dev/null; then    # kind scripts stay shellcheck-clean
  apt-get update -qq && apt-get install -y -qq shellcheck > /dev/null
fi
if ! command -v htpasswd > /dev/null; then      # bcrypt hashes: scripts/kind/secrets.sh's test
  apt-get update -qq && apt-get install -y -qq apache2-utils > /dev/null
fi
if ! command -v chromium > /dev/null; then      # headless browser: tests/docs/test_site.py
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi
