"""
Where botd2's time and memory go, figure by figure: the figures of
L{bench.compare}, botd2 only, with the server and the client processes under
cProfile (CPU time, so that time spent descheduled on a busy machine is not
counted), and the RSS figure under tracemalloc.

Run from the repository root::

    python -m bench.profile_botd2                          # every figure
    python -m bench.profile_botd2 --figures small,bulk --top 15

For each figure and side: the CPU seconds, the functions with the most own
time (share of the process's CPU time), and the botd2 functions with the
most cumulative time.  For the RSS figure: the allocation sites that grew
with N held connections (Python objects only: what OpenSSL and the Rust
AES-GCM objects allocate is not traced), against the RSS growth, and a count
of native memory per C{AESGCM} object.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import make_certificates, raise_fd_limit
from bench.compare import ChildFailed, Children, git_state, snapshot, source_digest

FIGURES: dict[str, tuple[str, list[str]]] = {
    "connect8": ("connect", ["--loops", "8", "--seconds", "3", "--warmup", "0.3"]),
    "bulk": ("bulk", ["--size", "65536", "--count", str(64 * 16)]),
    "small": ("small", ["--size", "100", "--count", "100000"]),
    "rtt": ("rtt", ["--count", "2000"]),
}


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def summarize(path: Path, top: int) -> list[str]:
    """The top functions of a cProfile dump, by own time, and botd2's by cumulative time."""
    stats = pstats.Stats(str(path))
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = {"<method 'poll' of 'select.epoll' objects>"}
    total = sum(v[2] for v in entries.values())
    busy = total - sum(v[2] for k, v in entries.items() if k[2] in idle)
    lines = [f"  CPU {total:.2f} s, of which {busy:.2f} s outside epoll"]
    lines.append("  own time:")
    ranked = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)
    for func, (_cc, nc, tt, _ct, _callers) in ranked[:top]:
        share = 100 * tt / busy if busy else 0.0
        lines.append(f"    {share:5.1f}%  {tt:7.3f} s  {nc:>9,} calls  {_label(func)}")
    lines.append("  botd2 functions, cumulative time:")
    mine = [kv for kv in entries.items() if "/botd2/" in kv[0][0]]
    mine.sort(key=lambda kv: kv[1][3], reverse=True)
    for func, (_cc, nc, _tt, ct, _callers) in mine[:top]:
        share = 100 * ct / busy if busy else 0.0
        lines.append(f"    {share:5.1f}%  {ct:7.3f} s  {nc:>9,} calls  {_label(func)}")
    return lines


def profile_figure(children: Children, work: Path, key: str, top: int) -> None:
    figure, options = FIGURES[key]
    server_prof = work / f"{key}-server.pstats"
    client_prof = work / f"{key}-client.pstats"
    children.profile = None  # paths given by hand below
    server = children.start(
        f"profile-server-{key}",
        ["-m", "bench._server", "--transport", "botd2", "--cprofile", str(server_prof)],
    )
    hello = server.readline(30)
    try:
        client = children.start(
            f"profile-client-{key}",
            [
                "-m",
                "bench._client",
                "--transport",
                "botd2",
                "--port",
                str(hello["port"]),
                "--node",
                hello["node"],
                "--figure",
                figure,
                "--cprofile",
                str(client_prof),
                *options,
            ],
        )
        result = client.readline(300)
        client.stop(grace=10)
    finally:
        server.stop(grace=10)
    print(f"== {key}: {result.get('value'):,.1f} {result.get('unit')} (under cProfile)")
    for side, path in (("server", server_prof), ("client", client_prof)):
        print(f" {side}:")
        if path.exists():
            print("\n".join(summarize(path, top)))
        else:
            print("  (no profile written)")
    print()


