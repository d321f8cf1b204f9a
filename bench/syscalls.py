"""Syscall costs under each configuration, measured in interleaved rounds in one guest.

Each round measures every configuration once, in the same order (none, AppArmor 10, AppArmor 10,000,
floor, warden 10, warden 10 + 10 matchPatterns, warden 10 + 1,000 matchPatterns, warden 10,000), so slow
drift of the emulated machine touches them all alike; the
report takes medians over rounds. Every run is `unshare -m`: an unregistered mount namespace, to which
warden applies its any-container rules (the bench policy selects every container).
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.compare import MICROBENCH
from bench.rules import BLOCKED_BINARY, EXEC_BINARY, PATTERN_COUNTS, TARGET, BenchRules, PatternRules
from tests.guest.vm import REPO_ROOT, GuestVM

OPS = ("open", "exec", "socket", "read", "write")
ITERATIONS = {"open": 20_000, "exec": 100, "socket": 20_000, "read": 1_000_000, "write": 1_000_000}
RW_TARGET = "/tmp/bench-rw"  # no rule forbids it: the remembered allow's one lookup per read or write
CONFIGS = ("none", "apparmor-10", "apparmor-10000", "floor", "warden-10", "warden-patterns-10",
           "warden-patterns-1000", "warden-10000")
ROUNDS = 5
BENCH_PIN_DIR = "/sys/fs/bpf/warden-bench"  # not warden.service's: the harness never touches its pins
BENCH_STATE_DIR = "/run/warden-bench"
FLOOR_PINS = "/sys/fs/bpf/bench-floor"
PY = f"{REPO_ROOT}/.venv/bin/python"

APPLY = textwrap.dedent(f"""
    import json, sys
    from pathlib import Path
    from bpf.kernel.engine import Engine
    from bpf.policy.files import load_policy_paths
    engine = Engine(Path("{BENCH_PIN_DIR}"), Path("{BENCH_STATE_DIR}"))
    if sys.argv[1] == "teardown":
        engine.teardown()
    else:
        report = engine.load_or_adopt(load_policy_paths([Path(sys.argv[1])]))
        print(json.dumps({{"mode": report.mode, "timings": dict(report.timings_s),
                          "counts": dict(report.rule_counts)}}))
""")

FLOOR = textwrap.dedent(f"""
    from pathlib import Path
    from bpf.kernel.libbpf import BpfObject, Libbpf
    from bpf.kernel.objects import CHECKOUT_DIR
    pins = Path("{FLOOR_PINS}")
    pins.mkdir(exist_ok=True)
    with BpfObject(Libbpf(), CHECKOUT_DIR / "bench" / "bench_floor.bpf.o") as obj:
        obj.load()
        for prog in obj.programs():
            link = prog.attach()
            link.pin(pins / prog.name)
            link.release()
