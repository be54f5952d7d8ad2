"""What ``swr-token demo`` shows: a block redrawn in place (a terminal) or a timeline.

On a terminal every line fits its width (default 80 columns): text wraps between words and
counts are right-aligned in fixed columns, so nothing is cut. A piped timeline keeps one line
per event, for grep. This module only renders; the demo says what to show.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from typing import IO

__all__ = ["Event", "Row", "Screen"]

#: ``(seconds since the start, key label or "issuer", text)``
Event = tuple[float, str, str]
#: A key's line: ``(label, zone, seconds left, lifetime, token fingerprint, refreshes)``
Row = tuple[str, str, float, float, str, int]

_COLORS = {"fresh": "\x1b[32m", "stale": "\x1b[33m", "critical": "\x1b[31m",
           "expired": "\x1b[31m"}
_LABEL = 19  # the longest key label, "sess_bob/orders-api"
_EVENT_LINES = 9  # lines of recent events on the live screen
_NUMBER_UNIT = re.compile(r"(\d) (?=s\b)")


def _bar(fraction: float, width: int = 12) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _wrap(text: str, width: int, *, first: str = "", indent: int = 2) -> list[str]:
    """``first + text`` in lines of at most ``width`` columns, broken between words only.

    A number and its unit ("0.30 s", "6 s") stay on one line: textwrap breaks only at ASCII
    whitespace, so they are joined by a no-break space while wrapping.
    """
    glued = _NUMBER_UNIT.sub("\\1\u00a0", text)
    lines = textwrap.wrap(first + glued, width=width, subsequent_indent=" " * indent,
                          break_long_words=False, break_on_hyphens=False) or [first.rstrip()]
    return [line.replace("\u00a0", " ") for line in lines]


def _fields(fields: list[str], width: int) -> list[str]:
    """Fields two spaces apart, as many per line as fit; a field is never split.

    A field ``"\\n"`` ends the line: the next group of fields starts a new one.
    """
    lines: list[str] = []
    new_line = True
    for field_ in fields:
        if field_ == "\n":
            new_line = True
        elif not new_line and len(lines[-1]) + 2 + len(field_) <= width:
            lines[-1] += "  " + field_
        else:
            lines.append(field_)
            new_line = False
    return lines


class Screen:
    """Writes the demo's text to ``out``: paragraphs, a timeline, or the live block.

    ``tty``: wrap to the terminal's width; ``color``: colour the zones (live block only).
    """

    def __init__(self, out: IO[str], *, color: bool = False, tty: bool = False) -> None:
        self.out, self.color, self.tty = out, color, tty
        self.recent: list[list[str]] = []  # the live block's recent events, wrapped
        self.drawn = 0  # lines of the block on the screen, to draw over

    @property
    def width(self) -> int:
        """Columns to use: one less than the terminal's, so no line makes it wrap."""
        return max(40, shutil.get_terminal_size((80, 24)).columns - 1)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def paragraph(self, text: str) -> None:
        self.write("\n".join(_wrap(text, self.width)) + "\n")

    def event_lines(self, when: float, label: str, text: str) -> list[str]:
        first = f"{when:6.2f}s  {label:<{_LABEL}}  "
        if not self.tty:
            return [first + text]
        return _wrap(text, self.width, first=first, indent=len(first))

    def timeline(self, events: list[Event]) -> None:
        """New events, one after another."""
        lines = [line for event in events for line in self.event_lines(*event)]
        if lines:
            self.write("".join(line + "\n" for line in lines))

    def live(self, status: list[str], events: list[Event], rows: list[Row]) -> None:
        """Redraw the block: the counters, one line per key, the latest events."""
        width = self.width
        self._keep_recent([self.event_lines(*event) for event in events])
        lines = _fields(status, width)
        lines += self._table(rows, width)
        lines.append("  recent events:")
        lines += [line for event in self.recent for line in event]
        self._redraw(lines)

    def _keep_recent(self, events: list[list[str]]) -> None:
        self.recent = self.recent + events
        while sum(len(lines) for lines in self.recent) > _EVENT_LINES:
            self.recent.pop(0)

    def _table(self, rows: list[Row], width: int) -> list[str]:
        bar = width >= 77  # the life bar goes first when the terminal is narrow
        lines = [f"  {'key':<{_LABEL}}  {'zone':<8}  {'left':>6}  "
                 + (f"{'life':<14}  " if bar else "") + f"{'token':<10}  refreshes"]
        for label, zone, left, life, fp, refreshes in rows:
            shown = f"{zone:<8}"
            if self.color and zone in _COLORS:
                shown = f"{_COLORS[zone]}{shown}\x1b[0m"
            lines.append(f"  {label:<{_LABEL}}  {shown}  {max(left, 0):>5.1f}s  "
                         + (f"{_bar(max(left, 0) / life)}  " if bar else "")
                         + f"{fp:<10}  {refreshes:>9,}")
        return lines

    def _redraw(self, lines: list[str]) -> None:
        """Draw ``lines`` over the block drawn last (blanking what it had more)."""
        lines = lines + [""] * max(0, self.drawn - len(lines))
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.drawn = len(lines)
