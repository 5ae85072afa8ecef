"""Shared fixtures: the real photos unpacked by scripts/fetch_photos.sh."""
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_DIR = os.path.join(REPO, ".cache", "photos")


def real_photos(min_bytes: int = 0) -> list[str]:
    """Real photos (the wallpaper packages' JPEG and PNG pictures), sorted; [] when not fetched."""
    files = sorted(
        p for p in glob.glob(os.path.join(PHOTO_DIR, "*wallpapers", "*"))
        if p.lower().endswith((".jpg", ".jpeg", ".png")) and os.path.getsize(p) >= min_bytes
    )
    return files


@pytest.fixture(scope="session")
def photos() -> list[str]:
    files = real_photos()
    if len(files) < 5:
        pytest.skip(f"real photos missing under {PHOTO_DIR}: run scripts/fetch_photos.sh (scripts/setup.sh does)")
    return files
