#!/bin/sh
# Browser for tests/test_webui.py: Debian's chromium (driven by Playwright's python package with
# executable_path=/usr/bin/chromium; never `playwright install`). Installs it when missing (needs root
# or sudo); harmless when present. Usage: sh tests/browser_setup.sh
set -e
CHROMIUM="${FSSEG_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  echo "chromium present: $CHROMIUM"
  exit 0
fi
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
  echo "chromium missing and not root (no sudo): browser tests will be skipped" >&2; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; } \
  || { echo "could not install chromium: browser tests will be skipped" >&2; exit 0; }
echo "chromium installed: $(command -v chromium)"
