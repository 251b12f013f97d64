"""
The real-time soak test of a node.

    python -m soak.soak [--connections 500] [--minutes 10] [--rate 0.33]
                        [--clients 4] [--ping-interval 30] [--json PATH]

One C{twistd -n botd2 --protocol botd2.echo.EchoPeer} process; C{--clients}
client processes (C{python -m soak.soak --client}) open C{--connections}
connections to it between them, each from its own L{PeerFactory} (its own
identity), and each connection sends numbered C{StringValue}s ("I:N") at
about C{--rate} messages a second (gaps drawn uniformly from 0.5/rate to
1.5/rate: 1.5 to 4.5 s by default) for C{--minutes} of real time, checking
that the echoes ("echo: I:N") come back exactly once each, in order.
Keep-alive runs on both sides (C{--ping-interval}, 30 s by default: about
twenty Pings each way per connection in ten minutes).

Checked: every message echoed, none twice, none out of order; no connection
closed before the end (client side and node log); keep-alive Pings answered
on every connection; the node's RSS, sampled every 10 s, flat: the largest
sample of the last minute at most 10 % above the sample at the 2-minute mark
(for runs under 5 minutes: at the 40 % mark).  Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import StringValue
from twisted.python.failure import Failure

from botd2.protocol import PeerFactory, PeerProtocol
from soak._node import (
    NodeProcess,
    cpuSeconds,
    fdCount,
    mib,
    rssBytes,
    startNode,
    workerCommand,
)
from soak.attack import Worker
from soak.simulate import KeepAliveCount, installKeepAliveCount

#: The node's RSS at the end may exceed the reference sample by this fraction.
RSS_MARGIN = 0.10
#: RSS is sampled this often (seconds).
SAMPLE_EVERY = 10.0
#: After the last message, how long a client waits for the echoes in flight.
DRAIN = 15.0


# The client process ---------------------------------------------------------------


@dataclass
class ConnState:
    """One client connection's bookkeeping (no per-message memory: counters only)."""

    index: int
    sent: int = 0
    echoed: int = 0
    expected: int = 0
    duplicates: int = 0
    gaps: int = 0
    bad: int = 0
    lost: str = ""
    closing: bool = False
    app: SoakPeer | None = None


class SoakPeer(PeerProtocol):
    """Checks each echo against the next sequence number expected."""

    messageTypes = (StringValue,)
    state: ConnState

    def messageReceived(self, message: Message) -> None:
        assert isinstance(message, StringValue)
        st = self.state
        prefix = f"echo: {st.index}:"
        if not message.value.startswith(prefix):
            st.bad += 1
            return
        seq = int(message.value[len(prefix):])
        st.echoed += 1
        if seq == st.expected:
            st.expected += 1
        elif seq < st.expected:
            st.duplicates += 1
        else:
            st.gaps += 1
            st.expected = seq + 1

    def peerDisconnected(self, reason: Failure) -> None:
        if not self.state.closing:
            self.state.lost = f"{type(reason.value).__name__}: {reason.value}"


