# -*- test-case-name: tests.test_node -*-
"""
C{twistd botd2}: options and the service of a node.

The plugin file in C{twisted/plugins/} only points here.  Every mistake an
operator can make (a bad option value, a key file that is too open, a port
in use, an unknown C{--protocol}) ends in one sentence on stderr and a
non-zero exit status, not a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.python import reflect, usage
from twisted.python.failure import Failure

from botd2.cli import DEFAULT_KEY_PATH, default_key_path
from botd2.keyfile import KeyFileError, load_or_create_key_file, lock_key_file
from botd2.keys import DEFAULT_PORT, InvalidAddress, InvalidKey, PeerAddress, PublicKey
from botd2.protocol import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    PeerFactory,
    PeerProtocol,
)
from botd2.service import NodeService, persistentPeer

_COMMAND = "twistd botd2"
#: The bounds of every timing option, in seconds: a handshake timeout below a
#: second fails honest peers, and an infinite one keeps stalled strangers.
MIN_TIMEOUT: Final = 1.0
MAX_TIMEOUT: Final = 86400.0


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a BOTD #2 node: listen for peers, keep the persistent ones "
        "(--connect) connected, run the application protocol (--protocol) "
        "on every authenticated connection. At start the node logs its node "
        "ID and the address it listens on."
    )

    optParameters: ClassVar[list[list[Any]]] = [
        ["port", "p", str(DEFAULT_PORT),
         "TCP port to listen on, or an endpoint description "
         "(e.g. tcp:9945:interface=127.0.0.1; port 0 picks a free one)."],
        ["key", "k", None,
         f"Identity key file; created (mode 0600) when missing. [default: {DEFAULT_KEY_PATH}]"],
        ["protocol", None, "botd2.protocol.PeerProtocol",
         "Application protocol to run: the dotted name of a PeerProtocol subclass "
         "(e.g. botd2.echo.EchoPeer)."],
        ["allow-file", None, None,
         "Only these nodes may connect: a file of node IDs, one per line ('#' comments)."],
        ["ping-interval", None, "60", "Seconds between keep-alive Pings (at least 30)."],
        ["pong-timeout", None, "30", "Seconds to wait for a Pong before closing."],
        ["handshake-timeout", None, f"{DEFAULT_HANDSHAKE_TIMEOUT:g}",
         "Seconds a connection may take to complete its handshake."],
        ["max-connections", None, str(DEFAULT_MAX_CONNECTIONS),
         "Most connections held at once, complete or not."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["connect"] = []
        self["allow"] = []

    def opt_connect(self, address: str) -> None:
        """
        Keep a connection to NODEID@HOST[:PORT], reconnecting with backoff
        (repeatable).
        """
        try:
            parsed = PeerAddress.parse(address)
        except InvalidAddress as e:
            raise usage.UsageError(str(e)) from None
        if any(other.node == parsed.node for other in self["connect"]):
            # One connection per peer (WIRE.md section 7): one --connect each.
            raise usage.UsageError(f"--connect: node {parsed.node.node_id} is given twice")
        self["connect"].append(parsed)

    def opt_allow(self, nodeID: str) -> None:
        """Allow this node ID to connect (repeatable; any --allow restricts)."""
        try:
            self["allow"].append(PublicKey.from_node_id(nodeID))
        except InvalidKey as e:
            raise usage.UsageError(f"--allow: {e}") from None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # One sentence, not twistd's whole usage text before it.
            raise SystemExit(f"{_COMMAND}: {e} (see {_COMMAND} --help)") from None

    def postOptions(self) -> None:
        # Converted here rather than by usage's coercion, whose message does
        # not name the option.
        for name in ("ping-interval", "pong-timeout", "handshake-timeout"):
            try:
                self[name] = float(self[name])
            except ValueError:
                raise usage.UsageError(
                    f"--{name} {self[name]!r}: not a number of seconds"
                ) from None
            if not MIN_TIMEOUT <= self[name] <= MAX_TIMEOUT:
                raise usage.UsageError(
                    f"--{name} must be from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds (a day)"
                )
        try:
            self["max-connections"] = int(self["max-connections"])
        except ValueError:
            raise usage.UsageError(
                f"--max-connections {self['max-connections']!r}: not a whole number"
            ) from None
        if self["ping-interval"] < 30:
            raise usage.UsageError("--ping-interval must be at least 30 seconds (WIRE.md §6)")
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")
        self["endpoint"] = _endpointDescription(self["port"])
        self["protocolClass"] = _loadProtocol(self["protocol"])
        # Any --allow or --allow-file restricts, an empty file to nobody: an
        # operator who empties the list wants a closed node, not an open one.
        self["restricted"] = bool(self["allow"]) or self["allow-file"] is not None
        if self["allow-file"] is not None:
            self["allow"].extend(_readAllowFile(self["allow-file"]))
        if self["key"] == "":
            raise usage.UsageError("--key: give a file name")
        path = self["key"] or default_key_path()
        if self["key"] is None:
            directory = os.path.dirname(path)
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as e:
                raise SystemExit(
                    f"{_COMMAND}: cannot make {directory} for the default key file: "
                    f"{e.strerror or e} (give one with --key PATH)"
                ) from None
        try:
            self["identity"], created = load_or_create_key_file(path)
            # Held for the life of the process (and across twistd's fork):
            # two nodes of one identity would replace each other's connections.
            self["keyLock"] = lock_key_file(path)
        except KeyFileError as e:
            raise SystemExit(f"{_COMMAND}: {e}") from None
        self["keyCreated"] = created
        self["keyPath"] = path
        ours = self["identity"].public_key
        for address in self["connect"]:
            if address.node == ours:
                raise SystemExit(
                    f"{_COMMAND}: --connect {address}: that is this node's own ID"
                )


def _endpointDescription(port: str) -> str:
    text = port.strip()
    if text.isdigit():
        if not 0 <= int(text) < 65536:
            raise usage.UsageError(f"--port {port}: a port number is 0 to 65535")
        return f"tcp:{text}"
    if ":" not in text:
        raise usage.UsageError(
            f"--port {port!r}: give a port number or an endpoint such as tcp:9945"
        )
    return text


def _loadProtocol(name: str) -> type[PeerProtocol]:
    try:
        obj = reflect.namedAny(name)
    except (
        reflect.ModuleNotFound, reflect.ObjectNotFound, reflect.InvalidName, ValueError,
        AttributeError,
    ):
        top = name.split(".", 1)[0]
        if top and importlib.util.find_spec(top) is None:
            raise usage.UsageError(
                f"--protocol {name}: there is no module {top!r} to import "
                "(is its directory on PYTHONPATH?)"
            ) from None
        raise usage.UsageError(f"--protocol {name}: no such class") from None
    except Exception as e:
        raise usage.UsageError(f"--protocol {name}: importing it failed: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, PeerProtocol)):
        raise usage.UsageError(f"--protocol {name}: not a botd2.protocol.PeerProtocol subclass")
    return obj


def _readAllowFile(path: str) -> list[PublicKey]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--allow-file {path}: cannot read it: {e}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(PublicKey.from_node_id(text))
        except InvalidKey as e:
            raise usage.UsageError(f"--allow-file {path}, line {number}: {e}") from None
    return keys


def makeService(options: Options) -> NodeService:
    """Bind the port now, so a port in use is one sentence, not a traceback."""
    from twisted.internet import reactor

    factory = PeerFactory(
        options["identity"],
        protocol=options["protocolClass"],
        reactor=reactor,
        allow=options["allow"] if options["restricted"] else None,
        handshakeTimeout=options["handshake-timeout"],
        pingInterval=options["ping-interval"],
        pongTimeout=options["pong-timeout"],
        maxConnections=options["max-connections"],
    )
    try:
        port = listenNow(reactor, options["endpoint"], factory)
    except SystemExit:
        if options["keyCreated"]:
            # The node never ran: no identity was handed out under that key.
            with contextlib.suppress(OSError):  # the sentence above matters more
                os.unlink(options["keyPath"])
        raise
    service = NodeService(factory, port)
    if options["keyCreated"]:
        service.keyCreated = options["keyPath"]
    if options["restricted"]:
        service.allowed = len(set(options["allow"]))
    for address in options["connect"]:
        persistentPeer(factory, address).setServiceParent(service)
    return service


def listenNow(reactor: Any, description: str, factory: PeerFactory) -> IListeningPort:
    """
    Listen on an endpoint description before the reactor runs (TCP, UNIX
    and most endpoints bind synchronously).

    @raise SystemExit: with one sentence when the description is bad or the
        port cannot be bound.
    """
    try:
        endpoint = endpoints.serverFromString(reactor, description)
        outcome: list[Any] = []
        d: Deferred[Any] = endpoint.listen(factory)
    except Exception as e:
        # TLS files that are missing or not keys, bad arguments, systemd
        # sockets that are not there: whatever the endpoint parser raises.
        why = " ".join(str(e).split()) or type(e).__name__
        raise SystemExit(
            f"{_COMMAND}: --port {description}: not a usable endpoint ({why})"
        ) from None
    d.addBoth(outcome.append)
    if not outcome:
        raise SystemExit(f"{_COMMAND}: --port {description}: the endpoint does not bind at once")
    result = outcome[0]
    if isinstance(result, Failure):
        reason = result.value
        message = getattr(reason, "socketError", None) or reason
        raise SystemExit(f"{_COMMAND}: cannot listen on {description}: {_oneLine(message)}")
    port: IListeningPort = result
    return port


def _oneLine(error: object) -> str:
    text = str(error)
    if hasattr(error, "strerror") and getattr(error, "strerror", None):
        text = str(error.strerror)
    return " ".join(text.split())


