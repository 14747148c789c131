#!/usr/bin/env bash
# LiteLLM's proxy in a virtualenv of its own, so helixd's stays lean; prints its path.
#
# The venv lives outside the repository, keyed on the version:
# ${XDG_CACHE_HOME:-~/.cache}/helixd/litellm-VERSION, a symlink to the folder it was built
# in. It is reused when present; a new one is built in a fresh folder (console scripts
# keep the path they were installed at, so the folder never moves) and the symlink is put
# in place with one rename, so a half-built venv is never seen, and a lock keeps two runs
# from building it at once. It pulls many packages: about a minute on 2 cores with a
# warm pip cache, more when they download.
#
# Usage: tests/tools/litellm_venv.sh [VERSION]   (default: the version helixctl writes for)
set -euo pipefail

VERSION="${1:-${LITELLM_VERSION:-1.108.5}}"
PYTHON="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/helixd"
LINK="$CACHE/litellm-$VERSION"

ready() { [ -x "$LINK/bin/litellm" ] && [ -f "$LINK/.helixd-complete" ]; }

if ready; then echo "$LINK"; exit 0; fi
mkdir -p "$CACHE/litellm-$VERSION.d"
exec 9>"$CACHE/litellm-$VERSION.lock"
flock 9
if ready; then echo "$LINK"; exit 0; fi   # another run built it while we waited

BUILD="$(mktemp -d "$CACHE/litellm-$VERSION.d/venv.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT
echo "building LiteLLM $VERSION's venv in $BUILD (once per version)" >&2
"$PYTHON" -m venv "$BUILD"
"$BUILD/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$VERSION" >&2
LITELLM_LOCAL_MODEL_COST_MAP=True "$BUILD/bin/litellm" --version >/dev/null 2>&1 </dev/null || {
  echo "litellm $VERSION installed but does not run" >&2; exit 1; }
touch "$BUILD/.helixd-complete"
ln -s "$BUILD" "$LINK.new.$$"
mv -T "$LINK.new.$$" "$LINK"            # rename(2): atomic
trap - EXIT
# Older builds of this version (a lost race, an interrupted run) are no longer linked.
for old in "$CACHE/litellm-$VERSION.d"/venv.*; do
  [ "$old" = "$BUILD" ] || rm -rf "$old"
done
echo "$LINK"
