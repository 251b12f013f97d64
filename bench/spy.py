"""
Where botd2's CPU goes in one figure of L{bench.compare}, by a sampling
profiler: py-spy (C{pip install py-spy}; not a dependency) records the
server and the client processes while the figure runs, and every sample is
put in one of a few buckets by the frame it was taken in.  Unlike cProfile
(L{bench.profile_botd2}), sampling adds no cost per call, so many small
Python calls are not overcounted against a few long C calls.

Run from the repository root::

    python -m bench.spy                      # figure 1b: 8 connect loops
    python -m bench.spy --figure small       # figure 3: 100-byte messages

Buckets (shares of the samples taken inside the reactor's main loop, idle
C{epoll} excluded):

  - crypto: a line of C{botd2._secp256k1}, C{hkdf_sha256}, or a line that
    calls AES-GCM (py-spy charges C time to the Python line that called it);
  - botd2: any other line of C{botd2/};
  - logging: inside C{twisted.logger};
  - called by botd2: Twisted, protobuf or the standard library, with a
    botd2 frame further up the stack;
  - Twisted, no botd2 frame: the reactor and TCP (accept, connect, read,
    write, close) and whatever the benchmark harness adds.
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = {
    "connect8": ["--figure", "connect", "--loops", "8", "--seconds", "{seconds}"],
    "small": ["--figure", "small", "--size", "100", "--count", "{count}"],
}
_AEAD_CALLS = ("encrypt(", "decrypt(", "AESGCM(")


def _bucket(frames: list[str], root: Path) -> str:
    leaf = frames[-1]
    where = leaf[leaf.rfind("(") + 1 : -1]  # path:line
    path, _, line = where.rpartition(":")
    if any("twisted/logger/" in f for f in frames):
        return "logging"
    if "botd2/" in path:
        source = linecache.getline(str(root / path[path.index("botd2/") :]), int(line or 0))
        if "_secp256k1.py" in path or "hkdf_sha256" in leaf or "rekey" in leaf:
            return "crypto"
        if any(call in source for call in _AEAD_CALLS):
            return "crypto"
        return "botd2"
    if any("botd2/" in f for f in frames):
        return "called by botd2"
    return "Twisted, no botd2 frame"


def summarize(raw: Path, root: Path, top: int) -> list[str]:
    buckets: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    total = 0
    for record in raw.read_text().splitlines():
        stack, _, count = record.rpartition(" ")
        frames = stack.split(";")
        if "mainLoop" not in stack or ("poll" in frames[-1] and "epoll" in frames[-1]):
            continue
        n = int(count)
        total += n
        bucket = _bucket(frames, root)
        buckets[bucket] += n
        if bucket in ("botd2", "crypto"):
            lines[frames[-1]] += n
        elif bucket == "Twisted, no botd2 frame":
            others[frames[-1].split(" (")[0]] += n

    out = [f"  {total} samples in the main loop"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in buckets.most_common()]
    out.append("  Twisted, no botd2 frame: the functions sampled most")
    out += [f"    {100 * n / total:5.1f}%  {name}" for name, n in others.most_common(6)]
    out.append("  botd2 lines (crypto calls included) with the most samples:")
    out += [f"    {100 * n / total:5.1f}%  {name}" for name, n in lines.most_common(top)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spy")
    parser.add_argument("--figure", choices=sorted(FIGURES), default="connect8")
    parser.add_argument("--seconds", type=float, default=5.0, help="connect8: timed window")
    parser.add_argument("--count", type=int, default=600_000, help="small: messages")
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        sys.exit("bench.spy needs py-spy: pip install py-spy")
    root = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="botd2-spy-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "bench._server", "--transport", "botd2", "--max-conns", "2000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        hello = json.loads(server.stdout.readline())
        options = [o.format(seconds=args.seconds, count=args.count) for o in FIGURES[args.figure]]
        record = [spy, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw"]
        server_spy = subprocess.Popen(
            [*record, "-o", str(work / "server.txt"), "-p", str(hello["pid"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = subprocess.run(
            [*record, "-o", str(work / "client.txt"), "--", sys.executable, "-m",
             "bench._client", "--transport", "botd2", "--port", str(hello["port"]),
             "--node", hello["node"], *options],
            capture_output=True, text=True, cwd=root, check=False,
        )
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(30)
        server_spy.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
    result = [line for line in client.stdout.splitlines() if line.startswith("{")]
    print(f"figure {args.figure}: {result[-1] if result else client.stderr.strip()[-300:]}")
    for side in ("server", "client"):
        print(f"{side}:")
        raw = work / f"{side}.txt"
        if not raw.exists():
            # attaching to a running process needs ptrace rights
            print("  no samples: py-spy could not record this process (as root, or with "
                  "kernel.yama.ptrace_scope = 0, it can)")
            continue
        print("\n".join(summarize(raw, root, args.top)))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
