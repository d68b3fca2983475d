"""The lab's sample app: one release of a tiny HTTP service, shaped by its release.json.

Runs with the host's system Python and the standard library only, as an app on a VM would.
Environment: APP_BIND (the host's own address; never 0.0.0.0), APP_PORT.
Behaviour flags in release.json make a release bad in a chosen way:
health_fail, health_flap, start_delay (seconds before it listens), error_rate (share of 500s
on /), crash_on_start, latency_ms (added to every / response) and fail_after (seconds after it
starts listening during which / is good; then / answers 500 with probability error_rate, or
always when error_rate is 0; /health stays 200).

A release with "flags": true evaluates flag new-greeting on every / through OpenFeature's flagd
provider, in-process, from the flag file APP_FLAGS_FILE (polled for changes; a file that does
not parse keeps the previous flags). The targeting key is the request's X-User header, else a
random one. Those packages are not in the system Python: such a release re-execs itself with
APP_FLAGS_PYTHON (the lab's shared venv). It answers X-Flag-new-greeting: <variant> ("default"
when no variant could be evaluated) and, for variant "on", 500 with probability flag_error_rate.

A release with "db_schema": 1, 2 or 3 serves POST /users and GET /users/<id> from PostgreSQL
at APP_DATABASE_URL (appdb.py, shipped beside this file); it re-execs with APP_FLAGS_PYTHON too
(the same venv has psycopg).
"""

import importlib.util
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RELEASE_DIR = os.path.dirname(os.path.abspath(__file__))
FLAG = "new-greeting"
FLAG_POLL_MS = 500  # the provider checks the file's mtime this often (its deadline_ms)


def load_release():
    with open(os.path.join(RELEASE_DIR, "release.json"), encoding="utf-8") as fh:
        return json.load(fh)


def ensure_venv_python(meta):
    """Re-execs under APP_FLAGS_PYTHON unless this interpreter has the packages the release
    needs (OpenFeature for flags, psycopg for a database schema)."""
    needed = [mod for mod, wanted in (("openfeature", meta.get("flags")),
                                      ("psycopg", meta.get("db_schema"))) if wanted]
    if all(importlib.util.find_spec(mod) is not None for mod in needed):
        return
    python = os.environ.get("APP_FLAGS_PYTHON")
    if not python or os.environ.get("APP_FLAGS_REEXEC"):
        print(f"this release needs {', '.join(needed)}: set APP_FLAGS_PYTHON to an "
              "interpreter that has them (the lab's app venv)", flush=True)
        sys.exit(4)
    os.environ["APP_FLAGS_REEXEC"] = "1"
    os.execv(python, [python, os.path.abspath(__file__)])


