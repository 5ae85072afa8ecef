#!/usr/bin/env bash
# Sets up imgsim_fast on a fresh Debian machine: apt packages, a virtual environment in .venv,
# pillow-simd built from source, the native extension, and (with --test) the test-only tools.
# Idempotent: every step checks whether it is already done, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT_TEST=0
for a in "$@"; do
  case "$a" in
    --test) WANT_TEST=1 ;;
    *) echo "setup.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. Debian packages: compilers, and the headers pillow-simd needs for JPEG, PNG, WebP and TIFF.
APT_PKGS="build-essential python3-dev python3-venv pkg-config libjpeg62-turbo-dev zlib1g-dev libpng-dev
libtiff-dev libwebp-dev liblcms2-dev libfreetype-dev"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# 2. The virtual environment.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }

# A stamp per step, keyed on the files that define it, keeps re-runs quick.
stamp_ok() { [ -f ".venv/.stamp-$1" ] && [ "$(cat ".venv/.stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" > ".venv/.stamp-$1"; }
key() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# 3. Runtime dependencies. torch is pinned: any other torch requirement pulls CUDA wheels of several GB.
#    pillow-heif (HEIC) requires `pillow`, so it goes in with --no-deps (requirements-nodeps.txt).
K=$(key requirements.txt requirements-nodeps.txt)
if ! stamp_ok deps "$K"; then
  log "installing runtime dependencies"
  pip_q --upgrade pip setuptools wheel
  pip_q -r requirements.txt
  pip_q --no-deps -r requirements-nodeps.txt
  stamp_set deps "$K"
fi

# 4. Test-only tools. imagehash pulls plain pillow, so it goes in with --no-deps. Chromium checks the
#    HTML report in a real browser.
if [ "$WANT_TEST" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium (headless browser for the report test)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  K=$(key requirements-test.txt requirements-test-nodeps.txt)
  if ! stamp_ok test "$K"; then
    log "installing test dependencies"
    pip_q -r requirements-test.txt
    pip_q --no-deps -r requirements-test-nodeps.txt
    stamp_set test "$K"
  fi
fi

# 5. pillow-simd, built from source, installed last: any package that pulls `pillow` replaces it silently,
#    so we check which PIL is importable (pillow-simd versions end in .postN) rather than trusting pip.
PILLOW_SIMD_VERSION=12.1.1.post0
if ! "$VPY" -c "import PIL, sys; sys.exit(0 if PIL.__version__ == '$PILLOW_SIMD_VERSION' else 1)" 2>/dev/null; then
  log "building pillow-simd $PILLOW_SIMD_VERSION from source (about two minutes)"
  "$VPY" -m pip uninstall -q -y pillow pillow-simd >/dev/null 2>&1 || true
  # pillow-simd picks its SIMD level at compile time: AVX2 only where this CPU has it.
  CCFLAGS="-msse4"
  grep -qw avx2 /proc/cpuinfo && CCFLAGS="-mavx2"
  CC="cc $CCFLAGS" pip_q --no-cache-dir --no-binary pillow-simd "pillow-simd==$PILLOW_SIMD_VERSION"
fi

# 6. The package itself, editable, with its C++ extension. Rebuilt only when csrc/ or setup.py change.
K=$(key setup.py pyproject.toml csrc/* )
if ! stamp_ok build "$K" || ! "$VPY" -c "import imgsim_fast._core" 2>/dev/null; then
  log "building imgsim_fast"
  # The compiler's and setuptools' chatter goes to a log, shown only when the build fails.
  if ! pip_q --no-build-isolation --no-deps -e . > .venv/build.log 2>&1; then
    cat .venv/build.log >&2
    exit 1
  fi
  stamp_set build "$K"
fi

# 7. Real photos for the demo, tests and benchmarks, taken offline from Debian's wallpaper packages.
"$ROOT/scripts/fetch_photos.sh" >&2

"$VPY" -c "import PIL, sys; v = PIL.__version__; sys.exit(0 if v == '$PILLOW_SIMD_VERSION' else 'plain Pillow ' + v + ' replaced pillow-simd')"
log "ready: $("$VPY" -m imgsim_fast capabilities --short 2>/dev/null || echo 'imgsim_fast installed')"
