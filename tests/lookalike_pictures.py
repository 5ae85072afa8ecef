"""Test pictures shared by the dedup and service tests: real photos made small, and look-alike pairs that
hashes call close and only the pixel check tells apart."""
from PIL import Image, ImageDraw, ImageFont


def rgb(path, side=640) -> Image.Image:
    """The photo at `path` in RGB, at most `side` pixels a side."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def save_slides(folder) -> None:
    """slide_a.png, slide_b.png: two slides of one template (title bar, three bullets) with other words."""
    font = ImageFont.load_default(size=28)
    for name, lines in (("a", ("Quarterly review", "Backups weekly", "Camera import", "Session notes")),
                        ("b", ("Roadmap summary", "Index folders", "Colour profiles", "Panel layout"))):
        im = Image.new("RGB", (800, 450), "white")
        d = ImageDraw.Draw(im)
        d.rectangle([0, 0, 800, 70], fill=(30, 60, 100))
        d.text((30, 18), lines[0], fill="white", font=font)
        for k, line in enumerate(lines[1:]):
            d.text((60, 120 + 50 * k), "- " + line, fill="black", font=font)
        im.save(folder / f"slide_{name}.png")


def save_burst(folder, scene: str, subject: str, side: int, size: tuple[int, int]) -> None:
    """burst_a.png, burst_b.png: two frames of a "burst": the photo `scene` (at most `side` pixels) with the
    photo `subject` pasted on it, a fifth of `size`'s width wide, at a third of its height, a third of its
    width along and then a twelfth further."""
    w, h = size
    obj = rgb(subject, side=w // 5)
    for name, x in (("a", w // 3), ("b", w // 3 + w // 12)):
        frame = rgb(scene, side)
        frame.paste(obj, (x, h // 3))
        frame.save(folder / f"burst_{name}.png")
