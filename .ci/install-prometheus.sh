#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) unless both are on PATH.
# The dashboard and scrape tests run a real Prometheus and promtool. Idempotent and
# non-interactive; .ci/run calls it.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(command -v prometheus) $(command -v promtool)"
    exit 0
fi

source "$(dirname "$0")/apt.sh"
# Without recommends: the server and promtool, not the recommended node exporter.
apt_install prometheus
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# The package starts a system service where an init system runs; the tests start their own
# Prometheus on a free port, so a service on :9090 is only in the way.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
fi

command -v prometheus >/dev/null
command -v promtool >/dev/null
prometheus --version | head -n 1
