"""
Resource limits: a real node under attack, and a simulated day of 500
connections.

  - L{AttackTests}: each scenario of C{python -m soak.attack} at its CI
    sizes (C{soak.attack.SIZES["quick"]}): a real C{twistd -n botd2} on
    127.0.0.1, attacked from worker processes, its RSS / CPU / descriptors
    read from C{/proc}, and an honest peer timed (handshake + Ping) during
    the attack.  The bounds and why are in C{soak/attack.py} and
    C{soak/README.rst}; every check failed is listed in the failure message
    with all the figures.  Smaller than the full command where it saves
    time: a 3 s handshake timeout for (a) (10 s in the command) and a 1 s
    pong timeout for (b) (5 s); (a) and (b) keep 1,000 connections.
  - L{SimulatedDayTests}: C{soak.simulate}: one server node and 500 client
    nodes on one L{soak.simulate.HeapClock} (a C{task.Clock}), 24 simulated
    hours of numbered messages and keep-alive, in memory.
  - L{DualStackCapTests}: a bug found on the way, fixed.

Linux only (C{/proc}).  Runtime: about 60 s for the attacks (35 s of it
the keep-alive wait of (b), whose ping interval cannot go below 30 s) and
about 55 s for the simulated day (over half of it the server's idle-cipher
sweep: 17,280 passes over 500 connections, under tracemalloc).
"""

from __future__ import annotations

import os

from twisted.internet.address import IPv6Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from botd2.connection import Initiator
from botd2.keys import PrivateKey
from botd2.protocol import PeerFactory
from soak import attack, simulate
from soak._node import startNode
from tests.rawpeer import connect


def _needProc() -> None:
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        raise SkipTest("needs /proc (Linux)")


class AttackTests(SynchronousTestCase):
    """
    Each test runs one scenario against its own node and asserts that no
    check of L{soak.attack} failed: RSS within per-connection cost x
    connections held + a fixed slack, CPU idle again within seconds of the
    attack's end, every honest handshake + ping during the attack within
    2 s (or, where the node's total handshake cap is full by design,
    refused at once), no traceback, the node still serving.
    """

    def run_(self, name: str) -> attack.Result:
        _needProc()
        result = attack.runScenario(attack.scenarios("quick")[name])
        self.assertEqual(result.failures, [], "\n" + attack.describe(result))
        return result

    def test_a_stalledHandshakesDefaultCaps(self) -> None:
        """
        1,000 connections from 90 addresses each send half an Init and
        stall.  The per-address cap (16) refuses none of them (11 or 12 per
        address); the total cap holds 512 and closes the others at once,
        sending nothing (refused, or admitted in place of an older one from
        an address holding more).  A new honest peer, from an address holding no
        handshake, is admitted in place of the oldest handshake of the
        busiest address, and completes its handshake and a Ping within 2 s;
        once complete it frees its slot for the next one.  The other stalled
        handshakes are closed, sending nothing, at the handshake timeout.
        """
        r = self.run_("stall-handshake")
        w = r.workers[0]
        self.assertEqual(w["connected"], 1000)
        self.assertEqual(w["bytesReceived"], 0)
        # the cap was full while the probes ran (checked by run_: at least
        # 512 - probes closed at the timeout), and every probe was served
        self.assertTrue(r.probes and all(p.ok for p in r.probes), r.probes)

    def test_a_stalledHandshakesRaisedCap(self) -> None:
        """
        The same 1,000 stalled handshakes against a node whose total cap
        (1,100) is above them: all are held, and a new honest peer completes
        its handshake and a Ping within 2 s throughout.
        """
        r = self.run_("stall-handshake-raised")
        w = r.workers[0]
        self.assertEqual((w["connected"], w["closedAtOnce"]), (1000, 0))
        self.assertTrue(r.probes and all(p.ok for p in r.probes))

    def test_b_stalledFrames(self) -> None:
        """
        1,000 connections complete a handshake, each with its own key, then
        send a length prefix and half a body and stall.  Each gets the
        node's Ping at the 30 s interval, then an Error and the close at the
        1 s pong timeout; honest peers are served in under 2 s throughout.
        """
        r = self.run_("stall-frame")
        w = r.workers[0]
        self.assertEqual(w["connected"], 1000)
        self.assertEqual(w["frames"], {"ping,error": 1000})

    def test_c_hugeLengths(self) -> None:
        """
        Lengths claiming 1 GiB, before the handshake (closed at once,
        silently) and after it (an Error, then the close), from hundreds of
        connections at once: nothing is reserved (VmPeak grows by less than
        64 MiB) and honest peers are served in under 2 s.
        """
        r = self.run_("huge-length")
        w = r.workers[0]
        self.assertGreater(w["pre"]["sent"], 0)
        self.assertGreater(w["post"]["sent"], 0)
        self.assertLess(r.vmPeakGrowth, 64 * 2**20)

    def test_d_handshakeFlood(self) -> None:
        """
        Valid handshakes with fresh keys, Inits with bad signatures and
        replayed Inits as fast as three workers can: the node keeps serving
        honest peers within 2 s, its memory bounded, and goes idle after.
        """
        r = self.run_("flood")
        self.assertEqual(sorted(w["mode"] for w in r.workers), ["badsig", "replay", "valid"])


