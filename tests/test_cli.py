"""
The C{botd2} command: C{keygen}, C{id} and C{ping}.

Most of it runs in this process through L{botd2.cli.main}, with stdout and
stderr captured.  Whatever reaches C{ping}'s C{task.react} (which runs the
reactor and calls C{sys.exit}) runs as C{python -m botd2} in a subprocess on
this checkout's code.  A successful ping against a real node is in
L{tests.test_node}.  Every failure must be one line on stderr, status 1 (2 for
a command-line syntax error, from argparse), never a traceback.
"""

from __future__ import annotations

import io
import os
import re
import socket
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import TestCase

from botd2.cli import main
from botd2.keys import PrivateKey

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


def botd2Process(*argv: str, cwd: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run C{python -m botd2 ARGV} on this checkout: the result and how long it took."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
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
        """A syntax error is argparse's: status 2, still one line."""
        status, out, err = botd2("ping", self.address, "--count", "many")
        self.assertEqual((status, out), (2, ""))
        self.assertOneLine(err, "--count", "'many'")

    def test_timeoutZero(self) -> None:
        status, _, err = botd2("ping", self.address, "--timeout", "0")
        self.assertEqual(status, 1)
        self.assertOneLine(err, "--timeout", "positive")

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
        """No subcommand: argparse's status 2 and one line naming the problem."""
        result, _ = botd2Process(cwd=self.dir)
        self.assertEqual((result.returncode, result.stdout), (2, ""))
        self.assertOneLine(result.stderr, "required")
