"""``python -m swr_token``: the same command line as ``swr-token``."""

from .cli import main

raise SystemExit(main(prog="python -m swr_token"))
