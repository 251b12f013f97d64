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

from botd2 import __version__
from botd2.keyfile import KeyFileError, create_key_file, load_key_file

#: Where the node and the tools keep the identity key unless told otherwise.
DEFAULT_KEY_PATH = os.path.join("~", ".botd2", "node.key")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def default_key_path() -> str:
    return os.path.expanduser(DEFAULT_KEY_PATH)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _keygen(args: argparse.Namespace) -> int:
    path = args.path or default_key_path()
    if args.path is None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
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
    try:
        key = load_key_file(args.key or default_key_path())
    except KeyFileError as e:
        return _fail(str(e))
    print(key.public_key.node_id)
    return EXIT_OK


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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    result: int = args.run(args)
    return result


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
