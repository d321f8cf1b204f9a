"""The benchmark's output: the machine it ran on, the table (printed and in the README), the chart.

Every number in the table, the chart and the README comes from the one results dict of one run.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chart import Bar, bar_chart
from bench.syscalls import OPS
from tests.guest.vm import REPO_ROOT

README = REPO_ROOT / "README.md"
README_BEGIN = "<!-- bench:begin (written by `make bench`) -->"
README_END = "<!-- bench:end -->"

OP_LABELS = {"open": "open+close", "exec": "fork+exec+wait", "socket": "socket+close", "read": "read 1 byte",
             "write": "write 1 byte"}
CONFIG_LABELS = {
    "none": "none: no BPF-LSM programs, unconfined",
    "floor": "floor: always-allow BPF",
    "warden-10": "warden, 10 rules",
    "warden-10000": "warden, 10,000 rules",
    "apparmor-10": "AppArmor, 10 rules",
    "apparmor-10000": "AppArmor, 10,000 rules",
}
# Display order (the measurement order is bench.syscalls.CONFIGS).
SHOWN = ("none", "floor", "warden-10", "warden-10000", "apparmor-10", "apparmor-10000")
CHART_COLORS = {"floor": "#8c8cc8", "warden-10": "#dc785a", "warden-10000": "#be3c28",
                "apparmor-10": "#78be78", "apparmor-10000": "#328c3c"}


def host_machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "cores": os.cpu_count(), "host_kernel": platform.release()}


def other_vms(own_workdir: Path | None) -> list[str]:
    """Command lines of QEMU guests on this host other than the benchmark's own."""
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if own_workdir is None or str(own_workdir) not in line]


def ratios(ns: dict[str, dict[str, float]], base: str, configs: Sequence[str]) -> dict[str, dict[str, float]]:
    return {c: {op: ns[c][op] / ns[base][op] for op in OPS} for c in configs}


@dataclass(frozen=True)
class Section:
    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


def measured_ops(results: dict[str, Any]) -> list[str]:
    """The ops a results file has (one from before the read and write loops has three)."""
    return [op for op in OPS if op in results["syscalls"]["ns_median"]["none"]]


def syscall_section(results: dict[str, Any]) -> Section:
    sc = results["syscalls"]
    rows: list[tuple[str, ...]] = []
    for op in measured_ops(results):
        for config in SHOWN:
            vs_floor = sc["ratio_vs_floor"].get(config, {}).get(op)
            vs_aa = sc["ratio_warden_vs_apparmor"].get(config, {}).get(op)
            rows.append((OP_LABELS[op] if config == SHOWN[0] else "", CONFIG_LABELS[config],
                         f"{sc['ns_median'][config][op] / 1000:,.1f}", spread(sc["ns_samples"][config][op]),
                         f"{sc['ratio_vs_none'][config][op]:.2f}x", optional_ratio(vs_floor), optional_ratio(vs_aa)))
    its = ", ".join(f"{OP_LABELS[op]} x{sc['iterations'][op]:,}" for op in measured_ops(results))
    return Section(f"Syscall cost, microseconds per operation: median of {sc['rounds']} interleaved rounds "
                   f"({its} per run)",
                   ("operation", "configuration", "us/op", "rounds' spread", "vs none", "vs floor",
                    "vs AppArmor, same rules"), rows)


def spread(samples: Sequence[float]) -> str:
    """(max - min) / median over the rounds: ratios smaller than this are noise."""
    return f"{(max(samples) - min(samples)) / statistics.median(samples):.0%}"


def optional_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def seconds(value: float) -> str:
    return f"{value:.3f} s"


def startup_rest(start: dict[str, Any]) -> float:
    """Process start to the supervisor's own clock (ready_after_s counts from its construction)."""
    return float(start["start_to_ready_s"] - start["ready_after_s"])


