"""``rollout lab``: bring a local fleet up and down, build releases, send load, show state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rollout_py.lab import artifact as artifact_mod
from rollout_py.lab import lab as lab_mod
from rollout_py.lab.cli_db import db_group
from rollout_py.lab.layout import MAX_EXEC_NODES, MAX_HOSTS, Layout

DEFAULT_DIR = Path(".rollout-lab")
dir_option = click.option("--dir", "lab_dir", type=click.Path(path_type=Path), default=DEFAULT_DIR,
                          show_default=True, help="The lab's directory.")


@click.group()
def lab() -> None:
    """A local fleet: network-namespace hosts with sshd and a sample app behind HAProxy."""


@lab.command()
@click.option("--hosts", "n_hosts", type=click.IntRange(1, MAX_HOSTS), default=4, show_default=True)
@click.option("--lbs", "n_lbs", type=click.IntRange(1, 2), default=1, show_default=True,
              help="Load balancers; the second runs on its own host, reached over SSH.")
@click.option("--block", default=None, help="IPv4 block for labs (default 10.213.0.0/16).")
@click.option("--prometheus", "with_prometheus", is_flag=True,
              help="Also run Prometheus on 127.0.0.1, scraping every LB's exporter each second.")
@click.option("--shaping", "with_shaping", is_flag=True,
              help="Every server takes 4 requests at a time (more queue in HAProxy), "
                   "X-Client-Class production|background|heavy sets the queue priority, and "
                   "a class the map shaping.map says 'shed' gets 503 while a server is out.")
@click.option("--pools", "n_pools", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: hosts split into pools blue and green (backends app_blue, app_green), "
                   "routed by a map on every LB; frontend 'preview' reaches the idle pool.")
@click.option("--db", "with_db", is_flag=True,
              help="Also run PostgreSQL on host db1 (database and role app) for releases built "
                   "with --db-schema, and write its migrations to DIR/migrations.")
@click.option("--exec-nodes", "n_exec", type=click.IntRange(0, MAX_EXEC_NODES), default=0,
              show_default=True,
              help="Execution nodes exec1..execN: hosts that run ansible-runner workers for the "
                   "controller over SSH (rollout.yml's executors), not in the inventory.")
@dir_option
def up(n_hosts: int, n_lbs: int, block: str | None, with_prometheus: bool, with_shaping: bool,
       n_pools: int, with_db: bool, n_exec: int, lab_dir: Path) -> int:
    """Bring the lab up (root)."""
    layout = lab_mod.up(lab_dir, n_hosts=n_hosts, n_lbs=n_lbs, block=block,
                        with_prometheus=with_prometheus, n_pools=n_pools,
                        with_shaping=with_shaping, with_db=with_db, n_exec=n_exec,
                        say=click.echo)
    _print_summary(layout)
    return 0


def _print_summary(layout: Layout) -> None:
    info = layout.describe()
    for lb in info["lbs"]:  # type: ignore[attr-defined]
        click.echo(f"{lb['name']}: frontend http://{lb['frontend']}  admin {lb['socket_url']}"
                   f"  metrics {lb['metrics']}"
                   + (f"  preview http://{lb['preview']}  map {lb['map_path']}"
                      if lb["preview"] else ""))
    for pool in info["pools"]:  # type: ignore[attr-defined]
        click.echo(f"pool {pool['name']}: backend {pool['backend']}: {', '.join(pool['hosts'])}")
    if layout.prometheus_url is not None:
        click.echo(f"prometheus: {layout.prometheus_url}")
    if layout.db:
        click.echo(f"database:  {layout.db_url_public} (host {layout.db_host.name}; "
                   f"migrations in {layout.path / 'migrations'}; spec with phases "
                   f"{layout.path / 'rollout-db.yml'}; the release with the feature's flag "
                   f"{layout.path / 'rollout-release.yml'})")
    if layout.exec_hosts:
        click.echo("exec nodes: " + ", ".join(f"{h.name} {h.address}" for h in layout.exec_hosts)
                   + " (rollout.yml's executors)")
    click.echo(f"inventory: {info['inventory']}")
    click.echo(f"spec:      {info['spec']}")
    click.echo(f"canary:    {info['canary_spec']}")
    click.echo(f"ssh:       ssh -F {info['ssh']['config']} "  # type: ignore[index]
               f"{layout.app_hosts[0].name}")


@lab.command()
@click.option("--dir", "lab_dir", type=click.Path(path_type=Path), default=None,
              help=f"The lab's directory.  [default: {DEFAULT_DIR}, unless --index is given]")
@click.option("--index", type=click.IntRange(1, 254), default=None, metavar="N",
              help="The lab rlabN, also when its directory (lab.json) was deleted while it ran: "
                   "found by its bridge, namespaces, veths and their processes.")
def down(lab_dir: Path | None, index: int | None) -> int:
    """Stop everything the lab started and remove its network (safe to repeat)."""
    if lab_dir is None and index is None:
        lab_dir = DEFAULT_DIR
    lab_mod.down(lab_dir, index=index, say=click.echo)
    return 0


@lab.command()
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(lab_dir: Path, as_json: bool) -> int:
    """Hosts, the version each serves, and each server's state on each LB."""
    info = lab_mod.status(lab_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return 0
    click.echo(f"lab {info['dir']} ({info['state']}, {info['subnet']})")
    lbs: list[dict[str, Any]] = info["lbs"]
    for pool in info["pools"]:
        click.echo(f"pool {pool['name']}: backend {pool['backend']}: {', '.join(pool['hosts'])}")
    for lb in lbs:
        click.echo(f"{lb['name']}: frontend http://{lb['frontend']}  metrics {lb['metrics']}"
                   + (f"  live: {lb['live']}, preview: {lb['preview']} (map {lb['map']})"
                      if "live" in lb else ""))
    prom = info["prometheus"]
    if prom is not None:
        scraped = ", ".join(f"{k} {'up' if v == 1 else 'DOWN'}"
                            for k, v in sorted(prom.get("targets_up", {}).items()))
        click.echo(f"prometheus: {prom['url']} ({'running' if prom['running'] else 'NOT RUNNING'}"
                   f"; {scraped or prom.get('error', 'no targets yet')})")
    if info["db"] is not None:
        from rollout_py.lab.cli_db import check_line

        dbi = info["db"]
        click.echo(f"database: {dbi['url']} on {dbi['host']} "
                   f"({'running' if dbi['running'] else 'NOT RUNNING'}); "
                   + (check_line(dbi["users"]) if "users" in dbi else dbi.get("error", "")))
    for node in info.get("exec_nodes", []):
        click.echo(f"exec node {node['name']}: {node['address']} "
                   f"(sshd {'up' if node['sshd'] else 'DOWN'})")
    header = f"{'host':<8} {'address':<15} {'sshd':<5} {'version':<10}" + "".join(
        f" {lb['name']:<14}" for lb in lbs)
    click.echo(header)
    for host in info["hosts"]:
        cells = []
        for lb in lbs:
            srv = lb.get("servers", {}).get(host["name"])
            cells.append(f" {srv['admin'] + '/' + srv['op'] if srv else lb.get('error', '?'):<14}")
        click.echo(f"{host['name']:<8} {host['address']:<15} {'up' if host['sshd'] else 'DOWN':<5} "
                   f"{host['version'] or '-':<10}" + "".join(cells))
    return 0


@lab.command()
@click.argument("version")
@click.option("--health-fail", is_flag=True, help="/health answers 500.")
@click.option("--health-flap", is_flag=True, help="/health alternates 200 and 500.")
@click.option("--start-delay", type=click.FloatRange(0, 3600), default=0.0,
              help="Seconds before the app listens.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests to / that answer 500 (after --fail-after, if given).")
@click.option("--latency-ms", type=click.IntRange(0, artifact_mod.MAX_LATENCY_MS), default=0,
              help="Milliseconds added to every / response.")
@click.option("--fail-after", type=click.FloatRange(0, artifact_mod.MAX_FAIL_AFTER),
              default=None, metavar="SECONDS",
              help="Good for SECONDS after it starts, then / answers 500 (with --error-rate's "
                   "probability, else always); /health stays 200.")
@click.option("--crash-on-start", is_flag=True, help="The app exits right after it starts.")
@click.option("--flags", is_flag=True,
              help="Flag-enabled: / evaluates flag new-greeting (OpenFeature, flagd provider, "
                   "the host's flag file) and answers with X-Flag-new-greeting: VARIANT.")
@click.option("--flag-error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="With --flags: share of requests getting variant 'on' that answer 500.")
@click.option("--db-schema", type=click.IntRange(1, 3), default=None,
              help="Serve POST /users and GET /users/<id> from the lab's PostgreSQL (up --db): "
                   "1 uses name, 2 writes name and full_name and reads full_name, 3 full_name.")
@dir_option
def artifact(version: str, health_fail: bool, health_flap: bool, start_delay: float,
             error_rate: float, latency_ms: int, fail_after: float | None,
             crash_on_start: bool, flags: bool, flag_error_rate: float, db_schema: int | None,
             lab_dir: Path) -> int:
    """Build release VERSION of the sample app into the lab's artifact store."""
    behaviour = artifact_mod.Behaviour(health_fail=health_fail, health_flap=health_flap,
                                       start_delay=start_delay, error_rate=error_rate,
                                       crash_on_start=crash_on_start, latency_ms=latency_ms,
                                       fail_after=fail_after, flags=flags,
                                       flag_error_rate=flag_error_rate, db_schema=db_schema)
    path = artifact_mod.build_artifact(lab_dir.absolute() / "artifacts", version, behaviour)
    click.echo(str(path))
    return 0


@lab.command()
@click.option("--rps", type=click.FloatRange(0.1, 20000), default=None,
              help="Requests per second (unless --class gives a rate per class).")
@click.option("--duration", type=click.FloatRange(0.1, 86400), required=True, help="Seconds.")
@click.option("--keepalive", is_flag=True, help="Reuse client connections.")
@click.option("--lb", "lb_name", default="lb1", show_default=True, help="Which LB's frontend.")
@click.option("--path", "url_path", default="/", show_default=True)
@click.option("--url", default=None, help="A loopback URL instead of a lab LB (127.0.0.0/8).")
@click.option("--records", type=click.Path(path_type=Path), default=None,
              help="Write every request's record here as JSON lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--class", "classes", multiple=True, metavar="NAME=RPS",
              help="Send X-Client-Class: NAME at RPS requests/s; repeat for several classes at "
                   "once (e.g. --class production=200 --class heavy=100), summed up per class.")
@click.option("--db-writes", is_flag=True,
              help="Each request is POST /users then GET /users/<id> (releases built with "
                   "--db-schema): ok only if the read returns the name written.")
@dir_option
def load(rps: float | None, duration: float, keepalive: bool, lb_name: str, url_path: str,
         url: str | None, records: Path | None, as_json: bool, classes: tuple[str, ...],
         db_writes: bool, lab_dir: Path) -> int:
    """Open-loop load through an LB frontend; exit 1 if any request failed."""
    from rollout_py.lab.load import LoadGenerator

    if (rps is None) == (not classes):
        raise click.UsageError("give either --rps or --class NAME=RPS (one or more)")
    if db_writes and (classes or url_path != "/"):
        raise click.UsageError("--db-writes goes with --rps (it writes to /users)")
    url_path = "/users" if db_writes else url_path

    if url is None:
        layout = Layout.load(lab_dir.absolute())
        if layout is None or layout.state != "up":
            raise click.UsageError(f"no lab up in {lab_dir.absolute()}; start one or pass --url")
        lbs = {lb.name: lb for lb in layout.lbs}
        if lb_name not in lbs:
            raise click.UsageError(f"no LB {lb_name!r} in this lab (have: {', '.join(lbs)})")
        url = f"http://127.0.0.1:{lbs[lb_name].port}{url_path}"
    if classes:
        return _class_load(url, classes, duration, keepalive, records, as_json)
    assert rps is not None
    if db_writes:
        from rollout_py.lab.dbload import DbWriteLoad

        gen: LoadGenerator = DbWriteLoad(url, rps=rps, duration=duration, keepalive=keepalive)
    else:
        gen = LoadGenerator(url, rps=rps, duration=duration, keepalive=keepalive)
    summary = gen.run()
    if records is not None:
        summary.write_records(records)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
    else:
        click.echo(f"{summary.url}: {summary.sent} requests in {summary.duration:.1f} s "
                   f"({summary.rps:g}/s target): {summary.ok} ok, {summary.failed} failed")
        click.echo(f"  latency p50 {summary.p50_ms:.1f} ms, p99 {summary.p99_ms:.1f} ms, "
                   f"max {summary.max_ms:.1f} ms")
        click.echo("  by host:    " + ", ".join(f"{k} {v}" for k, v in summary.by_host.items()))
        click.echo("  by version: " + ", ".join(f"{k} {v}" for k, v in summary.by_version.items()))
        if db_writes:
            click.echo(f"  rows written (acknowledged): {len(gen.written)}")  # type: ignore[attr-defined]
        if summary.by_variant:  # a flag-enabled release answered
            click.echo("  by variant: " + ", ".join(
                f"{k} {v} ({summary.failed_by_variant.get(k, 0)} failed)"
                for k, v in summary.by_variant.items()))
        if summary.failures:
            click.echo("  failures:   " + ", ".join(f"{k}: {v}" for k, v in
                                                   summary.failures.items()))
    return 0 if summary.failed == 0 else 1


def _class_load(url: str, classes: tuple[str, ...], duration: float, keepalive: bool,
                records: Path | None, as_json: bool) -> int:
    """``load --class``: every class at once, a summary per class; exit 1 if any failed."""
    from rollout_py.errors import InputError
    from rollout_py.lab.classload import ClassLoad, class_lines, classes_json, parse_classes

    try:
        rates = parse_classes(classes)
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    summaries = ClassLoad(url, rates, duration=duration, keepalive=keepalive).run()
    if records is not None:
        for name, summary in summaries.items():
            summary.write_records(records.with_name(f"{records.stem}-{name}{records.suffix}"))
    if as_json:
        click.echo(json.dumps(classes_json(summaries), indent=2))
    else:
        click.echo(f"{url}: {duration:g} s, by client class (X-Client-Class):")
        click.echo("\n".join(f"  {line}" for line in class_lines(summaries)))
    return 0 if all(s.failed == 0 for s in summaries.values()) else 1


@lab.command()
@dir_option
@click.option("--hz", type=click.FloatRange(0.1, 100), default=10.0, show_default=True,
              help="Samples per second, per LB.")
@click.option("--duration", type=click.FloatRange(0.1, 86400), default=None,
              help="Seconds to watch (default: until Ctrl-C).")
@click.option("--max-unavailable", type=click.IntRange(0), default=None,
              help="Flag every moment more servers than this are out of rotation (exit 1); "
                   "with pools, per backend while it serves live traffic.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--records", type=click.Path(path_type=Path), default=None,
              help="Write every sample as JSON lines here.")
def watch(lab_dir: Path, hz: float, duration: float | None, max_unavailable: int | None,
          as_json: bool, records: Path | None) -> int:
    """Sample every LB's servers at HZ and check capacity; exit 1 on any violation."""
    import signal
    import threading
    import time

    from rollout_py.lab.watch import Watcher, summary_lines

    layout = Layout.load(lab_dir.absolute())
    if layout is None or layout.state != "up":
        raise click.UsageError(f"no lab up in {lab_dir.absolute()}")
    done = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: done.set())
    try:
        watcher = Watcher.for_lab(layout, max_unavailable=max_unavailable, hz=hz)
        click.echo(f"watching {', '.join(watcher.names)} (backend "
                   f"{', '.join(watcher.backends)}) at {hz:g} Hz"
                   + (f" for {duration:g} s" if duration else "; Ctrl-C to stop"), err=True)
        deadline = None if duration is None else time.monotonic() + duration
        watcher.start()
        try:
            while not done.is_set():
                left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if left <= 0:
                    break
                done.wait(left)
        finally:
            summary = watcher.stop()
    finally:
        signal.signal(signal.SIGINT, previous)
    if records is not None:
        summary.write_records(records)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return 1 if summary.violations else 0

    click.echo("\n".join(summary_lines(summary)))
    return 1 if summary.violations else 0


lab.add_command(db_group(dir_option))
