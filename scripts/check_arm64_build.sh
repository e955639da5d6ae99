#!/usr/bin/env bash
# Cross-compile the kernels extension for arm64 (aarch64-linux-gnu) with zig's clang, to show
# the sources build there (portable unit = NEON; the x86 units are left out by CMake).
# Nothing runs on arm64: this checks compilation and linking only.
#
#   scripts/check_arm64_build.sh            # needs `zig` on PATH, or ZIG_PYTHON (below)
#   ZIG_PYTHON=/tmp/zigvenv/bin/python scripts/check_arm64_build.sh
#
# zig from PyPI, kept out of the project venv:
#   python3 -m venv /tmp/zigvenv && /tmp/zigvenv/bin/pip install ziglang
#
# zig ships no OpenMP runtime, so the linked build is the single-threaded configuration; the
# OpenMP code path is compiled separately against the host GCC's omp.h when one exists.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if command -v zig >/dev/null 2>&1; then
  zig=(zig)
elif [ -n "${ZIG_PYTHON:-}" ]; then
  zig=("$ZIG_PYTHON" -m ziglang)
else
  echo "zig not found: put it on PATH or set ZIG_PYTHON to a python with ziglang" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cxx="$work/aarch64-c++"
printf '#!/bin/sh\nexec %s c++ -target aarch64-linux-gnu "$@"\n' "${zig[*]}" >"$cxx"
chmod +x "$cxx"

echo "== CMake cross build (aarch64, ${zig[*]})"
cmake -S kernels -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER="$cxx" \
  -DPython_EXECUTABLE="$PWD/$py" >"$work/configure.log" 2>&1 || {
  cat "$work/configure.log"
  exit 1
}
grep "kompaktor_kernels:" "$work/configure.log"
cmake --build "$work/build" -- -k 0 >"$work/build.log" 2>&1 || {
  cat "$work/build.log"
  exit 1
}
so=$(ls "$work"/build/_native*.so)
# ELF e_machine 183 = EM_AARCH64
"$py" - "$so" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(20)
assert head[:4] == b"\x7fELF", "not an ELF file"
machine = struct.unpack_from("<H", head, 18)[0]
assert machine == 183, f"e_machine {machine}, expected 183 (aarch64)"
print(f"linked: {sys.argv[1].rsplit('/', 1)[-1]} is an aarch64 shared object")
EOF

omp=$(gcc -print-file-name=include/omp.h 2>/dev/null || true)
if [ -n "$omp" ] && [ -f "$omp" ]; then
  echo "== OpenMP path (host omp.h: $omp)"
  mkdir -p "$work/omp" && cp "$omp" "$work/omp/"
  for f in kernels/csrc/isa_portable.cpp kernels/csrc/dispatch.cpp kernels/csrc/kmeans.cpp \
    kernels/csrc/sliced.cpp; do
    "$cxx" -std=gnu++17 -O2 -Wall -Wextra -Wno-ignored-attributes -fopenmp -I"$work/omp" \
      -c "$f" -o "$work/$(basename "$f").o"
    echo "compiled: $f"
  done
else
  echo "== OpenMP path skipped (no host omp.h)"
fi
echo "arm64 build OK"
