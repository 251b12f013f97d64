"""
The C{botd2} command: C{keygen}, C{id} and C{ping}.

Most of it runs in this process through L{botd2.cli.main}, with stdout and
stderr captured.  Whatever reaches C{ping}'s C{task.react} (which runs the
reactor and calls C{sys.exit}) runs as C{python -m botd2} in a subprocess on
this checkout's code.  A successful ping against a real node is in
L{tests.test_node}.  Every failure must be one line on stderr, status 1 (a
command-line syntax error too), never a traceback; an interrupted C{ping},
status 128 plus the signal's number.
"""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from botd2 import cli
from botd2.cli import main
from botd2.keys import PrivateKey
from botd2.protocol import PeerFactory

reactor: Any = _reactor

#: The checkout under test: subprocesses import botd2 from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NODE_ID = re.compile(r"^(02|03)[0-9a-f]{64}$")

#: Bound on every subprocess.
WAIT = 20.0


def botd2(*argv: str) -> tuple[int, str, str]:
    """Run C{botd2 ARGV} in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as e:  # argparse: --help, syntax errors
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def checkoutEnv() -> dict[str, str]:
    """The environment for a subprocess that must run this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


#: C{botd2} with Python's own SIGINT handling, as under an interactive shell,
#: even if this test runs with SIGINT ignored (a background job): Twisted then
#: turns SIGINT, like SIGTERM, into a reactor shutdown.
INTERRUPTIBLE = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from botd2.cli import run; run()",
]


def botd2Process(*argv: str, cwd: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run C{python -m botd2 ARGV} on this checkout: the result and how long it took."""
    env = checkoutEnv()
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "botd2", *argv],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=WAIT,
    )
    return result, time.monotonic() - start


def nodeIDOfPEM(data: bytes) -> str:
    """
    The node ID of a PKCS#8 PEM secp256k1 key, computed with C{cryptography}
    alone (not with botd2): the compressed public key in hex.
    """
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256K1)
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    ).hex()


def _restoreEnviron(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class CLITestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def setHome(self, home: str) -> None:
        """Set C{$HOME} to C{home} for this test."""
        oldHome = os.environ.get("HOME")
        os.environ["HOME"] = home
        self.addCleanup(_restoreEnviron, "HOME", oldHome)

    def assertOneLine(self, stderr: str, *words: str) -> str:
        """C{stderr} is one line, from botd2, with each of C{words}, no traceback."""
        self.assertNotIn("Traceback", stderr)
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("botd2"), lines[0])
        for word in words:
            self.assertIn(word, lines[0])
        return lines[0]

    def keygen(self, name: str = "node.key") -> tuple[str, str]:
        path = self.path(name)
        status, out, err = botd2("keygen", path)
        self.assertEqual(status, 0, err)
        return path, out.strip()


class KeygenTests(CLITestCase):
    """C{botd2 keygen}: a new 0600 PKCS#8 file, never an overwrite."""

    def test_creates(self) -> None:
        """
        The file is a PKCS#8 PEM secp256k1 key, mode 0600 even under umask
        0, and the ID printed (alone on stdout) is that key's.
        """
        old = os.umask(0)
        try:
            status, out, err = botd2("keygen", self.path("node.key"))
        finally:
            os.umask(old)
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"^(02|03)[0-9a-f]{64}\n$")
        self.assertEqual(err, f"created {self.path('node.key')}\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path("node.key")).st_mode), 0o600)
        with open(self.path("node.key"), "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"), data[:40])
        self.assertEqual(nodeIDOfPEM(data), out.strip())

    def test_freshKeys(self) -> None:
        """Two key files hold two different keys."""
        self.assertNotEqual(self.keygen("a.key")[1], self.keygen("b.key")[1])

    def test_neverOverwrites(self) -> None:
        """A second keygen on the same path: status 1, one sentence, file untouched."""
        path, _ = self.keygen()
        with open(path, "rb") as f:
            before = f.read()
        status, out, err = botd2("keygen", path)
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, path, "exists already")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_neverOverwritesOtherFile(self) -> None:
        """Any existing file is left alone, key or not."""
        path = self.path("notes.txt")
        with open(path, "w") as f:
            f.write("keep me\n")
        status, _, err = botd2("keygen", path)
        self.assertEqual(status, 1)
        self.assertOneLine(err, path, "exists already")
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")

    def test_danglingSymlink(self) -> None:
        """A dangling symlink is not written through: its target stays absent."""
        target = self.path("elsewhere.key")
        os.symlink(target, self.path("link.key"))
        status, _, err = botd2("keygen", self.path("link.key"))
        self.assertEqual(status, 1)
        self.assertOneLine(err, "exists already")
        self.assertFalse(os.path.lexists(target))

    def test_missingDirectory(self) -> None:
        path = self.path("no/such/node.key")
        status, _, err = botd2("keygen", path)
        self.assertEqual(status, 1)
        self.assertOneLine(err, path)
        self.assertFalse(os.path.lexists(path))

    def test_defaultPath(self) -> None:
        """
        Without a path: C{~/.botd2/node.key}, in a directory made 0700;
        C{id} without C{--key} reads the same file.
        """
        home = self.path("home")
        os.mkdir(home)
        oldHome = os.environ.get("HOME")
        os.environ["HOME"] = home
        self.addCleanup(_restoreEnviron, "HOME", oldHome)
        status, out, err = botd2("keygen")
        self.assertEqual(status, 0, err)
        path = os.path.join(home, ".botd2", "node.key")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        with open(path, "rb") as f:
            self.assertEqual(nodeIDOfPEM(f.read()), out.strip())
        self.assertEqual(botd2("id"), (0, out, ""))

    def test_defaultDirectoryIsAFile(self) -> None:
        """
        C{~/.botd2} is a regular file: one sentence naming it and saying how
        to name another key file, status 1, the file untouched.
        """
        home = self.path("home")
        os.mkdir(home)
        with open(os.path.join(home, ".botd2"), "w") as f:
            f.write("not a directory\n")
        self.setHome(home)
        status, out, err = botd2("keygen")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(
            err, f"cannot create {home}/.botd2 for the default key file",
            "not a directory", "botd2 keygen PATH",
        )
        with open(os.path.join(home, ".botd2")) as f:
            self.assertEqual(f.read(), "not a directory\n")

    def test_defaultDirectoryNotAllowed(self) -> None:
        """
        C{~/.botd2} cannot be made (C{HOME=/nonexistent}, as for a system
        user): one sentence with the reason, status 1.
        """
        self.setHome("/nonexistent")

        def makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/nonexistent")

        self.patch(cli.os, "makedirs", makedirs)
        status, out, err = botd2("keygen")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(
            err, "cannot create /nonexistent/.botd2 for the default key file: "
            "Permission denied", "botd2 keygen PATH",
        )

    def test_homeUnderAFile(self) -> None:
        """C{$HOME} below a regular file: the system's reason, in one sentence."""
        with open(self.path("file"), "w"):
            pass
        self.setHome(self.path("file/home"))
        status, _, err = botd2("keygen")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "for the default key file", "Not a directory")

    def test_emptyPath(self) -> None:
        """C{keygen ""} is refused: it does not mean the default path."""
        home = self.path("home")
        os.mkdir(home)
        self.setHome(home)
        status, out, err = botd2("keygen", "")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "path is empty")
        self.assertEqual(os.listdir(home), [])


