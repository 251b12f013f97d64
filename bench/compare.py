"""
botd2 against plain Twisted TCP and Twisted TLS 1.3 with client certificates.

Run from the repository root::

    python -m bench.compare            # 5 runs, about 10-15 minutes
    python -m bench.compare --quick    # a smoke run (< 60 s) that measures nothing

Every figure is measured for the three transports, which carry the same
protobuf C{Envelope}s (a C{BytesValue} packed in C{Any}; C{Envelope.ping} /
C{pong}): botd2 (its own AES-256-GCM frames), C{Int32StringReceiver} over
plain TCP, and the same over TLS 1.3 (ECDSA P-256 certificates made for the
run: a CA, a server and a client certificate; the server requires and
verifies the client's, the client verifies the server's and its name).

Processes: this harness spawns, for each run, one server process per
transport (L{bench._server}), and for each figure and transport one client
process (L{bench._client}); the harness itself only starts them, reads their
JSON lines and prints the table.  Everything is on 127.0.0.1; servers listen
on port 0 (an ephemeral port, never 9945).  The RSS figure spawns a fresh
server per transport and size, and client processes holding the connections
(at most C{--rss-per-client} each, each from its own source address
127.x.y.z).  Every child is killed when the harness exits (and gets SIGKILL
if the harness dies: PR_SET_PDEATHSIG).

The order of the transports rotates from run to run (run 1: botd2, tcp,
tls; run 2: tcp, tls, botd2; ...) within every figure, so that drift on a
shared machine hits all three alike.  Values: median over runs, and min-max;
ratios: median (and min-max) of the per-run ratios.  All three clients dial
with C{HostnameEndpoint}, as botd2's C{PeerFactory.connect} does.

The code under test (botd2/, and bench/ itself) is copied into a temporary
directory at start and every child imports it from there, so that edits to
the checkout during a run do not mix versions (C{--git REV}: measure that
commit's botd2/ instead).  Alongside figures 1-4 the harness records the CPU
time of the server (/proc/<pid>/stat) and of the client (getrusage over the
timed window) and prints it per operation under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from bench._common import TRANSPORTS, die_with_parent, make_certificates, raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
NAMES = {"botd2": "botd2", "tcp": "plain TCP", "tls": "TLS 1.3 mTLS"}


# Child processes ---------------------------------------------------------------


class ChildFailed(RuntimeError):
    """A child process died, timed out or reported an error."""


class Child:
    """A server or client process, speaking JSON lines on stdout."""

    def __init__(self, name: str, args: list[str], logdir: Path, root: Path = ROOT) -> None:
        self.name = name
        self.log = logdir / f"{name}.stderr"
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=root,
                env=env,
                preexec_fn=die_with_parent,
                start_new_session=True,  # ^C reaches the harness only, which cleans up
            )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, within C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        stdout = self.proc.stdout
        assert stdout is not None
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(b"{"):
                    result: dict[str, Any] = json.loads(line)
                    if "error" in result:
                        raise ChildFailed(f"{self.name}: {result['error']} ({self.tail()})")
                    return result
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildFailed(f"{self.name}: no answer within {timeout:g} s ({self.tail()})")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise ChildFailed(f"{self.name} exited ({self.tail()})")
                self._buffer += chunk

    def command(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        return self.readline(timeout)

    def tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no stderr"
        return " | ".join(text[-3:]) or "no stderr"

    def stop(self, grace: float = 3.0) -> None:
        """Ask politely (end of stdin, SIGTERM), then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(grace / 2)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(grace / 2)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()


