"""
The long fuzz run: a plain loop, no Hypothesis, the same generators,
mutators and oracles as C{tests/test_fuzz.py}.

    python -m fuzz.run --inputs 1000000 [--target all|responder|initiator|
        transport|buffer|twisted] [--seed N] [--allow-known] [--stop-on-first]
    python -m fuzz.run --replay REPRODUCER

Prints, per target, the inputs run, the outcomes (rejected with which code,
accepted, ...), the violations and the time; prints each distinct
violation once, with a reproducer (C{--replay} runs it again).  Exits 1 on
any violation or harness error (with C{--allow-known}, violations that
L{fuzz.oracles.known_bug} recognises are reported but do not fail the run).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.logger import ILogObserver, LogEvent, globalLogBeginner
from zope.interface import provider

from fuzz import oracles, strategies
from fuzz.mutators import RandomChooser
from fuzz.pool import pool

#: How the inputs of C{--target all} are shared out (per 100).
WEIGHTS = {"responder": 25, "initiator": 20, "transport": 30, "buffer": 10, "twisted": 15}


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)


def schedule(target: str, inputs: int) -> list[tuple[str, int]]:
    """(target, count) for each target, C{inputs} in all."""
    if target != "all":
        return [(target, inputs)]
    total = sum(WEIGHTS.values())
    counts = [(t, inputs * w // total) for t, w in WEIGHTS.items()]
    short = inputs - sum(c for _, c in counts)
    counts[0] = (counts[0][0], counts[0][1] + short)
    return counts


def known_label(v: oracles.Violation) -> str:
    bug = oracles.known_bug(v)
    return f" [known: {bug}]" if bug else ""


def run(
    target: str,
    inputs: int,
    seed: int,
    allow_known: bool = False,
    stop_on_first: bool = False,
    progress: float = 60.0,
    echo: Callable[[str], object] = print,
) -> tuple[dict[str, Stats], int]:
    """
    Run the inputs, interleaving targets; the stats and the number of
    failures.  Each distinct violation goes to C{echo} once.
    """
    plan = schedule(target, inputs)
    stats = {t: Stats() for t, _ in plan}
    left = {t: n for t, n in plan}
    choosers = {t: RandomChooser(random.Random(f"{seed}:{t}")) for t, _ in plan}
    seen: set[str] = set()
    failures = 0
    order = [t for t, _ in plan for _ in range(WEIGHTS[t] if target == "all" else 1)]
    start = last_report = time.perf_counter()
    done = 0
    while any(left.values()):
        for t in order:
            if not left[t]:
                continue
            left[t] -= 1
            s = stats[t]
            began = time.perf_counter()
            case = None
            try:
                case = strategies.generate(t, choosers[t])
                outcome = oracles.check(t, case)
                s.outcomes[outcome] += 1
            except oracles.Violation as v:
                key = f"{v.summary}{known_label(v)}"
                s.violations[key] += 1
                if not (allow_known and oracles.known_bug(v)):
                    failures += 1
                if key not in seen:
                    seen.add(key)
                    echo(f"\n=== VIOLATION ({t}){known_label(v)}\n{v}\n")
                if stop_on_first and failures:
                    s.inputs += 1
                    return stats, failures
            except Exception:
                failures += 1
                s.violations["harness error"] += 1
                echo(f"\n=== HARNESS ERROR ({t})\n{traceback.format_exc()}")
                if case is not None:
                    echo(f"reproducer: {case.reproducer()}")
                if stop_on_first:
                    return stats, failures
            s.seconds += time.perf_counter() - began
            s.inputs += 1
            done += 1
            now = time.perf_counter()
            if now - last_report >= progress:
                last_report = now
                print(
                    f"[{now - start:7.0f} s] {done} inputs, {done / (now - start):.0f}/s, "
                    + ", ".join(f"{k} {v.inputs}" for k, v in stats.items()),
                    file=sys.stderr,
                    flush=True,
                )
    return stats, failures


@provider(ILogObserver)
def _discard(event: LogEvent) -> None:
    """A log observer that keeps nothing."""


def report(stats: dict[str, Stats], elapsed: float, cpu: float) -> None:
    total = sum(s.inputs for s in stats.values())
    print(
        f"\n{total} inputs in {elapsed:.1f} s wall clock ({total / max(elapsed, 1e-9):.0f}/s), "
        f"{cpu:.1f} s CPU ({total / max(cpu, 1e-9):.0f}/s)"
    )
    for t, s in stats.items():
        rate = s.inputs / max(s.seconds, 1e-9)
        accepted = sum(n for k, n in s.outcomes.items() if not k.startswith(("rejected", "closed")))
        print(f"\n{t}: {s.inputs} inputs, {s.seconds:.1f} s ({rate:.0f}/s), {accepted} accepted")
        for outcome, n in sorted(s.outcomes.items()):
            print(f"    {outcome:52} {n:9}")
        for violation, n in s.violations.most_common():
            print(f"    VIOLATION {violation:42} {n:9}")


def replay(text: str) -> int:
    target, case = strategies.parse_reproducer(text)
    try:
        outcome = oracles.check(target, case)
    except oracles.Violation as v:
        print(f"VIOLATION{known_label(v)}\n{v}")
        return 1
    print(f"{target}: {outcome}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fuzz.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--target", default="all", choices=("all", *strategies.TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-known", action="store_true", help="known bugs do not fail the run")
    parser.add_argument("--stop-on-first", action="store_true")
    parser.add_argument(
        "--progress", type=float, default=60.0, help="seconds between progress lines"
    )
    parser.add_argument("--replay", metavar="REPRODUCER", help="run one reproducer (or @file)")
    args = parser.parse_args(argv)
    if args.replay:
        text = args.replay
        if text.startswith("@"):
            with open(text[1:]) as f:
                text = f.read()
        return replay(text)
    pool()
    # Twisted prints logged errors on stderr until logging begins: begin it,
    # into nothing (the oracles have their own observers).
    globalLogBeginner.beginLoggingTo([_discard], redirectStandardIO=False)
    print(f"fuzz.run: {args.inputs} inputs, target {args.target}, seed {args.seed}", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    stats, failures = run(
        args.target,
        args.inputs,
        args.seed,
        args.allow_known,
        args.stop_on_first,
        args.progress,
        echo=lambda text: print(text, flush=True),
    )
    report(stats, time.perf_counter() - start, time.process_time() - cpu)
    print(f"\n{'FAILED' if failures else 'OK'}: {failures} failing input(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
