"""
How close botd2's handshake is to the least it could cost on Twisted.

Figure 1 of L{bench.compare} (connect, handshake, one echoed message, close;
1 and 8 at a time) for three transports, runs alternated as there:

  - C{botd2};
  - C{floor} (L{bench._floor}): every cryptographic operation of a BOTD #2
    handshake, with the same libsecp256k1 calls, HKDF and AES-GCM, over the
    same Twisted TCP transport, framing and round trips, and almost no other
    Python: no checks but the signatures, no timers, limits, events,
    logging, keep-alive, or Error on close.  What any implementation of the
    protocol on Twisted and these libraries would pay at the least;
  - C{tls}: Twisted's TLS 1.3 with certificates on both sides, as in
    L{bench.compare}.

Run from the repository root::

    python -m bench.floor                 # 5 runs, 3 s per figure
    python -m bench.floor --runs 3 --seconds 2 --figures 1b

It prints, per figure, each transport's rate, the ratios floor/TLS,
botd2/TLS and botd2/floor (medians of the per-run ratios, min-max), and the
CPU time per connection of each process; it exits 1 if any connection
failed.  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import make_certificates, raise_fd_limit
from bench.compare import ChildFailed, Children, git_state, log, proc_cpu

TRANSPORTS = ("botd2", "floor", "tls")
LOOPS = {"1a": 1, "1b": 8}
RATIOS = (("floor", "tls"), ("botd2", "tls"), ("botd2", "floor"))


def _median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f}"


def _ratio(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per figure")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--figures", default="1a,1b", help="1a (1 at a time), 1b (8 at a time)")
    args = parser.parse_args(argv)
    figures = [f for f in args.figures.split(",") if f]
    if not figures or set(figures) - set(LOOPS):
        parser.error(f"--figures takes 1a, 1b or 1a,1b, not {args.figures!r}")
    if args.runs < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--runs must be at least 1, --seconds positive, --warmup not negative")

    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="botd2-floor-"))
    certs = work / "certs"
    certs.mkdir()
    make_certificates(certs)
    children = Children(work, certs, "X25519", None)
    # rates[figure][transport], ratios[figure][(a, b)], cpu[figure][transport]
    rates: dict[str, dict[str, list[float]]] = {f: {t: [] for t in TRANSPORTS} for f in figures}
    ratios: dict[str, dict[tuple[str, str], list[float]]] = {
        f: {r: [] for r in RATIOS} for f in figures
    }
    cpu: dict[str, dict[str, list[tuple[float, float]]]] = {
        f: {t: [] for t in TRANSPORTS} for f in figures
    }
    failed = False
    log(f"bench.floor: {args.runs} runs, {args.seconds:g} s per figure; botd2 at {git_state()}")
    try:
        for run in range(args.runs):
            k = run % len(TRANSPORTS)
            order = list(TRANSPORTS[k:] + TRANSPORTS[:k])
            log(f"run {run + 1}/{args.runs}: order {', '.join(order)}")
            servers = {t: children.server(t) for t in order}
            try:
                for figure in figures:
                    got: dict[str, float] = {}
                    for t in order:
                        child, hello = servers[t]
                        cpu0 = proc_cpu(child.pid)
                        options = ["--loops", str(LOOPS[figure]), "--seconds", str(args.seconds),
                                   "--warmup", str(args.warmup)]
                        try:
                            result: dict[str, Any] = children.run_client(
                                t, hello, "connect", options, args.seconds + args.warmup + 60
                            )
                        except ChildFailed as e:
                            log(f"  {figure} {t}: FAILED: {e}")
                            failed = True
                            continue
                        server_cpu = proc_cpu(child.pid) - cpu0
                        if result.get("failures"):
                            failed = True
                            log(f"  {figure} {t}: {result['failures']} failures, first "
                                f"{result['first_failure']}")
                        got[t] = result["value"]
                        rates[figure][t].append(result["value"])
                        if result.get("ops"):
                            cpu[figure][t].append((server_cpu / result["ops_total"] * 1e6,
                                                   result["cpu_s"] / result["ops"] * 1e6))
                    for a, b in RATIOS:
                        if a in got and b in got:
                            ratios[figure][(a, b)].append(got[a] / got[b])
                    log(f"  {figure}: " + "; ".join(f"{t} {got.get(t, 0):,.0f}/s" for t in order))
            finally:
                for child, _ in servers.values():
                    child.stop()
                    children.forget(child)
    except BaseException:
        failed = True
        raise
    finally:
        children.kill_all()
        if failed:
            log(f"children's stderr kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"bench.floor: {args.runs} runs alternated, medians (min-max of the per-run ratios)")
    for figure in figures:
        print(f"figure {figure}, {LOOPS[figure]} at a time, connections/s: "
              + ", ".join(f"{t} {_median(rates[figure][t])}" for t in TRANSPORTS))
        for a, b in RATIOS:
            print(f"  {a}/{b}: {_ratio(ratios[figure][(a, b)])}")
        for t in TRANSPORTS:
            samples = cpu[figure][t]
            if samples:
                server = statistics.median(s for s, _ in samples)
                client = statistics.median(c for _, c in samples)
                print(f"  CPU per connection, {t}: server {server:,.0f} us, "
                      f"client {client:,.0f} us")
    if failed:
        print("some connections or runs failed: see above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
