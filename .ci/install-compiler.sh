#!/usr/bin/env bash
# Install a C compiler (Debian's gcc) and the main interpreter's headers (python3-dev) unless
# they are there: CI builds the optional compiled step accounting (stallwatch/_cstep.c) to test
# it. Idempotent and non-interactive; .ci/run calls it with the interpreter it uses.
set -euo pipefail

python=${1:-python3}
headers=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if command -v cc >/dev/null 2>&1 && [ -f "$headers/Python.h" ]; then
    echo "a C compiler and $headers/Python.h already installed"
    exit 0
fi
source "$(dirname "$0")/apt.sh"
apt_install gcc libc6-dev python3-dev
cc --version | head -1