class IdTests(CLITestCase):
    """C{botd2 id}: the node ID of a key file, or one sentence naming the file."""

    def test_sameAsKeygen(self) -> None:
        path, nodeID = self.keygen()
        self.assertEqual(botd2("id", "--key", path), (0, nodeID + "\n", ""))

    def test_tooOpen(self) -> None:
        path, _ = self.keygen()
        os.chmod(path, 0o644)
        status, out, err = botd2("id", "--key", path)
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, f"key file {path}", "0644")

    def test_corrupt(self) -> None:
        """A PEM 'PRIVATE KEY' whose body is no key."""
        path = self.path("corrupt.key")
        with open(path, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        os.chmod(path, 0o600)
        status, out, err = botd2("id", "--key", path)
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, f"key file {path}", "corrupt")

    def test_notPEM(self) -> None:
        path = self.path("text.key")
        with open(path, "w") as f:
            f.write("hello\n")
        os.chmod(path, 0o600)
        status, _, err = botd2("id", "--key", path)
        self.assertEqual(status, 1)
        self.assertOneLine(err, f"key file {path}", "PKCS#8")

    def test_missing(self) -> None:
        path = self.path("absent.key")
        status, out, err = botd2("id", "--key", path)
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, f"key file {path}", "No such file")

    def test_directory(self) -> None:
        status, _, err = botd2("id", "--key", self.dir)
        self.assertEqual(status, 1)
        self.assertOneLine(err, self.dir)

    def test_emptyKey(self) -> None:
        """C{--key ""} is refused, even when the default key file exists."""
        home = self.path("home")
        os.mkdir(home)
        self.setHome(home)
        self.assertEqual(botd2("keygen")[0], 0)
        status, out, err = botd2("id", "--key", "")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "--key", "not an empty string")


