"""Contact sheets: a query image beside its hits (thumbnail, rank, score, label, modality) as HTML or PNG."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHEET_SUFFIXES = (".html", ".htm", ".png")
CELL = 128  # thumbnail box, pixels (the stored thumbnails' longest side)
PNG_COLUMNS = 6
PNG_TEXT_LINES = 4
PNG_LINE = 15
NOT_STORED = "no thumbnail stored (ingested before thumbnails, or re-ingest)"


@dataclass(frozen=True)
class Card:
    """One tile of the sheet: a picture (JPEG bytes, may be empty) and the lines printed under it."""

    title: str
    jpeg: bytes
    lines: tuple[str, ...]
    missing: str = NOT_STORED  # said in place of the picture when there is none


def check_sheet_path(path: str) -> Path:
    """The sheet's path, if its suffix names a format we write (checked before the search runs)."""
    target = Path(path)
    if target.suffix.lower() not in SHEET_SUFFIXES:
        raise ValueError(f"--sheet {path}: write .html or .png (e.g. --sheet results.html)")
    return target


def query_thumbnail(image: Path) -> bytes:
    """The query file's thumbnail, made the way ingestion makes the stored ones (pixels only)."""
    from cbmir.services.embedding.decode import decode_native
    from cbmir.services.embedding.thumbnail import THUMBNAIL_SIZE, thumbnail_jpeg

    decoded = decode_native(image.read_bytes(), min_size=2 * THUMBNAIL_SIZE)
    return thumbnail_jpeg(decoded.pixels)


def cards(reply: Any, query_name: str, query_jpeg: bytes) -> list[Card]:
    """The query's card, then one per hit in rank order, from the SearchResponse exactly as the service sent it."""
    out = [Card(title=f"query: {query_name}", jpeg=query_jpeg,
                lines=(f"predicted: {reply.predicted_class}" if reply.predicted_class else "",
                       f"collection {reply.collection}", f"model {reply.model_id}"),
                missing="query by stored id: its picture is its own hit")]
    for hit in reply.hits:
        metadata = dict(hit.metadata)
        modality = metadata.get("modality") or "modality ?"
        out.append(Card(title=f"#{hit.rank}  score {hit.score:.3f}", jpeg=bytes(hit.thumbnail),
                        lines=(f"label {hit.label or '-'}", modality, f"id {hit.id[:12]}")))
    return out


def write_sheet(path: Path, reply: Any, query_name: str, query_jpeg: bytes) -> Path:
    """Write the sheet of `reply` to `path` (.html: one self-contained page; .png: one image)."""
    sheet = cards(reply, query_name, query_jpeg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        path.write_bytes(render_png(sheet))
    else:
        path.write_text(render_html(sheet, query_name), encoding="utf-8")
    return path


def render_html(sheet: list[Card], query_name: str) -> str:
    tiles = []
    for index, card in enumerate(sheet):
        if card.jpeg:
            picture = (f'<img src="data:image/jpeg;base64,{base64.b64encode(card.jpeg).decode("ascii")}" '
                       f'alt="{html.escape(card.title)}">')
        else:
            picture = f'<div class="none">{html.escape(card.missing)}</div>'
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in card.lines if line)
        kind = "query" if index == 0 else "hit"
        tiles.append(f'<figure class="{kind}"><div class="pic">{picture}</div>'
                     f'<figcaption><b>{html.escape(card.title)}</b>{lines}</figcaption></figure>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cbmir: {html.escape(query_name)}</title>
<style>
body {{ font: 13px/1.35 system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }}
h1 {{ font-size: 16px; margin: 0 0 12px; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure {{ margin: 0; width: {CELL + 16}px; background: #fff; border: 1px solid #ddd; border-radius: 6px;
          padding: 8px; }}
figure.query {{ border: 2px solid #2b6cb0; margin-right: 16px; }}
.pic {{ width: {CELL}px; height: {CELL}px; display: flex; align-items: center; justify-content: center;
        background: #000; }}
.pic img {{ max-width: {CELL}px; max-height: {CELL}px; }}
.none {{ color: #bbb; font-size: 11px; padding: 6px; text-align: center; }}
figcaption {{ margin-top: 6px; word-break: break-all; }}
footer {{ margin-top: 14px; color: #666; font-size: 11px; }}
</style></head><body>
<h1>cbmir search: {html.escape(query_name)}</h1>
<div class="sheet">
{chr(10).join(tiles)}
</div>
<footer>Thumbnails are the stored images' pixels only (no DICOM header). Text burned into the pixels
(annotations, names on secondary captures) is not removed.</footer>
</body></html>
"""


def render_png(sheet: list[Card]) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    width, height = CELL + 16, CELL + 16 + PNG_LINE * PNG_TEXT_LINES
    rows = -(-len(sheet) // PNG_COLUMNS)
    canvas = Image.new("RGB", (PNG_COLUMNS * (width + 8) + 8, rows * (height + 8) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for index, card in enumerate(sheet):
        x, y = 8 + (index % PNG_COLUMNS) * (width + 8), 8 + (index // PNG_COLUMNS) * (height + 8)
        draw.rectangle((x, y, x + width - 1, y + height - 1), outline="#2b6cb0" if index == 0 else "#cccccc",
                       width=2 if index == 0 else 1)
        draw.rectangle((x + 8, y + 8, x + 8 + CELL - 1, y + 8 + CELL - 1), fill="black")
        if card.jpeg:
            with Image.open(io.BytesIO(card.jpeg)) as opened:
                picture = opened.convert("RGB")
            picture.thumbnail((CELL, CELL))
            canvas.paste(picture, (x + 8 + (CELL - picture.width) // 2, y + 8 + (CELL - picture.height) // 2))
        else:
            draw.text((x + 12, y + 8 + CELL // 2 - 6), card.missing[:20], fill="#bbbbbb", font=font)
        lines = [card.title, *(line for line in card.lines if line)][:PNG_TEXT_LINES]
        for row, line in enumerate(lines):
            draw.text((x + 8, y + 12 + CELL + row * PNG_LINE), line[:21], fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
