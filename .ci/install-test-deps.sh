#!/usr/bin/env bash
# Install what the login tests need on a fresh Debian 12 machine, idempotently:
#   - Debian's chromium (/usr/bin/chromium; browsers cannot be downloaded here)
#   - node + npm (only if missing; the machines normally have Node 20)
#   - tests/oidc/node_modules via `npm ci` (oidc-provider, playwright-core)
# Anything already present is left alone. Needs root for apt.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
oidc="$root/tests/oidc"
started=$SECONDS

say() { printf 'install-test-deps: %s\n' "$*"; }

apt_packages=()
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_packages+=(npm)

if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "need root to install: ${apt_packages[*]}" >&2
        exit 1
    fi
    say "apt-get install ${apt_packages[*]}"
    apt-get update -qq
    apt-get install -y -qq "${apt_packages[@]}" >/dev/null
else
    say "chromium, node and npm already installed"
fi

# npm ci wipes and reinstalls node_modules: skip it when the installed tree
# already matches package-lock.json (npm keeps a copy of the lock it installed).
lock="$oidc/package-lock.json"
installed="$oidc/node_modules/.package-lock.json"
if [ -f "$installed" ] && [ -d "$oidc/node_modules/oidc-provider" ] \
    && [ -d "$oidc/node_modules/playwright-core" ] && [ "$installed" -nt "$lock" ]; then
    say "tests/oidc/node_modules is up to date"
else
    say "npm ci in tests/oidc"
    (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

say "done in $((SECONDS - started)) s ($(/usr/bin/chromium --version 2>/dev/null || echo 'no chromium'); node $(node --version))"
