"""`python -m bench.boot` (part of `make bench`): what warden adds to a pod VM's boot, up to kata-agent.

The Kata guest profile of the test bed (tests/guest/profiles.py `kata`: the shipped units, the
initdata disk, the kata-agent stand-in) boots to kata-containers.target, with warden and without it
(the same image minus warden's enable links and kata-agent's drop-in), alternating, ROUNDS times
each. Measured in each boot, on the guest's monotonic clock (zero at kernel start): boot -> kata-agent
started (`ExecMainStartTimestampMonotonic`), and with warden, boot -> warden's process start, its
READY=1, and warden's own split from `warden status` (self-protection, gate, enforcement). Goal:
warden adds at most 15% to boot -> kata-agent. Under TCG everything is slow; read the ratio.
Writes bench/boot.json and prints a table. Anything that cannot be measured fails the run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.guest import pod
from tests.guest.profiles import kata
from tests.guest.service import is_ready, wait_until, warden_status
from tests.guest.vm import REPO_ROOT, GuestOptions, GuestVM

ROUNDS = 3
GOAL = 1.15
RESULTS = REPO_ROOT / "bench" / "boot.json"
NO_WARDEN_DROPIN = "# warden is not installed in this image\n"


def options(work: Path, *, with_warden: bool) -> GuestOptions:
    base = kata(pod.pod_image(signed_by=pod.TRUSTED_KEY), work / "disk")
    links = {k: v for k, v in base.links.items() if "testbed-no-early-mounts" not in k}
    files = dict(base.files)
    if not with_warden:
        links = {k: v for k, v in links.items() if not k.endswith("/warden.service")}
        files["/usr/lib/systemd/system/kata-agent.service.d/50-warden.conf"] = NO_WARDEN_DROPIN
    return dataclasses.replace(base, links=links, files=files)


def monotonic_s(vm: GuestVM, unit: str, prop: str) -> float:
    value = int(pod.props(vm, unit, prop)[prop])
    if value <= 0:
        raise RuntimeError(f"{unit}: {prop} is {value}: not measured")
    return value / 1e6


def one_boot(work: Path, *, with_warden: bool) -> dict[str, Any]:
    vm = GuestVM(options(work, with_warden=with_warden), work / "guest")
    vm.start()
    try:
        wait_until("kata-agent.service active",
                   lambda: pod.props(vm, "kata-agent.service", "ActiveState")["ActiveState"] == "active", 300, vm)
        sample: dict[str, Any] = {"kata_agent_start_s": monotonic_s(vm, "kata-agent.service",
                                                                   "ExecMainStartTimestampMonotonic")}
        if with_warden:
            wait_until("warden READY", lambda: is_ready(vm), 60, vm)
            sample["warden_start_s"] = monotonic_s(vm, "warden.service", "ExecMainStartTimestampMonotonic")
            sample["warden_ready_s"] = monotonic_s(vm, "warden.service", "ActiveEnterTimestampMonotonic")
            sample["warden_timings"] = warden_status(vm, ready=True).get("timings", {})
            missing = {"self_protection_s", "gate_s", "enforce_s"} - set(sample["warden_timings"])
            if missing:
                raise RuntimeError(f"warden status: no timings {sorted(missing)}: not measured")
        return sample
    finally:
        vm.stop()


def main() -> int:
    samples: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(prefix="warden-bench-boot-") as tmp:
        for round_number in range(ROUNDS):
            for kind in ("without", "with"):
                work = Path(tmp) / f"{kind}-{round_number}"
                print(f"bench.boot: round {round_number + 1}/{ROUNDS}, {kind} warden", flush=True)
                samples[kind].append(one_boot(work, with_warden=kind == "with"))
    median = {kind: statistics.median(s["kata_agent_start_s"] for s in runs) for kind, runs in samples.items()}
    ratio = median["with"] / median["without"]
    ready = statistics.median(s["warden_ready_s"] - s["warden_start_s"] for s in samples["with"])
    before = statistics.median(s["warden_start_s"] for s in samples["with"])
    after = statistics.median(s["kata_agent_start_s"] - s["warden_ready_s"] for s in samples["with"])
    results = {"rounds": ROUNDS, "samples": samples, "median_boot_to_kata_agent_s": median, "ratio": ratio,
               "goal": GOAL, "median_warden_process_to_ready_s": ready, "median_boot_to_warden_start_s": before,
               "median_ready_to_kata_agent_s": after}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"boot -> kata-agent start, median of {ROUNDS}: without warden {median['without']:.2f} s, "
          f"with warden {median['with']:.2f} s ({ratio:.2f}x; goal <= {GOAL:.2f}x: "
          f"{'met' if ratio <= GOAL else 'NOT met'})")
    print(f"  with warden: boot -> warden process start {before:.2f} s; process start -> READY {ready:.2f} s; "
          f"READY -> kata-agent start {after:.2f} s")
    print(f"  warden's share of boot -> kata-agent start: {median['with'] - median['without']:+.2f} s "
          f"(difference of the medians); its own split, process start -> READY:")
    steps = ("self_protection_s", "gate_s", "enforce_s")
    split = {name: statistics.median(s["warden_timings"][name] for s in samples["with"]) for name in steps}
    for name in steps:
        print(f"    {name.removesuffix('_s').replace('_', '-')}: {split[name]:.3f} s")
    print(f"    the rest (interpreter start, imports, configuration, mounts check, notify): "
          f"{ready - sum(split.values()):.3f} s")
    preloaded = [s["warden_timings"].get("engine", {}).get("preloaded") for s in samples["with"]]
    if all(isinstance(value, float) for value in preloaded):
        split["preloaded_s"] = statistics.median(value for value in preloaded if value is not None)
        print(f"    overlapping those from the process start: BPF objects loaded in the background "
              f"(the verifier) {split['preloaded_s']:.3f} s; enforcement then only waits for what remains")
    results["median_warden_split_s"] = split
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
