#!/usr/bin/env bash
# Real photos, offline: Debian's wallpaper packages (downloaded with apt-get, unpacked with dpkg -x, never
# installed) give the demo, the tests and the benchmarks real JPEG and PNG pictures. Idempotent.
# Output: .cache/photos/<package>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.cache/photos
PKGS="ukui-wallpapers lomiri-wallpapers desktop-base"
mkdir -p .cache/debs "$DEST"
for p in $PKGS; do
  [ -f "$DEST/.done-$p" ] && continue
  deb=$(ls .cache/debs/${p}_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    echo "[photos] downloading $p" >&2
    (cd .cache/debs && apt-get download -qq "$p" >/dev/null 2>&1) || {
      apt-get update -qq >/dev/null 2>&1 || true
      (cd .cache/debs && apt-get download -qq "$p" >/dev/null)
    }
    deb=$(ls .cache/debs/${p}_*.deb | head -n1)
  fi
  tmp=$(mktemp -d)
  dpkg -x "$deb" "$tmp"
  mkdir -p "$DEST/$p"
  # Keep raster images only; desktop-base also ships SVGs and many sizes of one picture (keep the largest).
  find "$tmp" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) -size +40k -print0 |
    while IFS= read -r -d '' f; do
      name=$(echo "${f#$tmp/}" | tr '/' '_')
      cp "$f" "$DEST/$p/$name"
    done
  rm -rf "$tmp"
  touch "$DEST/.done-$p"
done
echo "[photos] $(find "$DEST" -type f ! -name '.done-*' | wc -l) photos in $DEST" >&2

# ---------------------------------------------------------------------------------------------------------
# Accuracy-benchmark sources (issue 6; imgsim_fast/bench/corpus.py unpacks them into .cache/corpus_src):
# mate-backgrounds (photos; downloaded, never installed) and the scikit-image wheel, read as a zip for the
# pictures in skimage/data (never installed: it would pull plain Pillow over pillow-simd). Best effort: the
# benchmark uses whatever is there.
mkdir -p .cache/debs .cache/wheels
if ! ls .cache/debs/mate-backgrounds_*.deb >/dev/null 2>&1; then
  echo "[photos] downloading mate-backgrounds (accuracy corpus)" >&2
  (cd .cache/debs && apt-get download -qq mate-backgrounds >/dev/null 2>&1) || echo "[photos] mate-backgrounds unavailable" >&2
fi
if ! ls .cache/wheels/scikit_image-*.whl >/dev/null 2>&1; then
  PYBIN=python3; [ -x .venv/bin/python ] && PYBIN=.venv/bin/python
  echo "[photos] downloading the scikit-image wheel (accuracy corpus pictures only)" >&2
  "$PYBIN" -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels scikit-image >/dev/null 2>&1 ||
    echo "[photos] scikit-image wheel unavailable" >&2
fi
