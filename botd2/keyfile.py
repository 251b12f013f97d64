# -*- test-case-name: tests.test_keyfile -*-
"""
Identity key files (WIRE.md section 1, "Key file").

A key file is an unencrypted PKCS#8 PEM file (label C{PRIVATE KEY}) holding a
secp256k1 key.  A missing one is created atomically: written and synced to a
temporary file in the same directory, created exclusively with mode 0600, then
hard-linked into place, so the name either does not exist or names a complete
key; if the name appeared meanwhile, that file wins and nothing is overwritten.
A file that group or others may access is refused, as ssh refuses one.  A
process that uses a key file holds a lock on it (L{lock_key_file}), so that no
two nodes run with one identity.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import BinaryIO

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from botd2.keys import PrivateKey

_PEM_LABEL = b"-----BEGIN PRIVATE KEY-----"
#: PKCS#8 too, but encrypted; and SEC1, what C{openssl ecparam -genkey} writes.
_ENCRYPTED_PEM_LABEL = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_SEC1_PEM_LABEL = b"-----BEGIN EC PRIVATE KEY-----"
#: Anything larger is not a key file; refuse before reading it all.
_MAX_SIZE = 64 * 1024


class KeyFileError(Exception):
    """A key file that cannot be used; C{str()} is one line naming the file."""


def load_key_file(path: str) -> PrivateKey:
    """
    Read a key file.

    @raise KeyFileError: unreadable, open to group or others, corrupt, or not
        a secp256k1 key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        # fstat the open file, not the name: no window between check and read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}: group and others must have "
                f"no access to it (chmod 600 {path})"
            )
        data = os.read(fd, _MAX_SIZE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return _parse(path, data)


def _parse(path: str, data: bytes) -> PrivateKey:
    not_pkcs8 = f"key file {path} is not a PEM 'PRIVATE KEY' (PKCS#8) file"
    encrypted = f"key file {path} is encrypted; botd2 needs an unencrypted key"
    if len(data) > _MAX_SIZE:
        raise KeyFileError(not_pkcs8)
    if _ENCRYPTED_PEM_LABEL in data:
        raise KeyFileError(encrypted)
    if _PEM_LABEL not in data:
        if _SEC1_PEM_LABEL in data:
            raise KeyFileError(
                f"key file {path} is a SEC1 'EC PRIVATE KEY' file, not PKCS#8 (convert "
                f"it with: openssl pkcs8 -topk8 -nocrypt -in {path} -out new.key)"
            )
        raise KeyFileError(not_pkcs8)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(encrypted) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"key file {path} is corrupt or not a supported private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__.lstrip('_')} key, "
            f"not a secp256k1 key"
        )
    if not isinstance(key.curve, ec.SECP256K1):
        raise KeyFileError(
            f"key file {path} holds a key on curve {key.curve.name}, not secp256k1"
        )
    return PrivateKey.from_int(key.private_numbers().private_value)


def key_to_pem(key: PrivateKey) -> bytes:
    """The PKCS#8 PEM encoding of a key, public key included."""
    ckey = ec.derive_private_key(int.from_bytes(key.secret_bytes(), "big"), ec.SECP256K1())
    return ckey.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_key_file(path: str) -> PrivateKey:
    """
    Create a key file with a fresh key; never overwrite an existing file.

    @raise FileExistsError: when C{path} exists already.
    @raise KeyFileError: when the file cannot be written.
    """
    key = PrivateKey.generate()
    if not _write_new(path, key_to_pem(key)):
        raise FileExistsError(errno.EEXIST, "key file exists already", path)
    return key


def lock_key_file(path: str) -> BinaryIO:
    """
    Lock key file C{path} for this process: an exclusive C{flock} on the file,
    opened read-only, taken without waiting.

    The lock lasts as long as the returned file stays open (in this process or
    in a child forked from it, such as a daemon): keep it for the life of the
    process.  It belongs to that open file, so a second call, even in the same
    process, fails while the first file is open.

    @return: the open file that holds the lock.
    @raise KeyFileError: when another process holds the lock (C{key file
        PATH is in use by another botd2 process}), or the file cannot be
        opened or locked.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller keeps it open
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise KeyFileError(f"key file {path} is in use by another botd2 process") from None
    except OSError as e:
        f.close()
        raise KeyFileError(f"cannot lock key file {path}: {e.strerror}") from None
    return f


def load_or_create_key_file(path: str) -> tuple[PrivateKey, bool]:
    """
    Load C{path}, creating it first with a fresh key when it does not exist.

    @return: the key, and whether the file was created now.
    @raise KeyFileError: as L{load_key_file}, or when creating fails.
    """
    if not os.path.lexists(path):
        try:
            return create_key_file(path), True
        except FileExistsError:
            pass  # someone else created it meanwhile: theirs wins
    return load_key_file(path), False


def _write_new(path: str, data: bytes) -> bool:
    """
    Write C{data} to a new file at C{path} atomically, mode 0600.

    @return: C{False} when C{path} existed (it is left untouched).
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        tmp, fd = _exclusive_temp(directory, base)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        _fsync_dir(directory)
    except OSError as e:
        raise KeyFileError(f"cannot create key file {path}: {e.strerror}") from None
    return True


def _exclusive_temp(directory: str, base: str) -> tuple[str, int]:
    # The umask may narrow 0600 but never widen it.
    for _ in range(100):
        name = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(
                name,
                os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0),
                0o600,
            )
        except FileExistsError:
            continue
        return name, fd
    raise OSError(errno.EEXIST, "could not create a temporary file")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
