"""Process time of ``swr-token get`` answered from the file cache, against bare interpreters.

Run: ``python -m benchmarks.cached_get [--runs 30]``. Starts a LocalIssuer on 127.0.0.1, fills
a private cache directory with one ``get``, then times whole processes, one after another:
``python -c pass``, ``python -c "import requests, jwt"``, a cached ``swr-token get`` and an
uncached one (``--no-cache``, a loopback request each). Wall time from spawn to exit, and
the child's CPU time (user + system), median and 90th percentile. Bytecode is cached (in a
temporary ``PYTHONPYCACHEPREFIX``, even under ``PYTHONDONTWRITEBYTECODE``) and each row gets
one untimed warm-up run, as for an installed package. Prints no token.

``--no-site``: every row runs ``python -S`` (the console script as its file), its modules
found through ``PYTHONPATH``: no ``.pth`` file or ``sitecustomize`` runs at start-up. Use it
where an environment's start-up hooks cost more than the command (some sandboxes add tens
of milliseconds to every interpreter), to see what the command itself costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from swr_token.testing import LocalIssuer


def _command(python: list[str]) -> list[str]:
    """The console script next to this interpreter (what users run), else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "swr-token")
    if not os.access(script, os.X_OK):
        return [*python, "-m", "swr_token"]
    return [script] if python == [sys.executable] else [*python, script]


def _time(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=60)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{argv[-3:]} failed: {done.stderr.decode()[-300:]}")
    return walls, cpus


def _p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cached_get")
    parser.add_argument("--runs", type=int, default=30, help="processes per row (default 30)")
    parser.add_argument("--no-site", action="store_true",
                        help="run each row with python -S (no start-up hooks)")
    args = parser.parse_args(argv)
    python = [sys.executable, "-S"] if args.no_site else [sys.executable]
    with LocalIssuer(lifetime=3600) as issuer, tempfile.TemporaryDirectory() as cache, \
            tempfile.TemporaryDirectory() as pycache:
        env = {name: value for name, value in os.environ.items()
               if name != "PYTHONDONTWRITEBYTECODE"}
        env.update(CLERK_SECRET_KEY=issuer.secret_key, CLERK_API_URL=issuer.clerk_api_url,
                   SWR_TOKEN_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=pycache)
        if args.no_site:  # the same modules, found without site's help
            env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        get = [*_command(python), "get", "--session", "sess_bench"]
        _time(get, env, 1)  # fill the cache (and the bytecode cache)
        filled = issuer.request_count("clerk")
        rows = [
            ("python -c pass", [*python, "-c", "pass"]),
            ('python -c "import requests, jwt"', [*python, "-c", "import requests, jwt"]),
            ("swr-token get (cached)", get),
            ("swr-token get --no-cache", [*get, "--no-cache"]),
        ]
        results = []
        for label, command in rows:
            _time(command, env, 1)  # warm-up: bytecode written, files in the page cache
            results.append((label, *_time(command, env, args.runs)))
        cached_requests = issuer.request_count("clerk") - filled - args.runs - 1  # no-cache
    base = statistics.median(results[0][1])
    print(f"# {time.strftime('%Y-%m-%d')}  {os.cpu_count()} CPUs  Python "
          f"{sys.version.split()[0]}{'  -S' if args.no_site else ''}  load average "
          f"{os.getloadavg()[0]:.2f}  {args.runs} runs per row")
    print(f"{'command':34} {'wall median':>12} {'wall p90':>9} {'cpu median':>11} "
          f"{'x pass':>7}")
    for label, walls, cpus in results:
        median = statistics.median(walls)
        print(f"{label:34} {median * 1000:9.1f} ms {_p90(walls) * 1000:6.1f} ms "
              f"{statistics.median(cpus) * 1000:8.1f} ms {median / base:6.2f}x")
    print(f"# issuer requests by the {args.runs} cached runs: {cached_requests}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
