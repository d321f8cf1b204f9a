"""warden.service in the guest: the unit as shipped, systemd state, and crun containers with the hook.

Shared by the supervisor tests and `make demo`, so both exercise the same unit file and the same OCI
hook wiring a pod-VM image would have.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tests.guest.vm import REPO_ROOT, GuestVM

WARDEN = f"{REPO_ROOT}/.venv/bin/warden"  # the guest sees the host's checkout at the same path
UNIT_SOURCE = REPO_ROOT / "units" / "usr" / "lib" / "systemd" / "system" / "warden.service"
CONTAINERS_DIR = "/var/tmp/ctr"
LABELS_ANNOTATION = "io.katacontainers.warden.labels"
NAME_ANNOTATION = "io.kubernetes.cri.container-name"
# Where this image's kata-agent leaves initdata. (Kata uses /run/confidential-containers/initdata/,
# which the guest's /run tmpfs would hide from files laid into the image before boot.)
INITDATA = "/var/lib/coco/initdata.toml"
ALERTS = "/var/log/warden/alerts.json"
CHECKS_SCRIPT = """
python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 2>/tmp/e \
  && echo "raw socket|allowed" || echo "raw socket|denied: $(tail -1 /tmp/e | sed 's/.*] //')"
touch /bin/evil 2>/tmp/e && echo "write /bin/evil|allowed" || echo "write /bin/evil|denied: $(sed 's/.*: //' /tmp/e)"
cat /var/lib/mysql/any-file >/dev/null 2>/tmp/e && echo "cat /var/lib/mysql/any-file|allowed" \
  || echo "cat /var/lib/mysql/any-file|denied: $(sed 's/.*: //' /tmp/e)"
