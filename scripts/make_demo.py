"""Builds the demo folder for `scripts/dedup.sh`: real photos plus edited copies of some of them.

Sources are the wallpapers unpacked by scripts/fetch_photos.sh. The copies are the everyday kinds of
duplicate (smaller export, recompressed JPEG, brightened, PNG re-save), so a first run shows real groups.
Idempotent: an existing complete demo folder is left as it is.
"""
import os
import sys

from PIL import Image, ImageEnhance

SRC = sys.argv[1] if len(sys.argv) > 1 else ".cache/photos"
DEST = sys.argv[2] if len(sys.argv) > 2 else ".cache/demo"
DONE = os.path.join(DEST, ".complete")

if os.path.exists(DONE):
    sys.exit(0)
photos = sorted(
    os.path.join(d, f)
    for d in (os.path.join(SRC, "ukui-wallpapers"), os.path.join(SRC, "lomiri-wallpapers"))
    if os.path.isdir(d)
    for f in os.listdir(d)
)
if not photos:
    sys.exit(f"make_demo: no photos under {SRC}; run scripts/fetch_photos.sh")
os.makedirs(os.path.join(DEST, "copies"), exist_ok=True)
for i, src in enumerate(photos):
    name = os.path.splitext(os.path.basename(src))[0].replace("usr_share_backgrounds_", "")
    with Image.open(src) as im:
        im = im.convert("RGB")
        # Originals, downscaled to at most 2000 px so the folder stays small.
        im.thumbnail((2000, 2000), Image.Resampling.LANCZOS)
        im.save(os.path.join(DEST, f"{name}.jpg"), quality=92)
        if i % 3 == 0:
            small = im.resize((im.width // 3, im.height // 3), Image.Resampling.BILINEAR)
            small.save(os.path.join(DEST, "copies", f"{name}_small.jpg"), quality=80)
        if i % 3 == 1:
            im.save(os.path.join(DEST, "copies", f"{name}_q35.jpg"), quality=35)
            im.save(os.path.join(DEST, "copies", f"{name}_resaved.png"))
        if i % 4 == 2:
            ImageEnhance.Brightness(im).enhance(1.15).save(os.path.join(DEST, "copies", f"{name}_bright.jpg"))
with open(DONE, "w") as f:
    f.write("ok\n")
print(f"[demo] built {DEST} from {len(photos)} photos", file=sys.stderr)