def clientMain(params: dict[str, Any]) -> int:
    """
    A client process: connect C{count} identities, say "ready", wait for a
    line on stdin ("go"), send for C{seconds}, drain, say "drained", wait
    for EOF on stdin, close every connection, say "done" with the figures.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredSemaphore, gatherResults
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    from botd2.keys import PrivateKey

    counts = KeepAliveCount()  # this process's own KeepAlive objects, for its life
    installKeepAliveCount(counts)
    rng = random.Random(params["first"])
    rate = params["rate"]
    states = [ConnState(params["first"] + i) for i in range(params["count"])]
    sources = params["sources"]
    failures: list[str] = []
    sending = {"on": False}
    r: Any = reactor

    def emit(event: str, **data: Any) -> None:
        assert control.transport is not None
        control.transport.write(json.dumps({"event": event, **data}).encode() + b"\n")

    def connectOne(i: int) -> Any:
        st = states[i]
        factory = PeerFactory(PrivateKey.generate(), protocol=SoakPeer, reactor=r,
                              pingInterval=params["pingInterval"])
        d = factory.connect(params["address"], bindAddress=(sources[i % len(sources)], 0))

        def connected(app: PeerProtocol) -> None:
            assert isinstance(app, SoakPeer)
            app.state = st
            st.app = app

        def failed(f: Failure) -> None:
            failures.append(f"{st.index}: {f.getErrorMessage()}"[:200])

        return d.addCallbacks(connected, failed)

    def send(st: ConnState) -> None:
        if not sending["on"] or st.app is None or st.lost:
            return
        st.app.sendMessage(StringValue(value=f"{st.index}:{st.sent}"))
        st.sent += 1
        r.callLater(rng.uniform(0.5 / rate, 1.5 / rate), send, st)

    def drained() -> None:
        emit("drained", **summary())

    def summary() -> dict[str, Any]:
        now = time.monotonic()
        interval = params["pingInterval"]
        pingedRecently = pongedRecently = 0
        for st in states:
            if st.app is None or st.app.transport is None:
                continue
            ka = st.app.transport.keepalive
            if ka is None:
                continue
            if ka.lastPingArrival is not None and now - ka.lastPingArrival < interval + 10:
                pingedRecently += 1
            if ka.lastPongAt is not None and now - ka.lastPongAt < interval + 40:
                pongedRecently += 1
        return {
            "connected": sum(st.app is not None for st in states),
            "failures": failures[:5],
            "failedCount": len(failures),
            "sent": sum(st.sent for st in states),
            "echoed": sum(st.echoed for st in states),
            "missing": sum(st.sent - st.expected for st in states),
            "duplicates": sum(st.duplicates for st in states),
            "gaps": sum(st.gaps for st in states),
            "bad": sum(st.bad for st in states),
            "disconnected": [f"{st.index}: {st.lost}" for st in states if st.lost][:10],
            "disconnectedCount": sum(bool(st.lost) for st in states),
            "nodePingsAnswered": counts.pings - counts.floods,
            "ourPingsAnswered": counts.pongs,
            "floods": counts.floods,
            "pingedByNodeLastInterval": pingedRecently,
            "pongedLastInterval": pongedRecently,
        }

    def go() -> None:
        sending["on"] = True
        for st in states:
            if st.app is not None:
                r.callLater(rng.uniform(0, 1.0 / rate), send, st)

        def stop() -> None:
            sending["on"] = False
            start = time.monotonic()

            def waitEchoes() -> None:
                if all(st.expected >= st.sent or st.lost for st in states) or \
                        time.monotonic() - start > DRAIN:
                    drained()
                else:
                    r.callLater(0.2, waitEchoes)

            waitEchoes()

        r.callLater(params["seconds"], stop)

    def closeAll() -> None:
        for st in states:
            st.closing = True
            if st.app is not None:
                st.app.disconnect("the soak is over")
        report = summary()
        emit("done", **report)
        r.callLater(2.0, r.stop)

    @implementer(IHalfCloseableProtocol)
    class Control(LineReceiver):
        """stdin: "go" starts sending; EOF closes everything.  stdout: events."""

        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"go":
                go()

        def readConnectionLost(self) -> None:
            closeAll()

        def writeConnectionLost(self) -> None:
            pass

    def connectAll() -> None:
        semaphore = DeferredSemaphore(8)
        ds = [semaphore.run(connectOne, i) for i in range(len(states))]
        gatherResults(ds).addBoth(
            lambda _: emit("ready", connected=sum(st.app is not None for st in states),
                           failures=failures[:5]))

    control = Control()
    StandardIO(control)
    r.callWhenRunning(connectAll)
    r.run()
    return 0


# The orchestrator --------------------------------------------------------------------


@dataclass
class SoakResult:
    """What the soak measured, and the checks that failed."""

    connections: int
    minutes: float
    rate: float
    pingInterval: float
    nodeArgs: list[str]
    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
    fds: list[tuple[float, int]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    nodeClosedLines: int = 0
    rssReference: tuple[float, int] = (0.0, 0)
    rssLastMinuteMax: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def runSoak(connections: int = 500, minutes: float = 10.0, rate: float = 1 / 3,
            clients: int = 4, pingInterval: float = 30.0,
            log: Callable[[str], None] = lambda _: None) -> SoakResult:
    """Run the soak (see the module docstring); the figures and failed checks."""
    started = time.monotonic()
    nodeArgs = ["--protocol", "botd2.echo.EchoPeer", "--ping-interval", f"{pingInterval:g}",
                "--max-connections", str(max(1000, connections + 100))]
    result = SoakResult(connections, minutes, rate, pingInterval, nodeArgs)
    node = startNode(nodeArgs)
    workers: list[Worker] = []
    try:
        _soak(node, result, workers, clients, log)
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait(5)
        if not node.running():
            result.failures.append(f"the node exited: {node.log()[-3000:]}")
        elif "Traceback" in node.log():
            result.failures.append("a traceback in the node's log")
        node.stop()
    result.seconds = time.monotonic() - started
    return result


def _go(worker: Worker) -> None:
    """Tell a client process to start sending."""
    assert worker.process.stdin is not None
    worker.process.stdin.write(b"go\n")
    worker.process.stdin.flush()


def _soak(node: NodeProcess, result: SoakResult, workers: list[Worker], clients: int,
          log: Callable[[str], None]) -> None:
    n = result.connections
    seconds = result.minutes * 60
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    first = 0
    for k, count in enumerate(per):
        params = {"address": node.address, "count": count, "first": first,
                  "sources": [f"127.0.{10 + k}.{j}" for j in range(1, 9)],
                  "rate": result.rate, "seconds": seconds,
                  "pingInterval": result.pingInterval}
        workers.append(Worker("soak client", params, workerCommand(
            "soak.soak", "--client", json.dumps(params))))
        first += count
    for w in workers:
        ready = w.wait("ready", 120)
        if ready is None or ready["connected"] != per[workers.index(w)]:
            result.failures.append(f"a client did not connect all its connections: {ready}")
    if result.failures:
        return
    log(f"  {n} connections up; soaking for {result.minutes:g} minutes")
    for w in workers:
        _go(w)
    t0 = time.monotonic()
    pid = node.pid
    cpu0 = cpuSeconds(pid)
    k = 0
    while True:
        t = k * SAMPLE_EVERY
        delay = t0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if t > seconds:
            break
        cpu = cpuSeconds(pid)
        result.rss.append((t, rssBytes(pid)))
        result.fds.append((t, fdCount(pid)))
        result.cpu.append((t, (cpu - cpu0) / SAMPLE_EVERY if k else 0.0))
        cpu0 = cpu
        if k % 6 == 0:
            log(f"  t={t:4.0f} s  RSS {mib(result.rss[-1][1])}  fds {result.fds[-1][1]}  "
                f"CPU {result.cpu[-1][1]:.0%}")
        k += 1
    for w in workers:
        drained = w.wait("drained", DRAIN + 30)
        if drained is None:
            result.failures.append("a client did not drain")
    # Before the clients close anything: the node must have closed nothing.
    result.nodeClosedLines = node.log().count("[botd2#info] botd2 connection from ")
    for w in workers:
        w.stop()  # EOF on its stdin: it closes its connections and reports
    for w in workers:
        result.clients.append(w.finish(30))
    _check(result)


def _check(r: SoakResult) -> None:
    fail = r.failures.append
    keys = ["connected", "sent", "echoed", "missing", "duplicates", "gaps", "bad",
            "disconnectedCount", "failedCount", "nodePingsAnswered", "ourPingsAnswered",
            "floods", "pingedByNodeLastInterval", "pongedLastInterval"]
    for c in r.clients:
        if "error" in c:
            fail(c["error"])
    r.totals = {k: sum(c.get(k, 0) for c in r.clients) for k in keys}
    t = r.totals
    if t["connected"] != r.connections:
        fail(f"{t['connected']} of {r.connections} connections were up at the end")
    if t["echoed"] != t["sent"] or t["missing"] or t["duplicates"] or t["gaps"] or t["bad"]:
        fail(f"messages: sent {t['sent']}, echoed {t['echoed']}, missing {t['missing']}, "
             f"duplicated {t['duplicates']}, gaps {t['gaps']}, malformed {t['bad']}")
    if t["disconnectedCount"] or r.nodeClosedLines:
        fail(f"connections closed during the soak: {t['disconnectedCount']} seen by the "
             f"clients, {r.nodeClosedLines} in the node's log: "
             f"{[c.get('disconnected') for c in r.clients]}")
    if t["floods"]:
        fail(f"{t['floods']} Pings from the node came less than 30 s apart")
    if r.minutes * 60 > r.pingInterval + 40:
        if t["pingedByNodeLastInterval"] != r.connections:
            fail(f"only {t['pingedByNodeLastInterval']} connections got a node Ping in the "
                 "last interval")
        if t["pongedLastInterval"] != r.connections:
            fail(f"only {t['pongedLastInterval']} connections got a Pong lately")
    seconds = r.minutes * 60
    refAt = 120.0 if seconds >= 300 else 0.4 * seconds
    ref = min(r.rss, key=lambda s: abs(s[0] - refAt), default=(0.0, 0))
    r.rssReference = ref
    last = [rss for at, rss in r.rss if at >= seconds - 60]
    r.rssLastMinuteMax = max(last, default=0)
    if ref[1] and r.rssLastMinuteMax > ref[1] * (1 + RSS_MARGIN):
        fail(f"RSS grew: {mib(r.rssLastMinuteMax)} in the last minute against "
             f"{mib(ref[1])} at {ref[0]:.0f} s")


def describe(r: SoakResult) -> str:
    t = r.totals
    cpu = [c for at, c in r.cpu if at > 0]
    lines = [
        f"soak: {r.connections} connections, {r.minutes:g} min, {r.rate:.2f} msg/s per "
        f"connection, ping interval {r.pingInterval:g} s; node: {' '.join(r.nodeArgs)}",
        f"  messages sent {t.get('sent')}, echoed {t.get('echoed')}, missing "
        f"{t.get('missing')}, duplicated {t.get('duplicates')}, out of order {t.get('gaps')}",
        f"  disconnects: {t.get('disconnectedCount')} (clients), {r.nodeClosedLines} "
        "(node log) before the end",
        f"  keep-alive: node Pings answered by the clients {t.get('nodePingsAnswered')}, "
        f"client Pings answered by the node {t.get('ourPingsAnswered')}; connections pinged "
        f"in the last interval {t.get('pingedByNodeLastInterval')}, with a recent Pong "
        f"{t.get('pongedLastInterval')}; floods {t.get('floods')}",
        f"  node CPU: mean {sum(cpu) / len(cpu) if cpu else 0:.1%} of a core, "
        f"max 10 s window {max(cpu, default=0):.1%}",
        f"  RSS reference ({r.rssReference[0]:.0f} s) {mib(r.rssReference[1])}, last minute "
        f"max {mib(r.rssLastMinuteMax)} (allowed +{RSS_MARGIN:.0%})",
        "  RSS series (s: MiB): " + ", ".join(f"{at:.0f}: {rss / 2**20:.1f}"
                                              for at, rss in r.rss),
    ]
    lines += [f"  FAILED: {f}" for f in r.failures]
    lines.append(f"  ({r.seconds:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1 / 3,
                        help="messages per second per connection (default 1/3)")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--ping-interval", type=float, default=30.0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--client", metavar="PARAMS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return clientMain(json.loads(args.client))
    if args.ping_interval < 30:
        parser.error("--ping-interval must be at least 30 (WIRE.md section 6)")
    r = runSoak(args.connections, args.minutes, args.rate, args.clients, args.ping_interval,
                log=lambda text: print(text, flush=True))
    print(describe(r), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(asdict(r), f, indent=1)
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