"""

# The image's side (a pod-VM image build would lay these down): the unit, enabled; the config; the
# trust key; the baseline bundle; and, standing in for the TEE, a unit that measures initdata into
# PCR8 at launch, before anything in the guest could change it.
MEASURE_UNIT = f"""[Unit]
Description=test bed: the TEE measures initdata into PCR8 at launch (firmware / kata-agent in a CoCo VM)
Before=warden.service
DefaultDependencies=no
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for i in $(seq 100); do [ -e /dev/tpmrm0 ] && break; sleep 0.1; done; \
tpm2_pcrextend 8:sha256=$({WARDEN} initdata digest {INITDATA})'
"""
ENABLE_UNITS = "[Unit]\nWants=initdata-measure.service warden.service\n"


def config_json() -> str:
    return json.dumps({  # JSON is YAML
        # swtpm: a TPM no TEE vouches for, so INSECURE and opted in (issue 15 item 5)
        "gate": {"trust_dir": "/etc/warden/trust", "measurement_sources": ["vtpm"], "insecure_sources": ["vtpm"]},
        "initdata": INITDATA,
        "baseline_bundle": "/usr/share/warden/baseline.bundle.json",
        "gate_failure_exit_s": 30,
        "record_ruleset": False,
        "agent": {"logPath": ALERTS},
    }, indent=2)


def host_warden(*args: str) -> str:
    """The warden CLI on the host (the pod owner's side); its stdout, or RuntimeError with its message."""
    result = subprocess.run([WARDEN, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"warden {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def warden_status(guest: GuestVM, *, ready: bool = False) -> dict[str, Any]:
    """`warden status --json` in the guest: exit 0 when READY, 1 otherwise; `ready` requires 0."""
    result = guest.run(f"{WARDEN} status --json")
    assert result.returncode in ((0,) if ready else (0, 1)), result
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def unit_text() -> str:
    """The shipped unit, running this checkout's warden (the venv stands in for /usr/bin)."""
    return UNIT_SOURCE.read_text().replace("/usr/bin/warden", WARDEN)


def show(guest: GuestVM, *props: str) -> dict[str, str]:
    out = guest.run(f"systemctl show warden.service -p {','.join(props)}", check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def is_ready(guest: GuestVM) -> bool:
    state = show(guest, "ActiveState", "SubState")
    return state["ActiveState"] == "active" and state["SubState"] == "running"


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, guest: GuestVM) -> float:
    """Seconds until `predicate()` held; on timeout, AssertionError with the unit's journal."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.3)
    journal = guest.run("journalctl -u warden.service -n 60 --no-pager -o short-monotonic").stdout
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{journal}")


def lsm_link_ids(guest: GuestVM) -> set[int]:
    links = json.loads(guest.run("bpftool -j link list", check=True).stdout or "[]")
    return {link["id"] for link in links if link.get("attach_type") == "lsm_mac"}


def make_container(
    guest: GuestVM,
    name: str,
    args: list[str],
    *,
    labels: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    extra_caps: Iterable[str] = (),
    with_usr: bool = False,
    hook_timeout_s: int = 8,
    oci_hooks: bool = True,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """An OCI bundle for crun: busybox in a writable rootfs, `files` laid into it, the warden hook at
    createRuntime and poststop, the container name and labels as Kata passes them (annotations).
    `with_usr` bind-mounts the guest's /usr read-only (python3 for tests that need real syscalls
    busybox cannot make). `oci_hooks=False` leaves the hooks out (a Kata guest's kata-agent adds its
    guest hooks itself). `annotations` are added as given, after the name and labels. Returns the bundle
    directory."""
    directory = f"{CONTAINERS_DIR}/{name}"
    guest.run(
        f"set -e; rm -rf {directory}; mkdir -p {directory}/rootfs/bin {directory}/rootfs/usr {directory}/rootfs/tmp; "
        f"cp /bin/busybox {directory}/rootfs/bin/; "
        f"for a in sh cat echo touch ls; do ln -sf busybox {directory}/rootfs/bin/$a; done; "
        f"ln -s usr/lib {directory}/rootfs/lib; ln -s usr/lib64 {directory}/rootfs/lib64; "
        f"cd {directory} && crun spec",
        check=True,
    )
    for path, content in (files or {}).items():
        target = f"{directory}/rootfs/{path.lstrip('/')}"
        guest.run(f"mkdir -p $(dirname {target}) && cat > {target} < {guest.write_shared(f'{name}-file', content)}",
                  check=True)
    edit = textwrap.dedent(f"""
        import json
        path = "{directory}/config.json"
        config = json.load(open(path))
        config["root"]["readonly"] = False  # crun spec makes it read-only: /bin writes would fail with EROFS
        config["process"]["terminal"] = False
        config["process"]["args"] = {json.dumps(args)}
        config["process"]["env"] = ["PATH=/bin:/usr/bin", "HOME=/"]
        caps = config["process"]["capabilities"]
        for kind in caps:
            caps[kind] = sorted(set(caps[kind]) | set({json.dumps(sorted(extra_caps))}))
        if {with_usr}:
            config["mounts"].append({{"destination": "/usr", "type": "bind", "source": "/usr",
                                      "options": ["rbind", "ro"]}})
        hook = {{"path": "{WARDEN}", "args": ["warden", "hook", "--timeout", "{hook_timeout_s}"],
                 "timeout": {hook_timeout_s + 12}}}
        if {oci_hooks}:
            config["hooks"] = {{"createRuntime": [hook], "poststop": [hook]}}
        annotations = config.setdefault("annotations", {{}})
        annotations["{NAME_ANNOTATION}"] = "{name}"
        labels = {json.dumps(dict(labels or {}))}
        if labels:
            annotations["{LABELS_ANNOTATION}"] = ",".join(f"{{k}}={{v}}" for k, v in labels.items())
        annotations.update({json.dumps(dict(annotations or {}))})
        json.dump(config, open(path, "w"), indent=1)
    """)
    guest.python(edit, check=True)
    return directory


def pod_image_files(owner_pem: str, initdata: str, baseline: str) -> dict[str, str]:
    """What a pod-VM image build lays down for warden, plus the initdata kata-agent would leave."""
    return {
        "/etc/systemd/system/warden.service": unit_text(),
        "/etc/systemd/system/initdata-measure.service": MEASURE_UNIT,
        "/etc/systemd/system/warden-testbed.target.d/enable-warden.conf": ENABLE_UNITS,
        "/etc/warden/warden.yaml": config_json(),
        "/etc/warden/trust/owner.pem": owner_pem,
        "/usr/share/warden/baseline.bundle.json": baseline,
        INITDATA: initdata,
    }


def run_checks(vm: GuestVM, name: str, labels: dict[str, str] | None) -> dict[str, str]:
    directory = make_container(vm, name, ["sh", "-c", CHECKS_SCRIPT], labels=labels, with_usr=True,
                               extra_caps=["CAP_NET_RAW"], files={"/var/lib/mysql/any-file": "row 1\n"})
    result = vm.run(f"crun run -b {directory} {name}-1", timeout=120)
    assert result.returncode == 0, f"container {name} failed: {result}"
    return dict(line.split("|", 1) for line in result.stdout.splitlines() if "|" in line)
