#!/usr/bin/env bash
# Check the kernels for arm64 (aarch64-linux-gnu) from an x86 machine, two ways; each runs when
# its tools are there, and at least one must:
#
# 1. zig's clang (PyPI `ziglang`): CMake cross-builds and links the whole extension (portable
#    unit = NEON; the x86 units are left out by CMake). zig ships no OpenMP runtime, so the
#    linked build is the single-threaded configuration; the OpenMP code path is compiled
#    separately against the host GCC's omp.h when one exists.
#      python3 -m venv /tmp/zigvenv && /tmp/zigvenv/bin/pip install ziglang
#      ZIG_PYTHON=/tmp/zigvenv/bin/python scripts/check_arm64_build.sh   # or zig on PATH
# 2. GCC's aarch64 cross compiler and qemu-user (Debian: g++-aarch64-linux-gnu qemu-user):
#    kernels/selftest (the kernels against scalar references: fp32 on every layout, int8 bit
#    for bit, the KD loss and its gradient, k-means; OpenMP on 1 and 2 threads) is built with
#    GCC and run, emulated, and the panel kernels' weight shuffles must have become by-element
#    fmla (as clang makes them). Emulation checks results, not speed.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
gxx=aarch64-linux-gnu-g++
zig=()
if command -v zig >/dev/null 2>&1; then
  zig=(zig)
elif [ -n "${ZIG_PYTHON:-}" ]; then
  zig=("$ZIG_PYTHON" -m ziglang)
fi
gcc_qemu=0
if command -v "$gxx" >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; then
  gcc_qemu=1
fi
if [ ${#zig[@]} -eq 0 ] && [ $gcc_qemu -eq 0 ]; then
  echo "found neither zig (PATH or ZIG_PYTHON) nor $gxx with qemu-aarch64" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

zig_cross_build() {
  local cxx="$work/aarch64-c++"
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
  # ELF e_machine 183 = EM_AARCH64
  "$py" - "$(ls "$work"/build/_native*.so)" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(20)
assert head[:4] == b"\x7fELF", "not an ELF file"
machine = struct.unpack_from("<H", head, 18)[0]
assert machine == 183, f"e_machine {machine}, expected 183 (aarch64)"
print(f"linked: {sys.argv[1].rsplit('/', 1)[-1]} is an aarch64 shared object")
PY

  local omp
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
}

gcc_emulated_run() {
  echo "== GCC build of kernels/selftest ($gxx), run under qemu-aarch64"
  make -s -j2 -C kernels/selftest CXX="$gxx" OUT="$work/selftest" >"$work/make.log" 2>&1 || {
    cat "$work/make.log"
    exit 1
  }
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$work/selftest/selftest"
  "$py" - "$work/selftest/isa_portable.o" <<'PY'
import re, subprocess, sys
asm = subprocess.run(
    ["aarch64-linux-gnu-objdump", "-dC", "--no-show-raw-insn", sys.argv[1]],
    check=True, capture_output=True, text=True,
).stdout
functions = re.split(r"\n(?=[0-9a-f]+ <)", asm)
panels = "\n".join(f for f in functions if "panel_tile<" in f.split("\n", 1)[0])
# Weight j of a quadruple is lane j: each lane must feed by-element FMAs, and none may be
# copied out first (a dup of lane 0 is also how a scalar is splat, e.g. the bias).
lanes = re.findall(r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[(\d)\]", panels)
dups = re.findall(r"dup\s+v\d+\.4s, v\d+\.s\[[123]\]", panels)
assert set(lanes) == {"0", "1", "2", "3"} and not dups, (sorted(set(lanes)), len(dups))
print(f"panel kernels: {len(lanes)} by-element fmla over lanes 0-3, no lane copied out")
PY
}

if [ ${#zig[@]} -gt 0 ]; then
  zig_cross_build
else
  echo "== zig not found: CMake cross build skipped"
fi
if [ $gcc_qemu -eq 1 ]; then
  gcc_emulated_run
else
  echo "== $gxx or qemu-aarch64 not found: emulated run skipped"
fi
echo "arm64 checks OK"