""")


@dataclass
class SyscallSamples:
    """ns per operation: samples[config][op] is one value per round."""

    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {c: {op: [] for op in OPS} for c in CONFIGS})
    engine_fresh_s: list[dict[str, float]] = field(default_factory=list)
    engine_swap_s: list[dict[str, float]] = field(default_factory=list)
    patterns_swap_s: list[dict[str, float]] = field(default_factory=list)  # to 10 exact + 1,000 patterns
    rule_counts: dict[str, int] = field(default_factory=dict)
    # config -> program -> {"ns_per_run", "runs"}: the kernel's own account (kernel.bpf_stats_enabled)
    kernel_costs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def median(self, config: str, op: str) -> float:
        return statistics.median(self.samples[config][op])


def measure(vm: GuestVM, prefix: str = "") -> dict[str, float]:
    """One run of each microbench op; `prefix` goes between `unshare -m` and the microbench."""
    args = {"open": f"open {TARGET}", "exec": f"exec {EXEC_BINARY}", "socket": "socket",
            "read": f"read {TARGET}", "write": f"write {RW_TARGET}"}
    script = "; ".join(f"{prefix}{MICROBENCH} {args[op]} {ITERATIONS[op]} || exit 1" for op in OPS)
    out = vm.run(f"unshare -m sh -c '{script}'", timeout=600, check=True)
    values = [float(v) for v in out.stdout.split()]
    if len(values) != len(OPS):
        raise RuntimeError(f"microbench printed {out.stdout!r}")
    return dict(zip(OPS, values, strict=True))


class Harness:
    """The guest-side switches between configurations."""

    def __init__(self, vm: GuestVM) -> None:
        self.vm = vm
        self.apply_script = vm.write_shared("bench-apply.py", APPLY)
        self.policies: dict[int | str, str] = {r.count: vm.write_shared(f"{r.name}.yaml", r.kubearmor())
                                               for r in (BenchRules(10), BenchRules(10_000))}
        self.policies.update({f"patterns-{n}": vm.write_shared(f"{PatternRules(n).name}.yaml",
                                                               PatternRules(n).kubearmor())
                              for n in PATTERN_COUNTS})

    def apply(self, count: int | str) -> dict[str, Any]:
        out = self.vm.run(f"cd {REPO_ROOT} && {PY} {self.apply_script} {self.policies[count]}",
                          timeout=900, check=True)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def teardown(self) -> None:
        self.vm.run(f"cd {REPO_ROOT} && {PY} {self.apply_script} teardown", timeout=300, check=True)

    def floor_on(self) -> None:
        self.vm.python(FLOOR, timeout=300, check=True)

    def floor_off(self) -> None:
        self.vm.run(f"rm -rf {FLOOR_PINS}", check=True)

    def enforcing(self) -> bool:
        """Whether a write under the readOnly tree and an exec of a blocked binary are both refused."""
        write = self.vm.run(f"unshare -m sh -c 'echo x > {TARGET}'")
        run = self.vm.run(f"unshare -m {BLOCKED_BINARY}")
        return write.returncode != 0 and run.returncode != 0


def timings(report: dict[str, Any]) -> dict[str, float]:
    values: dict[str, Any] = report["timings"]
    return {str(k): float(v) for k, v in values.items()}


def run_rounds(vm: GuestVM, rounds: int, progress: Callable[[str], None]) -> SyscallSamples:
    harness = Harness(vm)
    result = SyscallSamples()
    for index in range(rounds):
        for config in ("none", "apparmor-10", "apparmor-10000"):
            prefix = "" if config == "none" else f"aa-exec -p bench-{config.split('-')[1]} -- "
            record(result, config, measure(vm, prefix))
        harness.floor_on()
        record(result, "floor", measure(vm))
        harness.floor_off()
        fresh = harness.apply(10)
        if fresh["mode"] != "loaded":
            raise RuntimeError(f"round {index}: expected a fresh engine load, got {fresh}")
        result.engine_fresh_s.append(timings(fresh))
        record(result, "warden-10", measure(vm))
        for n in PATTERN_COUNTS:
            swapped = harness.apply(f"patterns-{n}")
            if n == max(PATTERN_COUNTS):
                result.patterns_swap_s.append(timings(swapped))
            record(result, f"warden-patterns-{n}", measure(vm))
        swap = harness.apply(10_000)
        result.engine_swap_s.append(timings(swap))
        result.rule_counts = {str(k): int(v) for k, v in swap["counts"].items()}
        record(result, "warden-10000", measure(vm))
        if not harness.enforcing():
            raise RuntimeError("the benchmark rules were not enforced: measurements invalid")
        harness.teardown()
        progress(f"round {index + 1}/{rounds} done")
    result.kernel_costs = kernel_costs(vm, harness)
    progress("kernel-measured cost per program done")
    return result


def program_stats(vm: GuestVM) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of every warden and floor program, as the kernel counts them."""
    progs = json.loads(vm.run("bpftool -j prog show", check=True).stdout)
    return {str(p["name"]): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0))) for p in progs
            if str(p.get("name", "")).startswith(("warden_", "floor_"))}


def kernel_costs(vm: GuestVM, harness: Harness) -> dict[str, dict[str, dict[str, float]]]:
    """One extra pass of every op with kernel.bpf_stats_enabled, for the floor and for warden with
    10 rules: each program's run_time_ns / run_cnt over the pass, far steadier under TCG than the
    syscall timings (which this pass does not feed: the stats cost two clock reads per run)."""
    costs: dict[str, dict[str, dict[str, float]]] = {}
    vm.run("sysctl -qw kernel.bpf_stats_enabled=1", check=True)
    try:
        for config in ("floor", "warden-10"):
            if config == "floor":
                harness.floor_on()
            else:
                harness.apply(10)
            before = program_stats(vm)
            measure(vm)
            after = program_stats(vm)
            if config == "floor":
                harness.floor_off()
            else:
                harness.teardown()
            costs[config] = {}
            for name, (ns, runs) in sorted(after.items()):
                ns0, runs0 = before.get(name, (0, 0))
                if runs > runs0:
                    costs[config][name] = {"ns_per_run": (ns - ns0) / (runs - runs0), "runs": float(runs - runs0)}
    finally:
        vm.run("sysctl -qw kernel.bpf_stats_enabled=0")
    return costs


def record(result: SyscallSamples, config: str, values: dict[str, float]) -> None:
    for op, value in values.items():
        result.samples[config][op].append(value)
