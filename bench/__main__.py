"""`make bench`: warden's costs, measured in one guest boot, beside AppArmor and bcc (not a timed test).

1. Syscall cost (bench/syscalls.py, C loop bench/microbench.c): open+close, fork+exec+wait and
   socket+close with no LSM programs, the floor (an always-allow program on each hook warden uses,
   bench/bpf/bench_floor.bpf.c: the cost of any BPF-LSM program there, inflated under TCG), warden with 10
   and with 10,000 rules, and the same rules as an AppArmor profile (bench/rules.py, bench/compare.py);
   warden's 10 rules plus 10 and plus 1,000 matchPatterns (bench/rules.py PatternRules), and the compile
   time of the 1,000 patterns, on the host and in the guest's engine load.
2. Loading: the shipped CO-RE object against bcc's compile-at-boot of the same program.
3. The real supervisor (bench/startup.py): warden.service under systemd, start to READY split into
   self-protection, gate and enforcement, fresh and adopting; kill -9 to READY with a probe reading a
   Blocked file throughout; resident memory of the supervisor and its agent.
Prints the table and writes bench/results.json, bench/results.png and the README's benchmark section
(`--render`: only redraw those from the last bench/results.json).
Anything that cannot be measured fails the run: no number is skipped or made up.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench import report
from bench.compare import build_microbench, compare_loads, load_apparmor_profiles
from bench.rules import COUNTS, PATTERN_COUNTS, PREPARE_TREE, PatternRules
from bench.startup import image_files, measure_service
from bench.syscalls import CONFIGS, ITERATIONS, OPS, ROUNDS, SyscallSamples, run_rounds
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

RESULTS = REPO_ROOT / "bench" / "results.json"
CHART = REPO_ROOT / "bench" / "results.png"
IDLE_POLL_S = 30
IDLE_WAIT_S = 20 * 60
T = TypeVar("T")


def wait_for_idle_host() -> None:
    """Other guest VMs share the two cores: wait (up to 20 min) until none runs, then go regardless."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while report.other_vms(None) and time.monotonic() < deadline:
        print(f"bench: other guest VMs are running; checking again in {IDLE_POLL_S} s", flush=True)
        time.sleep(IDLE_POLL_S)


class Run:
    """Progress lines, and a count of the checks at which another guest VM was running."""

    def __init__(self, vm: GuestVM) -> None:
        self.vm = vm
        self.started = time.monotonic()
        self.samples = 0
        self.other_vms_seen = 0

    def check_load(self) -> None:
        self.samples += 1
        self.other_vms_seen += bool(report.other_vms(self.vm.workdir))

    def progress(self, text: str) -> None:
        print(f"bench:   {text}", flush=True)
        self.check_load()

    def step(self, what: str, action: Callable[[], T]) -> T:
        print(f"bench: {what} (t+{time.monotonic() - self.started:.0f}s)", flush=True)
        self.check_load()
        result = action()
        self.check_load()
        return result


def syscall_results(samples: SyscallSamples, rounds: int) -> dict[str, Any]:
    ns = {c: {op: samples.median(c, op) for op in OPS} for c in CONFIGS}
    warden = [c for c in CONFIGS if c.startswith("warden")]
    return {
        "rounds": rounds,
        "iterations": dict(ITERATIONS),
        "ns_median": ns,
        "ns_samples": samples.samples,
        "ratio_vs_none": report.ratios(ns, "none", CONFIGS),
        "ratio_vs_floor": report.ratios(ns, "floor", ["floor", *warden]),
        "ratio_warden_vs_apparmor": {f"warden-{n}": {op: ns[f"warden-{n}"][op] / ns[f"apparmor-{n}"][op] for op in OPS}
                                     for n in COUNTS},
        "ratio_10000_vs_10": {kind: {op: ns[f"{kind}-10000"][op] / ns[f"{kind}-10"][op] for op in OPS}
                              for kind in ("warden", "apparmor")},
        "ratio_patterns_vs_exact": {str(n): {op: ns[f"warden-patterns-{n}"][op] / ns["warden-10"][op] for op in OPS}
                                    for n in PATTERN_COUNTS},
    }