class Children:
    """Every child started, so that all are killed at the end."""

    def __init__(
        self,
        logdir: Path,
        certs: Path,
        tls_groups: str,
        profile: Path | None,
        root: Path = ROOT,
    ) -> None:
        self.root = root
        self.logdir = logdir
        self.certs = certs
        self.tls_groups = tls_groups
        self.profile = profile
        self.live: list[Child] = []
        self.serial = 0

    def _common(self, transport: str, name: str) -> list[str]:
        args = ["--transport", transport, "--certs", str(self.certs)]
        args += ["--tls-groups", self.tls_groups]
        if self.profile is not None and transport == "botd2":
            args += ["--cprofile", str(self.profile / f"{name}.pstats")]
        return args

    def start(self, name: str, args: list[str]) -> Child:
        self.serial += 1
        child = Child(f"{self.serial:04d}-{name}", args, self.logdir, self.root)
        self.live.append(child)
        return child

    def server(self, transport: str, max_conns: int = 1000) -> tuple[Child, dict[str, Any]]:
        name = f"server-{transport}"
        child = self.start(
            name,
            ["-m", "bench._server", *self._common(transport, name), "--max-conns", str(max_conns)],
        )
        hello = child.readline(30)
        if hello["port"] == 9945:  # pragma: no cover - port 0 never picks it
            raise ChildFailed("a server got port 9945")
        return child, hello

    def client(
        self, transport: str, hello: dict[str, Any], figure: str, options: list[str]
    ) -> Child:
        name = f"client-{transport}-{figure}"
        args = ["-m", "bench._client", *self._common(transport, name), "--figure", figure]
        args += ["--port", str(hello["port"]), "--node", hello["node"], *options]
        return self.start(name, args)

    def run_client(
        self,
        transport: str,
        hello: dict[str, Any],
        figure: str,
        options: list[str],
        timeout: float,
    ) -> dict[str, Any]:
        child = self.client(transport, hello, figure, options)
        try:
            return child.readline(timeout)
        finally:
            child.stop()
            self.forget(child)

    def forget(self, child: Child) -> None:
        if child in self.live:
            self.live.remove(child)

    def kill_all(self) -> None:
        for child in self.live:
            with contextlib.suppress(Exception):
                child.kill()
        self.live = []


# Figures ------------------------------------------------------------------------------


