"""The sample app's users table, as each schema version of a release reads and writes it.

A release built with ``--db-schema N`` (release.json ``"db_schema": N``) serves
``POST /users`` (JSON ``{"name": ...}``; 201 ``{"id": ...}``) and ``GET /users/<id>`` (200
``{"id": ..., "name": ...}`` or 404) against PostgreSQL at APP_DATABASE_URL, with psycopg
from the lab's shared venv:

- schema 1 reads and writes ``name``;
- schema 2 writes ``name`` and ``full_name`` and reads ``full_name``, falling back to ``name``
  while the backfill has not reached the row; once contract has dropped ``name`` it uses
  ``full_name`` only (a statement that names the dropped column makes it read the table's
  columns again and run once more), so contract can run while the fleet is on schema 2;
- schema 3 reads and writes only ``full_name`` (after contract dropped ``name``).

``/health`` of such a release answers 500 while the table lacks what the release needs (a
schema-2 release before expand, a schema-3 release before contract), so a deploy stops there.
"""

import json
import queue
import threading
import time

WRITE = {
    1: ("INSERT INTO users (name) VALUES (%s) RETURNING id", 1),
    2: ("INSERT INTO users (name, full_name) VALUES (%s, %s) RETURNING id", 2),
    3: ("INSERT INTO users (full_name) VALUES (%s) RETURNING id", 1),
}
READ = {
    1: "SELECT name FROM users WHERE id = %s",
    2: "SELECT coalesce(full_name, name) FROM users WHERE id = %s",
    3: "SELECT full_name FROM users WHERE id = %s",
}
COLUMNS = "SELECT column_name, is_nullable FROM information_schema.columns " \
          "WHERE table_schema = 'public' AND table_name = 'users'"
POOL_SIZE = 4  # connections per host: 4 hosts use 16 of the lab server's 200
SCHEMA_TTL = 1.0  # seconds a health verdict on the table is reused


class Users:
    """A small pool of autocommit connections and the statements of one schema version."""

    def __init__(self, url, schema):
        import psycopg

        if schema not in WRITE:
            raise ValueError(f"db_schema must be 1, 2 or 3, not {schema!r}")
        self.psycopg, self.url, self.schema = psycopg, url, schema
        self.idle = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(POOL_SIZE)
        self.verdict = (0.0, None)
        self.has_name = None  # schema 2: whether users.name exists, as last read

    def _connect(self):
        return self.psycopg.connect(self.url, autocommit=True, connect_timeout=3,
                                    application_name=f"app-schema{self.schema}")

    def _run(self, sql, params=None, many=False):
        """One statement on a pooled connection; a broken connection is dropped, not reused."""
        if not self.slots.acquire(timeout=5):
            raise TimeoutError("no database connection free within 5 s")
        conn = None
        try:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            cur = conn.execute(sql, params)
            row = cur.fetchall() if many else cur.fetchone()
            self.idle.put(conn)
            conn = None
            return row
        finally:
            if conn is not None:
                conn.close()
            self.slots.release()

    def _version(self):
        """The statements' schema: schema 2 uses schema 3's once ``name`` is gone."""
        if self.schema != 2:
            return self.schema
        if self.has_name is None:
            self.has_name = "name" in dict(self._run(COLUMNS, many=True))
        return 2 if self.has_name else 3

    def _adapting(self, statement):
        try:
            return statement(self._version())
        except self.psycopg.errors.UndefinedColumn:
            if self.schema != 2:
                raise
            self.has_name = None  # contract dropped name meanwhile: look again, run once more
            return statement(self._version())

    def create(self, name):
        def insert(version):
            sql, copies = WRITE[version]
            return int(self._run(sql, (name,) * copies)[0])

        return self._adapting(insert)

    def read(self, user_id):
        def select(version):
            row = self._run(READ[version], (user_id,))
            return None if row is None else row[0]

        return self._adapting(select)

    def schema_problem(self):
        """Why the table does not suit this release (None if it does), cached briefly."""
        at, problem = self.verdict
        if time.monotonic() - at < SCHEMA_TTL:
            return problem
        try:
            conn = self._connect()
            try:
                cols = dict(conn.execute(COLUMNS).fetchall())
            finally:
                conn.close()
            need = {1: ["name"], 2: ["full_name"], 3: ["full_name"]}[self.schema]
            missing = [c for c in need if c not in cols]
            if missing:
                problem = f"table users lacks {', '.join(missing)} (schema {self.schema})"
            elif self.schema == 3 and cols.get("name") == "NO":
                problem = "column name is still NOT NULL: contract has not run (schema 3)"
            else:
                problem = None
        except Exception as exc:  # the database is down or refuses us
            problem = f"database: {type(exc).__name__}: {exc}"
        self.verdict = (time.monotonic(), problem)
        return problem

    def close(self):
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


def handle(handler, users, method, path):
    """Serves /users and /users/<id>; returns False for any other path."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "users" or len(parts) > 2:
        return False
    try:
        if method == "POST" and len(parts) == 1:
            length = int(handler.headers.get("Content-Length") or 0)
            body = json.loads(handler.rfile.read(length) or b"{}")
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name:
                handler._reply(400, '{"error": "name: a non-empty string"}\n')
            else:
                handler._reply(201, json.dumps({"id": users.create(name)}) + "\n")
        elif method == "GET" and len(parts) == 2 and parts[1].isdigit():
            name = users.read(int(parts[1]))
            if name is None:
                handler._reply(404, '{"error": "no such user"}\n')
            else:
                handler._reply(200, json.dumps({"id": int(parts[1]), "name": name}) + "\n")
        else:
            handler._reply(405, '{"error": "POST /users or GET /users/<id>"}\n')
    except Exception as exc:  # the database refused: say so, never hang the request
        handler._reply(503, json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
    return True
