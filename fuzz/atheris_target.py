"""
Coverage-guided fuzzing with atheris (libFuzzer), over the responder, the
initiator and the transport receive path, with the oracles of
L{fuzz.oracles}.  botd2 is instrumented; the oracles and the model are not.

    pip install atheris
    python -m fuzz.atheris_target --seeds CORPUS      # write a seed corpus
    python -m fuzz.atheris_target CORPUS -max_total_time=300 -print_final_stats=1

The first byte of an input picks how the rest is used:

  0. an Init body (framed), then the pool's key confirmation, to the responder;
  1. raw bytes to the responder;
  2. plaintext Envelopes (sizes and bytes from the input), sealed with the
     real keys, to a complete connection of either role;
  3. an Ack body (framed), to the initiator;
  4. raw bytes to a complete connection of either role;
  5. and up: the input drives the generators and mutators of
     L{fuzz.strategies} (a structured input), for the responder, initiator
     or transport target.

A violation raises, which libFuzzer reports as a crash and saves.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["botd2"]):
    import botd2.connection
    import botd2.frames
    import botd2.handshake
    import botd2.keys
    import botd2.messages  # noqa: F401
    from fuzz import model, oracles, strategies
    from fuzz.pool import frame, pool

T = TypeVar("T")


class FDPChooser:
    """A L{fuzz.mutators.Chooser} on atheris's FuzzedDataProvider."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp

    def integer(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def choice(self, items: Sequence[T]) -> T:
        return items[int(self.fdp.ConsumeIntInRange(0, len(items) - 1))]

    def binary(self, max_size: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, max_size)))

    def blob(self, size: int) -> bytes:
        return random.Random(self.fdp.ConsumeIntInRange(0, 2**32 - 1)).randbytes(size)


def transport_setup(role: str, n: int) -> tuple[bytes, model.Direction]:
    """An intact handshake for C{role} and the peer's sending direction after it."""
    p = pool()
    if role == "responder":
        hs = p.to_responder[n % len(p.to_responder)]
        direction = model.Direction(hs.k_ir)
        direction.seal(b"")
        return hs.init + hs.confirmation, direction
    hs = p.to_initiator[n % len(p.to_initiator)]
    return hs.ack, model.Direction(hs.k_ri)


def case_for(data: bytes) -> tuple[str, strategies.ConnCase]:
    """The target and the case an input stands for."""
    mode, rest = data[0] % 8, data[1:]
    p = pool()
    if mode == 0:
        stream = frame(rest[:1024]) + p.to_responder[0].confirmation
        return "responder", strategies.ConnCase("responder", b"", stream)
    if mode == 1:
        return "responder", strategies.ConnCase("responder", b"", rest)
    if mode == 3:
        return "initiator", strategies.ConnCase("initiator", b"", frame(rest[:1024]))
    fdp = atheris.FuzzedDataProvider(rest)
    role = ("responder", "initiator")[fdp.ConsumeIntInRange(0, 1)]
    if mode == 2:
        setup, direction = transport_setup(role, fdp.ConsumeIntInRange(0, 3))
        plaintexts = [
            fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            for _ in range(fdp.ConsumeIntInRange(1, 4))
        ]
        stream = strategies.seal_all(direction, plaintexts)
        return "transport", strategies.ConnCase(role, setup, stream, (), stream)
    if mode == 4:
        setup, _ = transport_setup(role, fdp.ConsumeIntInRange(0, 3))
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        return "transport", strategies.ConnCase(role, setup, stream)
    target = ("responder", "initiator", "transport")[fdp.ConsumeIntInRange(0, 2)]
    case = strategies.generate(target, FDPChooser(fdp))
    assert isinstance(case, strategies.ConnCase)
    return target, case


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    target, case = case_for(data)
    oracles.check(target, case)


def write_seeds(directory: str) -> None:
    """A seed corpus: the valid handshakes, and a few transport streams, per mode."""
    os.makedirs(directory, exist_ok=True)
    p = pool()
    seeds = [bytes([0]) + hs.init[4:] for hs in p.to_responder]
    seeds += [bytes([1]) + hs.init + hs.confirmation for hs in p.to_responder]
    seeds += [bytes([3]) + hs.ack[4:] for hs in p.to_initiator]
    seeds += [bytes([3]) + body for body, _ in p.bad_acks]
    seeds += [bytes([0]) + body for body, _ in p.bad_inits]
    for envelope in strategies.messages():
        # mode 2, responder, handshake 0, one plaintext of len(envelope) bytes
        seeds.append(bytes([2, 0, 0, 0]) + envelope)
    rng = random.Random(0)
    seeds += [bytes([5 + k % 3]) + rng.randbytes(200) for k in range(30)]
    for n, seed in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{n:03}"), "wb") as f:
            f.write(seed)
    print(f"{len(seeds)} seeds in {directory}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(sys.argv[2])
        return
    pool()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
