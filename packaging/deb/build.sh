#!/usr/bin/env bash
# Build the slmd Debian package with plain dpkg-deb (no debhelper): a
# self-contained Python environment in /opt/slmd on Debian's own python3, the
# systemd units, the default config and the maintainer scripts.
#
#   packaging/deb/build.sh [OUT_DIR]        (default: build/deb)
#
# Environment:
#   PYTHON         builds the wheelhouse (default: .venv/bin/python, else python3)
#   TARGET_PYTHON  the interpreter the package runs on (default: /usr/bin/python3)
#   LLAMA_CMAKE_ARGS  CMake flags for llama-cpp-python (default: CMAKE_ARGS):
#                  packaging/llama-wheel.sh builds it with them, cached per flag
#                  set, compiler and CPU; use -DGGML_NATIVE=OFF for packages that
#                  leave the build host (see INTEGRATORS.md: a native build
#                  targets the build host's CPU) and e.g. "-DGGML_CUDA=on" for GPUs.
#   DEB_COMPRESS   dpkg-deb compressor (default: zstd; xz is smaller, slower)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-$repo/build/deb}")
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=$(command -v python3)
target_py=${TARGET_PYTHON:-/usr/bin/python3}
export CMAKE_ARGS=${CMAKE_ARGS:--DLLAVA_BUILD=OFF}
pip_q=(--quiet --disable-pip-version-check)

die() { echo "build.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg-dev)"
[ -x "$target_py" ] || die "$target_py not found: the package runs on Debian's python3 (apt-get install python3 python3-venv)"
"$target_py" -c 'import ensurepip, venv' 2>/dev/null || die "$target_py lacks venv/ensurepip (apt-get install python3-venv)"

pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
target_ver=$(pyver "$target_py")
version=$("$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)

work=$out/work
stage=$work/root
prefix=/opt/slmd
rm -rf "$work"
mkdir -p "$work/wheels" "$stage"

echo "== wheels: slmd, slmd-client, llama-cpp-python"
# llama-cpp-python is pure ctypes (a py3-none wheel), so one built by $PYTHON
# serves any target interpreter.
cp "$(CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-$CMAKE_ARGS} "$repo/packaging/llama-wheel.sh" "$py")" "$work/wheels/"
"$py" -m pip wheel "${pip_q[@]}" --no-deps -w "$work/wheels" "$repo" "$repo/clients/python"

echo "== environment in $prefix (Python $target_ver)"
env_dir=$stage$prefix
# A venv records no absolute path of its own: the interpreter finds
# pyvenv.cfg next to bin/python, so a venv built under the staging root works
# at /opt/slmd (and under any other root). Only the entry-point scripts carry
# the staging path in their shebangs; they are replaced below.
"$target_py" -m venv "$env_dir"
# The other dependencies are resolved by the target interpreter itself (Debian's
# 3.11.2 rules out some newest releases, e.g. soupsieve needs >= 3.11.5).
# The local wheels go in by file name: an index has an unrelated "slmd"
# project with a higher version, which a bare name would pick.
"$env_dir/bin/python" -m pip install "${pip_q[@]}" --no-compile "$work"/wheels/*.whl
find "$env_dir/bin" -mindepth 1 ! -name 'python*' -delete
sed -i '/^command = /d' "$env_dir/pyvenv.cfg"
find "$env_dir" -name direct_url.json -path '*.dist-info/*' -delete   # build-tree file:// URLs
find "$env_dir" -name __pycache__ -type d -prune -exec rm -rf {} +
# Byte-code compiled now, with the installed path in tracebacks: /opt is
# read-only for the service (ProtectSystem=strict) and the launcher runs
# Python with -B, so nothing is ever written next to the sources.
"$target_py" -m compileall -q -j0 -s "$stage" -p / "$env_dir/lib" >/dev/null
for name in slmd slm; do
    sed "s/@NAME@/$name/" "$here/launcher.sh" > "$env_dir/bin/$name"
    chmod 0755 "$env_dir/bin/$name"
done

echo "== units, config, docs"
install -d "$stage/usr/bin" "$stage/etc/slmd" "$stage/usr/share/doc/slmd" \
    "$stage/usr/lib/systemd/system" "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d"
# Relative links: the package also works unpacked under another root.
ln -s "../..$prefix/bin/slmd" "$stage/usr/bin/slmd"
ln -s "../..$prefix/bin/slm" "$stage/usr/bin/slm"
install -m 0644 "$repo/packaging/systemd/slmd.service" "$stage/usr/lib/systemd/system/slmd.service"
install -m 0644 "$repo/packaging/systemd/slmd.sysusers" "$stage/usr/lib/sysusers.d/slmd.conf"
install -m 0644 "$repo/packaging/systemd/slmd.tmpfiles" "$stage/usr/lib/tmpfiles.d/slmd.conf"
install -m 0644 "$repo/packaging/slmd.toml" "$stage/etc/slmd/slmd.toml"
install -m 0644 "$repo/packaging/INTEGRATORS.md" "$stage/usr/share/doc/slmd/INTEGRATORS.md"

echo "== control"
install -d "$stage/DEBIAN"
next_minor=$(echo "$target_ver" | awk -F. '{print $1 "." $2 + 1}')
size_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@PYVER@/$target_ver/" \
    -e "s/@PYNEXT@/$next_minor/" -e "s/@SIZE@/$size_kb/" "$here/control.in" > "$stage/DEBIAN/control"
echo /etc/slmd/slmd.toml > "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done

deb=$out/slmd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-zstd}" --build "$stage" "$deb" >/dev/null
rm -rf "$work"
echo "$deb ($(du -h "$deb" | cut -f1), installed $((size_kb / 1024)) MiB)"
