#!/bin/bash
# Build a bootable Debian root file system with helixd installed from this repository.
#
#   tests/system/make-rootfs.sh DEST [REPO]
#
# 1. Installs debootstrap and systemd-container on the host when they are missing
#    (apt-get; the host must be Debian/Ubuntu).
# 2. Creates the base system with debootstrap, or unpacks it from a cached tarball:
#    $HELIXD_TEST_CACHE/rootfs-<suite>-<hash>.tar, keyed by a hash of everything that
#    goes into it (suite, mirror, variant, package list, this recipe's version). A fresh
#    machine builds it (about a minute); later runs unpack it in seconds.
# 3. Copies REPO (default: this repository) to DEST/usr/src/helixd and, inside DEST
#    (systemd-nspawn, not booted, host network), runs packaging/build-deb.sh and installs
#    the .deb with dpkg -i: the package, its postinst and its venv are what gets tested.
#
# DEST must not exist or be empty. Needs root. Exit status 77 means "cannot run here"
# (not root, or the tools cannot be installed); the test suite turns it into a skip.
#
# Environment:
#   HELIXD_TEST_CACHE  cache directory (default /var/cache/helixd-test): rootfs tarballs
#                      and pip's cache (bind-mounted into DEST while building the .deb)
#   DEBIAN_MIRROR      default http://deb.debian.org/debian
#   DEBIAN_SUITE       default bookworm
set -euo pipefail
umask 022

SKIP=77
die() { echo "make-rootfs.sh: $*" >&2; exit 1; }
skip() { echo "make-rootfs.sh: cannot run here: $*" >&2; exit "$SKIP"; }

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 DEST [REPO]" >&2; exit 2; }
DEST=$1
REPO=$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)
CACHE=${HELIXD_TEST_CACHE:-/var/cache/helixd-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
VARIANT=minbase
# systemd + systemd-sysv: the init that boots; dbus: systemctl/logind as on a real host;
# python3 + python3-venv: build-deb.sh makes the venv with the target's python;
# procps: ps/pgrep for the checks; util-linux (runuser, setpriv) and passwd (useradd)
# are in minbase already but are named so the intent is explicit.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,procps,util-linux,passwd
RECIPE_VERSION=1   # bump when the steps below change what the tarball contains

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
if [ -e "$DEST" ] && [ -n "$(ls -A "$DEST")" ]; then
    die "$DEST exists and is not empty"
fi

# --- host tools ---------------------------------------------------------------------
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    command -v apt-get >/dev/null || skip "debootstrap/systemd-nspawn missing and no apt-get"
    echo ">> installing debootstrap systemd-container on the host"
    export DEBIAN_FRONTEND=noninteractive
    # Without an update first when the lists are fresh enough; with one otherwise.
    if ! apt-get install -y --no-install-recommends debootstrap systemd-container; then
        if ! { apt-get update \
            && apt-get install -y --no-install-recommends debootstrap systemd-container; }
        then
            skip "apt-get could not install debootstrap systemd-container"
        fi
    fi
fi

# --- base system (cached) -----------------------------------------------------------
mkdir -p "$CACHE/pip"
KEY=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$VARIANT" "$PACKAGES" \
    | sha256sum | cut -c1-16)
TARBALL=$CACHE/rootfs-$SUITE-$KEY.tar
# One builder at a time; others wait and then reuse its tarball.
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$TARBALL" ]; then
    BUILD=$(mktemp -d "$CACHE/build.XXXXXX")
    chmod 0755 "$BUILD"   # becomes "/": mktemp's 0700 would lock every user out
    trap 'rm -rf --one-file-system "$BUILD"' EXIT
    echo ">> debootstrap $SUITE ($VARIANT) from $MIRROR; cache miss for $TARBALL"
    start=$SECONDS
    debootstrap --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$BUILD" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    echo ">> debootstrap took $((SECONDS - start)) s"
    # An empty machine-id: every boot of a copy gets its own (from nspawn's UUID).
    : >"$BUILD/etc/machine-id"
    rm -f "$BUILD"/var/cache/apt/archives/*.deb "$BUILD"/var/lib/apt/lists/*_Packages
    tar -C "$BUILD" --numeric-owner --xattrs --xattrs-include='*' -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf --one-file-system "$BUILD"
    trap - EXIT
fi
flock -u 9
exec 9>&-

echo ">> unpacking $TARBALL into $DEST"
mkdir -p "$DEST"
tar -C "$DEST" --numeric-owner --xattrs --xattrs-include='*' -xpf "$TARBALL"
chmod 0755 "$DEST"

# --- helixd -------------------------------------------------------------------------
echo ">> copying $REPO to $DEST/usr/src/helixd"
mkdir -p "$DEST/usr/src/helixd"
tar -C "$REPO" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
    --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis --exclude=./var \
    . | tar -C "$DEST/usr/src/helixd" -xf -

# pip inside DEST trusts what the host trusts (TLS-intercepting proxies on CI hosts),
# and reuses a download cache across runs.
MACHINE=helixd-build-$$
NSPAWN_ARGS=(--quiet -D "$DEST" --machine="$MACHINE" --pipe --bind="$CACHE/pip:/root/.cache/pip")
if [ ! -d /run/systemd/system ]; then
    # No systemd on the host (a container): nothing to register with, no scope to make.
    NSPAWN_ARGS+=(--register=no --keep-unit)
fi
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$ca" ]; then
        NSPAWN_ARGS+=(--bind-ro="$ca:/run/host-ca-certificates.crt"
            --setenv=PIP_CERT=/run/host-ca-certificates.crt)
        break
    fi
done
for var in PIP_INDEX_URL PIP_TRUSTED_HOST http_proxy https_proxy no_proxy; do
    if [ -n "${!var:-}" ]; then NSPAWN_ARGS+=(--setenv="$var=${!var}"); fi
done

echo ">> building and installing the .deb inside $DEST"
start=$SECONDS
systemd-nspawn "${NSPAWN_ARGS[@]}" /bin/bash -euc '
    cd /usr/src/helixd
    packaging/build-deb.sh /var/tmp/helixd-deb
    dpkg -i /var/tmp/helixd-deb/helixd_*.deb
    helixd --version
'
echo ">> .deb build + install took $((SECONDS - start)) s"
# nspawn cannot clean its propagation directory when /run is not a tmpfs (as in some
# containers); it is empty and ours, so remove it.
rm -rf "/run/systemd/nspawn/propagate/$MACHINE" 2>/dev/null || true
echo ">> $DEST ready"
