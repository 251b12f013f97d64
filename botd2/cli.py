# -*- test-case-name: tests.test_cli -*-
"""
The C{botd2} command: C{keygen}, C{id} and C{ping}.

Every failure a user can cause (a bad address, a key file that is too open, a
peer that does not answer) ends in one sentence on stderr and a non-zero exit
status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from botd2 import __version__
from botd2.keyfile import KeyFileError, create_key_file, load_key_file

#: Where the node and the tools keep the identity key unless told otherwise.
DEFAULT_KEY_PATH = os.path.join("~", ".botd2", "node.key")

EXIT_OK = 0
#: Any failure, a command-line syntax error included.
EXIT_FAILURE = 1

#: The longest C{ping --timeout}, in seconds: one day.
MAX_TIMEOUT = 86400.0

_EMPTY_KEY = "--key needs the path of a key file, not an empty string"


def default_key_path() -> str:
    return os.path.expanduser(DEFAULT_KEY_PATH)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # Status 1, as for any other failure (argparse's own is 2).
        self.exit(EXIT_FAILURE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _keygen(args: argparse.Namespace) -> int:
    if args.path == "":
        return _fail(f"the key file path is empty (leave PATH out for {DEFAULT_KEY_PATH})")
    path = default_key_path() if args.path is None else args.path
    if args.path is None:
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            reason = e.strerror or str(e)
            if isinstance(e, FileExistsError):
                reason = "it exists and is not a directory"
            return _fail(
                f"cannot create {directory} for the default key file: {reason} "
                f"(name another file: botd2 keygen PATH)"
            )
    if os.path.lexists(path):
        return _fail(f"key file {path} exists already; botd2 never overwrites a key file")
    try:
        key = create_key_file(path)
    except FileExistsError:
        return _fail(f"key file {path} exists already; botd2 never overwrites a key file")
    except KeyFileError as e:
        return _fail(str(e))
    print(key.public_key.node_id)
    print(f"created {path}", file=sys.stderr)
    return EXIT_OK


def _id(args: argparse.Namespace) -> int:
    if args.key == "":
        return _fail(_EMPTY_KEY)
    try:
        key = load_key_file(default_key_path() if args.key is None else args.key)
    except KeyFileError as e:
        return _fail(str(e))
    print(key.public_key.node_id)
    return EXIT_OK


def _ping(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from botd2.keys import InvalidAddress, PeerAddress, PrivateKey

    try:
        address = PeerAddress.parse(args.address)
    except InvalidAddress as e:
        return _fail(str(e))
    if args.count < 1:
        return _fail("--count must be at least 1")
    if not 0 < args.timeout <= MAX_TIMEOUT:
        return _fail(
            f"--timeout must be a positive number of seconds, at most {MAX_TIMEOUT:g} (one day)"
        )
    if args.key == "":
        return _fail(_EMPTY_KEY)
    try:
        identity = PrivateKey.generate() if args.key is None else load_key_file(args.key)
    except KeyFileError as e:
        return _fail(str(e))
    if identity.public_key == address.node:
        return _fail(
            f"{args.key} is the key of {address.node.node_id}: a node does not ping itself"
        )
    status: list[int] = []
    interrupted: list[int] = []
    try:
        task.react(
            _pingMain, (address, identity, args.count, args.timeout, status, interrupted)
        )
    except SystemExit:
        # react's status is 0 when the reactor stopped with the run unfinished.
        if interrupted:
            return interrupted[0]
        raise
    return status[0] if status else EXIT_FAILURE  # pragma: no cover - react exits


def _pingMain(
    reactor: Any,
    address: Any,
    identity: Any,
    count: int,
    timeout: float,
    status: list[int],
    interrupted: list[int],
) -> Any:
    """
    Ping C{address} C{count} times, the reactor running; the C{task.react} main.

    A reactor shutdown before the run ends (Ctrl-C, SIGTERM) prints
    C{botd2: interrupted} and appends to C{interrupted} the exit status, 128
    plus the signal's number; whatever the shutdown then does to the
    connection is not reported as the peer's fault.
    """
    from twisted.internet import defer, task
    from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError

    from botd2 import errors
    from botd2.keepalive import MIN_PING_GAP
    from botd2.protocol import NotReady, PeerFactory

    factory = PeerFactory(identity, reactor=reactor, handshakeTimeout=timeout)
    finished: list[bool] = []

    def onShutdown() -> None:
        if not finished:
            number = getattr(reactor, "_exitSignal", None)  # set by Twisted's handlers
            interrupted.append(128 + number if number else EXIT_FAILURE)
            _fail("interrupted")

    reactor.addSystemEventTrigger("before", "shutdown", onShutdown)

    def fail(message: str) -> SystemExit:
        return SystemExit(EXIT_FAILURE if interrupted else _fail(message))

    def finish(result: object) -> object:
        if interrupted:
            return None  # the shutdown's doing, said already
        finished.append(True)
        return result

    @defer.inlineCallbacks
    def run() -> Any:
        try:
            proto = yield factory.connect(address)
        except (errors.ConnectFailed, ConnectError, DNSLookupError, TimeoutError) as e:
            raise fail(f"cannot reach {address}: {_reason(e)}") from None
        transport = proto.transport

        def closed(why: object) -> SystemExit:
            return fail(f"{address} closed the connection: {why}")

        for n in range(1, count + 1):
            if n > 1:
                # WIRE.md section 6: the next Ping waits 30 s after the last Pong;
                # a close meanwhile (the node shutting down, say) ends the wait.
                which, why = yield defer.race(
                    [task.deferLater(reactor, MIN_PING_GAP, lambda: None), transport.whenLost()]
                )
                if which == 1:
                    raise closed(why)
            try:
                rtt = yield proto.ping().addTimeout(timeout, reactor)
            except defer.TimeoutError:
                raise fail(f"no Pong from {address} within {timeout:g} s") from None
            except errors.Disconnected as e:
                raise closed(e) from None
            except NotReady as e:
                if transport.disconnecting:
                    # Closed under us: say why, once the close is through.
                    why = yield transport.whenLost()
                    raise closed(why) from None
                raise fail(f"cannot ping {address}: {e}") from None
            print(f"pong from {address}: seq={n} rtt {rtt * 1000:.1f} ms", flush=True)
        # Say goodbye, and let the Error reach the node before the reactor stops.
        lost = transport.whenLost()
        proto.disconnect("ping done")
        yield lost.addTimeout(timeout, reactor).addErrback(lambda _: None)
        status.append(EXIT_OK)

    return run().addBoth(finish)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.split()) or type(error).__name__


def _fail(message: str) -> int:
    print(f"botd2: {message}", file=sys.stderr)
    return EXIT_FAILURE


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="botd2",
        description="Tools for BOTD #2 nodes. Run a node with: twistd -n botd2 --help",
    )
    parser.add_argument("--version", action="version", version=f"botd2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    keygen = sub.add_parser(
        "keygen",
        help="create a key file and print its node ID",
        description="Create a new identity key file (mode 0600) and print its node ID. "
        "An existing file is never overwritten.",
    )
    keygen.add_argument("path", nargs="?", help=f"where to create it (default {DEFAULT_KEY_PATH})")
    keygen.set_defaults(run=_keygen)

    ident = sub.add_parser(
        "id", help="print the node ID of a key file", description="Print a key file's node ID."
    )
    ident.add_argument("--key", metavar="PATH", help=f"the key file (default {DEFAULT_KEY_PATH})")
    ident.set_defaults(run=_id)

    ping = sub.add_parser(
        "ping",
        help="connect to a node, complete the handshake, and ping it",
        description="Connect to NODEID@HOST[:PORT] as initiator, complete the handshake, "
        "send a Ping and print the round-trip time of its Pong. With --count N, "
        "pings go 30 s apart: WIRE.md section 6 forbids a Ping within 30 s of the "
        "Pong to the previous one. Exits 0 on success; on any failure prints one "
        "line on stderr and exits 1. Interrupted (Ctrl-C, SIGTERM), it prints "
        "'botd2: interrupted' and exits 128 plus the signal's number (130 for "
        "Ctrl-C, 143 for SIGTERM).",
    )
    ping.add_argument("address", help="the node: NODEID@HOST[:PORT] (port 9945 by default)")
    ping.add_argument(
        "--key", metavar="PATH", help="use this key file (default: a fresh throwaway identity)"
    )
    ping.add_argument("--count", type=int, default=1, metavar="N",
                      help="pings to send, 30 s apart (default 1)")
    ping.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="for the handshake and for each Pong (default 10, at most "
                      f"{MAX_TIMEOUT:g}: one day)")
    ping.set_defaults(run=_ping)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    result: int = args.run(args)
    return result


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
