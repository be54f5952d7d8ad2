"""``swr-token demo``: one TokenClient, a local issuer, reader threads, and what happens.

The issuer is :class:`LocalIssuer` on 127.0.0.1 answering after a little latency, so refreshes
take visible time. Hot keys are read all the time (refreshed in the background while their
stale token is served); one idle key is read only every lifetime + 2 s, so it is left to
expire and its next read waits. Tokens appear only as fingerprints.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from .._client import TokenClient
from .._issuer import LocalIssuer
from .._request import TokenRequest
from .._sources import ClerkBackendSource
from .._token import Token
from .board import Board, Key, reader
from .screen import Screen

if TYPE_CHECKING:
    from .flags import Args

__all__ = ["DemoOptions", "run", "run_demo"]

_LATENCY = 0.3  # seconds the issuer takes to answer
_READERS = 5


@dataclass(frozen=True)
class DemoOptions:
    """What ``swr-token demo`` was asked for."""

    duration: float = 30.0
    fail_for: float = 0.0
    lifetime: int = 12
    live: bool = False  # one refreshing line per key (a terminal); else a timeline
    color: bool = False
    tty: bool = False  # output is a terminal: wrap lines to its width


class _Outage:
    """The injected issuer outage (``--fail-for``): none, or scheduled, on, then over."""

    def __init__(self, options: DemoOptions, threshold: float) -> None:
        # Just after the first round of background refreshes, so a fresh token has to carry
        # the keys through the outage; later if the run is long enough to show the recovery.
        self.at = max(1.0, min(threshold + 0.5, options.duration - options.fail_for - 2))
        self.end = self.at + options.fail_for
        self.length, self.duration = options.fail_for, options.duration
        self.state = "none" if not options.fail_for else "scheduled"
        self.started: float | None = None
        self.ended: float | None = None

    def plan(self) -> str:
        """The introduction's sentence about it ("" without one)."""
        if not self.length:
            return ""
        if self.end <= self.duration:
            return f" Issuer outage (HTTP 503) from {self.at:.1f} s to {self.end:.1f} s."
        return (f" Issuer outage (HTTP 503) from {self.at:.1f} s to the end of the run "
                f"({self.length:g} s asked for, {self.duration - self.at:.1f} s shown).")

    def tick(self, now: float, issuer: LocalIssuer, board: Board) -> None:
        """Start or end the outage when its time comes."""
        if self.state == "scheduled" and now >= self.at:
            issuer.fail(503, duration=self.length)
            self.state, self.started = "on", now
            with board.lock:
                board.emit(None, f"outage: every token request answers HTTP 503 for "
                           f"{self.length:g} s")
        elif self.state == "on" and now >= self.end:
            self.state, self.ended = "over", now
            with board.lock:
                board.emit(None, "outage over: the issuer answers again")

    def seen(self, now: float) -> float | None:
        """How long it was on during the run (it may outlast the run); None: never on."""
        if self.started is None:
            return None
        return max(0.0, (self.ended if self.ended is not None else now) - self.started)


