"""Long messages in panels: wrapped at word boundaries to the region's width (stdlib only).

Blender labels neither wrap nor scroll, so an error's advice is split into lines that fit the
panel; the width comes from the region and the UI scale, so a wider sidebar gets longer lines.
"""

from __future__ import annotations

import textwrap

CHAR_PX = 6.5  # average label character width in pixels at UI scale 1.0 (Blender's default font, 11 pt)
MARGIN_PX = 40  # panel padding plus an icon


def chars_per_line(region_width: float, ui_scale: float = 1.0) -> int:
    """How many characters fit on one label of a region ``region_width`` pixels wide."""
    return max(16, int((region_width - MARGIN_PX * ui_scale) / (CHAR_PX * ui_scale)))


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters broken at spaces (a longer word, e.g. a path, breaks
    after a path separator when it can, else where it must)."""
    lines = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, width, break_on_hyphens=False, break_long_words=False) or [""])
    out = []
    for line in lines:
        while len(line) > width:
            cut = max(line.rfind("/", 0, width), line.rfind("\\", 0, width)) + 1 or width
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


def wrapped_label(layout, context, text: str, icon: str = "NONE") -> None:
    """``text`` as labels that fit ``context.region`` (60 characters when there is no region)."""
    region = getattr(context, "region", None)
    scale = getattr(getattr(getattr(context, "preferences", None), "system", None), "ui_scale", 1.0) or 1.0
    width = chars_per_line(region.width, scale) if region is not None and region.width > 1 else 60
    column = layout.column(align=True)
    for index, line in enumerate(wrap(text, width)):
        column.label(text=line, icon=icon if index == 0 else "BLANK1" if icon != "NONE" else "NONE")
