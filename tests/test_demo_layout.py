"""``swr-token demo`` on a real pseudo-terminal of 80 and 120 columns: nothing cut or wrapped.

The demo runs as a user starts it, its stdout a pty sized with TIOCSWINSZ; a small terminal
model replays what it wrote (the few escape sequences it uses) and records every line the
terminal itself would have had to wrap.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

ROWS = 70  # tall enough that the live block and the summary never scroll off

EVENT_FORMS = [re.compile(form + "$") for form in (
    r"new token [0-9a-f]{10} \((background refresh|fetch), \d+\.\d\d s\); "
    r"(stale one served [\d,]+x meanwhile, nobody waited|callers waited for it)",
    r"stale \(\d+\.\d s left\): still served at once"
    r"(; nobody reads it, so nobody refreshes it)?",
    r"critical \(\d+\.\d s left\): not served any more; the next call waits for a fetch",
    r"expired",
    r"\d+ calls? waited, longest \d+\.\d\d s",
    r"(background refresh|fetch) failed after \d+\.\d\d s: HTTP 503 \(TokenFetchError\); "
    r"(still serving the stale token \(-?\d+\.\d s left\)|no servable token: callers wait or "
    r"get the error)",
    r"gave up \(\w+\); (keeps serving the stale token and backs off|callers get the error "
    r"until the issuer answers)",
    r"served again after \d+ failed calls",
    r"calls fail now: HTTP 503 \(TokenFetchError\)",
    r"outage: every token request answers HTTP 503 for \d+ s",
    r"outage over: the issuer answers again",
)]
EVENT_START = re.compile(r"^ *\d+\.\d\ds  (\S+) +(\S.*)$")
CSI = re.compile(rb"\x1b\[([0-9;]*)([A-Za-z])")


@dataclass
class Terminal:
    """Just enough of a terminal for the demo: text, CR/LF, erase line, cursor up, SGR."""

    columns: int
    rows: list[list[str]] = field(default_factory=lambda: [[]])
    row: int = 0
    col: int = 0
    autowrapped: list[str] = field(default_factory=list)  # lines the terminal had to break
    unknown: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if data[i] == 0x1B:
                match = CSI.match(data, i)
                if match is None:
                    self.unknown.append(data[i:i + 8])
                    i += 1
                    continue
                self._control(match.group(1), match.group(2))
                i = match.end()
                continue
            # One UTF-8 character (the demo writes ASCII, but decode properly anyway).
            length = 1 if data[i] < 0x80 else 2 if data[i] < 0xE0 else 3 if data[i] < 0xF0 else 4
            self._char(data[i:i + length].decode("utf-8", "replace"))
            i += length

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        return self.rows[self.row]

    def _char(self, ch: str) -> None:
        if ch == "\r":
            self.col = 0
        elif ch == "\n":
            self.row += 1
        elif ch >= " ":
            if self.col >= self.columns:  # the terminal wraps: the text did not fit
                self.autowrapped.append("".join(self._line()))
                self.row, self.col = self.row + 1, 0
            line = self._line()
            line.extend(" " * (self.col - len(line)))
            if self.col < len(line):
                line[self.col] = ch
            else:
                line.append(ch)
            self.col += 1

    def _control(self, params: bytes, final: bytes) -> None:
        if final == b"m":
            return  # colours
        if final == b"K" and params == b"2":
            self._line().clear()
        elif final == b"F":
            self.row, self.col = max(0, self.row - int(params or b"1")), 0
        else:
            self.unknown.append(params + final)

    def screen(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.rows]


def run_on_pty(columns: int, *args: str, limit: float = 40.0) -> tuple[int, Terminal]:
    """Run ``swr-token demo ARGS`` with a pty of ``columns`` as its terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    proc = subprocess.Popen([sys.executable, "-m", "swr_token", "demo", *args],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    terminal = Terminal(columns)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the demo exited and closed the terminal
                break
            if not data:
                break
            terminal.feed(data)
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, terminal


def _events(screen: list[str]) -> list[tuple[str, str]]:
    """(label, whole text) of each event in the final frame, continuation lines joined."""
    start = screen.index("  recent events:") + 1
    events: list[tuple[str, str]] = []
    for line in screen[start:]:
        if not line or line.startswith("summary"):
            break
        match = EVENT_START.match(line)
        if match:
            events.append((match.group(1), match.group(2)))
        else:
            assert line.startswith(" " * 30) and events, f"a stray line: {line!r}"
            events[-1] = (events[-1][0], events[-1][1] + " " + line.strip())
    return events


def _count(screen: list[str], pattern: str) -> int:
    found = [re.search(pattern, line) for line in screen]
    values = [m.group(1) for m in found if m]
    assert values, (pattern, screen)
    return int(values[-1].replace(",", ""))


ARGS = ("--lifetime", "4", "--duration", "6", "--fail-for", "2")


@pytest.fixture(scope="module")
def runs() -> dict[int, tuple[int, Terminal]]:
    """One demo run per width, side by side (each takes the demo's 6 s)."""
    with ThreadPoolExecutor(2) as pool:
        futures = {cols: pool.submit(run_on_pty, cols, *ARGS) for cols in (80, 120)}
        return {cols: future.result() for cols, future in futures.items()}


@pytest.mark.parametrize("columns", [80, 120])
def test_no_line_is_wider_than_the_terminal(
        runs: dict[int, tuple[int, Terminal]], columns: int) -> None:
    code, terminal = runs[columns]
    assert code == 0, terminal.screen()
    assert terminal.unknown == []
    assert terminal.autowrapped == [], "the terminal had to wrap these lines mid-text"
    assert max(len(line) for line in terminal.screen()) < columns


@pytest.mark.parametrize("columns", [80, 120])
def test_events_wrap_between_words_and_are_never_cut(
        runs: dict[int, tuple[int, Terminal]], columns: int) -> None:
    screen = runs[columns][1].screen()
    events = _events(screen)
    assert events, screen
    for line, following in itertools.pairwise(screen):
        # A number and its unit stay together ("0.30 s", never "0.30" then "s);").
        assert not (re.search(r"\d$", line) and re.match(r" +s\b", following)), (line, following)
    for label, text in events:
        assert label in ("sess_alice", "sess_bob", "sess_bob/orders-api", "sess_dora",
                         "issuer"), label
        assert any(form.match(text) for form in EVENT_FORMS), f"cut or unknown: {text!r}"


@pytest.mark.parametrize("columns", [80, 120])
def test_counts_are_whole_and_agree_with_the_summary(
        runs: dict[int, tuple[int, Terminal]], columns: int) -> None:
    screen = runs[columns][1].screen()
    summary = screen[next(i for i, line in enumerate(screen) if line.startswith("summary")):]
    status = screen[len(_header(screen)):][:2]  # the two lines of counters
    served = _count(summary, r"^  calls served +([\d,]+)$")
    assert served >= 1000  # a five-digit count on a healthy run; at least four here
    assert _count(status, r"served +([\d,]+)") == served
    assert _count(status, r"waits +([\d,]+)") == _count(summary, r"^  waits +([\d,]+) ")
    # Counts are right-aligned in one column.
    ends = {len(m.group(1)) for line in summary
            if (m := re.match(r"^( +[a-z ()0-9]+? +[\d,]+)(  |$)", line))
            and not line.startswith("  longest")}
    assert len(ends) == 1, summary


def _header(screen: list[str]) -> list[str]:
    return screen[:screen.index(next(line for line in screen if line.startswith("t ")))]


def _words(lines: list[str]) -> list[str]:
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", " ".join(lines)).split()


def test_the_header_wraps_between_words_at_80_and_not_at_all_at_120(
        runs: dict[int, tuple[int, Terminal]]) -> None:
    wide, narrow = _header(runs[120][1].screen()), _header(runs[80][1].screen())
    # The same whole words at both widths: a word split across lines would differ.
    assert _words(wide) == _words(narrow)
    assert "critical." in _words(wide)
    assert len(wide) < len(narrow)
    assert all(len(line) < 120 for line in wide)


def test_the_outage_summary_says_how_long_it_was_on() -> None:
    """--fail-for longer than the run: the summary does not claim the whole outage."""
    result = subprocess.run([sys.executable, "-m", "swr_token", "demo", "--duration", "3",
                             "--fail-for", "40", "--lifetime", "4"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("  outage"))
    seen = float(re.search(r"(\d+\.\d) s", line).group(1))  # type: ignore[union-attr]
    assert seen <= 3.0 and "of 40 s asked for" in line, line
    header = " ".join(" ".join(result.stdout.splitlines()[:6]).split())
    assert "to the end of the run (40 s asked for, " in header
