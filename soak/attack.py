"""
Resource limits of a real node under attack, measured.

    python -m soak.attack [--scenario NAME ...] [--quick] [--json PATH]

Each scenario starts its own C{twistd -n botd2} on 127.0.0.1 (L{soak._node}),
attacks it from worker processes (C{python -m soak.attack --worker KIND}) on
loopback, and meanwhile reads the node's RSS, CPU time and descriptor count
from C{/proc} every 0.1 s and times an honest peer (a sans-IO L{Initiator}
over a socket, L{tests.rawpeer.RawPeer}: TCP connect, Init, Ack, key
confirmation, then a Ping and its Pong) again and again.  Every attack is
bounded in connections and in time.

Scenarios (C{--scenario}, repeatable; all by default):

  - C{stall-handshake} (a): 1,000 connections from 127.0.0.10-99 each send
    half an Init and stall; the node has its default caps (512 handshakes in
    all, 16 per address).
  - C{stall-handshake-raised} (a'): the same against a node whose total
    handshake cap (1,100) is above the attack.
  - C{stall-frame} (b): 1,000 connections complete a real handshake, each
    with its own key, then send a length prefix and half a body and stall;
    keep-alive must end them (C{--ping-interval 30 --pong-timeout 5}).
  - C{stall-frame-large} (b'): the same with the largest frame a node must
    accept (1 MiB), sent all but its last byte, from 500 connections: what
    a complete connection can make the node buffer.
  - C{huge-length} (c): length prefixes claiming 1 GiB, before the
    handshake (4 bytes 0x40000000) and after it (a transport frame header),
    from many connections, for some seconds.
  - C{flood} (d): for some seconds, workers do full valid handshakes with a
    fresh key each, Inits with fresh keys and bad signatures, and replays
    of one valid Init, as fast as they can.

For each: RSS before / peak / after against a stated bound, CPU during and
in 1 s windows after, the honest handshake + ping times during the attack,
and what the node did with the attack's connections.  The process exits 1
if any check failed.  C{--quick} runs the smaller sizes of the CI test
(C{tests/test_limits.py}).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import queue
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from google.protobuf.wrappers_pb2 import StringValue

from botd2.botd2_pb2 import Envelope
from botd2.connection import Initiator
from botd2.frames import MAX_MESSAGE
from botd2.keys import PrivateKey, PublicKey
from botd2.messages import encode_payload
from botd2.protocol import DEFAULT_MAX_PARTIAL_BYTES
from soak._node import (
    NodeProcess,
    Sampler,
    cpuSeconds,
    cpuWindow,
    fdCount,
    median,
    mib,
    rssBytes,
    startNode,
    workerCommand,
    workerCwd,
    workerEnv,
)
from tests.rawpeer import (
    RawPeer,
    connect,
    frame,
    read_frame,
    read_until_closed,
    send_quietly,
    split_frames,
)

# The bounds, and why ------------------------------------------------------------

#: What one connection the node holds may cost it, at most, in RSS.  Measured
#: (README.rst): 2.5-3 KiB for a connection stalled in the handshake
#: (Twisted's TCP transport, BOTD2Protocol, the sans-IO Responder and its
#: buffer, the application object), about 6 KiB for a complete one (two
#: cipher states, keep-alive, the peer table; the AES-GCM contexts until the
#: idle sweep drops them).  16 KiB leaves a margin of 2.5 or more, and is far
#: below what keeping any frame buffer would cost: a claimed 1 GiB, or a
#: 1 MiB maximum message, per connection.
PER_CONNECTION = 16 * 1024
#: What a partial frame costs the node per byte held: a bytearray grown as
#: reads come leaves up to an eighth more.  The node holds at most
#: C{maxPartialBytes} (128 MiB by default) of partial frames in all, plus
#: the one frame that goes over before the stalest holder is closed (b').
PARTIAL_OVERHEAD = 5 / 4
#: Fixed allowance on top: Python's allocator keeps freed arenas, and the
#: first use of code paths (imports, caches, the log) costs once.
BASE_SLACK = 8 * 2**20
#: After the attack, a 1 s window under this fraction of one core is idle.
IDLE_CPU = 0.05
#: The honest handshake + ping must take at most this long during an attack.
HONEST_LIMIT = 2.0
#: A refusal "at once" comes within this (the node's timers are 10 s or more).
AT_ONCE = 1.0
#: Slack allowed around a timer of the node.
TIMER_SLACK = 2.0
#: Sources of the honest probes and of the established honest connection
#: (never an attacker's address).
PROBE_SOURCE = "127.0.0.2"
EXISTING_SOURCE = "127.0.0.3"

ATTACK_SOURCES = [f"127.0.0.{i}" for i in range(10, 100)]
FLOOD_SOURCES = [f"127.0.3.{i}" for i in range(1, 91)]


# Honest peers -------------------------------------------------------------------


@dataclass
class Probe:
    """One honest handshake + Ping: when (sampler seconds), whether it worked, how long."""

    at: float
    ok: bool
    seconds: float
    error: str = ""


def honestProbe(node: NodeProcess, at: float, timeout: float = 5.0) -> Probe:
    """
    A new honest peer (fresh key, from L{PROBE_SOURCE}): TCP connect, the
    handshake, then a Ping right after it (WIRE.md section 6, "On demand"),
    timed until its Pong; the connection is closed after.
    """
    start = time.monotonic()
    peer: RawPeer | None = None
    try:
        peer = RawPeer(node.host, node.port, node.key, source=PROBE_SOURCE)
        peer.sock.settimeout(timeout)
        peer.send_init()
        peer.read_ack(timeout)
        peer.confirm()
        peer.ping(timeout=timeout)
        return Probe(at, True, time.monotonic() - start)
    except (AssertionError, OSError) as e:
        return Probe(at, False, time.monotonic() - start, f"{type(e).__name__}: {e}"[:200])
    finally:
        if peer is not None:
            peer.close()


# Attack workers (each in its own process) ------------------------------------------


def _emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "median": median(values), "max": max(values)}


class _Loop:
    """A selector over attack sockets and stdin (EOF on stdin: stop)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.stopped = False
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)

    def run(self, until: Callable[[], bool], deadline: float,
            handle: Callable[[Any, int], None]) -> None:
        """
        Dispatch events to C{handle(key.data, mask)} until C{until()}, EOF
        on stdin, or C{deadline}.
        """
        while not until() and not self.stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, mask in self.sel.select(min(left, 0.5)):
                if key.data is None:
                    if not os.read(sys.stdin.fileno(), 4096):
                        self.stopped = True
                        self.sel.unregister(sys.stdin.fileno())
                    continue
                handle(key.data, mask)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    index: int
    sentAt: float | None = None
    closedAt: float | None = None
    received: bytearray = field(default_factory=bytearray)
    reset: bool = False
    error: str = ""
    peer: RawPeer | None = None
    handshakeAt: float | None = None


