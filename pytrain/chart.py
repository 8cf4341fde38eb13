"""A line chart written as a PNG with numpy and zlib only, for machines without matplotlib.

`pytrain demo` ends with the run's curves and `pytrain plot` falls back to this when matplotlib (the
`plot` extra) is missing: panels stacked top to bottom, each with a title, labelled axes with tick labels,
one polyline (or dotted series) per curve and a legend, drawn on an RGB canvas with a 5x7 bitmap font and
encoded as an 8-bit RGB PNG.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

# 5x7 glyphs, one string of 7 rows of 5 bits each (only what tick labels, titles and legends use).
_GLYPHS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100", "-": "00000 00000 00000 01110 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000", ":": "00000 01100 01100 00000 01100 01100 00000",
    "/": "00001 00010 00010 00100 01000 01000 10000", " ": "00000 00000 00000 00000 00000 00000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111", "k": "10000 10000 10010 10100 11000 10100 10010",
    "M": "10001 11011 10101 10101 10001 10001 10001", "G": "01110 10001 10000 10111 10001 10001 01111",
    "a": "00000 00000 01110 00001 01111 10001 01111", "b": "10000 10000 11110 10001 10001 10001 11110",
    "c": "00000 00000 01110 10000 10000 10001 01110", "d": "00001 00001 01111 10001 10001 10001 01111",
    "e": "00000 00000 01110 10001 11111 10000 01110", "f": "00110 01001 01000 11100 01000 01000 01000",
    "g": "00000 01111 10001 10001 01111 00001 01110", "h": "10000 10000 10110 11001 10001 10001 10001",
    "i": "00100 00000 01100 00100 00100 00100 01110", "l": "01100 00100 00100 00100 00100 00100 01110",
    "m": "00000 00000 11010 10101 10101 10001 10001", "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110", "p": "00000 00000 11110 10001 11110 10000 10000",
    "r": "00000 00000 10110 11001 10000 10000 10000", "s": "00000 00000 01110 10000 01110 00001 11110",
    "t": "01000 01000 11100 01000 01000 01001 00110", "u": "00000 00000 10001 10001 10001 10011 01101",
    "v": "00000 00000 10001 10001 10001 01010 00100", "w": "00000 00000 10001 10001 10101 10101 01010",
    "x": "00000 00000 10001 01010 00100 01010 10001", "y": "00000 00000 10001 10001 01111 00001 01110",
}
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: tuple[int, int, int]
    dotted: bool = False


class Canvas:
    def __init__(self, width: int, height: int):
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)

    def text(self, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 2) -> None:
        for i, char in enumerate(text):
            rows = _GLYPHS.get(char, _GLYPHS.get(char.lower(), _GLYPHS["_"])).split()
            for r, bits in enumerate(rows):
                for c, bit in enumerate(bits):
                    if bit == "1":
                        self.rect(x + (i * 6 + c) * scale, y + r * scale, scale, scale, color)

    def vertical_text(self, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 2) -> None:
        """`text` read bottom to top (a y-axis label), its baseline at column x, starting at row y."""
        strip = Canvas(len(text) * 6 * scale, 7 * scale)
        strip.text(0, 0, text, color, scale)
        rotated = np.rot90(strip.pixels)  # counter-clockwise: the first character ends up at the bottom
        height, width, _ = self.pixels.shape
        h, w = min(rotated.shape[0], y, height), min(rotated.shape[1], width - x)
        region = self.pixels[y - h:y, x:x + w]
        ink = (rotated[-h:, :w] != 255).any(axis=-1)
        region[ink] = rotated[-h:, :w][ink]

    def rect(self, x: int, y: int, w: int, h: int, color) -> None:
        height, width, _ = self.pixels.shape
        self.pixels[max(0, y):min(height, y + h), max(0, x):min(width, x + w)] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color, width: int = 2) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for t in np.linspace(0.0, 1.0, steps):
            self.rect(int(round(x0 + (x1 - x0) * t)) - width // 2, int(round(y0 + (y1 - y0) * t)) - width // 2,
                      width, width, color)

    def png(self, text: dict[str, str] | None = None) -> bytes:
        """8-bit RGB PNG; `text`: tEXt chunks (keyword -> Latin-1 text), e.g. the standard `Description`."""
        height, width, _ = self.pixels.shape
        raw = b"".join(b"\x00" + self.pixels[row].tobytes() for row in range(height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        texts = b"".join(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"))
                         for key, value in (text or {}).items())
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + texts + chunk(b"IDAT", zlib.compress(raw, 6))
                + chunk(b"IEND", b""))


def tick_label(value: float) -> str:
    magnitude = abs(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    step = 10 ** math.floor(math.log10(span / count)) if span > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


@dataclass
class Panel:
    """One chart: a title, axis labels and the curves drawn on its shared axes."""
    title: str
    x_label: str
    y_label: str
    series: list[Series]


def panels_png(panels: list[Panel], width: int = 900, panel_height: int = 420) -> bytes:
    """A PNG of `panels` stacked top to bottom. Each panel's title and y-axis label are also written as
    the PNG's standard `Description` text chunk (one line per panel: title, then y label), so a reader can
    tell what it shows without looking at it."""
    canvas = Canvas(width, panel_height * len(panels))
    for index, panel in enumerate(panels):
        _draw_panel(canvas, panel, index * panel_height, width, panel_height)
    description = "\n".join(f"{panel.title}; y: {panel.y_label}; x: {panel.x_label}" for panel in panels)
    return canvas.png(text={"Description": description})


def _draw_panel(canvas: Canvas, panel: Panel, top_edge: int, width: int, height: int) -> None:
    left, right, top, bottom = 130, width - 30, top_edge + 60, top_edge + height - 70
    points = [(x, y) for s in panel.series for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = (max(ys) - min(ys)) * 0.05 or abs(max(ys)) * 0.05 or 0.5
    y_low, y_high = min(ys) - pad, max(ys) + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    canvas.text(left, top_edge + 20, panel.title, scale=3)
    for value in _ticks(y_low, y_high):
        _, y = at(x_low, value)
        canvas.rect(left, int(y), right - left, 1, (225, 225, 225))
        label = tick_label(value)
        canvas.text(left - 12 - len(label) * 12, int(y) - 7, label)
    for value in _ticks(x_low, x_high):
        x, _ = at(value, y_low)
        canvas.rect(int(x), top, 1, bottom - top, (225, 225, 225))
        label = tick_label(value)
        canvas.text(int(x) - len(label) * 6, bottom + 12, label)
    canvas.rect(left, top, 2, bottom - top, (0, 0, 0))
    canvas.rect(left, bottom, right - left, 2, (0, 0, 0))
    canvas.text((left + right) // 2 - len(panel.x_label) * 6, bottom + 40, panel.x_label)
    canvas.vertical_text(8, (top + bottom) // 2 + len(panel.y_label) * 6, panel.y_label)
    for s in panel.series:
        placed = [at(x, y) for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
        if s.dotted:
            for x, y in placed:
                canvas.rect(int(x) - 4, int(y) - 4, 9, 9, s.color)
        for (x0, y0), (x1, y1) in zip(placed, placed[1:]):
            canvas.line(x0, y0, x1, y1, s.color, width=1 if s.dotted else 2)
    for i, s in enumerate(panel.series):  # legend, top right
        y = top + 10 + i * 22
        canvas.rect(right - 230, y + 5, 30, 4, s.color)
        canvas.text(right - 190, y, s.label[:15])