class PingArgumentTests(CLITestCase):
    """C{botd2 ping} arguments refused before any connection is made."""

    def setUp(self) -> None:
        super().setUp()
        self.address = PrivateKey.generate().public_key.node_id + "@127.0.0.1:9"

    def test_badAddress(self) -> None:
        status, out, err = botd2("ping", "nonsense")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "'nonsense'", "NODEID@HOST[:PORT]")

    def test_badNodeID(self) -> None:
        status, _, err = botd2("ping", "abcd@127.0.0.1:9")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "66 hex")

    def test_badPort(self) -> None:
        status, _, err = botd2("ping", self.address + "9999")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "port")

    def test_countZero(self) -> None:
        status, out, err = botd2("ping", self.address, "--count", "0")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "--count", "at least 1")

    def test_countNotANumber(self) -> None:
        """A syntax error found by argparse: status 1 too, one line."""
        status, out, err = botd2("ping", self.address, "--count", "many")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "--count", "'many'", "see botd2 ping --help")

    def test_unknownOption(self) -> None:
        status, out, err = botd2("ping", self.address, "--bogus")
        self.assertEqual((status, out), (1, ""))
        self.assertOneLine(err, "--bogus")

    def test_timeoutZero(self) -> None:
        status, _, err = botd2("ping", self.address, "--timeout", "0")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "--timeout", "positive")

    def test_timeoutTooLong(self) -> None:
        """
        C{--timeout inf} (which would wait for ever) or above a day: one
        sentence, status 1, before any connection.  (A subprocess: a ping
        that got through would run the reactor.)
        """
        for value in ("inf", "86401"):
            result, _ = botd2Process("ping", self.address, "--timeout", value, cwd=self.dir)
            self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
            self.assertOneLine(result.stderr, "--timeout", "at most 86400")

    def test_emptyKey(self) -> None:
        """
        C{--key ""} is refused, not taken as no C{--key} (a throwaway key).
        (A subprocess: a ping that got through would run the reactor.)
        """
        result, _ = botd2Process("ping", self.address, "--key", "", cwd=self.dir)
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertOneLine(result.stderr, "--key", "not an empty string")

    def test_badKey(self) -> None:
        path, _ = self.keygen()
        os.chmod(path, 0o640)
        status, _, err = botd2("ping", self.address, "--key", path)
        self.assertEqual(status, 1)
        self.assertOneLine(err, f"key file {path}", "0640")

    def test_help(self) -> None:
        """C{ping --help} says the pings of C{--count} go 30 s apart, and why."""
        status, out, _ = botd2("ping", "--help")
        self.assertEqual(status, 0)
        text = " ".join(out.split())
        self.assertIn("pings go 30 s apart", text)
        self.assertIn("WIRE.md section 6", text)
        self.assertIn("--count N", text)
        self.assertIn("'botd2: interrupted' and exits 128 plus the signal's number", text)
        self.assertIn("at most 86400", text)


class PingNetworkTests(CLITestCase):
    """C{python -m botd2 ping} against peers that are not BOTD #2 nodes."""

    def test_refused(self) -> None:
        """A port nobody listens on (bound here, so nobody can): exit 1 within seconds."""
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            nodeID = PrivateKey.generate().public_key.node_id
            result, took = botd2Process("ping", f"{nodeID}@127.0.0.1:{port}", cwd=self.dir)
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertOneLine(result.stderr, "cannot reach", f"127.0.0.1:{port}", "refused")
        self.assertLess(took, 10)

    def test_silentServer(self) -> None:
        """
        A listener that accepts TCP (the kernel does) and never answers:
        with C{--timeout 1}, exit 1 in about 1 s plus start-up.
        """
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            port = silent.getsockname()[1]
            nodeID = PrivateKey.generate().public_key.node_id
            result, took = botd2Process(
                "ping", f"{nodeID}@127.0.0.1:{port}", "--timeout", "1", cwd=self.dir
            )
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertOneLine(result.stderr, "cannot reach", "handshake", "1 s")
        self.assertLess(took, 6)


    def test_ownKey(self) -> None:
        """
        Pinging the node ID of the very key given with C{--key} (a node's own
        key, say) fails in one sentence too.
        """
        path, nodeID = self.keygen()
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            result, _ = botd2Process("ping", f"{nodeID}@127.0.0.1:{port}", "--key", path,
                                     cwd=self.dir)
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertOneLine(result.stderr)


class ModuleTests(CLITestCase):
    """C{python -m botd2} is the same command."""

    def test_keygenAndId(self) -> None:
        key = self.path("node.key")
        made, _ = botd2Process("keygen", key, cwd=self.dir)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertRegex(made.stdout.strip(), NODE_ID)
        shown, _ = botd2Process("id", "--key", key, cwd=self.dir)
        self.assertEqual((shown.returncode, shown.stdout), (0, made.stdout))
        self.assertEqual(botd2("id", "--key", key), (0, made.stdout, ""))

    def test_noCommand(self) -> None:
        """No subcommand: status 1 and one line naming the problem."""
        result, _ = botd2Process(cwd=self.dir)
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertOneLine(result.stderr, "required")


