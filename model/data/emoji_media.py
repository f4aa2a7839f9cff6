"""image_text and video_text: real emoji images (OpenMoji 17's colour font, drawn by PIL/FreeType)
paired with their Chinese CLDR names from the `emoji` package.

image_text: one 32x32 RGB image per emoji on white, caption = its name ("青蛙").
video_text: the emoji as a 14-px sprite moving across 8 frames of 32x32 in one of four directions,
caption = direction + name ("向左移动的青蛙"). Every emoji of a split appears in all four directions,
so a video can only be matched to its caption by reading the motion, not the sprite alone.

Pool (sorted by code points, so independent of dict order): fully-qualified emoji with a 'zh' name,
no skin-tone modifier (those repeat a base emoji with a tone word), drawn by the font as ONE glyph
(not the .notdef box; not split into several glyphs, which happens to sequences FreeType/raqm
cannot shape), whose caption fits the text length untruncated and tokenises without [UNK]; a name
shared by two emoji keeps the first.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import SPLITS, Built, draw_splits, task_rng

IMAGE = 32                 # image side (px)
IMAGE_BOX = 28             # the emoji's longer side in an image: 2-px white margin
SPRITE_BOX = 14            # the sprite's longer side in a video: 18 px of travel on 32 px
FRAMES = 8
CAPTION_LEN = 16           # caption ids incl. [CLS]/[SEP]
RENDER_PX = 72             # font size drawn before the LANCZOS downscale (vector glyphs; 2.5x the box)
CHECK_PX = 24              # font size for the pool's glyph checks (only compared, never kept)
ONE_GLYPH_WIDTH = 1.3      # advance > 1.3 em means the sequence was drawn as several glyphs
SKIN_TONES = range(0x1F3FB, 0x1F400)
# (caption prefix, unit step along x, unit step along y); image rows: y grows downwards
DIRECTIONS = (("向左移动的", -1, 0), ("向右移动的", 1, 0), ("向上移动的", 0, -1), ("向下移动的", 0, 1))


def _zh_names():
    import emoji

    emoji.config.load_language("zh")     # adds the 'zh' key to emoji.EMOJI_DATA (package data)
    fully = emoji.STATUS["fully_qualified"]
    for ch in sorted(emoji.EMOJI_DATA):
        d = emoji.EMOJI_DATA[ch]
        if d.get("status") != fully or "zh" not in d or any(ord(c) in SKIN_TONES for c in ch):
            continue
        name = " ".join(d["zh"].strip(":").replace("_", " ").split())   # "按键_#" -> "按键 #"
        if name:
            yield ch, name


def _draw(font, text: str):
    """The glyph on a transparent canvas, cropped to its ink (RGBA)."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    pad = 2
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    return canvas.crop(box) if box else canvas


def _sprite(font, text: str, box: int) -> np.ndarray:
    """(h, w, 4) uint8 straight-alpha RGBA, longer side = box, aspect kept."""
    from PIL import Image

    glyph = _draw(font, text)
    scale = box / max(glyph.size)
    size = (max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale)))
    # resize premultiplied ("RGBa"): straight-alpha resampling bleeds the transparent pixels'
    # black into the edges
    small = glyph.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")
    return np.asarray(small)


def _over_white(canvas: np.ndarray, sprite: np.ndarray, x: int, y: int) -> None:
    """Alpha-composite sprite onto the (H, W, 3) float canvas at top-left (x, y)."""
    h, w = sprite.shape[:2]
    a = sprite[..., 3:4].astype(np.float32) / 255.0
    region = canvas[y: y + h, x: x + w]
    region[...] = sprite[..., :3].astype(np.float32) * a + region * (1.0 - a)


def emoji_pool(source, tokenizer, max_pieces: int, prefix: str = "") -> list[tuple[str, str]]:
    """(emoji, name) pairs usable for captions `prefix + name` of at most max_pieces word pieces."""
    from PIL import ImageFont

    font = ImageFont.truetype(source.paths["font"], CHECK_PX)
    notdef = np.asarray(_draw(font, "\U0010FFFD"))     # a plane-16 private-use code point: no glyph
    pool, seen = [], set()
    for ch, name in _zh_names():
        if name in seen:
            continue
        pieces = tokenizer.tokenize(prefix + name)
        if len(pieces) > max_pieces or "[UNK]" in pieces:
            continue
        if font.getlength(ch) > ONE_GLYPH_WIDTH * CHECK_PX:
            continue
        ink = np.asarray(_draw(font, ch))
        if ink.shape == notdef.shape and np.array_equal(ink, notdef):
            continue
        seen.add(name)
        pool.append((ch, name))
    return pool