def pattern_compile_s() -> dict[str, Any]:
    """Host seconds to compile PatternRules(1000) into its RuleSet and automata, and their size."""
    from bpf.kernel.maps import SCOPE_ANY_CONTAINER, encode_scope
    from bpf.policy.compiler import AnyContainerScope, compile
    from bpf.policy.yaml_loader import parse_policy_text

    n = max(PATTERN_COUNTS)
    policies = parse_policy_text(PatternRules(n).kubearmor(), origin=f"{PatternRules(n).name}.yaml")
    started = time.monotonic()
    ruleset = compile(policies, AnyContainerScope())
    automata = ruleset.file_automata
    encode_scope(SCOPE_ANY_CONTAINER, ruleset)
    return {"patterns": n, "host_compile_s": time.monotonic() - started, "automata": len(automata),
            "states": [a.nstates for a in automata], "classes": [a.nclasses for a in automata]}


def engine_results(samples: SyscallSamples) -> dict[str, Any]:
    return {
        "fresh_load_s_median": statistics.median(t["total"] for t in samples.engine_fresh_s),
        "swap_10_to_10000_s_median": statistics.median(t["total"] for t in samples.engine_swap_s),
        "fresh_load_timings_s": samples.engine_fresh_s,
        "swap_timings_s": samples.engine_swap_s,
        "patterns_swap_timings_s": samples.patterns_swap_s,
        "rule_counts_10000": samples.rule_counts,
        "kernel_costs": samples.kernel_costs,
    }


def measure(vm: GuestVM, run: Run) -> dict[str, Any]:
    guest_kernel = vm.run("uname -r", check=True).stdout.strip()
    lsms = vm.run("cat /sys/kernel/security/lsm", check=True).stdout.strip().split(",")
    if not {"bpf", "apparmor"} <= set(lsms):
        raise RuntimeError(f"the guest kernel needs both the BPF and AppArmor LSMs active, has {lsms}")
    vm.run(PREPARE_TREE, check=True)
    aa_load = run.step("compiling and loading the AppArmor profiles", lambda: load_apparmor_profiles(vm))
    samples = run.step(f"syscall rounds ({ROUNDS}, each: none, AppArmor, floor, warden)",
                       lambda: run_rounds(vm, ROUNDS, run.progress))
    loads = run.step("bcc compile+load vs CO-RE load", lambda: compare_loads(vm))
    service = run.step("warden.service: fresh start, adopting restart, kill -9 recovery, memory",
                       lambda: measure_service(vm))
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**report.host_machine(), "guest_kernel": guest_kernel, "accel": vm.accel,
                    "guest_vcpus": vm.options.cpus, "guest_memory_mib": vm.options.memory_mib,
                    "guest_lsms": lsms, "other_vms_seen": run.other_vms_seen, "samples": run.samples},
        "syscalls": syscall_results(samples, ROUNDS),
        "engine": engine_results(samples),
        "apparmor_profile_load_s": {str(k): v for k, v in aa_load.items()},
        "patterns": {**pattern_compile_s(),
                     "guest_compile_s_median": statistics.median(t["compile"] for t in samples.patterns_swap_s)},
        "load_comparison": loads.to_json(),
        "service": service.to_json(),
    }


def run_benchmark() -> dict[str, Any]:
    microbench = build_microbench()
    print(f"bench: built {microbench.relative_to(REPO_ROOT)}", flush=True)
    wait_for_idle_host()
    with tempfile.TemporaryDirectory(prefix="warden-bench-") as tmp:
        work = Path(tmp)
        files = image_files(work / "owner")
        with GuestVM(GuestOptions(tpm=True, files=files), work / "guest") as vm:
            results = measure(vm, Run(vm))
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def main(argv: list[str]) -> int:
    """`python -m bench` measures; `python -m bench --render` redraws the table, chart and README
    section from the last run's bench/results.json without measuring."""
    if argv not in ([], ["--render"]):
        print("usage: python -m bench [--render]", file=sys.stderr)
        return 2
    results = json.loads(RESULTS.read_text()) if argv else run_benchmark()
    CHART.write_bytes(report.chart(results))
    report.update_readme(results)
    print()
    print(report.text_table(results))
    print(f"\nwritten {RESULTS.relative_to(REPO_ROOT)}, {CHART.relative_to(REPO_ROOT)}, README.md (benchmark section)")
    if results["machine"]["other_vms_seen"]:
        print("bench: WARNING: other guest VMs ran during the measurements; the numbers may be distorted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
