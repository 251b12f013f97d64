"""Key files (WIRE.md section 1, "Key file")."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.trial.unittest import SynchronousTestCase

from botd2 import keyfile
from botd2.keyfile import (
    KeyFileError,
    create_key_file,
    key_to_pem,
    load_key_file,
    load_or_create_key_file,
    lock_key_file,
)
from botd2.keys import PrivateKey

#: The checkout under test: subprocesses import botd2 from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "node.key")

    def write(self, data: bytes, mode: int = 0o600) -> str:
        with open(self.path, "wb") as f:
            f.write(data)
        os.chmod(self.path, mode)
        return self.path

    def assertRefused(self, *words: str) -> str:
        with self.assertRaises(KeyFileError) as cm:
            load_key_file(self.path)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(self.path, message)
        for word in words:
            self.assertIn(word, message)
        return message

    def test_created_0600_whatever_the_umask(self) -> None:
        for umask in (0, 0o077, 0o022):
            path = os.path.join(self.dir, f"k{umask:o}")
            old = os.umask(umask)
            try:
                key = create_key_file(path)
            finally:
                os.umask(old)
            self.assertEqual(mode_of(path), 0o600, f"umask {umask:03o}")
            self.assertEqual(load_key_file(path).public_key, key.public_key)
        # no temporary file left behind
        self.assertEqual(sorted(os.listdir(self.dir)), ["k0", "k22", "k77"])

    def test_pkcs8_pem(self) -> None:
        key = create_key_file(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
        loaded = serialization.load_pem_private_key(data, None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(loaded.curve, ec.SECP256K1)
        self.assertEqual(loaded.private_numbers().private_value.to_bytes(32, "big"),
                         key.secret_bytes())
        # the inner ECPrivateKey carries the public key
        der = loaded.private_bytes(serialization.Encoding.DER,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        self.assertIn(bytes(key.public_key)[1:], der)

    def test_never_overwrites(self) -> None:
        first = create_key_file(self.path)
        self.assertRaises(FileExistsError, create_key_file, self.path)
        self.assertEqual(load_key_file(self.path).public_key, first.public_key)
        key, created = load_or_create_key_file(self.path)
        self.assertFalse(created)
        self.assertEqual(key.public_key, first.public_key)

    def test_load_or_create_creates(self) -> None:
        key, created = load_or_create_key_file(self.path)
        self.assertTrue(created)
        self.assertEqual(load_key_file(self.path).public_key, key.public_key)

    def test_name_appears_meanwhile(self) -> None:
        """If the name exists by the time of the link, that file wins."""
        theirs = key_to_pem(PrivateKey.generate())
        real_link = os.link

        def link(src: str, dst: str) -> None:
            self.write(theirs)
            real_link(src, dst)

        self.patch(keyfile.os, "link", link)
        _key, created = load_or_create_key_file(self.path)
        self.assertFalse(created)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), theirs)
        self.assertEqual(os.listdir(self.dir), ["node.key"])

    def test_crash_leaves_no_key(self) -> None:
        """A failure while writing leaves neither the key nor a temporary file."""

        def fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(keyfile.os, "fsync", fsync)
        with self.assertRaises(KeyFileError) as cm:
            create_key_file(self.path)
        self.assertIn("Input/output error", str(cm.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_cannot_create(self) -> None:
        path = os.path.join(self.dir, "missing-dir", "node.key")
        with self.assertRaises(KeyFileError) as cm:
            load_or_create_key_file(path)
        self.assertIn("cannot create key file", str(cm.exception))
        self.assertIn(path, str(cm.exception))

    def test_too_open_refused(self) -> None:
        create_key_file(self.path)
        for mode in (0o640, 0o604, 0o660, 0o644, 0o601, 0o610, 0o666, 0o700 | 0o004):
            os.chmod(self.path, mode)
            self.assertRefused(f"{mode:04o}", "chmod 600")
        os.chmod(self.path, 0o400)
        load_key_file(self.path)

    def test_missing(self) -> None:
        self.assertRefused("cannot read", "No such file")

    def test_directory(self) -> None:
        os.mkdir(self.path, 0o700)
        self.assertRefused("not a regular file")

    def test_corrupt(self) -> None:
        good = key_to_pem(PrivateKey.generate())
        for data in (
            b"",
            b"hello",
            good[:40],
            good.replace(b"M", b"N", 3),
            good[:-30] + b"\n-----END PRIVATE KEY-----\n",
            os.urandom(100_000),
        ):
            self.write(data)
            self.assertRefused()

    def test_not_secp256k1(self) -> None:
        p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.write(p256)
        self.assertRefused("secp256r1", "not secp256k1")
        ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.write(ed)
        self.assertRefused("not a secp256k1 key")

    def test_encrypted(self) -> None:
        """
        An encrypted PKCS#8 file (C{ENCRYPTED PRIVATE KEY}, what C{openssl
        genpkey -aes256} writes) is said to be encrypted, not to be no PKCS#8.
        """
        ckey = ec.generate_private_key(ec.SECP256K1())
        data = ckey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        self.assertTrue(data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"))
        self.write(data)
        self.assertRefused("is encrypted; botd2 needs an unencrypted key")

    def test_sec1_refused(self) -> None:
        """
        The SEC1 C{EC PRIVATE KEY} form is not the PKCS#8 file WIRE.md names;
        the message says how to convert it.
        """
        ckey = ec.generate_private_key(ec.SECP256K1())
        self.write(ckey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ))
        self.assertRefused(
            "is a SEC1 'EC PRIVATE KEY' file, not PKCS#8",
            f"openssl pkcs8 -topk8 -nocrypt -in {self.path} -out new.key",
        )

    def test_without_public_key(self) -> None:
        """An inner ECPrivateKey without its optional public key is accepted."""
        secret = PrivateKey.generate().secret_bytes()
        ec_private_key = bytes.fromhex("302502010104") + b"\x20" + secret
        algorithm = bytes.fromhex("301006072a8648ce3d020106052b8104000a")
        body = bytes.fromhex("020100") + algorithm + b"\x04\x27" + ec_private_key
        der = b"\x30" + bytes([len(body)]) + body
        import base64

        pem = (b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der)
               + b"-----END PRIVATE KEY-----\n")
        self.write(pem)
        self.assertEqual(load_key_file(self.path).secret_bytes(), secret)


class LockTests(SynchronousTestCase):
    """L{lock_key_file}: one process at a time per key file."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "node.key")
        create_key_file(self.path)

    def lock(self) -> BinaryIO:
        f = lock_key_file(self.path)
        self.addCleanup(f.close)
        return f

    def assertInUse(self) -> None:
        with self.assertRaises(KeyFileError) as cm:
            lock_key_file(self.path)
        self.assertEqual(
            str(cm.exception), f"key file {self.path} is in use by another botd2 process"
        )

    def test_second_lock_refused(self) -> None:
        """
        While one lock is held, a second, even in this process, is refused:
        an C{flock} belongs to an open file, not to a process.
        """
        self.lock()
        # The premise, checked with fcntl alone: another open file of the
        # same key cannot take the lock.
        fd = os.open(self.path, os.O_RDONLY)
        try:
            with self.assertRaises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        self.assertInUse()

    def test_released_on_close(self) -> None:
        """Closing the file (the process ending) frees the key for the next one."""
        lock_key_file(self.path).close()
        self.lock()
        self.assertInUse()

    def test_other_process_refused(self) -> None:
        """Another process gets the same sentence, and its status 1."""
        self.lock()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        code = (
            "import sys\n"
            "from botd2.keyfile import KeyFileError, lock_key_file\n"
            "try:\n"
            "    lock_key_file(sys.argv[1])\n"
            "except KeyFileError as e:\n"
            "    sys.exit(str(e))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, self.path], env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=20,
        )
        self.assertEqual(
            (result.returncode, result.stderr),
            (1, f"key file {self.path} is in use by another botd2 process\n"),
        )

    def test_file_untouched(self) -> None:
        """The file is only read: a read-only key can be locked, and is unchanged."""
        with open(self.path, "rb") as f:
            before = f.read()
        os.chmod(self.path, 0o400)
        f = self.lock()
        self.assertFalse(f.writable())
        with open(self.path, "rb") as g:
            self.assertEqual(g.read(), before)
        self.assertEqual(mode_of(self.path), 0o400)

    def test_missing(self) -> None:
        os.unlink(self.path)
        with self.assertRaises(KeyFileError) as cm:
            lock_key_file(self.path)
        self.assertIn(f"cannot read key file {self.path}", str(cm.exception))
        self.assertIn("No such file", str(cm.exception))