def build_image_text(source, *, sizes, seed, tokenizer, log) -> Built:
    from PIL import ImageFont

    pool = emoji_pool(source, tokenizer, CAPTION_LEN - 2)
    idx = draw_splits(len(pool), sizes, task_rng(seed, "image_text"), log, "image_text", "emoji")
    font = ImageFont.truetype(source.paths["font"], RENDER_PX)
    splits, texts = {}, {}
    for split in SPLITS:
        items = [pool[i] for i in idx[split]]
        x = np.empty((len(items), IMAGE, IMAGE, 3), dtype=np.uint8)
        for row, (ch, _) in enumerate(items):
            sprite = _sprite(font, ch, IMAGE_BOX)
            canvas = np.full((IMAGE, IMAGE, 3), 255.0, dtype=np.float32)
            h, w = sprite.shape[:2]
            _over_white(canvas, sprite, (IMAGE - w) // 2, (IMAGE - h) // 2)
            x[row] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        captions = [name for _, name in items]
        ids, mask = tokenizer.encode_batch(captions, CAPTION_LEN)
        splits[split] = {"x": torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), "ids": ids, "mask": mask}
        texts[split] = captions
    return Built(splits, texts, {"pool": len(pool), "emoji": {s: [pool[i][0] for i in idx[s]] for s in SPLITS}})


def _clip(sprite: np.ndarray, dx: int, dy: int, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, 32, 32, 3) uint8: the sprite travels from one side to the other (start and end
    jittered by up to 3 px, a random offset across the motion)."""
    h, w = sprite.shape[:2]
    span_x, span_y = IMAGE - w, IMAGE - h
    if dx:
        a, b = int(rng.integers(0, 4)), span_x - int(rng.integers(0, 4))
        xs = np.linspace(a, b, FRAMES) if dx > 0 else np.linspace(b, a, FRAMES)
        ys = np.full(FRAMES, int(rng.integers(0, span_y + 1)))
    else:
        a, b = int(rng.integers(0, 4)), span_y - int(rng.integers(0, 4))
        ys = np.linspace(a, b, FRAMES) if dy > 0 else np.linspace(b, a, FRAMES)
        xs = np.full(FRAMES, int(rng.integers(0, span_x + 1)))
    frames = np.full((FRAMES, IMAGE, IMAGE, 3), 255.0, dtype=np.float32)
    for t in range(FRAMES):
        _over_white(frames[t], sprite, int(np.rint(xs[t])), int(np.rint(ys[t])))
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def build_video_text(source, *, sizes, seed, tokenizer, log) -> Built:
    from PIL import ImageFont

    n_dir = len(DIRECTIONS)
    longest_prefix = max(DIRECTIONS, key=lambda d: len(tokenizer.tokenize(d[0])))[0]
    pool = emoji_pool(source, tokenizer, CAPTION_LEN - 2, prefix=longest_prefix)
    units = {k: v // n_dir for k, v in sizes.items()}          # emoji per split; 4 clips each
    idx = draw_splits(len(pool), units, task_rng(seed, "video_text"), log, "video_text", "emoji")
    font = ImageFont.truetype(source.paths["font"], RENDER_PX)
    splits, texts = {}, {}
    for split in SPLITS:
        motion_rng = task_rng(seed, "video_text", f"motion/{split}")
        clips, captions = [], []
        for i in idx[split]:
            ch, name = pool[i]
            sprite = _sprite(font, ch, SPRITE_BOX)
            for prefix, dx, dy in DIRECTIONS:
                clips.append(_clip(sprite, dx, dy, motion_rng))
                captions.append(prefix + name)
        order = task_rng(seed, "video_text", f"order/{split}").permutation(len(clips))
        x = np.stack([clips[j] for j in order]) if clips else np.zeros((0, FRAMES, IMAGE, IMAGE, 3), np.uint8)
        captions = [captions[j] for j in order]
        ids, mask = tokenizer.encode_batch(captions, CAPTION_LEN)
        splits[split] = {"x": torch.from_numpy(x).permute(0, 1, 4, 2, 3).contiguous(), "ids": ids, "mask": mask}
        texts[split] = captions
    return Built(splits, texts, {"pool": len(pool), "clips_per_emoji": n_dir})