def _readInto(conn: _Conn, loop: _Loop) -> None:
    """Read what is there; on EOF or reset mark C{conn} closed."""
    try:
        data = conn.sock.recv(65536)
    except BlockingIOError:
        return
    except ConnectionResetError:
        data, conn.reset = b"", True
    if data:
        conn.received += data
        return
    conn.closedAt = time.monotonic()
    loop.sel.unregister(conn.sock)
    conn.sock.close()


def workerStallHandshake(p: dict[str, Any]) -> dict[str, Any]:
    """
    (a) C{count} connections, from C{sources} in turn, each sending the first
    half of a valid Init (fresh key each) and then nothing.  Reports which
    the node closed at once (refused by a cap), which at its handshake
    timeout, and what it sent (it must send nothing).
    """
    key = PublicKey.from_node_id(p["node"])
    halves = []
    for _ in range(p["count"]):
        init = Initiator(PrivateKey.generate(), key)
        init.initiate()
        data = init.data_to_send()
        halves.append(data[: len(data) // 2])
    loop = _Loop()
    conns: list[_Conn] = []

    def handle(conn: _Conn, mask: int) -> None:
        if conn.sentAt is None:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                conn.error = os.strerror(err)
                conn.closedAt = time.monotonic()
                loop.sel.unregister(conn.sock)
                conn.sock.close()
                return
            try:
                conn.sock.send(halves[conn.index])
            except OSError as e:
                conn.error = str(e)
            conn.sentAt = time.monotonic()
            loop.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        _readInto(conn, loop)

    started = time.monotonic()
    _emit("started")
    sources = p["sources"]
    for i in range(p["count"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        err = s.connect_ex((p["host"], p["port"]))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            conns.append(_Conn(s, i, closedAt=time.monotonic(), error=os.strerror(err)))
            continue
        conn = _Conn(s, i)
        conns.append(conn)
        loop.sel.register(s, selectors.EVENT_WRITE, conn)
        if i % 50 == 49:  # let the node accept: its listen backlog is 50
            loop.run(lambda: False, time.monotonic() + 0.01, handle)
    loop.run(lambda: all(c.sentAt is not None or c.closedAt is not None for c in conns),
             time.monotonic() + 10, handle)
    sent = sum(c.sentAt is not None for c in conns)
    connectSeconds = time.monotonic() - started
    _emit("ready", connected=sent, seconds=connectSeconds)
    loop.run(lambda: all(c.closedAt is not None for c in conns),
             time.monotonic() + p["hold"], handle)
    quick = [c for c in conns if c.sentAt and c.closedAt and c.closedAt - c.sentAt < AT_ONCE]
    later = [c.closedAt - c.sentAt for c in conns
             if c.sentAt and c.closedAt and c.closedAt - c.sentAt >= AT_ONCE]
    result = {
        "connected": sent,
        "connectSeconds": connectSeconds,
        "failed": [c.error for c in conns if c.sentAt is None][:5],
        "closedAtOnce": len(quick),
        "closedLater": _stats(later),
        "closedLaterSeconds": sorted(round(t, 3) for t in later),
        "stillOpen": sum(c.closedAt is None for c in conns),
        "bytesReceived": sum(len(c.received) for c in conns),
        "stoppedEarly": loop.stopped,
    }
    for c in conns:
        if c.closedAt is None:
            c.sock.close()
    return result


def workerStallFrame(p: dict[str, Any]) -> dict[str, Any]:
    """
    (b) C{count} honest handshakes, each with its own key, one after the
    other from C{sources} in turn; after each, a transport frame's length
    prefix and half its body, then nothing.  Reports when the node closed
    each (counted from its handshake) and what it sent before (its frames
    opened with the session keys: a Ping, then an Error).
    """
    key = PublicKey.from_node_id(p["node"])
    loop = _Loop()
    conns: list[_Conn] = []
    failed: list[str] = []
    started = time.monotonic()
    _emit("started")
    sources = p["sources"]
    # A 200-byte message sent half-way, or ("large") the largest a node must
    # accept (WIRE.md section 2) sent all but its last byte.
    large = p.get("large", False)
    body = encode_payload(StringValue(value="x" * (MAX_MESSAGE - 100 if large else 200)))
    for i in range(p["count"]):
        try:
            peer = RawPeer(p["host"], p["port"], key, source=sources[i % len(sources)])
        except OSError as e:
            failed.append(f"connect: {e}")
            continue
        try:
            peer.handshake()
            sealed = peer.seal(body)
            peer.sock.sendall(sealed[:-1] if large else sealed[: 4 + (len(sealed) - 4) // 2])
        except (AssertionError, OSError) as e:
            failed.append(f"{type(e).__name__}: {e}"[:200])
            peer.close()
            continue
        conn = _Conn(peer.sock, i, sentAt=time.monotonic(), peer=peer)
        conn.handshakeAt = conn.sentAt
        peer.sock.setblocking(False)
        loop.sel.register(peer.sock, selectors.EVENT_READ, conn)
        conns.append(conn)
    _emit("ready", connected=len(conns), failed=len(failed),
          seconds=time.monotonic() - started)
    loop.run(lambda: all(c.closedAt is not None for c in conns),
             time.monotonic() + p["hold"], lambda c, m: _readInto(c, loop))
    kinds: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for c in conns:
        frames, rest = split_frames(bytes(c.received))
        assert c.peer is not None
        try:
            envelopes = [c.peer.t.open(f) for f in frames]
        except Exception as e:  # a frame that does not open is a finding, not a crash
            kinds[f"unopenable: {e}"] += 1
            continue
        shape = ",".join(str(env.WhichOneof("body")) for env in envelopes)
        kinds[shape + (",partial" if rest else "")] += 1
        for env in envelopes:
            if env.WhichOneof("body") == "error":
                errors[env.error.message] += 1
    result = {
        "connected": len(conns),
        "failed": failed[:5],
        "failedCount": len(failed),
        "closedAfterHandshake": _stats(
            [c.closedAt - c.handshakeAt for c in conns if c.closedAt and c.handshakeAt]),
        "stillOpen": sum(c.closedAt is None for c in conns),
        "frames": dict(kinds),
        "errors": dict(errors.most_common(3)),
        "stoppedEarly": loop.stopped,
    }
    for c in conns:
        if c.closedAt is None:
            c.sock.close()
    return result


GIB_PREFIX = (1 << 30).to_bytes(4, "big")
#: Connections of (c) left unanswered at once, before the handshake.
WINDOW = 40


def workerHugeLength(p: dict[str, Any]) -> dict[str, Any]:
    """
    (c) Rounds, for C{duration} seconds (at least one): C{pre} connections,
    L{WINDOW} at a time, each send the 4 bytes 0x40000000 as their first
    frame's length; then C{post} connections complete a handshake and, all
    together, each send a transport frame header claiming 1 GiB (and 64
    bytes of it).  The node must close every one at once: silently before
    the handshake, with an Error after.
    """
    key = PublicKey.from_node_id(p["node"])
    sources = p["sources"]
    deadline = time.monotonic() + p["duration"]
    loop = _Loop()
    pre: dict[str, Any] = {"sent": 0, "closed": 0, "latency": [], "bytes": 0, "failed": 0}
    post: dict[str, Any] = {"sent": 0, "closed": 0, "latency": [], "frames": Counter(),
                            "failed": 0}
    rounds = 0
    _emit("started")
    _emit("ready")
    n = 0
    while rounds == 0 or (time.monotonic() < deadline and not loop.stopped):
        rounds += 1
        batch: list[_Conn] = []
        for _ in range(p["pre"]):
            n += 1
            try:
                s = connect(p["host"], p["port"], timeout=5, source=sources[n % len(sources)])
            except OSError:
                pre["failed"] += 1
                continue
            send_quietly(s, GIB_PREFIX)
            c = _Conn(s, n, sentAt=time.monotonic())
            s.setblocking(False)
            loop.sel.register(s, selectors.EVENT_READ, c)
            batch.append(c)
            # At most WINDOW unanswered at once: beyond the node's listen
            # backlog (50) the kernel drops handshakes and the client's
            # retransmission (1 s) would be counted as the node's delay.
            loop.run(lambda batch=batch: sum(  # type: ignore[misc]
                         c.closedAt is None for c in batch[-2 * WINDOW:]) < WINDOW,
                     time.monotonic() + 5, lambda c, m: _readInto(c, loop))
        peers: list[_Conn] = []
        for _ in range(p["post"]):
            n += 1
            try:
                peer = RawPeer(p["host"], p["port"], key, source=sources[n % len(sources)])
            except OSError:
                post["failed"] += 1
                continue
            try:
                peer.handshake()
            except (AssertionError, OSError):
                post["failed"] += 1
                peer.close()
                continue
            peers.append(_Conn(peer.sock, n, peer=peer))
        for c in peers:
            send_quietly(c.sock, GIB_PREFIX + bytes(64))
            c.sentAt = time.monotonic()
            c.sock.setblocking(False)
            loop.sel.register(c.sock, selectors.EVENT_READ, c)
        everything = batch + peers
        loop.run(lambda everything=everything: all(  # type: ignore[misc]
                     c.closedAt is not None for c in everything),
                 time.monotonic() + 5, lambda c, m: _readInto(c, loop))
        for c in batch:
            pre["sent"] += 1
            pre["bytes"] += len(c.received)
            if c.closedAt is not None and c.sentAt is not None:
                pre["closed"] += 1
                pre["latency"].append(c.closedAt - c.sentAt)
        for c in peers:
            post["sent"] += 1
            if c.closedAt is not None and c.sentAt is not None:
                post["closed"] += 1
                post["latency"].append(c.closedAt - c.sentAt)
            assert c.peer is not None
            frames, rest = split_frames(bytes(c.received))
            try:
                kinds = [str(c.peer.t.open(f).WhichOneof("body")) for f in frames]
            except Exception as e:
                kinds = [f"unopenable: {e}"]
            post["frames"][",".join(kinds) + (",partial" if rest else "")] += 1
        for c in everything:
            if c.closedAt is None:
                loop.sel.unregister(c.sock)
                c.sock.close()
    pre["latency"] = _stats(pre["latency"])
    post["latency"] = _stats(post["latency"])
    post["frames"] = dict(post["frames"])
    return {"rounds": rounds, "pre": pre, "post": post}


def _badSignatureInit(key: PublicKey) -> bytes:
    """An Init from a fresh key whose signature has one bit flipped."""
    init = Initiator(PrivateKey.generate(), key)
    init.initiate()
    envelope = Envelope.FromString(init.data_to_send()[4:])
    signature = bytearray(envelope.init.signature)
    signature[20] ^= 0x01
    envelope.init.signature = bytes(signature)
    return frame(envelope.SerializeToString())


def workerFlood(p: dict[str, Any]) -> dict[str, Any]:
    """
    (d) For C{duration} seconds, one connection after another, as fast as
    the node answers: C{mode} C{valid} (a full handshake with a fresh key,
    then close), C{badsig} (an Init from a fresh key with a bad signature:
    the node must close, sending nothing) or C{replay} (the same valid Init
    again and again: the node answers each with an Ack; we close).
    """
    key = PublicKey.from_node_id(p["node"])
    sources = p["sources"]
    mode = p["mode"]
    replay = b""
    if mode == "replay":
        init = Initiator(PrivateKey.generate(), key)
        init.initiate()
        replay = init.data_to_send()
    done = failed = unexpected = 0
    errors: Counter[str] = Counter()
    _emit("started")
    _emit("ready")
    start = time.monotonic()
    deadline = start + p["duration"]
    n = 0
    while time.monotonic() < deadline:
        n += 1
        source = sources[n % len(sources)]
        try:
            if mode == "valid":
                peer = RawPeer(p["host"], p["port"], key, source=source)
                try:
                    peer.handshake()
                finally:
                    peer.close()
            elif mode == "badsig":
                with connect(p["host"], p["port"], timeout=5, source=source) as s:
                    send_quietly(s, _badSignatureInit(key))
                    outcome = read_until_closed(s, 5)
                    if not outcome.closed or outcome.data:
                        unexpected += 1
            else:
                with connect(p["host"], p["port"], timeout=5, source=source) as s:
                    s.sendall(replay)
                    read_frame(s, 5)  # the Ack
            done += 1
        except (AssertionError, OSError) as e:
            failed += 1
            errors[f"{type(e).__name__}: {e}"[:120]] += 1
    elapsed = time.monotonic() - start
    return {"mode": mode, "done": done, "failed": failed, "unexpected": unexpected,
            "perSecond": done / elapsed, "errors": dict(errors.most_common(3))}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "stall-handshake": workerStallHandshake,
    "stall-frame": workerStallFrame,
    "huge-length": workerHugeLength,
    "flood": workerFlood,
}


def workerMain(kind: str, params: str) -> int:
    """Run one attack worker; its report is the last line on stdout."""
    result = WORKERS[kind](json.loads(params))
    _emit("done", **result)
    return 0


class Worker:
    """
    A worker process (C{python -m soak.attack --worker KIND}, or C{command}),
    and the events it printed on stdout, one JSON object a line.
    """

    def __init__(
        self, kind: str, params: dict[str, Any], command: list[str] | None = None
    ) -> None:
        self.kind = kind
        if command is None:
            command = workerCommand("soak.attack", "--worker", kind, "--params",
                                    json.dumps(params))
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.process = subprocess.Popen(
            command, cwd=workerCwd(), env=workerEnv(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self.events: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The event C{event} (waiting at most C{timeout} s for it), or C{None}."""
        deadline = time.monotonic() + timeout
        while event not in self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)
                return None
            self.events[item["event"]] = item
        return self.events[event]

    def done(self) -> bool:
        return self.wait("done", 0) is not None

    def stop(self) -> None:
        """Ask the worker to stop (EOF on its stdin)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def finish(self, timeout: float) -> dict[str, Any]:
        """
        Its report: wait (at most C{timeout} s) for it to end by itself, then
        ask it to stop; kill it if it hangs.
        """
        report = self.wait("done", timeout)
        if report is None:
            self.stop()
            report = self.wait("done", 10)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if report is None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode("utf-8", "replace")[-2000:]
            return {"error": f"worker {self.kind} gave no report (status "
                             f"{self.process.returncode}): {tail}"}
        self._stderr.close()
        return report


# Scenarios -------------------------------------------------------------------------


@dataclass
class Scenario:
    """
    One attack: its node's settings, its workers, and how long it lasts.

    @ivar during: seconds after the attack is in place during which honest
        probes run (and the attack is still on).
    @ivar holds: the most attack connections the node should hold at once.
    @ivar finish: seconds to wait for the workers' reports after C{during}.
    """

    name: str
    letter: str
    title: str
    nodeArgs: list[str]
    workers: list[tuple[str, dict[str, Any]]]
    during: float
    holds: int
    finish: float
    maxHandshakes: int | None = None
    partialBudget: int = 0
    settings: str = ""


@dataclass
class Result:
    """The figures of one scenario, and the checks that failed."""

    name: str
    letter: str
    title: str
    settings: str
    rssBefore: int = 0
    rssPeak: int = 0
    rssAfter: int = 0
    rssBound: int = 0
    vmPeakGrowth: int = 0
    fdsBefore: int = 0
    fdsPeak: int = 0
    cpuIdleBefore: float = 0.0
    cpuDuring: float = 0.0
    cpuDuringPeak: float = 0.0
    cpuAfter: list[float] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    existingPing: float | None = None
    probeAfterAttack: Probe | None = None
    attackSeconds: float = 0.0
    logBytes: int = 0
    workers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def okProbes(self) -> list[Probe]:
        return [p for p in self.probes if p.ok]


def vmPeak(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    return 0


SIZES: dict[str, dict[str, Any]] = {
    # Full sizes: python -m soak.attack
    "full": {
        "a": {"count": 1000, "handshakeTimeout": 10.0},
        "b": {"count": 1000, "interval": 30.0, "pongTimeout": 5.0, "large": 500},
        "c": {"pre": 1000, "post": 200, "duration": 10.0},
        "d": {"duration": 20.0},
    },
    # The CI sizes: tests/test_limits.py, python -m soak.attack --quick
    "quick": {
        "a": {"count": 1000, "handshakeTimeout": 3.0},
        "b": {"count": 1000, "interval": 30.0, "pongTimeout": 1.0, "large": 100},
        "c": {"pre": 500, "post": 100, "duration": 2.5},
        "d": {"duration": 3.0},
    },
}


def scenarios(size: str = "full") -> dict[str, Scenario]:
    """Every scenario, at the sizes C{size} (C{"full"} or C{"quick"})."""
    s = SIZES[size]
    a, b, c, d = s["a"], s["b"], s["c"], s["d"]
    ht = a["handshakeTimeout"]
    stall = {"count": a["count"], "sources": ATTACK_SOURCES, "hold": ht + 10}
    frameHold = b["interval"] + b["pongTimeout"] + 20
    return {
        "stall-handshake": Scenario(
            "stall-handshake", "a",
            f"{a['count']} connections stall mid-handshake (half an Init), "
            f"from {len(ATTACK_SOURCES)} addresses; default caps",
            ["--handshake-timeout", f"{ht:g}"],
            [("stall-handshake", stall)],
            during=ht - 1.5, holds=512, finish=ht + 10,
            settings=f"--handshake-timeout {ht:g}; maxHandshakes 512, "
                     "maxHandshakesPerAddress 16 (defaults)",
        ),
        "stall-handshake-raised": Scenario(
            "stall-handshake-raised", "a'",
            f"{a['count']} connections stall mid-handshake, from "
            f"{len(ATTACK_SOURCES)} addresses; total handshake cap 1,100",
            ["--handshake-timeout", f"{ht:g}", "--max-connections", "1100"],
            [("stall-handshake", stall)],
            during=ht - 1.5, holds=a["count"], finish=ht + 10, maxHandshakes=1100,
            settings=f"--handshake-timeout {ht:g} --max-connections 1100; "
                     "maxHandshakes 1100, maxHandshakesPerAddress 16",
        ),
        "stall-frame": Scenario(
            "stall-frame", "b",
            f"{b['count']} connections complete a handshake (own key each), "
            "then stall mid-frame",
            ["--ping-interval", f"{b['interval']:g}", "--pong-timeout",
             f"{b['pongTimeout']:g}", "--max-connections", "1100"],
            [("stall-frame", {"count": b["count"], "sources": ATTACK_SOURCES,
                              "hold": frameHold})],
            during=b["interval"] + b["pongTimeout"] - 1.5, holds=b["count"],
            finish=frameHold,
            settings=f"--ping-interval {b['interval']:g} --pong-timeout "
                     f"{b['pongTimeout']:g} --max-connections 1100",
        ),
        "stall-frame-large": Scenario(
            "stall-frame-large", "b'",
            f"{b['large']} connections complete a handshake, then send all but the last "
            "byte of a largest (1 MiB) message and stall",
            ["--ping-interval", f"{b['interval']:g}", "--pong-timeout",
             f"{b['pongTimeout']:g}", "--max-connections", "1100"],
            [("stall-frame", {"count": b["large"], "sources": ATTACK_SOURCES,
                              "hold": frameHold, "large": True})],
            during=b["interval"] + b["pongTimeout"] - 1.5, holds=b["large"],
            finish=frameHold, partialBudget=DEFAULT_MAX_PARTIAL_BYTES,
            settings=f"--ping-interval {b['interval']:g} --pong-timeout "
                     f"{b['pongTimeout']:g} --max-connections 1100",
        ),
        "huge-length": Scenario(
            "huge-length", "c",
            f"length prefixes claiming 1 GiB for {c['duration']:g} s: rounds of "
            f"{c['pre']} before the handshake and {c['post']} after it",
            [],
            [("huge-length", {**c, "sources": ATTACK_SOURCES})],
            during=c["duration"], holds=c["pre"] + c["post"], finish=30,
            settings="defaults",
        ),
        "flood": Scenario(
            "flood", "d",
            f"handshake flood for {d['duration']:g} s: valid handshakes with fresh keys, "
            "Inits with bad signatures, replayed Inits (one worker each)",
            [],
            [("flood", {"mode": mode, "duration": d["duration"], "sources": FLOOD_SOURCES})
             for mode in ("valid", "badsig", "replay")],
            during=d["duration"], holds=16, finish=30,
            settings="defaults",
        ),
    }


def runScenario(scenario: Scenario, log: Callable[[str], None] = lambda _: None) -> Result:
    """Run one scenario against a fresh node; the figures and failed checks."""
    started = time.monotonic()
    result = Result(scenario.name, scenario.letter, scenario.title, scenario.settings)
    node = startNode(scenario.nodeArgs, maxHandshakes=scenario.maxHandshakes)
    sampler = Sampler(node.pid)
    workers: list[Worker] = []
    try:
        _run(scenario, node, sampler, workers, result, log)
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait(5)
        sampler.stop()
        if not node.running():
            result.failures.append(f"the node exited ({node.process.returncode}):\n"
                                   f"{node.log()[-3000:]}")
        elif "Traceback" in node.log():
            result.failures.append("a traceback in the node's log:\n"
                                   + node.log()[node.log().index("Traceback"):][:3000])
        node.stop()
    result.seconds = time.monotonic() - started
    return result


def _run(scenario: Scenario, node: NodeProcess, sampler: Sampler, workers: list[Worker],
         result: Result, log: Callable[[str], None]) -> None:
    pid = node.pid
    # Before: one honest peer (the first handshake warms the node up), then idle.
    warm = honestProbe(node, sampler.now())
    if not warm.ok:
        result.failures.append(f"the idle node did not serve an honest peer: {warm.error}")
    time.sleep(0.2)
    result.cpuIdleBefore = cpuWindow(pid, 0.5)
    result.rssBefore, result.fdsBefore = rssBytes(pid), fdCount(pid)
    vmBefore = vmPeak(pid)
    existing = RawPeer(node.host, node.port, node.key, source=EXISTING_SOURCE).handshake()
    try:
        attackStart = sampler.now()
        cpuStart = cpuSeconds(pid)
        logStart = _logSize(node)
        for kind, params in scenario.workers:
            params = {**params, "host": node.host, "port": node.port,
                      "node": node.key.node_id}
            workers.append(Worker(kind, params))
        for w in workers:
            if w.wait("ready", 60) is None:
                result.failures.append(f"worker {w.kind} never got its attack in place")
        ready = time.monotonic()
        log(f"  attack in place after {sampler.now() - attackStart:.1f} s")
        # During: honest probes back to back (0.25 s apart), the established
        # connection's Ping half way.
        end = ready + scenario.during
        pinged = False
        while time.monotonic() < end and not all(w.done() for w in workers):
            result.probes.append(honestProbe(node, sampler.now()))
            if not pinged and time.monotonic() > ready + scenario.during / 2:
                pinged = True
                t0 = time.monotonic()
                try:
                    existing.ping(timeout=5)
                    result.existingPing = time.monotonic() - t0
                except (AssertionError, OSError) as e:
                    result.failures.append(f"the established connection's Ping failed: {e}")
            time.sleep(0.25)
        if not pinged:
            t0 = time.monotonic()
            with contextlib.suppress(AssertionError, OSError):
                existing.ping(timeout=5)
                result.existingPing = time.monotonic() - t0
        # The end of the attack: the workers' own end (flood, huge lengths),
        # or the node closing every connection they hold (stalls).
        for w in workers:
            result.workers.append(w.finish(scenario.finish))
        attackEnd = sampler.now()
        cpuEnd = cpuSeconds(pid)
        result.logBytes = _logSize(node) - logStart
        result.attackSeconds = attackEnd - attackStart
        result.cpuDuring = (cpuEnd - cpuStart) / max(result.attackSeconds, 1e-6)
        windows = sampler.cpuWindows(attackStart, attackEnd)
        result.cpuDuringPeak = max(windows, default=result.cpuDuring)
        # After: a new honest peer at once (a stalled handshake's slot is free
        # again), then 1 s CPU windows until one is idle (at most 10).
        result.probeAfterAttack = honestProbe(node, sampler.now())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            window = cpuWindow(pid, 1.0)
            result.cpuAfter.append(window)
            if window <= IDLE_CPU:
                break
        result.rssAfter = rssBytes(pid)
        result.rssPeak = max(sampler.peakRSS(attackStart, sampler.now()), result.rssAfter)
        result.fdsPeak = sampler.peakFds(attackStart, sampler.now())
        result.vmPeakGrowth = vmPeak(pid) - vmBefore
    finally:
        existing.close()
    _check(scenario, result)


def _logSize(node: NodeProcess) -> int:
    return os.path.getsize(os.path.join(node.directory, "stdout.log"))


def _check(scenario: Scenario, r: Result) -> None:
    """The bounds every scenario must keep, then the scenario's own."""
    fail = r.failures.append
    for w in r.workers:
        if "error" in w:
            fail(w["error"])
    held = max(0, r.fdsPeak - r.fdsBefore)
    if held > scenario.holds + 20:
        fail(f"the node held {held} connections at once, more than the {scenario.holds} "
             "this attack should get")
    n = max(held, scenario.holds)
    partial = 0
    if scenario.partialBudget:
        partial = int((scenario.partialBudget + MAX_MESSAGE) * PARTIAL_OVERHEAD)
    r.rssBound = BASE_SLACK + PER_CONNECTION * n + partial
    r.notes.append(f"RSS bound: {mib(BASE_SLACK)} + {PER_CONNECTION // 1024} KiB x {n} "
                   "connections held"
                   + (f" + {mib(partial)} of partial frames (the budget and one frame, x "
                      f"{PARTIAL_OVERHEAD:g})" if partial else "")
                   + f" = {mib(r.rssBound)} over the {mib(r.rssBefore)} before")
    if r.rssPeak - r.rssBefore > r.rssBound:
        fail(f"RSS grew by {mib(r.rssPeak - r.rssBefore)}, over the bound {mib(r.rssBound)}")
    if r.rssAfter - r.rssBefore > r.rssBound:
        fail(f"RSS after the attack is {mib(r.rssAfter - r.rssBefore)} over the start")
    if r.vmPeakGrowth > r.rssBound + 64 * 2**20:
        fail(f"peak virtual memory grew by {mib(r.vmPeakGrowth)}")
    if not r.cpuAfter or r.cpuAfter[-1] > IDLE_CPU:
        fail(f"the node's CPU did not go back to idle after the attack: {r.cpuAfter}")
    if r.existingPing is None or r.existingPing > HONEST_LIMIT:
        fail(f"the established connection's Ping during the attack took {r.existingPing}")
    if r.probeAfterAttack is None or not r.probeAfterAttack.ok:
        fail(f"no honest peer served after the attack: {r.probeAfterAttack}")
    if not r.probes:
        fail("no honest probe ran during the attack")
    bad = [p for p in r.probes if not p.ok or p.seconds > HONEST_LIMIT]
    if bad:
        fail(f"{len(bad)} of {len(r.probes)} honest handshake + ping during the attack "
             f"failed or took over {HONEST_LIMIT} s: {bad[:3]}")
    {"a": _checkStallHandshake, "a'": _checkStallHandshake, "b": _checkStallFrame,
     "b'": _checkStallFrame, "c": _checkHugeLength, "d": _checkFlood}[scenario.letter](
        scenario, r)


def _param(scenario: Scenario, name: str) -> Any:
    return scenario.workers[0][1][name]


def _nodeArg(scenario: Scenario, name: str) -> float:
    return float(scenario.nodeArgs[scenario.nodeArgs.index(name) + 1])


def _checkStallHandshake(scenario: Scenario, r: Result) -> None:
    fail = r.failures.append
    w = r.workers[0]
    if "error" in w:
        return
    count = _param(scenario, "count")
    timeout = _nodeArg(scenario, "--handshake-timeout")
    cap = scenario.maxHandshakes or 512
    held = w["connected"] - w["closedAtOnce"]
    if w["connected"] != count:
        fail(f"only {w['connected']} of {count} attack connections were made: {w['failed']}")
    heldAtOnce = r.fdsPeak - r.fdsBefore - 2  # the established connection, a probe
    if heldAtOnce > cap:
        fail(f"the node held {heldAtOnce} handshakes at once, over its cap of {cap}")
    if w["bytesReceived"]:
        fail(f"the node sent {w['bytesReceived']} bytes to stalled handshakes")
    # Closed at once: refused by the total cap, or evicted at once for a
    # newer attack connection from an address holding fewer (the node
    # balances the slots between addresses).  Closed later: at the handshake
    # timeout, or evicted before it, for an honest probe or an attack
    # connection.  The established honest connection is complete: it holds
    # no slot.
    times = w["closedLaterSeconds"]
    evicted = [t for t in times if t < timeout - 0.5]
    atTimeout = [t for t in times if t >= timeout - 0.5]
    if len(times) != held or w["stillOpen"]:
        fail(f"stalled handshakes not all closed by the node: {len(times)} of {held} "
             f"closed, {w['stillOpen']} open")
    elif atTimeout and atTimeout[-1] > timeout + TIMER_SLACK:
        fail(f"stalled handshakes closed up to {atTimeout[-1]:.2f} s after their bytes, "
             f"after the {timeout:g} s handshake timeout")
    if w["connectSeconds"] < timeout - 0.5:
        # Every attack connection was made before the first held one timed
        # out: the node then held min(count, cap), and kept them until the
        # timeout but for those a probe's eviction (one at most each) took.
        full = min(count, cap)
        if not full - len(r.probes) <= len(atTimeout) <= full:
            fail(f"{len(atTimeout)} stalled handshakes closed at the timeout; expected "
                 f"{full} held, less at most one per honest probe ({len(r.probes)})")
        if count <= cap and (evicted or w["closedAtOnce"]):
            fail(f"below the cap, {w['closedAtOnce']} refused and {len(evicted)} evicted")
    if count > cap:
        r.notes.append(f"the total cap of {cap} full: {w['closedAtOnce']} attack connections "
                       f"closed at once (refused, or evicted at once for another), "
                       f"{len(evicted)} evicted later, {len(atTimeout)} closed at the timeout")


def _checkStallFrame(scenario: Scenario, r: Result) -> None:
    fail = r.failures.append
    w = r.workers[0]
    if "error" in w:
        return
    count = _param(scenario, "count")
    interval = _nodeArg(scenario, "--ping-interval")
    timeout = _nodeArg(scenario, "--pong-timeout")
    if w["connected"] != count:
        fail(f"only {w['connected']} of {count} handshakes completed: {w['failed']}")
    closed = w["closedAfterHandshake"]
    end = interval + timeout
    if w["stillOpen"] or closed.get("n", 0) != w["connected"]:
        fail(f"{w['stillOpen']} stalled connections were not closed by the node")
    elif scenario.partialBudget:
        if closed["max"] > end + TIMER_SLACK:
            fail(f"stalled frames were closed up to {closed['max']:.2f} s after the handshake, "
                 f"after interval + pong timeout = {end:g} s")
    elif not end - 0.5 <= closed["min"] <= closed["max"] <= end + TIMER_SLACK:
        fail(f"stalled frames were closed {closed['min']:.2f}..{closed['max']:.2f} s after "
             f"the handshake, not at interval + pong timeout = {end:g} s")
    frames = w["frames"]
    if not scenario.partialBudget:
        if frames != {"ping,error": w["connected"]}:
            fail(f"what the node sent stalled connections: {frames} "
                 "(expected a Ping, then an Error)")
        return
    # (b'): the node holds what fits in its partial frame budget and closes
    # the stalest holder (an Error, before any Ping) whenever a new one goes
    # over; the ones it holds end at keep-alive (a Ping, then an Error).
    fits = scenario.partialBudget // (MAX_MESSAGE - 100)
    kept, closedEarly = frames.get("ping,error", 0), frames.get("error", 0)
    if kept + closedEarly != w["connected"] or kept > fits:
        fail(f"what the node sent stalled connections: {frames} (expected at most {fits} "
             "a Ping then an Error, the others an Error at once)")
    if w["connected"] > fits + 1 and kept < fits - 1:
        fail(f"only {kept} stalled frames kept until keep-alive; {fits} fit in the budget")
    r.notes.append(f"partial frame budget: {kept} held until keep-alive, {closedEarly} closed "
                   "as the stalest when a new one went over")


def _checkHugeLength(scenario: Scenario, r: Result) -> None:
    fail = r.failures.append
    w = r.workers[0]
    if "error" in w:
        return
    pre, post = w["pre"], w["post"]
    if pre["failed"] or post["failed"]:
        fail(f"attack connections failed: {pre['failed']} before, {post['failed']} after "
             "the handshake")
    if pre["closed"] != pre["sent"] or pre["bytes"]:
        fail(f"1 GiB prefixes before the handshake: {pre['closed']} of {pre['sent']} closed, "
             f"{pre['bytes']} bytes sent by the node (expected all closed, silently)")
    if pre["latency"].get("max", 0) > AT_ONCE:
        fail(f"a 1 GiB handshake prefix was closed only after {pre['latency']['max']:.2f} s")
    if post["closed"] != post["sent"] or post["frames"] != {"error": post["sent"]}:
        fail(f"1 GiB frame headers after the handshake: {post['closed']} of {post['sent']} "
             f"closed, frames {post['frames']} (expected an Error, then the close)")
    if post["latency"].get("max", 0) > AT_ONCE:
        fail(f"a 1 GiB transport header was closed only after {post['latency']['max']:.2f} s")
    if r.vmPeakGrowth > 64 * 2**20:
        fail(f"peak virtual memory grew by {mib(r.vmPeakGrowth)}: a claimed length reserved?")


def _checkFlood(scenario: Scenario, r: Result) -> None:
    fail = r.failures.append
    for w in r.workers:
        if "error" in w:
            continue
        if w["done"] == 0 or w["failed"] > w["done"] // 100 or w["unexpected"]:
            fail(f"flood worker {w['mode']}: {w['done']} done, {w['failed']} failed, "
                 f"{w['unexpected']} answered unexpectedly: {w['errors']}")


# Reports ---------------------------------------------------------------------------


def describe(r: Result) -> str:
    """The figures of one scenario, as lines of text."""
    ok = [p.seconds for p in r.okProbes]
    refused = len(r.probes) - len(ok)
    lines = [
        f"({r.letter}) {r.name}: {r.title}",
        f"    node: {r.settings}",
        f"    RSS before {mib(r.rssBefore)}, peak {mib(r.rssPeak)} "
        f"(+{mib(r.rssPeak - r.rssBefore)}), after {mib(r.rssAfter)}; "
        f"bound +{mib(r.rssBound)}; VmPeak +{mib(r.vmPeakGrowth)}",
        f"    descriptors before {r.fdsBefore}, peak {r.fdsPeak}; node log written during "
        f"the attack {r.logBytes / 1024:.0f} KiB",
        f"    CPU (of one core): idle before {r.cpuIdleBefore:.0%}, during {r.cpuDuring:.0%} "
        f"(peak 1 s {r.cpuDuringPeak:.0%}) over {r.attackSeconds:.1f} s; after, 1 s windows "
        + ", ".join(f"{c:.0%}" for c in r.cpuAfter),
        f"    honest handshake + ping during the attack: {len(ok)} of {len(r.probes)} served"
        + (f", median {median(ok) * 1000:.1f} ms, max {max(ok) * 1000:.1f} ms" if ok else "")
        + (f"; {refused} refused" if refused else ""),
        "    established connection's Ping during the attack: "
        + (f"{r.existingPing * 1000:.1f} ms" if r.existingPing is not None else "failed"),
        "    new honest peer right after the attack: "
        + (f"{r.probeAfterAttack.seconds * 1000:.1f} ms" if r.probeAfterAttack
           and r.probeAfterAttack.ok else f"failed {r.probeAfterAttack}"),
    ]
    for w in r.workers:
        shown = {k: v for k, v in w.items() if k not in ("event", "closedLaterSeconds")}
        lines.append(f"    attacker: {json.dumps(shown, default=_round)}")
    lines += [f"    note: {n}" for n in r.notes]
    lines += [f"    FAILED: {f}" for f in r.failures]
    lines.append(f"    ({r.seconds:.1f} s)")
    return "\n".join(lines)


def _round(value: object) -> object:
    return str(value)


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _names(args: list[str] | None) -> Iterator[str]:
    letters = {"a": "stall-handshake", "a'": "stall-handshake-raised", "a+":
               "stall-handshake-raised", "b": "stall-frame", "b'": "stall-frame-large",
               "b+": "stall-frame-large", "c": "huge-length", "d": "flood"}
    for name in args or list(scenarios()):
        yield letters.get(name, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.attack", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="one of: " + ", ".join(scenarios()) + " (or a, a', b, c, d); "
                             "repeatable; default all")
    parser.add_argument("--quick", action="store_true", help="the CI sizes")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return workerMain(args.worker, args.params)
    table = scenarios("quick" if args.quick else "full")
    results = []
    for name in _names(args.scenario):
        if name not in table:
            parser.error(f"no scenario {name!r}")
        print(f"running {name} ...", flush=True)
        r = runScenario(table[name], log=lambda text: print(text, flush=True))
        print(describe(r), flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([_rounded(asdict(r)) for r in results], f, indent=1)
    failed = [r.name for r in results if r.failures]
    print("all bounds held" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
