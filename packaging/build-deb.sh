#!/bin/bash
# Build helixd_<version>_<arch>.deb from this repository with dpkg-deb (no debhelper).
#
#   packaging/build-deb.sh [OUTDIR]        # default OUTDIR: dist/
#
# The package installs a self-contained virtual environment at /opt/helixd (helixd and
# all its Python dependencies from PyPI), symlinks /usr/bin/helixd and /usr/bin/helixctl
# into it, and ships the systemd unit, the sysusers.d/tmpfiles.d snippets and
# /etc/helixd/helixd.toml (a conffile, from etc/helixd.toml).
#
# The venv is built on the interpreter the package will run on, so run this script on
# the target distribution (Debian bookworm: python3.11) or in a container/chroot of it.
# It needs: python3, python3-venv, dpkg-deb, and network access to PyPI (or a pip
# configured with a local index / wheel cache via the usual PIP_* variables).
#
# Environment: PYTHON (default /usr/bin/python3), PIP_ARGS (extra `pip install`
# arguments, e.g. "--no-index --find-links /wheels").
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=$(mkdir -p "${1:-$REPO/dist}" && cd "${1:-$REPO/dist}" && pwd)
PREFIX=/opt/helixd
PYTHON=${PYTHON:-/usr/bin/python3}

die() { echo "build-deb.sh: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (install dpkg)"
[ -x "$PYTHON" ] || die "$PYTHON not found"
# The versioned binary (/usr/bin/python3.11): the venv links to it, so the package
# depends on that exact Python and keeps working if /usr/bin/python3 moves on.
PYBIN=$(readlink -f "$PYTHON")
PYVER=$("$PYBIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYBIN is Python $PYVER; helixd needs >= 3.11"
"$PYBIN" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYBIN cannot create venvs: apt-get install python3-venv"
[ -f "$REPO/etc/helixd.toml" ] || die "missing $REPO/etc/helixd.toml (the shipped config)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/helixd-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root              # becomes / on the target
VENV=$ROOT$PREFIX            # built here, relocated to $PREFIX below

# A clean copy of the sources: pip builds in-tree, and the working tree's .venv, caches
# and build leftovers must not end up in (or slow down) the build.
mkdir -p "$WORK/src"
tar -C "$REPO" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
    --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis --exclude=./var \
    . | tar -C "$WORK/src" -xf -

echo ">> creating venv for $PREFIX with $PYBIN"
"$PYBIN" -m venv "$VENV"
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
    ${PIP_ARGS:-} "$WORK/src"
VERSION=$("$VENV/bin/python" -c 'import helixd; print(helixd.__version__)')

echo ">> relocating venv to $PREFIX"
# Script shebangs and the activate scripts name the build path; the interpreter links
# (bin/python3 -> /usr/bin/python3.11) are absolute already.
for f in "$VENV"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if [ "$(head -c 2 "$f")" = "#!" ]; then
        sed -i "1s|^#!$VENV/|#!$PREFIX/|" "$f"
    fi
done
sed -i "s|$VENV|$PREFIX|g" "$VENV"/bin/activate* "$VENV/pyvenv.cfg"
# pip's record of the temporary source directory helixd was installed from.
rm -f "$VENV"/lib/python*/site-packages/helixd-*.dist-info/direct_url.json
# Byte-compile now, recording the installed paths (tracebacks show real file names);
# the service cannot write __pycache__ under /opt at run time.
"$PYBIN" -m compileall -q -f -j 0 -s "$ROOT" -p / "$VENV/lib" >/dev/null
if leftovers=$(grep -rlI --exclude=RECORD "$WORK" "$VENV"); then
    echo "build-deb.sh: warning: build path left in:" >&2
    echo "$leftovers" | head -n 20 >&2
fi

echo ">> laying out the package"
install -d "$ROOT/usr/bin"
ln -s "$PREFIX/bin/helixd" "$ROOT/usr/bin/helixd"
ln -s "$PREFIX/bin/helixctl" "$ROOT/usr/bin/helixctl"
install -D -m 0644 "$REPO/units/helixd.service" "$ROOT/lib/systemd/system/helixd.service"
install -D -m 0644 "$REPO/packaging/sysusers.d/helixd.conf" \
    "$ROOT/usr/lib/sysusers.d/helixd.conf"
install -D -m 0644 "$REPO/packaging/tmpfiles.d/helixd.conf" \
    "$ROOT/usr/lib/tmpfiles.d/helixd.conf"
install -D -m 0644 "$REPO/etc/helixd.toml" "$ROOT/etc/helixd/helixd.toml"
install -d "$ROOT/usr/share/doc/helixd"
for doc in README.md LICENSE; do
    if [ -f "$REPO/$doc" ]; then install -m 0644 "$REPO/$doc" "$ROOT/usr/share/doc/helixd/"; fi
done

ARCH=$(dpkg --print-architecture)   # compiled wheels (aiohttp, pydantic-core, psutil)
# PEP 440 pre-releases sort before the release in Debian only with "~".
DEBVERSION=$(echo "$VERSION" | sed -E 's/[.]?(a|b|rc|dev)([0-9]*)/~\1\2/g; s/\+/+local./')
install -d "$ROOT/DEBIAN"
cat >"$ROOT/DEBIAN/control" <<EOF
Package: helixd
Version: $DEBVERSION
Architecture: $ARCH
Maintainer: helixd maintainers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Depends: python$PYVER, systemd
Section: admin
Priority: optional
Description: supervisor daemon for local LLM servers
 helixd starts and supervises local inference servers (Ollama, vLLM,
 llama.cpp, ...), decides which models stay in GPU memory, and offers one
 OpenAI-compatible endpoint. helixctl drives it over a Unix socket.
 .
 This package ships a private Python virtual environment in $PREFIX.
EOF
echo /etc/helixd/helixd.toml >"$ROOT/DEBIAN/conffiles"

cat >"$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # User/group helixd (+ video, render), then /var/lib/helixd and /var/log/helixd.
    systemd-sysusers helixd.conf
    systemd-tmpfiles --create helixd.conf
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        # An upgrade restarts a running helixd on the new code; an install starts
        # nothing: enable it with `systemctl enable --now helixd` after editing
        # /etc/helixd/helixd.toml.
        if [ -n "$2" ]; then
            systemctl try-restart helixd.service || true
        fi
    fi
fi
exit 0
EOF
cat >"$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop helixd.service || true
fi
exit 0
EOF
cat >"$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    # What `systemctl enable` made; state, models and logs under /var stay.
    rm -f /etc/systemd/system/multi-user.target.wants/helixd.service
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

DEB=$OUTDIR/helixd_${DEBVERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zgzip --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
