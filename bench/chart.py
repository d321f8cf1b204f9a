"""A PNG bar chart with no dependency beyond the standard library (zlib + struct).

`bar_chart` draws labelled horizontal bars (one group per heading) with a 3x5 pixel font, scaled up;
`encode_png` writes 8-bit RGB, filter type 0 on every row.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
GREY: RGB = (150, 150, 150)

# 3x5 glyphs: five rows top to bottom, each an octal digit whose bits are the pixels (4 = left).
FONT = {
    "0": "75557", "1": "26227", "2": "71747", "3": "71717", "4": "55711", "5": "74717", "6": "74757",
    "7": "71111", "8": "75757", "9": "75717", "A": "25755", "B": "65656", "C": "34443", "D": "65556",
    "E": "74647", "F": "74644", "G": "34553", "H": "55755", "I": "72227", "J": "11152", "K": "55655",
    "L": "44447", "M": "57755", "N": "65555", "O": "25552", "P": "65644", "Q": "25563", "R": "65655",
    "S": "34216", "T": "72222", "U": "55557", "V": "55552", "W": "55775", "X": "55255", "Y": "55222",
    "Z": "71247", " ": "00000", ".": "00002", ",": "00022", "-": "00700", "+": "02720", ":": "02020",
    "(": "12221", ")": "42224", "/": "11244", "=": "07070",
}
SCALE = 3  # font pixel size
CHAR_W, CHAR_H = 4 * SCALE, 6 * SCALE  # glyph plus one pixel of spacing


class Canvas:
    def __init__(self, width: int, height: int, background: RGB = WHITE) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(background) * width) for _ in range(height)]

    def fill(self, x: int, y: int, w: int, h: int, color: RGB) -> None:
        x0, x1 = max(0, x), min(self.width, x + w)
        for row in self.rows[max(0, y):min(self.height, y + h)]:
            row[3 * x0:3 * x1] = bytes(color) * (x1 - x0)

    def text(self, x: int, y: int, text: str, color: RGB = BLACK, background: RGB | None = None) -> None:
        if background is not None:
            self.fill(x - SCALE, y - SCALE, len(text) * CHAR_W + SCALE, CHAR_H, background)
        for i, char in enumerate(text.upper()):
            for r, digit in enumerate(FONT.get(char, FONT[" "])):
                for c in range(3):
                    if int(digit, 8) & (4 >> c):
                        self.fill(x + i * CHAR_W + c * SCALE, y + r * SCALE, SCALE, SCALE, color)


def encode_png(canvas: Canvas) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", canvas.width, canvas.height, 8, 2, 0, 0, 0)  # 8-bit RGB
    raw = b"".join(b"\x00" + bytes(row) for row in canvas.rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: RGB


def bar_chart(title: str, groups: Sequence[tuple[str, Sequence[Bar]]], reference: float = 1.0,
              bar_width: int = 600) -> bytes:
    """Horizontal bars, value printed after each (as `1.23X`); a grey line marks `reference`."""
    label_w = (max(len(b.label) for _, bars in groups for b in bars) + 2) * CHAR_W
    top = max(b.value for _, bars in groups for b in bars)
    margin, line = 2 * CHAR_W, CHAR_H + SCALE * 2
    rows = 2 + sum(len(bars) + 2 for _, bars in groups)
    canvas = Canvas(margin * 2 + label_w + bar_width + 8 * CHAR_W, margin * 2 + rows * line)
    canvas.text(margin, margin, title)
    y = margin + 2 * line
    x0 = margin + label_w
    for heading, bars in groups:
        canvas.text(margin, y, heading)
        y += line
        canvas.fill(x0 + round(bar_width * reference / top), y - SCALE, SCALE, len(bars) * line, GREY)
        for bar in bars:
            canvas.text(margin + CHAR_W, y, bar.label)
            length = max(1, round(bar_width * bar.value / top))
            canvas.fill(x0, y, length, CHAR_H - SCALE, bar.color)
            canvas.text(x0 + length + CHAR_W, y, f"{bar.value:.2f}X", background=WHITE)
            y += line
        y += line
    return encode_png(canvas)
