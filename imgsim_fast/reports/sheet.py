"""Contact sheet of a search: the query top left, then the results in rank order, each captioned with its
rank, score and file name (Pillow's ImageDraw with its default font; issue 7)."""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from imgsim_fast.io.loading import ImageLoadError, load_image
from imgsim_fast.io.names import display_path

__all__ = ["contact_sheet", "thumbnail"]

BACKGROUND = (255, 255, 255)
QUERY_FRAME = (220, 40, 40)      # the query tile's frame, so it reads as the reference
MISSING = (200, 200, 200)        # a result whose file can no longer be read
CAPTION = (20, 20, 20)


def thumbnail(path: str, side: int) -> Image.Image | None:
    """The image fitted into side x side (aspect kept), RGB; None if it cannot be loaded. JPEGs are
    decoded at a reduced DCT scale (load_image's min_size), so a sheet of large photos stays fast."""
    try:
        im = load_image(path, min_size=(side, side))
    except ImageLoadError:
        return None
    im = im.convert("RGB")
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    return im


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # FreeType build of Pillow >= 10.1: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` shortened with an ellipsis in the middle until it fits `width` pixels (file names differ
    most at their ends: the stem's start and the extension)."""
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # largest n with the n-character middle-elided form fitting
        mid = (lo + hi + 1) // 2
        head = (mid + 1) // 2
        cand = text[:head] + "…" + text[len(text) - (mid - head):] if mid else "…"
        if draw.textlength(cand, font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    head = (lo + 1) // 2
    return text[:head] + "…" + text[len(text) - (lo - head):] if lo else "…"


def contact_sheet(query, hits, out_path: str | None = None, *, thumb: int = 160, columns: int = 5,
                  font_size: int = 12) -> Image.Image:
    """Draw the sheet; write it to `out_path` (PNG) when given, and return it.

    query: the query image path, or a text query (drawn as a tile holding the text).
    hits: search.Hit objects (or dicts with path and score), best first.
    """
    hits = [h if isinstance(h, dict) else {"path": h.path, "score": h.score} for h in hits]
    font = _font(font_size)
    line_h = font_size + 4
    pad = 6
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + 2 * line_h
    n = 1 + len(hits)
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    # Captions are display_path text: one line whatever the name holds (a newline made ImageDraw refuse
    # to measure it, undecodable bytes could not be drawn).
    tiles = [(query, "query", display_path(os.path.basename(os.fspath(query))) if _is_path(query) else "text query")]
    tiles += [(h["path"], f"#{i + 1}  {h['score']:.3f}", display_path(os.path.basename(h["path"])))
              for i, h in enumerate(hits)]
    for i, (src, line1, line2) in enumerate(tiles):
        x0, y0 = (i % cols) * cell_w, (i // cols) * cell_h
        box = (x0 + pad, y0 + pad, x0 + pad + thumb, y0 + pad + thumb)
        if i == 0 and not _is_path(src):
            draw.rectangle(box, fill=(245, 245, 245))
            _draw_wrapped(draw, display_path(" ".join(str(src).split())), font, box, line_h)
        else:
            im = thumbnail(os.fspath(src), thumb)
            if im is None:
                draw.rectangle(box, fill=MISSING)
                draw.text((box[0] + 4, box[1] + 4), "unreadable", fill=CAPTION, font=font)
            else:  # centred in its square
                sheet.paste(im, (box[0] + (thumb - im.width) // 2, box[1] + (thumb - im.height) // 2))
        if i == 0:
            draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 2, box[3] + 2), outline=QUERY_FRAME, width=3)
        ty = y0 + pad + thumb + 3
        draw.text((x0 + pad, ty), _fit(draw, line1, font, thumb), fill=CAPTION, font=font)
        draw.text((x0 + pad, ty + line_h), _fit(draw, line2, font, thumb), fill=CAPTION, font=font)
    if out_path:
        sheet.save(out_path, format="PNG")
    return sheet


def _is_path(q) -> bool:
    return isinstance(q, os.PathLike) or (isinstance(q, str) and os.path.exists(q))


def _draw_wrapped(draw, text: str, font, box, line_h: int) -> None:
    width = box[2] - box[0] - 8
    lines, cur = [], ""
    for word in text.split():
        nxt = f"{cur} {word}".strip()
        if draw.textlength(nxt, font=font) <= width or not cur:
            cur = nxt
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    y = box[1] + 4
    for ln in lines[: max(1, (box[3] - box[1] - 8) // line_h)]:
        draw.text((box[0] + 4, y), _fit(draw, ln, font, width), fill=CAPTION, font=font)
        y += line_h
