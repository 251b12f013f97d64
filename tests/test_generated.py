"""The committed C{botd2_pb2.py} and C{.pyi} are what C{proto/botd2.proto} makes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from twisted.trial.unittest import SynchronousTestCase

import botd2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(botd2.__file__))

#: How to regenerate, also in README.rst (Development).
COMMAND = (
    "venv/bin/python -m grpc_tools.protoc -Iproto --python_out=botd2 --mypy_out=botd2 "
    "--plugin=protoc-gen-mypy=venv/bin/protoc-gen-mypy proto/botd2.proto"
)


def generate(out: str) -> None:
    plugin = shutil.which("protoc-gen-mypy", path=sysconfig.get_path("scripts"))
    plugin = plugin or shutil.which("protoc-gen-mypy")
    if plugin is None:
        raise RuntimeError("protoc-gen-mypy not found: pip install '.[test]'")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            "-I" + os.path.join(ROOT, "proto"),
            "--python_out=" + out,
            "--mypy_out=" + out,
            "--plugin=protoc-gen-mypy=" + plugin,
            os.path.join(ROOT, "proto", "botd2.proto"),
        ],
        check=True,
        capture_output=True,
    )


class GeneratedCodeTests(SynchronousTestCase):
    def test_not_stale(self) -> None:
        out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, out)
        generate(out)
        for name in ("botd2_pb2.py", "botd2_pb2.pyi"):
            with open(os.path.join(out, name), "rb") as f:
                fresh = f.read()
            with open(os.path.join(PACKAGE, name), "rb") as f:
                committed = f.read()
            self.assertEqual(
                committed, fresh, f"botd2/{name} is stale; regenerate it with: {COMMAND}"
            )

    def test_proto_is_wire_md(self) -> None:
        """proto/botd2.proto is the block of WIRE.md section 3, verbatim."""
        from tests.vectors import shared_dir

        with open(os.path.join(shared_dir(), "WIRE.md"), encoding="utf-8") as f:
            wire = f.read()
        with open(os.path.join(ROOT, "proto", "botd2.proto"), encoding="utf-8") as f:
            proto = f.read()
        self.assertTrue(
            "```protobuf\n" + proto + "```" in wire,
            "proto/botd2.proto differs from the block in WIRE.md section 3",
        )