@dataclass
class Figure:
    """
    One row of the table.

    @ivar target: (baseline, limit) or ("abs", limit): the issue's target.
    @ivar values: per transport, one value per run (C{None}: that run failed).
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: tuple[str, float] | None = None
    values: dict[str, list[float | None]] = field(
        default_factory=lambda: {t: [] for t in TRANSPORTS}
    )
    notes: list[str] = field(default_factory=list)


def figures(rss_counts: tuple[int, ...]) -> dict[str, Figure]:
    """The rows of the table; the RSS rows are 5a, 5b, ... by connection count."""
    rows = [
        Figure("1a", "1a connect+handshake+1 RT+close, sequential", "conn/s", True),
        Figure("1b", "1b connect+handshake+1 RT+close, 8 at a time", "conn/s", True, ("tls", 3.0)),
        Figure("2", "2  bulk, 64 KiB messages", "MB/s", True, ("tcp", 0.8)),
        Figure("3", "3  100-byte messages, streamed", "msg/s", True, ("tls", 1.0)),
        Figure("4", "4  RTT, 32-byte message echo (median)", "µs", False, ("tcp", 1.5)),
        Figure("4b", "4b RTT, protocol Ping->Pong (1 per conn)", "µs", False),
    ]
    for i, n in enumerate(rss_counts):
        # The target: <= 6 KiB per connection with 10,000 held.
        target = ("abs", 6.0) if n == max(rss_counts) else None
        rows.append(
            Figure(
                rss_key(i),
                f"5{'abcdefgh'[i]} RSS / idle authenticated conn, {n:,} held",
                "KiB",
                False,
                target,
            )
        )
    return {f.key: f for f in rows}


def rss_key(i: int) -> str:
    return f"5{'abcdefgh'[i]}"


@dataclass
class Settings:
    runs: int
    connect_seconds: float
    connect_warmup: float
    bulk_mib: int
    small_count: int
    rtt_count: int
    rss_counts: tuple[int, ...]
    rss_per_client: int
    settle: float
    selected: set[str]
    transports: tuple[str, ...] = TRANSPORTS


def rotated(run: int) -> list[str]:
    """Run 0: botd2, tcp, tls; run 1: tcp, tls, botd2; ..."""
    k = run % len(TRANSPORTS)
    return list(TRANSPORTS[k:] + TRANSPORTS[:k])


def throughput_figures(s: Settings) -> list[tuple[str, str, list[str], float]]:
    """(figure key, client figure, client options, timeout) for figures 1-4."""
    connect_timeout = s.connect_seconds + s.connect_warmup + 60
    window = ["--seconds", str(s.connect_seconds), "--warmup", str(s.connect_warmup)]
    out = [
        (
            "1a",
            "connect",
            ["--loops", "1", *window],
            connect_timeout,
        ),
        (
            "1b",
            "connect",
            ["--loops", "8", *window],
            connect_timeout,
        ),
        ("2", "bulk", ["--size", "65536", "--count", str(s.bulk_mib * 16)], 60 + s.bulk_mib),
        ("3", "small", ["--size", "100", "--count", str(s.small_count)], 60 + s.small_count / 2000),
        ("4", "rtt", ["--count", str(s.rtt_count)], 60 + s.rtt_count / 200),
    ]
    return [row for row in out if row[0] in s.selected or (row[0] == "4" and "4b" in s.selected)]


class RSSProbe:
    """The RSS figure: a fresh server, N connections held by client processes."""

    def __init__(self, children: Children, settings: Settings) -> None:
        self.children = children
        self.s = settings
        self.measurement = 0

    def _source(self, client: int) -> str:
        # A fresh source address per client process and measurement, so that
        # no TIME_WAIT of an earlier measurement is ever in the way.
        m = self.measurement
        return f"127.{1 + m // 250}.{m % 250}.{client + 2}"

    def _hold(self, transport: str, hello: dict[str, Any], count: int, k: int) -> Child:
        options = ["--count", str(count), "--concurrency", "32", "--bind", self._source(k)]
        return self.children.client(transport, hello, "hold", options)

    def _wait_for(self, server: Child, want: int, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            stats = server.command("stats")
            if stats[key] == want or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)

    def measure(self, transport: str, n: int) -> dict[str, Any]:
        self.measurement += 1
        server, hello = self.children.server(transport, max_conns=n + 100)
        clients: list[Child] = []
        try:
            # Warm-up: a few connections, closed, so that what the first
            # connection loads once (modules, caches) is in the baseline.
            warm = self._hold(transport, hello, 8, 0)
            warm.readline(60)
            warm.kill()
            self.children.forget(warm)
            self._wait_for(server, 0, "conns", 15)
            time.sleep(self.s.settle)
            before = server.command("stats")
            k = max(1, math.ceil(n / self.s.rss_per_client))
            shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
            clients = [self._hold(transport, hello, c, i + 1) for i, c in enumerate(shares)]
            ready = failures = 0
            first_failure = None
            for child in clients:
                result = child.readline(120 + n / 20)
                ready += result["ready"]
                failures += result["failures"]
                first_failure = first_failure or result["first_failure"]
            self._wait_for(server, ready, "authenticated", 30)
            time.sleep(self.s.settle)
            after = server.command("stats")
            held = after["authenticated"]
            return {
                "value": (after["rss_kib"] - before["rss_kib"]) / held if held else None,
                "held": held,
                "wanted": n,
                "failures": failures,
                "first_failure": first_failure,
                "before_kib": before["rss_kib"],
                "after_kib": after["rss_kib"],
                "clients": k,
            }
        finally:
            for child in clients:
                child.kill()
                self.children.forget(child)
            server.kill()
            self.children.forget(server)


# The run ---------------------------------------------------------------------------------


def log(text: str) -> None:
    """Progress goes to stderr; the report to stdout."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _short(value: float | None) -> str:
    return "fail" if value is None else f"{value:,.6g}"