class DualStackCapTests(SynchronousTestCase):
    """
    The per-address handshake cap on a node listening on IPv6 with IPv4
    peers (a dual-stack socket): Twisted gives their addresses as
    IPv4-mapped IPv6 (C{::ffff:a.b.c.d}), and C{_sourceKey} puts every one
    of them in the /64 C{::/64}, so the cap of 16 is shared by all IPv4
    peers: 16 stalled connections from one IPv4 host locked every other
    IPv4 stranger out until the handshake timeout.  Fixed: a mapped address
    counts as its IPv4 address.
    """

    def test_mappedAddressesCountedApart(self) -> None:
        """In memory: 16 handshakes from ::ffff:10.0.0.1 do not refuse ::ffff:10.0.0.2."""
        clock = Clock()  # not the global reactor: its cipher sweep would outlive the test
        node = PeerFactory(PrivateKey.from_int(7), reactor=clock, clock=clock)
        for port in range(16):
            self.assertIsNotNone(node.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.1", port)))
        self.assertIsNotNone(node.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.2", 1)))

    def test_realNodeOnIPv6(self) -> None:
        """
        A real node on C{tcp6:0:interface=::ffff:127.0.0.1} (loopback, IPv6
        socket, IPv4 peers): 16 connections from 127.0.0.10 send half an
        Init and stall; an honest peer from 127.0.0.2 must be served.
        """
        _needProc()
        node = startNode(["--port", r"tcp6:0:interface=\:\:ffff\:127.0.0.1"])
        self.addCleanup(node.stop)
        node.host = "127.0.0.1"
        for _ in range(16):
            s = connect(node.host, node.port, source="127.0.0.10")
            self.addCleanup(s.close)
            init = Initiator(PrivateKey.generate(), node.key)
            init.initiate()
            data = init.data_to_send()
            s.sendall(data[: len(data) // 2])
        probe = attack.honestProbe(node, 0.0)
        self.assertTrue(probe.ok, f"{probe}\n{node.log()[-600:]}")


class SimulatedDayTests(SynchronousTestCase):
    """24 simulated hours of one server and 500 client nodes (L{soak.simulate})."""

    #: The CI configuration: 500 connections for 24 h, as asked, with keep-alive
    #: on both sides and messages at a low rate (one every 10 to 50 minutes
    #: per connection: 24,000 in the day).  The keep-alive interval is 20
    #: minutes instead of the default minute: at the default, the day's 1.44
    #: million Ping/Pong exchanges take the real botd2 code about 12 minutes
    #: under tracemalloc; that full configuration is C{python -m
    #: soak.simulate}'s default (figures in soak/README.rst).
    config = simulate.Config(
        connections=500,
        hours=24,
        pingInterval=1200.0,
        clientPingInterval=1200.0,
        gap=(600.0, 3000.0),
        maxDelay=2.0,
    )

    def test_aDayOf500Connections(self) -> None:
        """
        No message lost, duplicated or reordered; no disconnect; keep-alive
        answered on every connection to the end; no warning logged; the
        traced Python memory at hour 24 within 5 % of hour 2.
        """
        r = simulate.simulate(self.config)
        self.assertEqual(simulate.check(r), [], "\n" + simulate.describe(r))
        self.assertEqual(r.serverPeers, 500)
        self.assertGreater(r.sent, 500 * 24 * 3600 / 3000)
        self.assertGreater(r.keepAlive.pongs, 2 * 500 * 24 * 3600 / 1200 * 0.95)
        self.assertLessEqual(r.memoryAt(24), r.memoryAt(2) * (1 + simulate.MEMORY_MARGIN))
