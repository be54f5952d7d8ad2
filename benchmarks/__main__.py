"""``python -m benchmarks run SCENARIO [SCENARIO ...] [--adapters ...] [--json FILE] [--quick]``

Scenarios: hot, storm, outage, cold, scale (or ``all``). Adapters: swr_token, google_auth,
botocore, naive (all by default; ``hot`` adds the dict baseline; ``scale`` is swr_token only).
Each scenario prints a table, then the JSON document is printed (and written with ``--json``).
``storm``/``outage`` save a latency plot to ``docs/bench_<scenario>.png`` (``--plot-dir``);
``--quick`` shortens everything for a smoke run and plots nothing unless ``--plot-dir`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .adapters import ADAPTERS
from .harness import LogCounter
from .reporting import environment, print_result, to_json
from .scenarios import SCENARIOS

_ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="swr_token against its peers, same run")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one or more scenarios")
    run.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "all"], metavar="SCENARIO",
                     help=f"one of {', '.join(SCENARIOS)}, or all")
    run.add_argument("--adapters", default=",".join(ADAPTERS),
                     help=f"comma-separated subset of {','.join(ADAPTERS)} (default: all)")
    run.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    run.add_argument("--quick", action="store_true", help="short smoke run")
    run.add_argument("--plot-dir", type=Path, help="where plots go (default: docs/)")
    run.add_argument("--no-plot", action="store_true", help="do not draw plots")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    unknown = [a for a in adapters if a not in ADAPTERS]
    if unknown:
        print(f"unknown adapter(s) {unknown}; choose from {list(ADAPTERS)}", file=sys.stderr)
        return 2
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))

    # The peers log every failed refresh (botocore with a traceback); count, do not print.
    counter = LogCounter()
    logging.basicConfig(level=logging.WARNING, handlers=[counter], force=True)

    env = environment(argv)
    print(f"# {env['date']}  {env['nproc']} CPUs ({env['cpu']})  Python {env['python']}  "
          + "  ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    print(f"# {env['command']}")
    results, logs, loads, plots = [], {}, {}, {}
    plot_dir = args.plot_dir or (None if args.quick else _ROOT / "docs")
    for name in names:
        load_before = os.getloadavg()
        result = SCENARIOS[name](adapters, args.quick)
        loads[name] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        logs[name] = counter.take()
        print_result(result)
        print(f"  load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}")
        if result.series and plot_dir is not None and not args.no_plot:
            from .plot import plot

            path = plot(result, plot_dir / f"bench_{name}.png")
            plots[name] = str(path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path)
            print(f"  plot: {plots[name]}")
        results.append(result)
    document = to_json(env, results, {"load": loads, "log_records": logs, "plots": plots})
    print(document)
    if args.json is not None:
        args.json.write_text(document + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
