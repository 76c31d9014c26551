#!/usr/bin/env bash
# Install what the login tests need on a fresh Debian 12 machine, idempotently:
#   - Debian's chromium (/usr/bin/chromium; browsers cannot be downloaded here)
#   - node + npm (only if missing; the machines normally have Node 20)
#   - tests/oidc/node_modules via `npm ci` (oidc-provider, playwright-core)
#   - the mail clients tests/test_w2_mail.py runs against loopback fakes: msmtp, neomutt, isync (mbsync),
#     and an XOAUTH2 Cyrus SASL plugin for mbsync (Debian 12 has no sasl-xoauth2 / cyrus-sasl-xoauth2
#     package; libkgapi's libsasl2-modules-kdexoauth2 is one: the token is the SASL password)
#   - PostgreSQL (Debian's postgresql: initdb, pg_ctl, postgres under /usr/lib/postgresql/<ver>/bin and the
#     `postgres` user): tests/pgcluster.py starts a private cluster from those binaries for tests/test_w3_pg*.py
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
command -v msmtp >/dev/null 2>&1 || apt_packages+=(msmtp)
command -v neomutt >/dev/null 2>&1 || apt_packages+=(neomutt)
command -v mbsync >/dev/null 2>&1 || apt_packages+=(isync)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_packages+=(postgresql)
dpkg-query -W -f='${Status}' libsasl2-modules-kdexoauth2 2>/dev/null | grep -q 'ok installed' \
    || apt_packages+=(libsasl2-modules-kdexoauth2)

if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "need root to install: ${apt_packages[*]}" >&2
        exit 1
    fi
    say "apt-get install ${apt_packages[*]}"
    apt-get update -qq
    apt-get install -y -qq "${apt_packages[@]}" >/dev/null
else
    say "chromium, node, npm, the mail clients and PostgreSQL already installed"
fi

# npm ci wipes and reinstalls node_modules: skip it when the installed tree
# already matches package-lock.json (npm keeps a copy of the lock it installed).
lock="$oidc/package-lock.json"
installed="$oidc/node_modules/.package-lock.json"
if [ -L "$oidc/node_modules" ] && [ -d "$oidc/node_modules/oidc-provider" ] && [ -d "$oidc/node_modules/playwright-core" ]; then
    # A worktree sharing another checkout's tree: npm ci would empty that tree through the link.
    say "tests/oidc/node_modules is a link to a shared tree; left alone"
elif [ -f "$installed" ] && [ -d "$oidc/node_modules/oidc-provider" ] \
    && [ -d "$oidc/node_modules/playwright-core" ] && [ "$installed" -nt "$lock" ]; then
    say "tests/oidc/node_modules is up to date"
else
    say "npm ci in tests/oidc"
    (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

say "done in $((SECONDS - started)) s ($(/usr/bin/chromium --version 2>/dev/null || echo 'no chromium'); node $(node --version))"
