"""gunicorn settings for an app that uses swr_token, and what fork means for the client.

    cd examples && gunicorn -c gunicorn.conf.py 'flask_app:create_app()'

with SWR_TOKEN_TOKEN_URL, SWR_TOKEN_CLIENT_ID, SWR_TOKEN_CLIENT_SECRET and UPSTREAM_URL set
to your issuer and API (see flask_app.py; -b HOST:PORT overrides the bind below). gunicorn is
not a dependency of swr_token; tests/test_examples.py runs exactly this command.

One TokenClient per worker process, shared by all of that worker's threads. Processes share
nothing: each worker caches and refreshes its own tokens, so N workers ask the issuer N times
per token lifetime (swr_token.RedisStore lets a fleet share them).
"""

bind = "127.0.0.1:8000"
worker_class = "gthread"
workers = 2
threads = 8  # all threads of a worker share its one client; a fresh token is a dict read

# preload_app / --preload imports the app in the master and then forks the workers.
# - A TokenClient made in the master is fork-safe: in each worker it rebuilds its locks, its
#   poller and its refresh threads on first use, keeps the tokens that are still valid, and
#   forgets the master's in-flight fetches, so no worker deadlocks on a lock taken at fork.
# - Still, prefer a client made in the worker: lazily on first use (django_view.py's
#   token_client()), or in a post_fork(server, worker) hook here. Then the master never
#   talks to the issuer and holds no threads, and nothing depends on fork handling.
# - Without preload (the default, as here) every worker imports the app itself after the
#   fork, so flask_app.create_app() already makes the client in the worker.
preload_app = False


def post_worker_init(worker):
    """Once the worker has loaded the app: fetch its token now, so no request waits for it."""
    client = getattr(worker.wsgi, "extensions", {}).get("swr_token")
    if client is None:
        return
    try:
        client.get_token(timeout=5)
    except Exception as exc:  # the first request will try again; do not kill the worker
        worker.log.warning("swr_token warm-up failed: %s", exc)