def run_all(
    children: Children, s: Settings, rows: dict[str, Figure], extra: dict[str, Any]
) -> None:
    rss = RSSProbe(children, s)
    for run in range(s.runs):
        order = [t for t in rotated(run) if t in s.transports]
        log(f"run {run + 1}/{s.runs}: order {', '.join(order)}")
        figs = throughput_figures(s)
        if figs:
            servers: dict[str, tuple[Child, dict[str, Any]]] = {}
            try:
                for t in order:
                    servers[t] = children.server(t)
                for key, figure, options, timeout in figs:
                    results = []
                    for t in order:
                        server_pid = servers[t][0].pid
                        cpu0 = proc_cpu(server_pid)
                        try:
                            result = children.run_client(t, servers[t][1], figure, options, timeout)
                        except ChildFailed as e:
                            log(f"  {key} {t}: FAILED: {e}")
                            result = {"value": None}
                        server_cpu = proc_cpu(server_pid) - cpu0
                        if result.get("ops"):
                            extra.setdefault("cpu", {}).setdefault(key, {}).setdefault(
                                t, []
                            ).append(
                                (
                                    server_cpu / result["ops_total"] * 1e6,
                                    result["cpu_s"] / result["ops"] * 1e6,
                                )
                            )
                        _record(rows, key, t, result)
                        results.append(f"{t} {_short(result.get('value'))}")
                    log(f"  {key:<3} {rows[key].unit:<7} " + "; ".join(results))
            finally:
                for child, _ in servers.values():
                    child.stop()
                    children.forget(child)
        for i, n in enumerate(s.rss_counts):
            key = rss_key(i)
            if key not in s.selected:
                continue
            results = []
            for t in order:
                try:
                    result = rss.measure(t, n)
                except ChildFailed as e:
                    log(f"  {key} {t}: FAILED: {e}")
                    result = {"value": None}
                rows[key].values[t].append(result.get("value"))
                extra.setdefault(key, {}).setdefault(t, []).append(result)
                held = result.get("held")
                results.append(
                    f"{t} {_short(result.get('value'))}"
                    + (f" (held {held:,}/{n:,})" if held is not None else "")
                )
            log(f"  {key:<3} KiB/conn " + "; ".join(results))


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record(rows: dict[str, Figure], key: str, t: str, result: dict[str, Any]) -> None:
    if key in rows:
        rows[key].values[t].append(result.get("value"))
    if key == "4" and "4b" in rows:
        rows["4b"].values[t].append(result.get("ping_us"))
    if key.startswith("1") and result.get("failures"):
        rows[key].notes.append(f"{t}: {result['failures']} failed ({result['first_failure']})")


# The code under test ------------------------------------------------------------------


