"""
A real node process under measurement: C{twistd -n botd2} started from this
checkout (as L{tests.test_node} starts it), its memory, CPU and descriptors
read from C{/proc}, and a sampler thread that records them while an attack
or a soak runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from botd2.keys import PublicKey
from tests.test_node import LISTENING, ROOT, TWISTD, checkoutEnv

#: Clock ticks per second of C{utime}/C{stime} in C{/proc/PID/stat}.
TICKS = os.sysconf("SC_CLK_TCK")

#: The node's handshake caps are not C{twistd botd2} options: to run a node
#: with other caps, this program sets the defaults of C{PeerFactory} first,
#: then runs twistd exactly as L{TWISTD} does (same plugin, same service).
_CAPS_PROGRAM = (
    "import sys\n"
    "from botd2.protocol import PeerFactory\n"
    "defaults = PeerFactory.__init__.__kwdefaults__\n"
    "defaults['maxHandshakes'] = int(sys.argv.pop(1))\n"
    "defaults['maxHandshakesPerAddress'] = int(sys.argv.pop(1))\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)

#: Bound on the wait for a node's "listening on" line.
START_WAIT = 20.0


def rssBytes(pid: int) -> int:
    """The resident set size (C{VmRSS}) of process C{pid}, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpuSeconds(pid: int) -> float:
    """User + system CPU time used so far by process C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    # The command name (field 2) may hold spaces: split after its ")".
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fdCount(pid: int) -> int:
    """How many file descriptors process C{pid} holds (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpuWindow(pid: int, seconds: float) -> float:
    """The CPU use of C{pid} over the next C{seconds}, as a fraction of one core."""
    start, t0 = cpuSeconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpuSeconds(pid) - start) / (time.monotonic() - t0)


@dataclass
class Sample:
    """One reading: seconds since the sampler started, RSS bytes, CPU seconds, fds."""

    t: float
    rss: int
    cpu: float
    fds: int


class Sampler:
    """
    Reads a process's RSS, CPU time and descriptor count every C{period}
    seconds in a daemon thread, until L{stop}.
    """

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[Sample] = []
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = Sample(time.monotonic() - self._start, rssBytes(self.pid),
                                cpuSeconds(self.pid), fdCount(self.pid))
            except (OSError, RuntimeError):
                return  # the process is gone
            self.samples.append(sample)
            self._stop.wait(self.period)

    def now(self) -> float:
        return time.monotonic() - self._start

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(5)
        return self.samples

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.t <= end]

    def peakRSS(self, start: float, end: float) -> int:
        return max((s.rss for s in self.between(start, end)), default=0)

    def peakFds(self, start: float, end: float) -> int:
        return max((s.fds for s in self.between(start, end)), default=0)

    def cpuWindows(self, start: float, end: float, window: float = 1.0) -> list[float]:
        """CPU use (fraction of a core) over consecutive C{window}-second spans."""
        samples = self.between(start, end)
        out: list[float] = []
        i = 0
        for j, s in enumerate(samples):
            if s.t - samples[i].t >= window:
                out.append((s.cpu - samples[i].cpu) / (s.t - samples[i].t))
                i = j
        return out


@dataclass(eq=False)
class NodeProcess:
    """A running C{twistd -n botd2}: its process, directory, identity and address."""

    process: subprocess.Popen[bytes]
    directory: str
    key: PublicKey
    host: str
    port: int
    files: list[IO[bytes]] = field(default_factory=list)
    removeDirectory: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{self.key.node_id}@{self.host}:{self.port}"

    def log(self) -> str:
        """Everything the node wrote, stdout (its log) then stderr."""
        return "".join(
            _read(os.path.join(self.directory, name)) for name in ("stdout.log", "stderr.log")
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Kill the node (if it runs), close its log files, remove its directory if ours."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(START_WAIT)
        for f in self.files:
            f.close()
        if self.removeDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def startNode(
    args: Sequence[str] = (),
    *,
    directory: str | None = None,
    maxHandshakes: int | None = None,
    maxHandshakesPerAddress: int | None = None,
) -> NodeProcess:
    """
    Start C{twistd -n botd2 --port tcp:0:interface=127.0.0.1 --key node.key
    ARGS} from this checkout in C{directory} (a new temporary one, removed
    by L{NodeProcess.stop}, if not given); wait (bounded) for its "listening
    on" line.  C{maxHandshakes} / C{maxHandshakesPerAddress}: run it with
    these caps instead of the defaults (512 / 16) through L{_CAPS_PROGRAM}.
    """
    remove = directory is None
    directory = directory or tempfile.mkdtemp(prefix="botd2-soak-node-")
    if maxHandshakes is None and maxHandshakesPerAddress is None:
        program = list(TWISTD)
    else:
        program = [sys.executable, "-c", _CAPS_PROGRAM,
                   str(maxHandshakes or 512), str(maxHandshakesPerAddress or 16)]
    files: list[IO[bytes]] = [
        open(os.path.join(directory, name), "wb")  # noqa: SIM115 - closed by stop()
        for name in ("stdout.log", "stderr.log")
    ]
    process = subprocess.Popen(
        [*program, "-n", "--pidfile", "", "--logfile", "-", "botd2",
         "--port", "tcp:0:interface=127.0.0.1", "--key", "node.key", *args],
        cwd=directory,
        env=checkoutEnv(),
        stdin=subprocess.DEVNULL,
        stdout=files[0],
        stderr=files[1],
    )
    node: NodeProcess | None = None
    deadline = time.monotonic() + START_WAIT
    out = os.path.join(directory, "stdout.log")
    while node is None:
        match = LISTENING.search(_read(out))
        if match:
            node = NodeProcess(process, directory, PublicKey.from_node_id(match["node"]),
                               match["host"].strip("[]"), int(match["port"]), files, remove)
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(START_WAIT)
            text = _read(out) + _read(os.path.join(directory, "stderr.log"))
            for f in files:
                f.close()
            raise RuntimeError(f"the node did not start:\n{text}")
        time.sleep(0.02)
    return node


def workerCommand(module: str, *args: str) -> list[str]:
    """The command line of C{python -m MODULE ARGS} from this checkout."""
    return [sys.executable, "-m", module, *args]


def workerEnv() -> dict[str, str]:
    return checkoutEnv()


def workerCwd() -> str:
    return ROOT


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
