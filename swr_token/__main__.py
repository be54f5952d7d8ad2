"""``python -m swr_token``: the same command line as ``swr-token``."""

from ._cli import main

raise SystemExit(main(prog="python -m swr_token"))
