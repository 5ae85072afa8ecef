"""Test pictures shared by the dedup and service tests: real photos made small, and look-alike pairs that
hashes call close and only the pixel check tells apart."""
from PIL import Image, ImageDraw, ImageFont


def rgb(path, side=640) -> Image.Image:
    """The photo at `path` in RGB, at most `side` pixels a side."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def textured_share(path) -> float:
    """Share of a photo's 128 px grey picture that is textured (3 x 3 deviation of 3 grey levels or more)."""
    import numpy as np

    from imgsim_fast.jobs.dedup import verify

    grey = np.asarray(rgb(path, 128).convert("L"), np.float64)
    return float((verify._contrast(grey, verify._BOX) >= 3).mean())


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


def save_build(folder) -> None:
    """build_1.png ... build_3.png: the steps of a title slide's build (800 x 450, white, an accent bar along
    the top): a title, then a shorter subtitle under it, then a byline; each step is the one before with a
    line of text added."""
    lines = (("Quarterly review of the archive", 40, 140), ("Northwind Labs, planning", 26, 215),
             ("May 2024, room 4", 18, 270))
    for k in range(1, 4):
        im = Image.new("RGB", (800, 450), "white")
        d = ImageDraw.Draw(im)
        d.rectangle((0, 0, 799, 5), fill=(242, 140, 40))
        for text, size, y in lines[:k]:
            d.text((400, y), text, fill=(30, 30, 30), font=ImageFont.load_default(size=size), anchor="mm")
        im.save(folder / f"build_{k}.png")


def save_build_crop(folder) -> None:
    """build_3_crop.png: a crop into save_build's build_3.png title, enlarged back to its canvas's size: a copy
    that needs the warp, and whose trim differs from the step's."""
    with Image.open(folder / "build_3.png") as im:
        im.crop((160, 0, 800, 360)).resize((800, 450), Image.Resampling.LANCZOS).save(folder / "build_3_crop.png")


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


def about_box(name: str, version: str, line: str) -> Image.Image:
    """An about box of a made-up application (640 x 480): dialogs of this kind share the layout and differ in
    words, which a 128 px thumbnail blurs into the same grey bars (jobs/dedup/detail.py)."""
    im = Image.new("RGB", (640, 480), (246, 245, 244))
    d = ImageDraw.Draw(im)

    def font(size):
        return ImageFont.load_default(size=size)

    d.rectangle((0, 0, 639, 47), fill=(235, 235, 235))
    d.text((320, 24), "About Notewise", font=font(15), fill=(46, 52, 54), anchor="mm")
    d.rounded_rectangle((272, 74, 368, 170), 22, fill=(224, 27, 36))
    d.text((320, 122), "N", font=font(56), fill="white", anchor="mm")
    d.text((320, 192), f"Notewise {name}", font=font(22), fill=(46, 52, 54), anchor="mm")
    d.text((320, 219), f"Version {version}", font=font(14), fill=(119, 119, 119), anchor="mm")
    d.text((320, 249), line, font=font(14), fill=(46, 52, 54), anchor="mm")
    d.rectangle((0, 424, 639, 479), fill=(240, 240, 240))
    for x0, label in ((457, "Credits"), (549, "Close")):
        d.rounded_rectangle((x0, 437, x0 + 72, 466), 5, fill="white", outline=(200, 200, 200))
        d.text((x0 + 36, 452), label, font=font(14), fill=(46, 52, 54), anchor="mm")
    return im


def save_about_boxes(folder) -> None:
    """about_report.png, about_local.png: two about boxes of one application with other words (they pass the
    thumbnail check and fail the detail check); about_report_q70.jpg, about_report_half.jpg: copies of the
    first (JPEG quality 70; half size, JPEG quality 85)."""
    a = about_box("Report", "5.27.2", "Connection download email network password quality remote lock.")
    b = about_box("Local", "2.28.6", "Network connection device location printer archive.")
    a.save(folder / "about_report.png")
    b.save(folder / "about_local.png")
    a.save(folder / "about_report_q70.jpg", quality=70)
    a.resize((320, 240), Image.Resampling.BILINEAR).save(folder / "about_report_half.jpg", quality=85)
