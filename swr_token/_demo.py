"""``swr-token demo``: one TokenClient, a local issuer, reader threads, and what happens.

The issuer is :class:`LocalIssuer` on 127.0.0.1 answering after a little latency, so refreshes
take visible time. Hot keys are read all the time (refreshed in the background while their
stale token is served); one idle key is read only every lifetime + 2 s, so it is left to
expire and its next read waits. Tokens appear only as fingerprints.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ._client import TokenClient
from ._errors import ClientClosedError, TokenError
from ._request import TokenRequest
from ._sources import ClerkBackendSource
from ._token import Token, classify, effective_margin, effective_threshold
from .testing import LocalIssuer

__all__ = ["DemoOptions", "run_demo"]

_LATENCY = 0.3  # seconds the issuer takes to answer
_WAITED = 0.05  # a call that took this long waited for a fetch (a cache hit takes microseconds)
_READERS = 5
_COLORS = {"fresh": "\x1b[32m", "stale": "\x1b[33m", "critical": "\x1b[31m",
           "expired": "\x1b[31m"}


@dataclass(frozen=True)
class DemoOptions:
    """What ``swr-token demo`` was asked for."""

    duration: float = 30.0
    fail_for: float = 0.0
    lifetime: int = 12
    live: bool = False  # one refreshing line per key (a terminal); else a timeline
    color: bool = False
    tty: bool = False  # output is a terminal: wrap lines to its width


@dataclass
class _Key:
    session_id: str
    template: str | None = None
    idle: bool = False
    token: Token | None = None
    zone: str = "none"
    refreshes: int = 0
    attempt_at: float | None = None  # when the current upstream attempt started
    attempt_kind: str = "fetch"
    stale_served: int = 0  # since the last new token
    failing: int = 0  # failed calls in the current streak
    waits: list[float] = field(default_factory=list)  # not yet reported

    @property
    def label(self) -> str:
        return self.session_id + (f"/{self.template}" if self.template else "")


class _Board:
    """Everything the readers, hooks and display share; guarded by one lock."""

    def __init__(self, keys: list[_Key], threshold: float, margin: float) -> None:
        self.keys = {(k.session_id, k.template): k for k in keys}
        self.threshold, self.margin = threshold, margin
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.events: list[tuple[float, str, str]] = []
        self.served = {"fresh": 0, "stale": 0, "waited": 0}
        self.failed = 0
        self.failed_waiting = 0  # of the failed calls, those that had waited for a fetch
        self.cut_short = 0  # calls still waiting for a fetch when the demo stopped
        self.longest_wait = 0.0
        self.closing = False  # shutting down: what fails now is the demo ending, not news

    def now(self) -> float:
        return time.monotonic() - self.start

    def key(self, request: TokenRequest) -> _Key:
        return self.keys[(request.session_id or "", request.template)]

    def zone(self, token: Token | None) -> tuple[str, float]:
        if token is None:
            return "none", 0.0
        left = token.remaining()
        if left <= 0:
            return "expired", left
        margin = effective_margin(self.margin, token.lifetime)
        threshold = effective_threshold(self.threshold, token.lifetime, margin)
        return classify(left, threshold, margin).value, left

    def emit(self, key: _Key | None, text: str) -> None:
        """Call with the lock held."""
        if not self.closing:
            self.events.append((self.now(), key.label if key else "issuer", text))

    # -- the source wrapper and the client's hooks ----------------------------------------

    def attempt(self, request: TokenRequest) -> None:
        with self.lock:
            key = self.key(request)
            zone, _ = self.zone(key.token)
            key.attempt_at = time.monotonic()
            key.attempt_kind = "background refresh" if zone == "stale" else "fetch"

    def attempt_failed(self, request: TokenRequest, error: BaseException) -> None:
        with self.lock:
            key = self.key(request)
            took = time.monotonic() - (key.attempt_at or time.monotonic())
            key.attempt_at = None
            zone, left = self.zone(key.token)
            after = (f"still serving the stale token ({left:.1f} s left)" if zone == "stale"
                     else "no servable token: callers wait or get the error")
            self.emit(key, f"{key.attempt_kind} failed after {took:.2f} s: "
                      f"{_describe(error)}; {after}")

    def published(self, request: TokenRequest, token: Token) -> None:
        with self.lock:
            key = self.key(request)
            took = time.monotonic() - (key.attempt_at or time.monotonic())
            how = (f"stale one served {key.stale_served:,}x meanwhile, nobody waited"
                   if key.attempt_kind == "background refresh" else "callers waited for it")
            if key.token is not None:
                key.refreshes += 1
            key.token, key.zone, key.attempt_at, key.stale_served = token, "fresh", None, 0
            self.emit(key, f"new token {token.fingerprint} ({key.attempt_kind}, "
                      f"{took:.2f} s); {how}")

    def gave_up(self, request: TokenRequest, error: TokenError) -> None:
        with self.lock:
            key = self.key(request)
            zone, _ = self.zone(key.token)
            then = "keeps serving the stale token and backs off" if zone == "stale" else \
                "callers get the error until the issuer answers"
            self.emit(key, f"gave up ({type(error).__name__}); {then}")

    # -- readers --------------------------------------------------------------------------

    def servable(self, key: _Key) -> bool:
        """Whether the client holds a token it would serve at once (fresh or stale)."""
        with self.lock:
            return self.zone(key.token)[0] in ("fresh", "stale")

    def served_call(self, key: _Key, token: Token, took: float, *, servable: bool) -> None:
        """Count one call. ``servable``: a fresh or stale token existed when it started.

        A call waited when it found no servable token (as the client's ``waits`` counts)
        and took visibly long (so a call racing the publication of a new token, served
        from the cache a microsecond later, is not taken for one).
        """
        with self.lock:
            self.longest_wait = max(self.longest_wait, took)
            if not servable and took >= _WAITED:
                self.served["waited"] += 1
                key.waits.append(took)
            elif self.zone(token)[0] == "stale":
                self.served["stale"] += 1
                key.stale_served += 1
            else:
                self.served["fresh"] += 1
            if key.failing:
                self.emit(key, f"served again after {key.failing} failed calls")
                key.failing = 0

    def failed_call(self, key: _Key, error: TokenError, took: float, *,
                    servable: bool) -> None:
        with self.lock:
            if self.closing:
                return
            self.failed += 1
            self.failed_waiting += not servable and took >= _WAITED
            self.longest_wait = max(self.longest_wait, took)
            if not key.failing:
                self.emit(key, f"calls fail now: {_describe(error)}")
            key.failing += 1

    # -- the display loop -----------------------------------------------------------------

    def observe(self) -> None:
        """Note zone changes and waits (the zone of each key's newest token)."""
        with self.lock:
            for key in self.keys.values():
                if key.waits:
                    n, longest = len(key.waits), max(key.waits)
                    self.emit(key, f"{n} call{'s' * (n > 1)} waited, longest {longest:.2f} s")
                    key.waits.clear()
                zone, left = self.zone(key.token)
                if zone == key.zone:
                    continue
                key.zone = zone
                if zone == "stale":
                    self.emit(key, f"stale ({left:.1f} s left): still served at once" + (
                        "; nobody reads it, so nobody refreshes it" if key.idle else ""))
                elif zone == "critical":
                    self.emit(key, f"critical ({left:.1f} s left): not served any more; the "
                              "next call waits for a fetch")
                elif zone == "expired":
                    self.emit(key, "expired")

    def drain(self) -> list[tuple[float, str, str]]:
        with self.lock:
            events, self.events = self.events, []
        return sorted(events)


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    name = type(error).__name__
    return f"HTTP {status} ({name})" if status else name


def _reader(board: _Board, client: TokenClient, keys: list[_Key], stop: threading.Event,
            pause: Callable[[], float]) -> None:
    rng = random.Random()
    while not stop.is_set():
        key = rng.choice(keys)
        servable = board.servable(key)
        started = time.monotonic()
        try:
            token = client.get_token_info(key.session_id, template=key.template)
        except ClientClosedError:
            # The demo is ending: a call that was waiting for a fetch is released.
            if time.monotonic() - started >= _WAITED:
                with board.lock:
                    board.cut_short += 1
            return
        except TokenError as exc:
            board.failed_call(key, exc, time.monotonic() - started, servable=servable)
            stop.wait(0.2)
            continue
        board.served_call(key, token, time.monotonic() - started, servable=servable)
        stop.wait(pause())


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


_NUMBER_UNIT = re.compile(r"(\d) (?=s\b)")


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


_LABEL = 19  # the longest key label, "sess_bob/orders-api"
_EVENT_LINES = 9  # lines of recent events on the live screen


class _Screen:
    """Renders the board: a block redrawn in place (terminal) or a timeline.

    On a terminal every line fits its width (default 80 columns): text wraps between words
    and counts are right-aligned in fixed columns, so nothing is cut. A piped timeline keeps
    one line per event, for grep.
    """

    def __init__(self, out: IO[str], options: DemoOptions, board: _Board,
                 tty: bool = False) -> None:
        self.out, self.options, self.board, self.tty = out, options, board, tty
        self.recent: list[list[str]] = []
        self.drawn = 0

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

    def update(self, status: list[str]) -> None:
        events = [self.event_lines(*event) for event in self.board.drain()]
        if not self.options.live:
            if events:
                self.write("".join(line + "\n" for lines in events for line in lines))
            return
        width = self.width
        self.recent = self.recent + events
        while sum(len(lines) for lines in self.recent) > _EVENT_LINES:
            self.recent.pop(0)
        lines = _fields(status, width)
        bar = width >= 77  # the life bar goes first when the terminal is narrow
        lines.append(f"  {'key':<{_LABEL}}  {'zone':<8}  {'left':>6}  "
                     + (f"{'life':<14}  " if bar else "") + f"{'token':<10}  refreshes")
        with self.board.lock:
            for key in self.board.keys.values():
                zone, left = self.board.zone(key.token)
                life = key.token.lifetime if key.token is not None else 1.0
                fp = key.token.fingerprint if key.token is not None else "-"
                shown = f"{zone:<8}"
                if self.options.color and zone in _COLORS:
                    shown = f"{_COLORS[zone]}{shown}\x1b[0m"
                lines.append(f"  {key.label:<{_LABEL}}  {shown}  {max(left, 0):>5.1f}s  "
                             + (f"{_bar(max(left, 0) / life)}  " if bar else "")
                             + f"{fp:<10}  {key.refreshes:>9,}")
        lines.append("  recent events:")
        lines += [line for event in self.recent for line in event]
        lines += [""] * (len(lines) < self.drawn) * (self.drawn - len(lines))
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.drawn = len(lines)


def run_demo(options: DemoOptions, out: IO[str]) -> int:
    """Run the demo until ``options.duration`` passes; 0, or 130 after Ctrl-C."""
    lifetime = options.lifetime
    threshold, margin, poll = lifetime / 2, lifetime / 6, min(1.0, lifetime / 12)
    keys = [_Key("sess_alice"), _Key("sess_bob"), _Key("sess_bob", "orders-api"),
            _Key("sess_dora", idle=True)]
    hot = [key for key in keys if not key.idle]
    board = _Board(keys, threshold, margin)
    screen = _Screen(out, options, board, tty=options.live or options.tty)
    # Just after the first round of background refreshes, so a fresh token has to carry
    # the keys through the outage; later if the run is long enough to show the recovery too.
    outage_at = max(1.0, min(threshold + 0.5, options.duration - options.fail_for - 2))
    outage_end = outage_at + options.fail_for
    stop = threading.Event()
    threads: list[threading.Thread] = []
    interrupted = False
    outage = "none" if not options.fail_for else "scheduled"
    outage_started = outage_ended = None
    issuer = LocalIssuer(lifetime=lifetime)
    client: TokenClient | None = None
    source: ClerkBackendSource | None = None
    quiet = logging.NullHandler()  # the screen tells the story; log lines would tear it
    logging.getLogger("swr_token").addHandler(quiet)
    try:
        issuer.start()
        issuer.delay(_LATENCY)
        source = mint = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)

        def traced(request: TokenRequest) -> Token:
            """The real source, reporting each upstream attempt to the board."""
            board.attempt(request)
            try:
                return mint(request)
            except BaseException as exc:
                board.attempt_failed(request, exc)
                raise

        client = TokenClient(traced, poll_interval=poll, background_refresh_threshold=threshold,
                             margin=margin, on_token_update=board.published,
                             on_refresh_error=board.gave_up)
        screen.paragraph(f"swr-token demo: LocalIssuer at {issuer.url}, answering after "
                         f"{_LATENCY:g} s.")
        screen.paragraph(f"Tokens live {lifetime} s: fresh with {threshold:g} s or more left, "
                         f"stale down to {margin:.3g} s, then critical. Poller every "
                         f"{poll:.3g} s.")
        screen.paragraph(
            f"{_READERS} reader threads on {len(hot)} hot keys, 1 on sess_dora every "
            f"{lifetime + 2} s." + _outage_plan(outage_at, outage_end, options))
        for n in range(_READERS):
            threads.append(threading.Thread(
                target=_reader, args=(board, client, hot, stop, lambda: random.uniform(0, .005)),
                name=f"swr-token-demo-reader-{n + 1}", daemon=True))
        threads.append(threading.Thread(
            target=_reader, args=(board, client, [keys[-1]], stop, lambda: lifetime + 2.0),
            name="swr-token-demo-idle-reader", daemon=True))
        board.start = time.monotonic()
        for thread in threads:
            thread.start()
        while (now := board.now()) < options.duration:
            if outage == "scheduled" and now >= outage_at:
                issuer.fail(503, duration=options.fail_for)
                outage, outage_started = "on", now
                with board.lock:
                    board.emit(None, f"outage: every token request answers HTTP 503 for "
                               f"{options.fail_for:g} s")
            elif outage == "on" and now >= outage_end:
                outage, outage_ended = "over", now
                with board.lock:
                    board.emit(None, "outage over: the issuer answers again")
            board.observe()
            screen.update(_status(board, client, issuer, now, options.duration, outage))
            stop.wait(0.1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        with board.lock:
            board.closing = True
        if client is not None:
            client.close()  # releases any reader waiting for a token
        for thread in threads:
            thread.join(1.0)
        issuer.stop()
        if source is not None:
            source.close()
        logging.getLogger("swr_token").removeHandler(quiet)
    if client is not None:
        if interrupted and options.live:
            screen.write("\n")  # Ctrl-C may have cut a frame short: do not draw over it
        else:
            board.observe()
            screen.update(_status(board, client, issuer, board.now(), options.duration,
                                  outage))
        screen.write(_summary(board, client, issuer, options, interrupted,
                              outage_seen=_outage_seen(outage_started, outage_ended, board)))
    return 130 if interrupted else 0


def _outage_plan(at: float, end: float, options: DemoOptions) -> str:
    if not options.fail_for:
        return ""
    if end <= options.duration:
        return f" Issuer outage (HTTP 503) from {at:.1f} s to {end:.1f} s."
    return (f" Issuer outage (HTTP 503) from {at:.1f} s to the end of the run "
            f"({options.fail_for:g} s asked for, {options.duration - at:.1f} s shown).")


def _outage_seen(started: float | None, ended: float | None, board: _Board) -> float | None:
    """How long the injected outage was on during the run (it may outlast the run)."""
    if started is None:
        return None
    return max(0.0, (ended if ended is not None else board.now()) - started)


def _status(board: _Board, client: TokenClient, issuer: LocalIssuer, now: float,
            duration: float, outage: str) -> list[str]:
    """The live screen's counters, as fields that wrap whole (see :func:`_fields`)."""
    stats = client.stats()
    state = "DOWN (503)" if outage == "on" else "up"
    return [f"t {now:5.1f}/{duration:g} s", f"issuer {state:<10}",
            f"upstream {issuer.request_count():>4,}",
            f"served {sum(board.served.values()):>9,}", f"failed {board.failed:>5,}",
            "\n",  # the second group starts a line of its own
            f"waits {stats['waits']:>5,}", f"longest {board.longest_wait:5.2f} s",
            f"stale {board.served['stale']:>9,}",
            f"refreshes {stats['background_refreshes']:>5,}"]


def _summary(board: _Board, client: TokenClient, issuer: LocalIssuer, options: DemoOptions,
             interrupted: bool, *, outage_seen: float | None) -> str:
    """The closing table: one count per line, right-aligned, with what it means.

    ``outage_seen``: how long the outage was on during the run (None: there was none).
    """
    stats = client.stats()
    served = board.served
    total = sum(served.values())
    upstream = issuer.request_count()
    ran = min(board.now(), options.duration)
    per = f"one per {total // upstream:,} calls served" if upstream else "none"
    lines = [
        "",
        f"summary{' (interrupted)' if interrupted else ''}: {ran:.1f} s, {len(board.keys)} keys, "
        f"{_READERS + 1} reader threads, tokens living {options.lifetime} s",
        f"  calls served          {total:>10,}",
        f"    fresh               {served['fresh']:>10,}  from the cache: no lock, no I/O",
        f"    stale               {served['stale']:>10,}  served at once; a refresh runs "
        "behind it",
        f"    after a wait        {served['waited']:>10,}  no servable token: waited for a "
        "fetch",
        f"  calls failed          {board.failed:>10,}",
    ]
    if board.failed:
        lines += [
            f"    after a wait        {board.failed_waiting:>10,}  the fetch they waited for "
            "failed",
            f"    at once             {board.failed - board.failed_waiting:>10,}  fail fast: "
            "the issuer had just failed",
        ]
    if board.cut_short:
        lines.append(f"  calls cut short       {board.cut_short:>10,}  still waiting when the "
                     "demo stopped")
    lines += [
        f"  waits                 {stats['waits']:>10,}  the client's count of calls that "
        "waited",
        f"  longest call          {board.longest_wait:>8.2f} s",
        f"  upstream requests     {upstream:>10,}  {per}",
        f"  background refreshes  {stats['background_refreshes']:>10,}",
    ]
    if outage_seen is not None:
        cut = outage_seen + 0.05 < options.fail_for
        lines.append(
            f"  outage (HTTP 503)     {outage_seen:>8.1f} s  "
            + (f"of {options.fail_for:g} s asked for; " if cut else "")
            + ("every call was served" if not board.failed
               else f"{board.failed:,} calls failed"))
    return "\n".join(lines) + "\n"