def startup_section(results: dict[str, Any]) -> Section:
    svc = results["service"]
    fresh, adopt, kill = svc["fresh"], svc["adopt"], svc["kill_9"]
    ft, at = fresh["timings"], adopt["timings"]
    rows = [
        ("fresh start: process start -> READY=1 (systemd)", seconds(fresh["start_to_ready_s"])),
        ("  self-protection: load + attach + arm", seconds(ft["self_protection_s"])),
        ("  gate: vTPM PCR8, initdata, bundle signatures", seconds(ft["gate_s"])),
        ("  enforcement: compile + load + attach (fresh)", seconds(ft["enforce_s"])),
        ("    engine: load objects / attach links",
         f"{ft['engine']['load']:.3f} / {ft['engine']['attach']:.3f} s"),
        ("  before that: interpreter start, imports, configuration", seconds(startup_rest(fresh))),
        ("restart (SIGKILL main): process start -> READY=1", seconds(adopt["start_to_ready_s"])),
        ("  self-protection: adopt + re-arm", seconds(at["self_protection_s"])),
        ("  gate", seconds(at["gate_s"])),
        ("  enforcement: compile + adopt pins + sync", seconds(at["enforce_s"])),
        ("  before that: interpreter start, imports, configuration", seconds(startup_rest(adopt))),
        ("kill -9 (systemctl kill) -> READY again, RestartSec=1s included", seconds(kill["kill_to_ready_s"])),
        ("  probe reads of a Blocked file in that gap that succeeded",
         f"{kill['probe_successes_in_gap']} of {kill['probe_reads_in_gap']}"),
        ("  same LSM links before and after", "yes" if kill["same_lsm_links"] else "NO"),
    ]
    return Section("warden.service under systemd: start to READY, kill -9 recovery", ("measurement", "value"), rows)


def load_section(results: dict[str, Any]) -> Section:
    load, eng, aa = results["load_comparison"], results["engine"], results["apparmor_profile_load_s"]
    rows = [
        ("CO-RE: load + attach write_guard.bpf.o", seconds(load["core_load_attach_s"])),
        ("bcc: compile + load + attach the same program",
         f"{seconds(load['bcc_compile_load_attach_s'])} ({load['bcc_vs_core']:.0f}x CO-RE)"),
        ("warden engine: fresh load of all objects, 10 rules (median)", seconds(eng["fresh_load_s_median"])),
        ("warden engine: sync 10 -> 10,000 rules (median)", seconds(eng["swap_10_to_10000_s_median"])),
        ("AppArmor: apparmor_parser 10 rules / 10,000 rules",
         f"{aa['10']:.2f} / {aa['10000']:.2f} s"),
    ]
    return Section("Loading: CO-RE vs bcc runtime compilation; rule updates vs AppArmor", ("measurement", "value"),
                   rows)


def memory_section(results: dict[str, Any]) -> Section:
    svc = results["service"]
    rows = [(f"{who} (VmRSS), after {when}", f"{svc[key][who] / 1024:.1f} MiB")
            for when, key in (("fresh start", "rss_kib_after_fresh_start"),
                              ("kill -9 restart", "rss_kib_after_kill_9_restart"))
            for who in ("supervisor", "agent")]
    return Section("Resident memory", ("process", "VmRSS"), rows)


def patterns_section(results: dict[str, Any]) -> Section:
    """open+close with warden's 10 rules, plus 10 and plus 1,000 matchPatterns (same rounds as above)."""
    sc, pat = results["syscalls"], results["patterns"]
    rows: list[tuple[str, ...]] = []
    for config, label in (("warden-10", "10 rules"), ("warden-patterns-10", "10 rules + 10 patterns"),
                          ("warden-patterns-1000", "10 rules + 1,000 patterns")):
        ratio = sc["ns_median"][config]["open"] / sc["ns_median"]["warden-10"]["open"]
        rows.append((label, f"{sc['ns_median'][config]['open'] / 1000:,.1f}", spread(sc["ns_samples"][config]["open"]),
                     f"{ratio:.2f}x"))
    return Section(f"matchPatterns, open+close (us/op, median of {sc['rounds']} rounds); compiling "
                   f"{pat['patterns']:,} patterns: {pat['host_compile_s']:.2f} s on the host, "
                   f"{pat['guest_compile_s_median']:.2f} s in the guest's engine load, "
                   f"{pat['automata']} automaton/automata of {pat['states']} states",
                   ("configuration", "us/op", "rounds' spread", "vs 10 rules"), rows)


