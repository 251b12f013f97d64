"""
End-to-end tests of the node: real C{twistd -n botd2} processes on 127.0.0.1,
driven by the C{botd2} command and by a L{PeerFactory} in this process.

Every node runs the code of this checkout (C{PYTHONPATH} set to its root, so
twistd also finds C{twisted/plugins/botd2_plugin.py} here), in its own
temporary directory (no clash on C{twistd.pid} or key files), on a port the
kernel picks; its log is read back for the node ID and the port.  Every
process is killed in cleanup and every wait is bounded.  Timing is asserted
only as generous upper bounds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from google.protobuf.wrappers_pb2 import StringValue
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from botd2 import errors
from botd2.keyfile import create_key_file
from botd2.keys import PrivateKey
from botd2.protocol import PeerFactory
from tests.support import Recorder

reactor: Any = _reactor

#: The checkout under test: subprocesses import botd2 and the plugin from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: twistd on this interpreter.  (C{python -m twisted} is C{twist}, not twistd.)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

LISTENING = re.compile(
    r"botd2 node (?P<node>[0-9a-f]{66}) listening on (?P<host>\S+):(?P<port>\d+)\s*$", re.M
)
# Only info-level events: a connection refused before its handshake completed
# is logged at debug level ("[botd2#debug]") and was never counted as complete.
HANDSHAKE = re.compile(
    r"\[botd2#info\] botd2 handshake with (?P<peer>[0-9a-f]{66}) at (?P<address>\S+) "
    r"complete \((?P<direction>inbound|outbound)\)"
)
CLOSED = re.compile(
    r"\[botd2#info\] botd2 connection (?P<direction>to|from) (?P<peer>[0-9a-f]{66}) "
    r"at (?P<address>\S+) closed: "
)
RTT = re.compile(r"^pong from (?P<address>\S+): seq=1 rtt (?P<rtt>\d+(?:\.\d+)?) ms$", re.M)

#: Bound on every wait for a node or a command.
WAIT = 20.0


def checkoutEnv() -> dict[str, str]:
    """The environment for a subprocess that must run this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def botd2(*args: str, cwd: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """Run C{python -m botd2 ARGS} from this checkout and wait (bounded) for it."""
    return subprocess.run(
        [sys.executable, "-m", "botd2", *args],
        cwd=cwd,
        env=checkoutEnv(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def twistd(
    *args: str, cwd: str, timeout: float = WAIT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run C{twistd -n ARGS} from this checkout, for runs expected to end by themselves."""
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile", "", "--logfile", "-", *args],
        cwd=cwd,
        env=env or checkoutEnv(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def keygen(path: str, cwd: str) -> str:
    """Make a key file with C{botd2 keygen}; its node ID."""
    result = botd2("keygen", path, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def freePorts(n: int) -> list[int]:
    """
    C{n} distinct ports that were free a moment ago (bound together on port 0,
    then released), for nodes that must know each other's port in advance.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def waitFor(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll C{condition} (blocking) until it holds; fail after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


async def waitOnReactor(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll C{condition} with the reactor running; fail after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


@dataclass
class Node:
    """A running C{twistd -n botd2}: its process, directory, and what its log said."""

    process: subprocess.Popen[bytes]
    directory: str
    nodeID: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.nodeID}@{self.host}:{self.port}"

    def log(self) -> str:
        """Everything the node wrote on stdout (its log) so far."""
        return _read(os.path.join(self.directory, "stdout.log"))

    def stderr(self) -> str:
        return _read(os.path.join(self.directory, "stderr.log"))


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(WAIT)


class NodeTestCase(TestCase):
    """Starts nodes; every one of them is killed after the test."""

    timeout = 60

    def directory(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def startNode(
        self,
        *args: str,
        key: str = "node.key",
        port: str = "tcp:0:interface=127.0.0.1",
        directory: str | None = None,
    ) -> Node:
        """
        Start C{twistd -n botd2 --port PORT --key KEY ARGS} in its own
        directory and wait (bounded) for its "listening on" line.
        """
        directory = directory or self.directory()
        files: list[IO[bytes]] = []
        for name in ("stdout.log", "stderr.log"):
            f = open(os.path.join(directory, name), "wb")  # noqa: SIM115 - closed in cleanup
            self.addCleanup(f.close)
            files.append(f)
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile", "", "--logfile", "-",
             "botd2", "--port", port, "--key", key, *args],
            cwd=directory,
            env=checkoutEnv(),
            stdin=subprocess.DEVNULL,
            stdout=files[0],
            stderr=files[1],
            umask=0o022,  # so a key file made with default permissions would be 0644
        )
        self.addCleanup(_stop, process)
        out = os.path.join(directory, "stdout.log")
        found: list[re.Match[str]] = []

        def listening() -> bool:
            match = LISTENING.search(_read(out))
            if match:
                found.append(match)
                return True
            if process.poll() is not None:
                raise AssertionError(
                    f"the node exited ({process.returncode}) before listening:\n"
                    f"{_read(out)}{_read(os.path.join(directory, 'stderr.log'))}"
                )
            return False

        waitFor(listening, "the node's 'listening on' line")
        match = found[0]
        return Node(process, directory, match["node"], match["host"].strip("[]"),
                    int(match["port"]))

    def assertNoTraceback(self, *outputs: str) -> None:
        for text in outputs:
            self.assertNotIn("Traceback", text)

    async def connectTo(self, node: Node) -> Recorder:
        """
        Connect from this process, with a fresh identity, as a L{Recorder},
        and wait until the node too has completed the handshake; the
        connection is closed (and its end awaited) after the test.
        """
        factory = PeerFactory(PrivateKey.generate(), protocol=Recorder, reactor=reactor)
        peer = await factory.connect(node.address).addTimeout(WAIT, reactor)
        assert isinstance(peer, Recorder)
        # The responder's handshake completes a moment after ours, when our
        # key confirmation arrives: wait for it, so the node holds a complete
        # connection (one that gets an Error, not an abort, when it closes).
        await waitOnReactor(
            lambda: f"handshake with {factory.nodeID} at" in node.log(),
            "the node to complete the handshake",
        )

        async def close() -> None:
            if not peer.lost:
                peer.disconnect("the test is over")
                await waitOnReactor(lambda: bool(peer.lost), "our connection to close")

        self.addCleanup(lambda: ensureDeferred(close()))
        return peer


class StartTests(NodeTestCase):
    """A node says who and where it is, and answers as that node."""

    def test_logIdentityAndPort(self) -> None:
        """
        The "listening on" line gives the node ID of the key file (as
        C{botd2 id} reads it) and a port that accepts connections; the key
        file the node created is mode 0600.
        """
        node = self.startNode(key="k.key")
        self.assertEqual(node.host, "127.0.0.1")
        self.assertNotEqual(node.port, 0)
        keyPath = os.path.join(node.directory, "k.key")
        self.assertEqual(stat.S_IMODE(os.stat(keyPath).st_mode), 0o600)
        ident = botd2("id", "--key", "k.key", cwd=node.directory)
        self.assertEqual((ident.returncode, ident.stdout.strip()), (0, node.nodeID))
        with socket.create_connection((node.host, node.port), timeout=WAIT):
            pass
        self.assertEqual(node.stderr(), "")
        # a new identity is never silent
        self.assertIn("[botd2#warn] botd2 created a new identity key file k.key", node.log())

    def test_restartKeepsIdentity(self) -> None:
        """A second start on the same key file is the same node: the file is reused."""
        first = self.startNode()
        _stop(first.process)
        second = self.startNode(directory=first.directory)
        self.assertEqual(second.nodeID, first.nodeID)
        self.assertNotIn("created a new identity key", second.log())

    def test_keyInUse(self) -> None:
        """A second node on a key file a running node holds: one sentence, exit 1."""
        node = self.startNode(key="k.key")
        result = twistd("botd2", "--port", "tcp:0:interface=127.0.0.1", "--key", "k.key",
                        cwd=node.directory)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stderr.strip(),
                         "twistd botd2: key file k.key is in use by another botd2 process")
        self.assertNotIn("listening on", result.stdout)

    def test_ping(self) -> None:
        """C{botd2 ping NODEID@HOST:PORT} exits 0 and prints the round-trip time."""
        node = self.startNode()
        result = botd2("ping", node.address, cwd=node.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        match = RTT.search(result.stdout)
        self.assertIsNotNone(match, result.stdout)
        assert match is not None
        self.assertEqual(match["address"], node.address)
        self.assertEqual(result.stderr, "")
        waitFor(lambda: "complete (inbound)" in node.log(), "the node to log the handshake")

    def test_pingWrongNodeID(self) -> None:
        """A ping that names another node ID at the node's address fails in one line."""
        node = self.startNode()
        other = PrivateKey.generate().public_key.node_id
        result = botd2("ping", f"{other}@{node.host}:{node.port}", cwd=node.directory)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("cannot reach", result.stderr)
        self.assertNoTraceback(result.stderr, node.log())


class OneConnectionTests(NodeTestCase):
    """WIRE.md section 7 between two real nodes."""

    def test_mutualConnect(self) -> None:
        """
        Two nodes that C{--connect} to each other settle on exactly one
        connection.

        Both key files (so both node IDs) and both ports are chosen before
        either starts.  Once B's log shows a completed handshake with A, the
        nodes get 5 s more (a first redial comes after 1 to 2 s).
        Then, on each node, from its info-level log lines about the other:
        the connections alive are the completed handshakes minus the closed
        connections, matched by direction and address; exactly one must be
        alive, and at most two handshakes may have completed (one per
        direction: no reconnect churn).  The two live connections must be
        the two ends of one: outbound on one node to the other's listening
        port, inbound on the other.
        """
        dirA, dirB = self.directory(), self.directory()
        idA, idB = keygen("node.key", dirA), keygen("node.key", dirB)
        portA, portB = freePorts(2)
        a = self.startNode("--connect", f"{idB}@127.0.0.1:{portB}",
                           port=f"tcp:{portA}:interface=127.0.0.1", directory=dirA)
        b = self.startNode("--connect", f"{idA}@127.0.0.1:{portA}",
                           port=f"tcp:{portB}:interface=127.0.0.1", directory=dirB)
        self.assertEqual((a.nodeID, a.port, b.nodeID, b.port), (idA, portA, idB, portB))
        self.assertOneConnection(a, b, maxHandshakes=2)

    def test_mutualConnectAfterCrash(self) -> None:
        """
        When one of the two is killed (SIGKILL: no Error sent) and started
        again on the same key and port, they settle on one connection again:
        the survivor's log shows the old connection closed and exactly one
        new one alive (at most four handshakes in all), the new node's log
        exactly one.
        """
        dirA, dirB = self.directory(), self.directory()
        idA, idB = keygen("node.key", dirA), keygen("node.key", dirB)
        portA, portB = freePorts(2)
        a = self.startNode("--connect", f"{idB}@127.0.0.1:{portB}",
                           port=f"tcp:{portA}:interface=127.0.0.1", directory=dirA)
        b = self.startNode("--connect", f"{idA}@127.0.0.1:{portA}",
                           port=f"tcp:{portB}:interface=127.0.0.1", directory=dirB)
        waitFor(lambda: bool(HANDSHAKE.search(a.log()) and HANDSHAKE.search(b.log())),
                "a handshake on both nodes")
        b.process.kill()
        b.process.wait(WAIT)
        waitFor(lambda: bool(CLOSED.search(a.log())), "A to see the connection end")
        b = self.startNode("--connect", f"{idA}@127.0.0.1:{portA}",
                           port=f"tcp:{portB}:interface=127.0.0.1", directory=dirB)
        self.assertOneConnection(a, b, maxHandshakes=4)

    def assertOneConnection(self, a: Node, b: Node, maxHandshakes: int) -> None:
        """
        Wait until B's log shows a completed handshake with A, then 5 s
        more; then check that A and B hold exactly one connection to each
        other, the two ends of the same one, as the docstring of
        L{test_mutualConnect} says.
        """
        waitFor(lambda: bool(HANDSHAKE.search(b.log())), "a handshake on the new node")
        time.sleep(5)
        self.assertIsNone(a.process.poll())
        self.assertIsNone(b.process.poll())
        liveA, handshakesA = _liveConnections(a.log(), b.nodeID)
        liveB, handshakesB = _liveConnections(b.log(), a.nodeID)
        report = f"A:\n{a.log()}\nB:\n{b.log()}"
        self.assertEqual(len(liveA), 1, report)
        self.assertEqual(len(liveB), 1, report)
        self.assertLessEqual(handshakesA, maxHandshakes, report)
        self.assertLessEqual(handshakesB, 2, report)
        (directionA, addressA), (directionB, addressB) = liveA[0], liveB[0]
        if directionA == "outbound":
            self.assertEqual((addressA, directionB), (f"127.0.0.1:{b.port}", "inbound"), report)
        else:
            self.assertEqual((directionB, addressB), ("outbound", f"127.0.0.1:{a.port}"), report)
        self.assertNoTraceback(a.log(), b.log(), a.stderr(), b.stderr())


def _liveConnections(log: str, peer: str) -> tuple[list[tuple[str, str]], int]:
    """
    The connections to C{peer} a node's log shows alive, as (direction,
    address), and how many handshakes with C{peer} completed.
    """
    live: Counter[tuple[str, str]] = Counter()
    handshakes = 0
    for m in HANDSHAKE.finditer(log):
        if m["peer"] == peer:
            live[m["direction"], m["address"]] += 1
            handshakes += 1
    for m in CLOSED.finditer(log):
        if m["peer"] == peer:
            key = ("outbound" if m["direction"] == "to" else "inbound", m["address"])
            if live[key] < 1:
                raise AssertionError(f"closed without a handshake: {m.group(0)}\n{log}")
            live[key] -= 1
    return sorted(live.elements()), handshakes


class ApplicationTests(NodeTestCase):
    """The example application, loaded with C{--protocol}."""

    async def test_echo(self) -> None:
        """
        A node running L{botd2.echo.EchoPeer} sends "echo: hi" back for
        "hi", and logs our arrival and departure.
        """
        node = self.startNode("--protocol", "botd2.echo.EchoPeer")
        peer = await self.connectTo(node)
        peer.sendMessage(StringValue(value="hi"))
        await waitOnReactor(lambda: bool(peer.messages), "the echo")
        self.assertEqual(peer.texts(), ["echo: hi"])
        ourID = peer.factory.nodeID
        peer.disconnect("bye now")
        await waitOnReactor(lambda: bool(peer.lost), "our connection to close")
        await waitOnReactor(lambda: f"echo: {ourID} left" in node.log(), "the node to log it")
        log = node.log()
        self.assertIn(f"echo: {ourID} joined from 127.0.0.1", log)
        self.assertIn("the peer sent an Error: bye now", log)
        self.assertNoTraceback(log, node.stderr())


class AllowTests(NodeTestCase):
    """C{--allow} and C{--allow-file}: only listed keys complete a handshake."""

    def assertPings(self, node: Node, *keyArgs: str) -> None:
        result = botd2("ping", node.address, *keyArgs, cwd=node.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIsNotNone(RTT.search(result.stdout), result.stdout)

    def assertRefused(self, node: Node) -> None:
        """A ping with a throwaway key: exit 1, one line on stderr, nothing on stdout."""
        result = botd2("ping", node.address, cwd=node.directory)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("cannot reach", lines[0])
        self.assertIn(node.address, lines[0])
        waitFor(lambda: "is not allowed to connect" in node.log(), "the node to log the refusal")
        self.assertNoTraceback(result.stderr, node.log())

    def test_allow(self) -> None:
        """C{--allow ID}: the key with that ID gets in, a throwaway key does not."""
        directory = self.directory()
        allowed = keygen("friend.key", directory)
        node = self.startNode("--allow", allowed, directory=directory)
        self.assertRefused(node)
        self.assertPings(node, "--key", "friend.key")

    def test_emptyAllowFile(self) -> None:
        """
        An allow file with no node ID in it (all commented out) lets nobody
        in, and the node says so; it never falls back to letting anyone in.
        """
        directory = self.directory()
        with open(os.path.join(directory, "allowed"), "w", encoding="utf-8") as f:
            f.write("# everyone removed for maintenance\n")
        node = self.startNode("--allow-file", "allowed", directory=directory)
        self.assertIn("accepts no connection: its allow list is empty", node.log())
        self.assertRefused(node)

    def test_allowFile(self) -> None:
        """C{--allow-file}, with comments and blank lines: the same."""
        directory = self.directory()
        allowed = keygen("friend.key", directory)
        other = PrivateKey.generate().public_key.node_id
        with open(os.path.join(directory, "allowed"), "w", encoding="utf-8") as f:
            f.write(f"# friends\n\n{other}\n  {allowed}   # the one we ping with\n")
        node = self.startNode("--allow-file", "allowed", directory=directory)
        self.assertRefused(node)
        self.assertPings(node, "--key", "friend.key")


class StopTests(NodeTestCase):
    """SIGTERM stops a node cleanly."""

    async def test_sigterm(self) -> None:
        """
        On SIGTERM the node tells its peers it is shutting down, closes its
        port and exits, without a traceback.  twistd shuts down cleanly and
        then (Twisted's C{app._exitWithSignal}) ends with the signal it got,
        so the status seen is -SIGTERM; 0 would be clean too.
        """
        node = self.startNode()
        peer = await self.connectTo(node)
        node.process.send_signal(signal.SIGTERM)
        await waitOnReactor(lambda: bool(peer.lost), "the node to close our connection")
        reason = peer.lost[0].value
        self.assertIsInstance(reason, errors.PeerError)
        self.assertEqual(reason.message, "the node is shutting down")
        await waitOnReactor(lambda: node.process.poll() is not None, "the node to exit")
        self.assertIn(node.process.returncode, (0, -signal.SIGTERM))
        log = node.log()
        for line in ("Received SIGTERM, shutting down.",
                     "closed: the node is shutting down",
                     f"(TCP Port {node.port} Closed)",
                     "Server Shut Down."):
            self.assertIn(line, log)
        self.assertNoTraceback(log, node.stderr())
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((node.host, node.port), timeout=WAIT).close()


class ErrorTests(NodeTestCase):
    """
    Each operator mistake: exit status 1, one sentence on stderr naming the
    problem, nothing listening, no traceback.
    """

    def setUp(self) -> None:
        self.cwd = self.directory()
        self.goodKey = create_key_file(os.path.join(self.cwd, "good.key")).public_key.node_id

    def assertFails(self, args: Sequence[str], *words: str, key: str = "good.key") -> str:
        result = twistd("botd2", "--port", "tcp:0:interface=127.0.0.1", "--key", key, *args,
                        cwd=self.cwd)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNoTraceback(output)
        self.assertNotIn("listening on", output)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("twistd botd2: "), lines[0])
        for word in words:
            self.assertIn(word, lines[0])
        return lines[0]

    def startOnBusyPort(self, key: str) -> tuple[int, subprocess.CompletedProcess[str]]:
        """Start a node on a port another socket listens on; the port and the run."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            return port, twistd("botd2", "--port", f"tcp:{port}:interface=127.0.0.1",
                                "--key", key, cwd=self.cwd)

    def writeKey(self, name: str, data: bytes, mode: int) -> str:
        path = os.path.join(self.cwd, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return name

    def test_keyTooOpen(self) -> None:
        """A key file group or others can read is refused, named with its mode."""
        with open(os.path.join(self.cwd, "good.key"), "rb") as f:
            name = self.writeKey("open.key", f.read(), 0o644)
        self.assertFails([], "key file open.key", "0644", key=name)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.cwd, name)).st_mode), 0o644)

    def test_keyCorrupt(self) -> None:
        """A PEM file with a body that is no key."""
        name = self.writeKey(
            "corrupt.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0o600
        )
        self.assertFails([], "key file corrupt.key", "corrupt", key=name)

    def test_keyNotPEM(self) -> None:
        name = self.writeKey("text.key", b"hello\n", 0o600)
        self.assertFails([], "key file text.key", "PKCS#8", key=name)

    def test_keyDirectoryMissing(self) -> None:
        self.assertFails([], "cannot create key file", "no/such/dir.key",
                         key="no/such/dir.key")

    def test_unknownProtocol(self) -> None:
        self.assertFails(["--protocol", "botd2.echo.NoSuchClass"],
                         "--protocol botd2.echo.NoSuchClass", "no such class")

    def test_protocolNotPeerProtocol(self) -> None:
        self.assertFails(["--protocol", "os.path"], "--protocol os.path",
                         "not a botd2.protocol.PeerProtocol subclass")

    def test_portInUse(self) -> None:
        """A port another socket listens on."""
        port, result = self.startOnBusyPort("good.key")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertNoTraceback(result.stdout, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", result.stderr)
        self.assertIn("in use", result.stderr)

    def test_badPort(self) -> None:
        self.assertFails(["--port", "frob"], "--port 'frob'")

    def test_badConnectSyntax(self) -> None:
        self.assertFails(["--connect", "nonsense"], "'nonsense'", "NODEID@HOST[:PORT]")

    def test_badConnectNodeID(self) -> None:
        self.assertFails(["--connect", "zz@127.0.0.1:1"], "66 hex", "'zz'")

    def test_badConnectPort(self) -> None:
        self.assertFails(["--connect", f"{self.goodKey}@127.0.0.1:70000"], "port")

    def test_badAllow(self) -> None:
        self.assertFails(["--allow", "zz"], "--allow", "66 hex")

    def test_badAllowFile(self) -> None:
        """A line that is not a node ID is named by its number."""
        with open(os.path.join(self.cwd, "allowed"), "w", encoding="utf-8") as f:
            f.write(f"# ok\n{self.goodKey}\nnot-an-id\n")
        self.assertFails(["--allow-file", "allowed"], "--allow-file allowed, line 3", "66 hex")

    def test_missingAllowFile(self) -> None:
        self.assertFails(["--allow-file", "nothere"], "--allow-file nothere", "cannot read")

    def test_unknownOption(self) -> None:
        self.assertFails(["--frobnicate"], "--frobnicate", "not recognized")

    def test_pingIntervalTooShort(self) -> None:
        self.assertFails(["--ping-interval", "10"], "--ping-interval", "at least 30")

    def test_pingIntervalNotANumber(self) -> None:
        self.assertFails(["--ping-interval", "abc"], "--ping-interval", "'abc'")

    def test_negativeTimeout(self) -> None:
        self.assertFails(["--handshake-timeout", "-1"], "--handshake-timeout", "from 1 to 86400")

    def test_infiniteTimeout(self) -> None:
        """An infinite handshake timeout would keep stalled strangers for ever."""
        self.assertFails(["--handshake-timeout", "inf"], "--handshake-timeout", "from 1 to 86400")
        self.assertFails(["--pong-timeout", "1e400"], "--pong-timeout", "from 1 to 86400")

    def test_connectGivenTwice(self) -> None:
        address = f"{self.goodKey}@127.0.0.1:1"
        other = PrivateKey.generate().public_key.node_id
        self.assertFails(["--connect", f"{other}@127.0.0.1:9", "--connect", address,
                          "--connect", f"{self.goodKey}@127.0.0.2:2"],
                         f"node {self.goodKey} is given twice")

    def test_emptyKeyName(self) -> None:
        self.assertFails([], "--key: give a file name", key="")

    def test_badEndpoints(self) -> None:
        """What the endpoint parsers raise, whatever it is, is one sentence."""
        self.assertFails(["--port", "ssl:0"], "--port ssl:0: not a usable endpoint",
                         "No such file")
        self.assertFails(["--port", "systemd:domain=INET:index=0"], "not a usable endpoint")

    def test_protocolModuleMissing(self) -> None:
        self.assertFails(["--protocol", "mymodule.EchoPeer"], "no module 'mymodule'",
                         "PYTHONPATH")

    def test_defaultKeyDirectoryUncreatable(self) -> None:
        """The default key directory ~/.botd2 cannot be made: one sentence."""
        home = self.directory()
        with open(os.path.join(home, ".botd2"), "w"):
            pass  # a file where the directory should be
        result = twistd("botd2", "--port", "tcp:0:interface=127.0.0.1", cwd=self.cwd,
                        env={**checkoutEnv(), "HOME": home})
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertNoTraceback(result.stdout, result.stderr)
        self.assertEqual(
            result.stderr.strip(),
            f"twistd botd2: cannot make {home}/.botd2 for the default key file: File exists "
            "(give one with --key PATH)",
        )

    def test_failedStartLeavesNoNewKey(self) -> None:
        """A key file made by a start that then failed (port in use) is removed."""
        _, result = self.startOnBusyPort("new.key")
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.cwd, "new.key")))
        self.assertTrue(os.path.exists(os.path.join(self.cwd, "good.key")))

    def test_maxConnectionsZero(self) -> None:
        self.assertFails(["--max-connections", "0"], "--max-connections", "at least 1")


class InstalledPluginTests(TestCase):
    """The plugin as installed, seen by twistd outside the checkout."""

    timeout = 60

    def test_listedOutsideCheckout(self) -> None:
        """
        From a directory outside the checkout and without C{PYTHONPATH},
        C{twistd --help} lists C{botd2}.  Skipped when this interpreter's
        environment has no botd2 installed (a bare checkout); an editable
        install, which hides C{twisted/plugins} from twistd, fails it.
        """
        outside = tempfile.mkdtemp(prefix="botd2-outside-")
        self.addCleanup(shutil.rmtree, outside, ignore_errors=True)
        self.assertFalse(os.path.realpath(outside).startswith(os.path.realpath(ROOT) + os.sep))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        found = subprocess.run(
            [sys.executable, "-c",
             "import importlib.util; print(importlib.util.find_spec('botd2') is not None)"],
            cwd=outside, env=env, capture_output=True, text=True, timeout=WAIT,
        )
        self.assertEqual(found.returncode, 0, found.stderr)
        if found.stdout.strip() != "True":
            raise SkipTest(f"botd2 is not installed in {sys.prefix} (pip install . to run this)")
        result = subprocess.run(
            [*TWISTD, "--help"], cwd=outside, env=env, capture_output=True, text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = result.stdout.partition("\nCommands:\n")[2]
        self.assertRegex(commands, r"(?m)^\s+botd2\s+Run a BOTD #2 peer-to-peer node",
                         f"botd2 is not among twistd's commands:\n{commands}")
        self.assertNoTraceback(result.stdout + result.stderr)

    def assertNoTraceback(self, text: str) -> None:
        self.assertNotIn("Traceback", text)