def source_digest(root: Path) -> str:
    """A short SHA-256 of botd2/*.py under C{root}."""
    h = hashlib.sha256()
    for path in sorted((root / "botd2").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def git_state(rev: str | None = None) -> str:
    """The checkout's commit, and whether botd2/ has uncommitted changes."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    if rev is not None:
        return f"git {git('rev-parse', '--short', rev) or rev} (--git)"
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "botd2")
    return f"git {commit}, botd2/ {'with uncommitted changes' if dirty else 'clean'}"


def snapshot(into: Path, rev: str | None = None) -> Path:
    """
    Copy botd2/ (from the working tree, or from commit C{rev}) and bench/
    into C{into}: every child imports them from there, so that edits to the
    checkout during a run do not mix code versions.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    into.mkdir(parents=True, exist_ok=True)
    if rev is None:
        shutil.copytree(ROOT / "botd2", into / "botd2", ignore=ignore)
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "botd2"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.copytree(ROOT / "bench", into / "bench", ignore=ignore)
    return into


# Report --------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def header(args: argparse.Namespace, s: Settings, nofile: tuple[int, int], source: str) -> str:
    from cryptography.hazmat.backends.openssl.backend import backend
    from google.protobuf.internal import api_implementation

    from botd2._version import __version__ as botd2_version

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    mode = "--quick: a smoke run, the figures mean nothing" if args.quick else "full"
    return "\n".join(
        [
            f"command:   {shlex.join(getattr(sys, 'orig_argv', sys.argv))}",
            f"date:      {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
            f"python:    {platform.python_implementation()} {platform.python_version()}"
            f" ({sys.executable})",
            f"machine:   {platform.platform()}; {_cpu_model()}; {os.cpu_count()} CPUs,"
            f" {len(os.sched_getaffinity(0))} usable; load avg {load} (at start)",
            f"libraries: botd2 {botd2_version}, Twisted {_version('twisted')},"
            f" pyOpenSSL {_version('pyOpenSSL')}, cryptography {_version('cryptography')}"
            f" ({backend.openssl_version_text()}), protobuf {_version('protobuf')}"
            f" ({api_implementation.Type()}), coincurve {_version('coincurve')}",
            f"code:      botd2 {source}",
            f"fd limit:  RLIMIT_NOFILE soft=hard={nofile[0]} set in the harness, every server"
            " and every client process (setrlimit to the hard limit)",
            "method:    one server process per transport per run (a fresh one per RSS"
            " measurement), one client process per figure per transport per run; the"
            " harness only orchestrates; transport order rotated run by run",
            f"mode:      {mode}; {s.runs} run(s); figure 1: {s.connect_seconds:g} s after"
            f" {s.connect_warmup:g} s warm-up; bulk {s.bulk_mib} MiB; {s.small_count:,} small"
            f" messages; {s.rtt_count:,} echoes; RSS with"
            f" {', '.join(f'{n:,}' for n in s.rss_counts)} connections",
        ]
    )


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "KiB":
        return f"{value:.2f}"
    if unit == "MB/s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _summary(values: list[float | None]) -> tuple[float, float, float] | None:
    good = [v for v in values if v is not None]
    if not good:
        return None
    return statistics.median(good), min(good), max(good)


def _ratios(rows: Figure, base: str) -> list[float]:
    out = []
    for a, b in zip(rows.values["botd2"], rows.values[base], strict=False):
        if a is not None and b:
            out.append(a / b)
    return out


def verdict(fig: Figure) -> str:
    if fig.target is None:
        return ""
    base, limit = fig.target
    if base == "abs":
        good = [v for v in fig.values["botd2"] if v is not None]
        what = f"<= {limit:g} KiB"
    else:
        good = _ratios(fig, base)
        sign = ">=" if fig.higher_is_better else "<="
        what = f"{sign} {limit:g}x {NAMES[base].split()[0] if base == 'tls' else 'plain'}"
    if not good:
        return f"target {what}: no data"
    med = statistics.median(good)
    if fig.higher_is_better and base != "abs":
        met = med >= limit
        factor = limit / med
        runs_met = sum(1 for g in good if g >= limit)
    else:
        met = med <= limit
        factor = med / limit
        runs_met = sum(1 for g in good if g <= limit)
    text = f"target {what}: {'MET' if met else 'MISSED'}"
    if not met:
        text += f" (x{factor:.2f} short)"
    return text + f" [{runs_met}/{len(good)} runs]"


def _compact(value: float, unit: str) -> str:
    """A short form for the min-max line: 92,168 -> 92.2k."""
    if unit not in ("KiB", "MB/s") and value >= 10_000:
        return f"{value / 1000:.1f}k"
    return _fmt(value, unit)


def table(rows: dict[str, Figure]) -> str:
    """The table: medians on one line, min-max on the next."""
    w, cw = 47, 15
    head = (
        f"{'figure':<{w}} {'unit':<8}"
        + "".join(f"{NAMES[t]:>{cw}}" for t in TRANSPORTS)
        + f"{'botd2/plain':>13}{'botd2/TLS':>11}   target"
    )
    lines = [head, "-" * len(head)]
    for fig in rows.values():
        cells = [_summary(fig.values[t]) for t in TRANSPORTS]
        if all(c is None for c in cells):
            continue
        ratio_cells = [_summary(list(_ratios(fig, base))) for base in ("tcp", "tls")]
        unit = fig.unit + ("/conn" if fig.unit == "KiB" else "")
        line = f"{fig.label:<{w}} {unit:<8}" + "".join(
            f"{_fmt(c[0] if c else None, fig.unit):>{cw}}" for c in cells
        )
        for width, r in zip((13, 11), ratio_cells, strict=True):
            line += f"{(f'{r[0]:.2f}x' if r else '-'):>{width}}"
        lines.append(line + "   " + verdict(fig))
        rng = f"{'':<{w}} {'min-max':<8}" + "".join(
            f"{(f'{_compact(c[1], fig.unit)}-{_compact(c[2], fig.unit)}' if c else '-'):>{cw}}"
            for c in cells
        )
        for width, r in zip((13, 11), ratio_cells, strict=True):
            rng += f"{(f'{r[1]:.2f}-{r[2]:.2f}' if r else '-'):>{width}}"
        lines.append(rng)
        for note in fig.notes[:3]:
            lines.append(f"{'':<{w}} note: {note}")
    return "\n".join(lines)


def details(rows: dict[str, Figure], extra: dict[str, Any], info: dict[str, Any]) -> str:
    lines = []
    tls = info.get("tls", {})
    if tls:
        lines.append(
            f"TLS:   {tls.get('version')}, {tls.get('cipher')}, key exchange {tls.get('group')},"
            f" server key {tls.get('server_key')}; client certificate required and verified;"
            f" session resumed on a second connection: {tls.get('resumed')}"
        )
    lines.append(
        "botd2: server PeerFactory(maxConnections=max(1000, N+100), maxHandshakes=1024,"
        " maxHandshakesPerAddress=1024) (defaults 1000/512/16, raised for figure 5);"
        " one client identity (PeerFactory) per concurrent loop / held connection;"
        " Twisted log events dropped below warn in every process"
    )
    cpu = extra.get("cpu", {})
    if cpu:
        lines.append(
            "CPU per operation, µs (median over runs): server = its CPU during the client's"
            " life / all operations incl. warm-up; client = its CPU in the timed window /"
            " operations (an operation: a connection, a message, an echo)"
        )
        for key, per in cpu.items():
            cells = []
            for t in TRANSPORTS:
                pairs = per.get(t, [])
                if pairs:
                    srv = statistics.median(p[0] for p in pairs)
                    cli = statistics.median(p[1] for p in pairs)
                    cells.append(f"{NAMES[t]} server {srv:,.1f} client {cli:,.1f}")
            lines.append(f"  {rows[key].label[:2] if key in rows else key:<3} " + "; ".join(cells))
    for key, per in extra.items():
        if key == "cpu":
            continue
        for t in TRANSPORTS:
            results = per.get(t, [])
            if not results:
                continue
            held = [r.get("held") for r in results]
            before = [r.get("before_kib") for r in results]
            after = [r.get("after_kib") for r in results]
            fails = sum(r.get("failures") or 0 for r in results)
            lines.append(
                f"RSS {key} {NAMES[t]:<13}: held {held} of {results[0].get('wanted')};"
                f" RSS before {before} KiB, after {after} KiB;"
                f" {results[0].get('clients')} client process(es); {fails} failed"
            )
    return "\n".join(lines)


# Main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM becomes SystemExit, so that the finally blocks kill the children."""

    def handler(signum: int, frame: object) -> None:
        log(f"signal {signum}: stopping; every child is killed")
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=(__doc__ or "").strip().splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, < 60 s, one run, tiny")
    parser.add_argument("--runs", type=int, help="runs (default 5; quick 1)")
    parser.add_argument("--connect-seconds", type=float, help="figure 1 window (default 2.5)")
    parser.add_argument("--bulk-mib", type=int, help="figure 2 MiB per run (default 128)")
    parser.add_argument("--small-count", type=int, help="figure 3 messages (default 200,000)")
    parser.add_argument("--rtt-count", type=int, help="figure 4 echoes (default 2,000)")
    parser.add_argument(
        "--rss-counts", help="figure 5 connection counts, comma-separated (default 2000,10000)"
    )
    parser.add_argument(
        "--rss-per-client", type=int, default=2500, help="connections per client process"
    )
    parser.add_argument(
        "--rss-settle",
        type=float,
        help="seconds between the last connection and the RSS reading (default 12)",
    )
    parser.add_argument(
        "--figures",
        default="1a,1b,2,3,4,4b,5a,5b",
        help="which figures (default all: 1a,1b,2,3,4,4b,5a,5b)",
    )
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="which transports (default all: botd2,tcp,tls; fewer gives no ratios)",
    )
    parser.add_argument(
        "--tls-groups",
        default="X25519",
        help="TLS key-exchange groups (default X25519, classic ECDHE as botd2's ECDH;"
        " 'default' keeps OpenSSL's list)",
    )
    parser.add_argument("--json", type=Path, help="also write every raw result here")
    parser.add_argument(
        "--git", metavar="REV", help="measure botd2/ as of this commit (default: the working tree)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: run the botd2 server and clients under cProfile, dump .pstats there",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's stderr")
    args = parser.parse_args(argv)
    q = args.quick
    rss_counts = (
        tuple(int(x) for x in args.rss_counts.split(","))
        if args.rss_counts
        else ((50, 200) if q else (2000, 10000))
    )
    if not 1 <= len(rss_counts) <= 8:
        parser.error("--rss-counts: 1 to 8 counts")
    selected = set(args.figures.split(","))
    s = Settings(
        runs=args.runs or (1 if q else 5),
        connect_seconds=args.connect_seconds or (0.3 if q else 2.5),
        connect_warmup=0.05 if q else 0.5,
        bulk_mib=args.bulk_mib or (2 if q else 128),
        small_count=args.small_count or (2000 if q else 200_000),
        rtt_count=args.rtt_count or (50 if q else 2000),
        rss_counts=rss_counts,
        rss_per_client=args.rss_per_client,
        # botd2 sheds an idle connection's cipher contexts within two sweeps
        # (botd2.protocol.CIPHER_SWEEP_INTERVAL, 5 s): "idle" means after that.
        settle=args.rss_settle if args.rss_settle is not None else (0.2 if q else 12.0),
        selected=selected,
        transports=tuple(args.transports.split(",")),
    )
    return args, s


def main(argv: list[str] | None = None) -> int:
    args, s = parse(argv)
    nofile = raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="botd2-bench-"))
    certs = work / "certs"
    logs = work / "logs"
    certs.mkdir()
    logs.mkdir()
    src = snapshot(work / "src", args.git)
    digest = source_digest(src)
    source = (
        f"from {git_state(args.git)}; sha256(botd2/*.py) {digest}; run from a copy made"
        f" at start ({src})"
    )
    print(header(args, s, nofile, source), flush=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    make_certificates(certs)
    children = Children(logs, certs, args.tls_groups, args.profile, src)
    rows = {k: v for k, v in figures(s.rss_counts).items() if k in s.selected}
    extra: dict[str, Any] = {}
    info: dict[str, Any] = {}
    started = time.monotonic()
    ok = False
    try:
        with terminate_on_sigterm():
            if "tls" in s.transports:
                info["tls"] = probe_tls(children)
            run_all(children, s, rows, extra)
            ok = True
    finally:
        children.kill_all()
        if args.keep_logs or not ok:
            log(f"children's stderr kept in {logs}")
            shutil.rmtree(certs, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"elapsed:   {time.monotonic() - started:.0f} s; load avg {load} (at end)")
    if args.git is None and source_digest(ROOT) != digest:
        print(
            f"note:      botd2/ in the checkout changed during the run (now"
            f" {source_digest(ROOT)}); every figure was measured on {digest}"
        )
    print()
    print(table(rows))
    print()
    print(details(rows, extra, info))
    if args.json is not None:
        raw = {k: {"label": f.label, "unit": f.unit, "values": f.values} for k, f in rows.items()}
        args.json.write_text(json.dumps({"figures": raw, "rss": extra, "info": info}, indent=1))
    return 0


def probe_tls(children: Children) -> dict[str, Any]:
    """One TLS connection: what was negotiated (and a check that TLS works at all)."""
    server, hello = children.server("tls")
    try:
        return children.run_client("tls", hello, "probe", [], 30)["info"]  # type: ignore[no-any-return]
    finally:
        server.stop()
        children.forget(server)


if __name__ == "__main__":
    sys.exit(main())
