#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver unless both are on PATH (the report page's
# browser test drives them headless). Idempotent and non-interactive; .ci/run calls it.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium and chromedriver already installed"
    exit 0
fi
source "$(dirname "$0")/apt.sh"
apt_install chromium chromium-driver
chromium --version
