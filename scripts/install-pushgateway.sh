#!/usr/bin/env bash
# Install Debian's Prometheus Pushgateway (the drift job pushes to a real one in tests/monitoring)
# and promtool (package prometheus: `promtool check rules` and `promtool test rules` run the alert
# unit tests). Idempotent; needs root. No service is started: the tests start their own.
set -euo pipefail

if command -v prometheus-pushgateway > /dev/null && command -v promtool > /dev/null; then
  echo "pushgateway and promtool present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: installing needs root (apt-get); run: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus-pushgateway prometheus > /dev/null
command -v prometheus-pushgateway > /dev/null && command -v promtool > /dev/null
echo "installed: $(prometheus-pushgateway --version 2>&1 | head -1); $(promtool --version 2>&1 | head -1)"
