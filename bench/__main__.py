"""`make bench`: the BPF-LSM engine's costs, measured in one guest boot (not a timed test).

- open()+close() of a file in a protected tree (C loop, bench/microbench.c), run in an unregistered
  mount namespace (so the any-container rules apply), with: no warden programs; the floor (an
  always-allow program on each hook warden uses, bpf/bench_floor.bpf.c: the cost of any BPF-LSM program
  there, inflated under TCG); warden with 10 rules on the tree; warden with 10,000 rules on the tree.
- load-and-attach time of all objects (fresh), and the time to adopt existing pins.
Prints a table and writes bench/results.json. Runs interleave (A B C A B C ...) and report medians, so
slow drift of the emulated machine does not favour one configuration.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.compare import build_microbench
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

PY = f"{REPO_ROOT}/.venv/bin/python"
TREE = "/srv/warden-bench"
TARGET = f"{TREE}/a/b/c/file"
ITERATIONS = 20_000
ROUNDS = 5
RESULTS = REPO_ROOT / "bench" / "results.json"


def rules_policy(count: int) -> str:
    """`count` rules on the tree: a readOnly directory rule covering TARGET (so every open walks to it
    and matches) plus exact Block rules on its siblings."""
    paths = "\n".join(f"      - path: {TREE}/a/b/c/other-{i}" for i in range(count - 1))
    return textwrap.dedent(f"""
        apiVersion: security.kubearmor.com/v1
        kind: KubeArmorPolicy
        metadata:
          name: bench-{count}
        spec:
          selector:
            matchLabels:
              kubearmor.io/container.name: ".*"
          action: Block
          file:
            matchDirectories:
              - dir: {TREE}/a/
                recursive: true
                readOnly: true
            matchPaths:
        """) + paths + "\n"


APPLY = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from bpf.engine import Engine
    from bpf.policy import load_policy_paths
    report = Engine().load_or_adopt(load_policy_paths([Path(sys.argv[1])]))
    print(json.dumps({"mode": report.mode, "timings": report.timings_s, "counts": report.rule_counts}))
""")

FLOOR = textwrap.dedent("""
    from pathlib import Path
    from bpf.loader import BpfObject, Libbpf
    from bpf.objects import object_path
    pins = Path("/sys/fs/bpf/bench-floor")
    pins.mkdir(exist_ok=True)
    with BpfObject(Libbpf(), object_path("bench_floor")) as obj:
        obj.load()
        for prog in obj.programs():
            link = prog.attach()
            link.pin(pins / prog.name)
            link.release()
""")


def open_close_ns(vm: GuestVM, microbench: Path) -> float:
    out = vm.run(f"unshare -m {microbench} open {TARGET} {ITERATIONS}", timeout=300, check=True)
    return float(out.stdout.strip())


def apply(vm: GuestVM, policy_file: str) -> dict[str, object]:
    script = vm.write_shared("apply.py", APPLY)
    out = vm.run(f"cd {REPO_ROOT} && {PY} {script} {policy_file}", timeout=600, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> int:
    microbench = build_microbench()
    with tempfile.TemporaryDirectory(prefix="warden-bench-") as tmp, GuestVM(GuestOptions(), Path(tmp)) as vm:
        vm.run(f"mkdir -p {TREE}/a/b/c && echo data > {TARGET}", check=True)
        p10 = vm.write_shared("bench-10.yaml", rules_policy(10))
        p10k = vm.write_shared("bench-10000.yaml", rules_policy(10_000))
        samples: dict[str, list[float]] = {"none": [], "floor": [], "warden-10": [], "warden-10000": []}

        # no programs, then the floor, interleaved
        for _ in range(ROUNDS):
            samples["none"].append(open_close_ns(vm, microbench))
        vm.python(FLOOR, check=True)
        for _ in range(ROUNDS):
            samples["floor"].append(open_close_ns(vm, microbench))
        vm.run("rm -rf /sys/fs/bpf/bench-floor", check=True)
        # warden: fresh load (timed), adopt (timed), then 10 vs 10,000 rules interleaved by re-applying
        fresh = apply(vm, p10)
        adopt = apply(vm, p10)
        assert fresh["mode"] == "loaded" and adopt["mode"] == "adopted", (fresh, adopt)
        for _ in range(ROUNDS):
            samples["warden-10"].append(open_close_ns(vm, microbench))
        swap = apply(vm, p10k)
        for _ in range(ROUNDS):
            samples["warden-10000"].append(open_close_ns(vm, microbench))
        # check the rules really are there: a write in the tree is refused
        refused = vm.run(f"unshare -m sh -c 'echo x > {TARGET}'")
        assert refused.returncode != 0, "benchmark rules not enforced"
        back = apply(vm, p10)  # and back, so 10 rules is measured on both sides of 10,000
        for _ in range(ROUNDS):
            samples["warden-10"].append(open_close_ns(vm, microbench))
        vm.run(f"{REPO_ROOT}/.venv/bin/warden teardown", check=True)
        for _ in range(ROUNDS):
            samples["none"].append(open_close_ns(vm, microbench))
        accel = vm.accel

    med = {k: statistics.median(v) for k, v in samples.items()}
    fresh_t: dict[str, float] = fresh["timings"]  # type: ignore[assignment]
    adopt_t: dict[str, float] = adopt["timings"]  # type: ignore[assignment]
    swap_t: dict[str, float] = swap["timings"]  # type: ignore[assignment]
    results = {
        "accel": accel,
        "iterations": ITERATIONS,
        "open_close_ns_median": med,
        "open_close_ns_samples": samples,
        "ratios": {
            "warden10_vs_none": med["warden-10"] / med["none"],
            "floor_vs_none": med["floor"] / med["none"],
            "warden10_vs_floor": med["warden-10"] / med["floor"],
            "warden10000_vs_warden10": med["warden-10000"] / med["warden-10"],
        },
        "load_and_attach_s": fresh_t["total"],
        "load_breakdown_s": fresh_t,
        "adopt_s": adopt_t["total"],
        "swap_10_to_10000_rules_s": swap_t["total"],
        "swap_10000_to_10_rules_s": back["timings"],
        "rule_counts": swap["counts"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    rows = [
        ("open+close, no warden programs", f"{med['none']:.0f} ns", "1.00x"),
        ("open+close, always-allow floor", f"{med['floor']:.0f} ns", f"{med['floor'] / med['none']:.2f}x"),
        ("open+close, warden, 10 rules", f"{med['warden-10']:.0f} ns", f"{med['warden-10'] / med['none']:.2f}x"),
        ("open+close, warden, 10,000 rules", f"{med['warden-10000']:.0f} ns",
         f"{med['warden-10000'] / med['none']:.2f}x"),
        ("10,000 vs 10 rules", "", f"{results['ratios']['warden10000_vs_warden10']:.3f}x"),  # type: ignore[index]
        ("10 rules vs floor", "", f"{results['ratios']['warden10_vs_floor']:.3f}x"),  # type: ignore[index]
        ("load+attach all objects (fresh)", f"{fresh_t['total']:.2f} s", ""),
        ("adopt existing pins (+sync)", f"{adopt_t['total']:.2f} s", ""),
        ("sync 10 -> 10,000 rules", f"{swap_t['total']:.2f} s", ""),
    ]
    print(f"coco-warden engine benchmark ({accel}, {ITERATIONS} open+close per run, median of "
          f"{ROUNDS}+ runs)")
    width = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"  {name:<{width}}  {value:>12}  {ratio:>8}")
    print(f"written {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