def kernel_cost_section(results: dict[str, Any]) -> Section | None:
    """Each program's kernel-measured cost per invocation (run_time_ns / run_cnt), warden's beside the
    floor's program on the same hook."""
    costs = results.get("engine", {}).get("kernel_costs")
    if not costs:
        return None
    floor = {name.removeprefix("floor_"): v for name, v in costs.get("floor", {}).items()}
    rows = []
    for name, v in sorted(costs.get("warden-10", {}).items()):
        own = name.removeprefix("warden_")  # the hook's name, or its first letters (names of 15 bytes)
        hook = own if own in floor else next((h for h in floor if own.startswith(h[:8]) or h.startswith(own)), None)
        f = floor.get(hook) if hook else None
        floor_ns, ratio = (f"{f['ns_per_run']:,.0f}", f"{v['ns_per_run'] / f['ns_per_run']:.1f}x") if f else ("-", "-")
        rows.append((name, f"{v['ns_per_run']:,.0f}", f"{int(v['runs']):,}", floor_ns, ratio))
    return Section("Kernel-measured cost per invocation (kernel.bpf_stats_enabled, one pass of every op), warden "
                   "with 10 rules beside the floor's program on the same hook",
                   ("program", "ns/run", "runs", "floor ns/run", "vs floor"), rows)


def sections(results: dict[str, Any]) -> list[Section]:
    extra = [patterns_section(results)] if "patterns" in results else []
    kernel = kernel_cost_section(results)
    return [syscall_section(results), *extra, *([kernel] if kernel else []), startup_section(results),
            load_section(results),
            memory_section(results)]


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    line = (f"{m['cpu']}, {m['cores']} cores, host kernel {m['host_kernel']}; guest kernel {m['guest_kernel']} "
            f"under QEMU {m['accel']} ({m['guest_vcpus']} vCPUs, {m['guest_memory_mib']} MiB)")
    if m["other_vms_seen"]:
        line += f"; WARNING: other guest VMs ran during {m['other_vms_seen']} of {m['samples']} checks"
    return line


def text_table(results: dict[str, Any]) -> str:
    out = [f"coco-warden benchmark, {results['date']}", f"machine: {machine_line(results)}"]
    for section in sections(results):
        widths = [max(len(row[i]) for row in (section.header, *section.rows)) for i in range(len(section.header))]
        out += ["", section.title]
        for row in (section.header, *section.rows):
            cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                   strict=True))]
            out.append("  " + "  ".join(cells).rstrip())
    return "\n".join(out)


def markdown(results: dict[str, Any]) -> str:
    out = [f"Run {results['date']} on: {machine_line(results)}.", "",
           "![syscall cost ratios](bench/results.png)"]
    for section in sections(results):
        out += ["", f"**{section.title}**", "", "| " + " | ".join(section.header) + " |",
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(section.header))) + "|"]
        out += ["| " + " | ".join(md_cell(cell) for cell in row) + " |" for row in section.rows]
    return "\n".join(out)


def md_cell(cell: str) -> str:
    """Markdown drops leading spaces: indent sub-rows with em spaces instead."""
    stripped = cell.lstrip(" ")
    return "&emsp;" * ((len(cell) - len(stripped)) // 2) + stripped if stripped else " "


def update_readme(results: dict[str, Any], readme: Path = README) -> None:
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise RuntimeError(f"{readme}: the benchmark markers are missing ({README_BEGIN} ... {README_END})")
    readme.write_text(text[:begin + len(README_BEGIN)] + "\n" + markdown(results) + "\n" + text[end:])


def round_ratios(results: dict[str, Any], config: str, op: str) -> tuple[float, float]:
    """The lowest and highest round's cost of `config` for `op`, each as a ratio to none's median."""
    syscalls = results["syscalls"]
    none = syscalls["ns_median"]["none"][op]
    samples = syscalls["ns_samples"][config][op]
    return min(samples) / none, max(samples) / none


def chart(results: dict[str, Any]) -> bytes:
    ratio = results["syscalls"]["ratio_vs_none"]
    ops = measured_ops(results)
    groups = [(f"{OP_LABELS.get(op, op)} (x none)",
               [Bar(CONFIG_LABELS[c].replace("floor: ", ""), ratio[c][op], *round_ratios(results, c, op),
                    CHART_COLORS[c])
                for c in SHOWN[1:] if c in ratio]) for op in ops]
    m = results["machine"]
    return bar_chart(f"coco-warden syscall cost, guest {m['guest_kernel']} ({m['accel']}), {results['date'][:10]}",
                     groups)
