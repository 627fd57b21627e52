#!/usr/bin/env bash
# System packages the test suite drives for real: tmux (watch) and Chromium (report).
# Installed from Debian's packages when missing and we are allowed to; otherwise the
# tests that need them skip with a loud reason.
set -uo pipefail
need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot install ${need[*]} (need root and apt-get); tests that use them will be skipped" >&2
  exit 0
fi
echo "==> installing ${need[*]} (Debian packages) for the watch/report tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "system-deps: apt-get install ${need[*]} failed; the tests that need them will be skipped" >&2
exit 0