class _Demo:
    """One run: the issuer, the client and its reader threads, the board, the screen."""

    def __init__(self, options: DemoOptions, out: IO[str]) -> None:
        self.options = options
        lifetime = options.lifetime
        self.threshold, self.margin = lifetime / 2, lifetime / 6
        self.poll = min(1.0, lifetime / 12)
        self.keys = [Key("sess_alice"), Key("sess_bob"), Key("sess_bob", "orders-api"),
                     Key("sess_dora", idle=True)]
        self.board = Board(self.keys, self.threshold, self.margin)
        self.screen = Screen(out, color=options.color, tty=options.live or options.tty)
        self.outage = _Outage(options, self.threshold)
        self.stop_readers = threading.Event()
        self.threads: list[threading.Thread] = []
        self.issuer = LocalIssuer(lifetime=lifetime)
        self.source: ClerkBackendSource | None = None
        self.client: TokenClient | None = None

    def start(self) -> TokenClient:
        """Serve, make the client, say what runs, start the readers."""
        issuer, board = self.issuer, self.board
        issuer.start()
        issuer.delay(_LATENCY)
        self.source = mint = ClerkBackendSource(issuer.secret_key, api_url=issuer.clerk_api_url)

        def traced(request: TokenRequest) -> Token:
            """The real source, reporting each upstream attempt to the board."""
            board.attempt(request)
            try:
                return mint(request)
            except BaseException as exc:
                board.attempt_failed(request, exc)
                raise

        self.client = client = TokenClient(
            traced, poll_interval=self.poll, background_refresh_threshold=self.threshold,
            margin=self.margin, on_token_update=board.published,
            on_refresh_error=board.gave_up)
        self._introduce()
        self._start_readers(client)
        return client

    def _introduce(self) -> None:
        lifetime, screen = self.options.lifetime, self.screen
        screen.paragraph(f"swr-token demo: LocalIssuer at {self.issuer.url}, answering after "
                         f"{_LATENCY:g} s.")
        screen.paragraph(f"Tokens live {lifetime} s: fresh with {self.threshold:g} s or more "
                         f"left, stale down to {self.margin:.3g} s, then critical. Poller "
                         f"every {self.poll:.3g} s.")
        hot = [key for key in self.keys if not key.idle]
        screen.paragraph(
            f"{_READERS} reader threads on {len(hot)} hot keys, 1 on sess_dora every "
            f"{lifetime + 2} s." + self.outage.plan())

    def _start_readers(self, client: TokenClient) -> None:
        board, stop, lifetime = self.board, self.stop_readers, self.options.lifetime
        hot = [key for key in self.keys if not key.idle]
        for n in range(_READERS):
            self.threads.append(threading.Thread(
                target=reader, args=(board, client, hot, stop, lambda: random.uniform(0, .005)),
                name=f"swr-token-demo-reader-{n + 1}", daemon=True))
        self.threads.append(threading.Thread(
            target=reader, args=(board, client, [self.keys[-1]], stop, lambda: lifetime + 2.0),
            name="swr-token-demo-idle-reader", daemon=True))
        board.start = time.monotonic()
        for thread in self.threads:
            thread.start()

    def watch(self, client: TokenClient) -> None:
        """Show what happens, ten times a second, until the run's time is up."""
        while (now := self.board.now()) < self.options.duration:
            self.outage.tick(now, self.issuer, self.board)
            self.draw(client, now)
            self.stop_readers.wait(0.1)

    def draw(self, client: TokenClient, now: float) -> None:
        board = self.board
        board.observe()
        events = board.drain()
        if not self.options.live:
            self.screen.timeline(events)
            return
        status = _status(board, client, self.issuer, now, self.options.duration,
                         self.outage.state)
        self.screen.live(status, events, board.rows())

    def stop(self) -> None:
        """Readers released and joined, then the client, issuer and source closed."""
        self.stop_readers.set()
        with self.board.lock:
            self.board.closing = True
        if self.client is not None:
            self.client.close()  # releases any reader waiting for a token
        for thread in self.threads:
            thread.join(1.0)
        self.issuer.stop()
        if self.source is not None:
            self.source.close()

    def report(self, client: TokenClient, *, interrupted: bool) -> None:
        """The last frame (unless Ctrl-C may have cut one short), then the summary."""
        if interrupted and self.options.live:
            self.screen.write("\n")  # do not draw over a frame cut short
        else:
            self.draw(client, self.board.now())
        self.screen.write(_summary(self.board, client, self.issuer, self.options, interrupted,
                                   outage_seen=self.outage.seen(self.board.now())))


def run(args: Args, prog: str) -> int:
    """``swr-token demo``: live on a terminal, else (or with ``--timeline``) a timeline."""
    tty = sys.stdout.isatty()
    return run_demo(DemoOptions(
        duration=args.duration, fail_for=args.fail_for, lifetime=args.lifetime,
        live=tty and not args.timeline, tty=tty, color=tty and not os.environ.get("NO_COLOR")),
        sys.stdout)


def run_demo(options: DemoOptions, out: IO[str]) -> int:
    """Run the demo until ``options.duration`` passes; 0, or 130 after Ctrl-C."""
    demo = _Demo(options, out)
    quiet = logging.NullHandler()  # the screen tells the story; log lines would tear it
    logging.getLogger("swr_token").addHandler(quiet)
    interrupted = False
    try:
        demo.watch(demo.start())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        demo.stop()
        logging.getLogger("swr_token").removeHandler(quiet)
    if demo.client is not None:
        demo.report(demo.client, interrupted=interrupted)
    return 130 if interrupted else 0


def _status(board: Board, client: TokenClient, issuer: LocalIssuer, now: float,
            duration: float, outage: str) -> list[str]:
    """The live screen's counters, as fields that wrap whole (see :meth:`Screen.live`)."""
    stats = client.stats()
    state = "DOWN (503)" if outage == "on" else "up"
    return [f"t {now:5.1f}/{duration:g} s", f"issuer {state:<10}",
            f"upstream {issuer.request_count():>4,}",
            f"served {sum(board.served.values()):>9,}", f"failed {board.failed:>5,}",
            "\n",  # the second group starts a line of its own
            f"waits {stats['waits']:>5,}", f"longest {board.longest_wait:5.2f} s",
            f"stale {board.served['stale']:>9,}",
            f"refreshes {stats['background_refreshes']:>5,}"]


def _summary(board: Board, client: TokenClient, issuer: LocalIssuer, options: DemoOptions,
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