class OneLine(logging.Filter):
    """The provider logs a traceback on every poll of a bad file: one line is enough."""

    def filter(self, record):
        if record.exc_info:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class Flags:
    """Flag new-greeting, evaluated by the flagd provider from a flag file (file mode)."""

    def __init__(self, path):
        from openfeature import api
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType
        from openfeature.evaluation_context import EvaluationContext

        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(OneLine())
        self.api, self.context = api, EvaluationContext
        provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=path,
                                 deadline_ms=FLAG_POLL_MS)
        try:
            api.set_provider_and_wait(provider)
        except Exception as exc:  # the provider keeps polling: flags arrive with the file
            print(f"flags: {path} not loaded ({exc}); serving the default until it is", flush=True)
        self.client = api.get_client()

    def evaluate(self, user):
        """(on?, variant name) for this targeting key."""
        details = self.client.get_boolean_details(FLAG, False, self.context(targeting_key=user))
        return bool(details.value), details.variant or "default"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address, meta):
        super().__init__(address, Handler)
        self.meta = meta
        self.host_name = socket.gethostname()
        self.active = 0
        self.active_lock = threading.Lock()
        self.listening_since = time.monotonic()
        self.flags = None  # set by main() for flag-enabled releases
        self.users = None  # set by main() for releases with a database schema (appdb.Users)

    def error_share(self):
        """The share of / requests that answer 500 now."""
        rate = float(self.meta.get("error_rate", 0.0))
        fail_after = self.meta.get("fail_after")
        if fail_after is None:
            return rate
        if time.monotonic() - self.listening_since < float(fail_after):
            return 0.0
        return rate if rate > 0 else 1.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rollout-lab-app"
    timeout = 30  # idle keep-alive connections do not hold a thread forever

    def log_message(self, fmt, *args):  # access logs would cost more than the requests
        pass

    def _reply(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Served-By", self.server.host_name)
        self.send_header("X-Version", self.server.meta["version"])
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._counted(self._route)

    def do_POST(self):
        self._counted(lambda: self._users("POST") or self._reply(404, "not found\n"))

    def _counted(self, serve):
        srv = self.server
        with srv.active_lock:
            srv.active += 1
        try:
            serve()
        finally:
            with srv.active_lock:
                srv.active -= 1

    def _users(self, method):
        """/users routes of a release with a database schema (appdb.handle)."""
        if self.server.users is None:
            return False
        import appdb

        return appdb.handle(self, self.server.users, method, urlsplit(self.path).path)

    def _route(self):
        meta = self.server.meta
        url = urlsplit(self.path)
        if self._users("GET"):
            return
        if url.path == "/health":
            if meta.get("health_flap"):
                with self.server.active_lock:
                    self.server.flap = not getattr(self.server, "flap", False)
                    healthy = self.server.flap
                self._reply(200 if healthy else 500, "flapping\n")
            elif meta.get("health_fail"):
                self._reply(500, "unhealthy\n")
            elif self.server.users is not None and (problem := self.server.users.schema_problem()):
                self._reply(500, problem + "\n")
            else:
                self._reply(200, "ok\n")
        elif url.path == "/version":
            self._reply(200, meta["version"] + "\n")
        elif url.path == "/slow":
            # A long-lived request, for drain tests: /slow?seconds=N. The headers (who serves
            # it) go out at once, the body after N seconds.
            seconds = float(parse_qs(url.query).get("seconds", ["5"])[0])
            data = f"slow {seconds}s from {self.server.host_name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Served-By", self.server.host_name)
            self.send_header("X-Version", meta["version"])
            self.end_headers()
            self.wfile.flush()
            time.sleep(min(max(seconds, 0.0), 600.0))
            self.wfile.write(data)
        elif url.path == "/":
            latency = int(meta.get("latency_ms", 0))
            if latency > 0:
                time.sleep(latency / 1000.0)
            self._root(meta)
        else:
            self._reply(404, "not found\n")

    def _root(self, meta):
        greeting, headers = "", ()
        on = False
        if self.server.flags is not None:
            user = self.headers.get("X-User") or f"r{random.getrandbits(64):016x}"
            on, variant = self.server.flags.evaluate(user)
            headers = ((f"X-Flag-{FLAG}", variant),)
            greeting = "hello from the new greeting: " if on else "hello: "
        if random.random() < self.server.error_share():
            self._reply(500, "injected error\n", headers)
        elif on and random.random() < float(meta.get("flag_error_rate", 0.0)):
            self._reply(500, f"injected error in the {FLAG} variant\n", headers)
        else:
            self._reply(200, f"{greeting}host {self.server.host_name} version {meta['version']}\n",
                        headers)


def main():
    meta = load_release()
    if meta.get("flags") or meta.get("db_schema"):
        ensure_venv_python(meta)  # first: the new process starts main() over
    bind = os.environ.get("APP_BIND", "127.0.0.1")
    port = int(os.environ.get("APP_PORT", "8080"))
    print(f"app {meta['version']} starting on {bind}:{port}", flush=True)
    if meta.get("crash_on_start"):
        print("crash_on_start is set: exiting", flush=True)
        sys.exit(3)
    time.sleep(float(meta.get("start_delay", 0)))
    flags = None
    if meta.get("flags"):
        path = os.environ.get("APP_FLAGS_FILE") or "/srv/app/shared/flags.json"
        flags = Flags(path)
        print(f"flags: {FLAG} from {path} (flagd provider, file mode)", flush=True)
    server = Server((bind, port), meta)
    server.flags = flags
    if meta.get("db_schema"):
        import appdb

        server.users = appdb.Users(os.environ.get("APP_DATABASE_URL", ""), meta["db_schema"])
        print(f"users: schema {meta['db_schema']} (PostgreSQL)", flush=True)
    stopping = threading.Event()

    def on_term(signum, frame):
        # Graceful stop: no new connections, in-flight requests finish (bounded).
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"app {meta['version']} listening", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.socket.close()
    deadline = time.monotonic() + 30
    while server.active and time.monotonic() < deadline:
        time.sleep(0.05)
    if flags is not None:
        flags.api.shutdown()
    if server.users is not None:
        server.users.close()
    print("app stopped", flush=True)


if __name__ == "__main__":
    main()
