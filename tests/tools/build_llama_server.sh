#!/usr/bin/env bash
# Build llama.cpp's own llama-server (CPU only) from the llama-cpp-python sdist pinned in
# pyproject.toml, which vendors the whole llama.cpp tree, and print the binary's path.
#
#   tests/tools/build_llama_server.sh          build once (cached), print the path
#   tests/tools/build_llama_server.sh --path   print the path if it is built, else exit 1
#
# The cache lives outside the repository and is keyed on the pinned version:
#   ${HELIXD_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-~/.cache}/helixd}/llama-server-VERSION/
# A build happens in a temporary folder beside it and is renamed into place only once the
# binary runs, so an interrupted build never leaves a half cache; a lock keeps two builds
# (two `make` runs) from racing. Progress goes to stderr, the path alone to stdout.
#
# Flags: Release, static libraries (the binary is self-contained, so it can be moved),
# GGML_NATIVE=OFF (a cache restored on another CPU must not die of SIGILL; the portable
# x86-64 set still has AVX2/FMA), no OpenMP (ggml's own thread pool: no libgomp, no
# spinning threads on a shared test machine), no curl/OpenSSL and no web UI download: the
# build never touches the network beyond pip fetching the sdist.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="python3"
jobs="${HELIXD_BUILD_JOBS:-2}"

die() { echo "build_llama_server: $*" >&2; exit 1; }
say() { echo "build_llama_server: $*" >&2; }

version="$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9][0-9.]*\)".*/\1/p' "$root/pyproject.toml")"
[ -n "$version" ] || die "no llama-cpp-python[server]==VERSION pin in $root/pyproject.toml"

cache_root="${HELIXD_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/helixd}"
dest="$cache_root/llama-server-$version"
binary="$dest/bin/llama-server"

if [ "${1:-}" = "--path" ]; then
    [ -x "$binary" ] || { say "not built: run $0 (or make llama-server)"; echo "$binary"; exit 1; }
    echo "$binary"
    exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--path]"

if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

for tool in cmake g++; do
    command -v "$tool" >/dev/null || die "$tool is not installed (Debian: apt-get install cmake ninja-build g++)"
done
generator="Ninja"
command -v ninja >/dev/null || { generator="Unix Makefiles"; say "ninja not found, using make (apt-get install ninja-build is faster)"; }

mkdir -p "$cache_root"
exec 9>"$cache_root/llama-server-$version.lock"
flock 9
# Another build may have finished while this one waited for the lock.
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

work="$(mktemp -d "$cache_root/.llama-server-$version.XXXXXX")"
log="$cache_root/llama-server-$version.build.log"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

say "downloading the llama-cpp-python $version sdist"
# --no-binary for this package only: pip still prepares its metadata in an isolated
# environment, and with :all: it would build scikit-build-core's own build dependencies
# from source too (minutes, for nothing).
"$python" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -d "$work/sdist" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; die "pip download failed; full log: $log"; }
tar -xzf "$work/sdist/llama_cpp_python-$version.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
[ -f "$src/tools/server/CMakeLists.txt" ] || die "the sdist has no vendor/llama.cpp/tools/server"

say "configuring llama.cpp (vendored by llama-cpp-python $version)"
cmake -S "$src" -B "$work/build" -G "$generator" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_OPENMP=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "cmake configure failed; full log: $log"; }

say "building llama-server with $jobs jobs (several minutes on 2 cores; log: $log)"
cmake --build "$work/build" --target llama-server -j "$jobs" >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "cmake build failed; full log: $log"; }

mkdir -p "$work/out/bin"
cp "$work/build/bin/llama-server" "$work/out/bin/llama-server"
"$work/out/bin/llama-server" --version >"$work/out/VERSION" 2>&1 \
    || { cat "$work/out/VERSION" >&2; die "the built llama-server does not run"; }
echo "llama-cpp-python $version; built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - started)) s" >>"$work/out/VERSION"
rm -rf "$dest"   # a folder without a working binary: never a cache
mv -T "$work/out" "$dest"
say "built in $((SECONDS - started)) s: $(head -n 1 "$dest/VERSION")"
echo "$binary"
