#!/usr/bin/env bash
# The console's browser tests drive Debian's chromium through Playwright (never a downloaded browser, see
# tests/console_support.py). Installs it when missing: apt-get as root, or through sudo when that needs no password.
# When it cannot, it says why and exits 0 (the rest of the set-up still works), leaving the reason in
# .crux/chromium-missing so the browser tests skip with it instead of failing. CRUX_REQUIRE_CHROMIUM=1 (CI) makes
# that an error instead: a CI run must not pass with its browser tests skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CRUX_CHROMIUM:-/usr/bin/chromium}
REASON_FILE=.crux/chromium-missing
LOG=.crux/setup.log
mkdir -p .crux

if [[ -x "$CHROMIUM" ]]; then
  rm -f "$REASON_FILE"
  exit 0
fi

missing() {  # say why, remember it for the tests, and go on (or stop when CI requires the browser)
  echo "setup: $CHROMIUM is missing and was not installed: $1" >&2
  echo "setup: the console's browser tests will be skipped; install it with: apt-get install chromium" >&2
  echo "$1 (install it with: apt-get install chromium)" > "$REASON_FILE"
  if [[ "${CRUX_REQUIRE_CHROMIUM:-0}" == "1" ]]; then
    echo "setup: CRUX_REQUIRE_CHROMIUM=1: stopping" >&2
    exit 1
  fi
  exit 0
}

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  # -n: never wait for a password prompt nobody answers (make test, CI).
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    missing "not root and no password-less sudo"
  fi
fi
command -v apt-get >/dev/null 2>&1 || missing "no apt-get on this machine (not Debian/Ubuntu)"

echo "setup: installing Debian's chromium for the browser tests (apt-get, about a minute)"
if ! "${as_root[@]}" apt-get update -q >>"$LOG" 2>&1; then
  missing "apt-get update failed (offline?); see $LOG"
fi
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
  >>"$LOG" 2>&1; then
  missing "apt-get install chromium failed; see $LOG"
fi
[[ -x "$CHROMIUM" ]] || missing "apt-get installed chromium but $CHROMIUM is still not there"
rm -f "$REASON_FILE"
echo "setup: chromium installed at $CHROMIUM"