class _Collect(protocol.ProcessProtocol):
    """
    Gather a child's output; once its stdout holds C{after}, send it
    C{signalName} or call C{action}.  C{ended} fires with the exit status, or
    C{-N} for signal N.
    """

    def __init__(
        self,
        after: bytes,
        signalName: str | None = None,
        action: Callable[[], object] | None = None,
    ) -> None:
        self.after = after
        self.signalName = signalName
        self.action = action
        self.signalled = False
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.after in self.out and not self.signalled:
            self.signalled = True
            if self.action is not None:
                self.action()
            if self.signalName is not None:
                assert self.transport is not None
                self.transport.signalProcess(self.signalName)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        self.ended.callback(value.exitCode if value.exitCode is not None else -value.signal)

    async def run(self, args: list[str], cwd: str) -> int:
        """Run C{args} (this checkout's code) to its end, killed after L{WAIT}; its status."""
        transport = reactor.spawnProcess(self, args[0], args, env=checkoutEnv(), path=cwd)
        killer = reactor.callLater(WAIT, transport.signalProcess, "KILL")
        try:
            return await self.ended
        finally:
            if killer.active():
                killer.cancel()


class PingInterruptTests(CLITestCase):
    """
    C{botd2 ping} stopped by Ctrl-C or SIGTERM says so in one line and exits
    128 plus the signal's number: it neither claims success nor blames the peer.
    """

    def test_interruptedHandshake(self) -> None:
        """
        SIGINT while the handshake waits on a silent listener: not "cannot
        reach" (the peer did nothing wrong) but C{botd2: interrupted}, 130.
        """
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            silent.settimeout(WAIT)
            port = silent.getsockname()[1]
            nodeID = PrivateKey.generate().public_key.node_id
            child = subprocess.Popen(
                [*INTERRUPTIBLE, "ping", f"{nodeID}@127.0.0.1:{port}", "--timeout", "30"],
                cwd=self.dir, env=checkoutEnv(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                conn, _ = silent.accept()
                with conn:
                    # The Init arrives once the child's reactor runs, its
                    # signal handlers installed.
                    conn.settimeout(WAIT)
                    self.assertTrue(conn.recv(1))
                    start = time.monotonic()
                    child.send_signal(signal.SIGINT)
                    out, err = child.communicate(timeout=WAIT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        self.assertEqual((child.returncode, out, err), (130, "", "botd2: interrupted\n"))
        self.assertLess(time.monotonic() - start, 10)

    async def test_interruptedCount(self) -> None:
        """
        SIGTERM between the pings of C{--count 3}, after the first Pong: the
        Pong printed, then C{botd2: interrupted} and status 143, not 0.
        """
        node = PeerFactory(PrivateKey.generate(), reactor=reactor)
        port = reactor.listenTCP(0, node, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = f"{node.nodeID}@127.0.0.1:{port.getHost().port}"
        child = _Collect(b"seq=1", "TERM")
        args = [*INTERRUPTIBLE, "ping", address, "--count", "3"]
        status = await child.run(args, self.dir)
        self.assertTrue(child.signalled)
        self.assertEqual(status, 143, child.err)
        self.assertRegex(child.out.decode(), rf"^pong from {re.escape(address)}: seq=1 rtt ")
        self.assertEqual(child.err.decode(), "botd2: interrupted\n")
        # The child's shutdown closed the connection: the node sees it go.
        deadline = time.monotonic() + WAIT
        while node.connections:
            self.assertLess(time.monotonic(), deadline, "the connection to close")
            await task.deferLater(reactor, 0.05, lambda: None)


class PingClosedTests(CLITestCase):
    """C{botd2 ping --count N} whose node closes the connection between two pings."""

    async def test_closedBetweenPings(self) -> None:
        """
        The node closes the connection after the first Pong (with an Error,
        as a node shutting down does): the Pong printed, then, at once and
        not at the next ping 30 s later, one line naming the node and why,
        status 1.
        """
        node = PeerFactory(PrivateKey.generate(), reactor=reactor)
        port = reactor.listenTCP(0, node, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = f"{node.nodeID}@127.0.0.1:{port.getHost().port}"
        closedAt: list[float] = []

        def close() -> None:
            closedAt.append(time.monotonic())
            for proto in list(node.connections):
                proto.disconnect("the node is shutting down")

        child = _Collect(b"seq=1", action=close)
        args = [sys.executable, "-m", "botd2", "ping", address, "--count", "3"]
        status = await child.run(args, self.dir)
        self.assertTrue(closedAt)
        self.assertLess(time.monotonic() - closedAt[0], 10)
        self.assertEqual(status, 1, child.err)
        self.assertRegex(
            child.out.decode(), rf"^pong from {re.escape(address)}: seq=1 rtt [^\n]* ms\n$"
        )
        self.assertEqual(
            child.err.decode(),
            f"botd2: {address} closed the connection: "
            "the peer sent an Error: the node is shutting down\n",
        )