def profile_rss(children: Children, n: int, top: int, transport: str = "botd2") -> None:
    """Allocation sites grown with C{n} connections held by one server process."""
    certs = ["--certs", str(children.certs)]
    server = children.start(
        f"profile-server-rss-{transport}",
        [
            *("-m", "bench._server", "--transport", transport, *certs),
            *("--tracemalloc", "--max-conns", str(n + 100)),
        ],
    )
    hello = server.readline(30)
    clients = []
    try:
        before = server.command("snap")
        rss_before = server.command("stats")["rss_kib"]
        per = 2500
        k = max(1, -(-n // per))
        for i in range(k):
            share = n // k + (1 if i < n % k else 0)
            clients.append(
                children.start(
                    f"profile-hold-{i}",
                    [
                        "-m",
                        "bench._client",
                        "--transport",
                        transport,
                        *certs,
                        "--port",
                        str(hello["port"]),
                        "--node",
                        hello["node"],
                        "--figure",
                        "hold",
                        "--count",
                        str(share),
                        "--bind",
                        f"127.200.{os.getpid() % 250}.{i + 2}",
                    ],
                )
            )
        held = sum(c.readline(300)["ready"] for c in clients)
        time.sleep(2)
        stats = server.command("stats")
        top_lines = server.command(f"top {top}", timeout=120)["top"]
    finally:
        for c in clients:
            c.kill()
        server.kill()
    growth = stats["rss_kib"] - rss_before
    print(f"== RSS, {transport} server, {held:,} connections held (tracemalloc on)")
    print(
        f"  RSS grew {growth:,} KiB = {growth / max(held, 1):.2f} KiB/conn;"
        f" traced before {before['traced_kib']:,} KiB"
    )
    for line in top_lines:
        print("  " + line)
    print()


_CEILING = """
import sys, time
from pathlib import Path
from OpenSSL import SSL
from bench._common import tls_client_creator, tls_server_options
from botd2.connection import Initiator, Responder
from botd2.keys import PrivateKey

certs = Path(sys.argv[1])
server_ctx = tls_server_options(certs, "X25519").getContext()
creator = tls_client_creator(certs, "X25519")
client_ctx = creator._createConnection.__self__.getContext()


def tls() -> None:
    s = SSL.Connection(server_ctx, None)
    s.set_accept_state()
    c = SSL.Connection(client_ctx, None)
    c.set_connect_state()
    c.set_tlsext_host_name(b"localhost")
    for _ in range(4):
        for a, b in ((c, s), (s, c)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    c.send(b"x")
    s.bio_write(c.bio_read(65536))
    assert s.recv(10) == b"x"


a, b = PrivateKey.generate(), PrivateKey.generate()


def botd2() -> None:
    i = Initiator(a, b.public_key)
    r = Responder(b)
    i.initiate()
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    r.receive_data(i.data_to_send())
    assert i.handshake_complete and r.handshake_complete


best = {}
for _ in range(5):
    for name, f, n in (("tls", tls, 100), ("botd2", botd2, 300)):
        f()
        t = time.process_time()
        for _ in range(n):
            f()
        us = (time.process_time() - t) / n * 1e6
        best[name] = min(best.get(name, us), us)
print(best["tls"], best["botd2"])
"""


def ceiling(certs: Path, root: Path) -> None:
    """
    In memory, no sockets, no Twisted: one TLS 1.3 handshake with client
    certificates (pyOpenSSL, the benchmark's own contexts) against one botd2
    handshake (the sans-IO state machines), both sides, CPU time, best of 5.
    """
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", _CEILING, str(certs)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    tls_us, botd2_us = float(out[0]), float(out[1])
    print("== handshake CPU in memory, both sides (no sockets, no Twisted)")
    print(f"  TLS 1.3 + client certificate (pyOpenSSL)  {tls_us:8,.0f} µs")
    print(f"  botd2 (sans-IO Initiator + Responder)     {botd2_us:8,.0f} µs")
    print(f"  TLS / botd2                               {tls_us / botd2_us:8.2f}x")
    print()


_NATIVE = """
import gc, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from bench._common import rss_kib
what, n = sys.argv[1], int(sys.argv[2])
def make(i):
    if what == "bytes":
        return os.urandom(32)
    aead = AESGCM(os.urandom(32))
    if what == "used":
        nonce = bytes(12)
        aead.decrypt(nonce, aead.encrypt(nonce, b"x", b""), b"")
    return aead
make(0)
gc.collect()
r0 = rss_kib()
keep = [make(i) for i in range(n)]
gc.collect()
print((rss_kib() - r0) * 1024 / n)
"""


def native_aesgcm(n: int = 20000) -> None:
    """RSS per AESGCM object, fresh and after its first use, each in a fresh process."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for label, what in (
        ("AESGCM(key)", "fresh"),
        ("AESGCM, used once", "used"),
        ("32 random bytes", "bytes"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", _NATIVE, what, str(n)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        print(f"  {label:<18} {float(out):8.0f} bytes each (RSS growth / {n:,})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_botd2")
    parser.add_argument("--figures", default="ceiling,connect8,bulk,small,rtt,rss")
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--rss-count", type=int, default=10000)
    parser.add_argument(
        "--rss-transports", default="botd2,tcp", help="servers to trace for the RSS figure"
    )
    parser.add_argument("--keep", type=Path, help="keep the .pstats files in this directory")
    parser.add_argument("--git", metavar="REV", help="profile botd2/ as of this commit")
    args = parser.parse_args(argv)
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="botd2-profile-"))
    (work / "logs").mkdir()
    (work / "certs").mkdir()
    make_certificates(work / "certs")
    src = snapshot(work / "src", args.git)
    print(f"code: botd2 from {git_state(args.git)}; sha256(botd2/*.py) {source_digest(src)}\n")
    children = Children(work / "logs", work / "certs", "X25519", None, src)
    try:
        for key in args.figures.split(","):
            try:
                if key == "ceiling":
                    ceiling(work / "certs", src)
                elif key == "rss":
                    for transport in args.rss_transports.split(","):
                        profile_rss(children, args.rss_count, args.top, transport)
                    print("== native memory per object (each in a fresh process)")
                    native_aesgcm()
                else:
                    profile_figure(children, work, key, args.top)
            except ChildFailed as e:
                print(f"== {key}: FAILED: {e}")
    finally:
        children.kill_all()
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in work.glob("*.pstats"):
                shutil.copy(f, args.keep / f.name)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
