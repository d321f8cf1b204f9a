"""Test-bed profiles that reproduce the boot graphs of the two real pod VMs (GuestOptions builders).

Both install the shipped `units/` tree unchanged (as `rsync units/ <image root>` does), enable
warden.service the way `systemctl preset` does with 30-warden.preset (a link per `WantedBy=` of the
shipped unit), give `/usr/bin/warden` (a wrapper for this checkout's venv, standing in for
`pip install .` into the image), the image's trust key, baseline bundle and configuration, and boot
with a swtpm vTPM. Neither profile pre-mounts anything: bpffs and securityfs are whatever PID 1
(systemd 252) and warden-mounts.service make of them.

- `kata`: a Kata guest. Boots `systemd.unit=kata-containers.target` (kata-containers
  src/agent/kata-containers.target); the initdata reaches the guest as a real virtio-blk disk
  (qemu `-drive`, serial `initdata`) in Kata's image format; kata-agent.service (kata-containers
  src/agent/kata-agent.service.in) runs the kata-agent stand-in (standins/kata_agent.py), which
  reads that disk, runs containers with crun and guest hooks with kata-agent's semantics. The TEE's
  launch measurement of the initdata is a unit that extends PCR8 with its digest first thing (a TDX
  or SNP guest would find it in MRCONFIGID / HOSTDATA instead). A unit that unmounts bpffs and
  securityfs before warden-mounts.service stands in for an init that never mounted them.
- `peerpod`: a cloud-api-adaptor pod VM. Boots multi-user.target; process-user-data.service
  (cloud-api-adaptor src/cloud-api-adaptor/podvm/files/etc/systemd/system/process-user-data.service)
  runs the process-user-data stand-in (standins/process_user_data.py) on the user data of the config
  drive, writing /run/peerpod/initdata and its digest, and its drop-in extends PCR8 with
  `tpm2_pcrextend 8:sha256=...` (10-override.conf of the pod-VM image builds, e.g.
  spotlesstofu/coco-podvm-scripts scripts/coco/podvm/podvm_maker.sh); kata-agent.service and
  kata-agent.path (podvm/files/etc/systemd/system/) start the same kata-agent stand-in.

Both install, not enabled, an attestation-agent and a confidential-data-hub unit running the
stand-ins (standins/attestation_agent.py, standins/cdh.py) with the configuration each VM gives
them: in Kata, kata-agent launches both as its children after it started, with the aa.toml / cdh.toml
it extracted from the initdata (kata-containers src/agent/src/main.rs `init_attestation_components`,
src/agent/src/initdata.rs AA_CONFIG_PATH); in peer pods they are units reading /run/peerpod/aa.toml /
cdh.toml that process-user-data wrote (podvm/files/etc/systemd/system/attestation-agent.service,
confidential-data-hub.service). A test starts them when it wants them up: after warden's READY, as
kata-agent does. The CDH stand-in serves the KBS's resources from KBS_REPO.

The host's own enabled services mean nothing in a pod VM; the profiles switch them off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from initdata.document import parse_initdata
from initdata.encoding import encode_annotation, encode_image
from tests.guest.vm import REPO_ROOT, VENV_BIN, GuestOptions

UNITS = REPO_ROOT / "units"
STANDINS = REPO_ROOT / "tests" / "guest" / "standins"
SYSTEM = "/usr/lib/systemd/system"
ALERTS = "/var/log/warden/alerts.json"
AGENT_SOCKET = "/run/kata-standin/agent.sock"
KATA_AGENT_CLIENT = f"/usr/bin/python3 {STANDINS / 'kata_agent.py'} run --socket {AGENT_SOCKET}"
NOT_IN_A_POD_VM = "[Unit]\nConditionPathExists=/nonexistent/warden-testbed\n"
WAIT_FOR_TPM = "for i in $(seq 300); do [ -e /dev/tpmrm0 ] && break; sleep 0.1; done; [ -e /dev/tpmrm0 ]"

# kata-containers src/agent/kata-containers.target, without `Requires=tmp.mount` (the test bed's
# /tmp is the host's, where a CI checkout may live) and chronyd (not installed).
KATA_CONTAINERS_TARGET = """[Unit]
Description=Kata Containers Agent Target
Requires=basic.target systemd-remount-fs.service
Requires=kata-agent.service
Conflicts=rescue.service rescue.target
After=basic.target rescue.service rescue.target
AllowIsolate=yes
"""

# kata-containers src/agent/kata-agent.service.in; the stand-in instead of @bindir@/kata-agent, its
# output to the journal instead of the VM console (StandardOutput=tty).
KATA_AGENT_SERVICE = f"""[Unit]
Description=Kata Containers Agent
Documentation=https://github.com/kata-containers/kata-containers
Wants=kata-containers.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 {STANDINS / 'kata_agent.py'} serve --initdata-device --socket {AGENT_SOCKET}
LimitNOFILE=infinity
ExecStop=/bin/sync ; /usr/bin/systemctl --force poweroff
FailureAction=poweroff
"""

# The TEE stand-in: the launch measurement of the initdata the host passed (PCR8 of the vTPM).
TEE_LAUNCH_MEASUREMENT = """[Unit]
Description=test bed: the TEE's launch measurement of the initdata (MRCONFIGID / HOSTDATA in TDX / SNP)
DefaultDependencies=no
Before=warden.service kata-agent.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '{wait} && tpm2_pcrextend 8:sha256={digest}'
"""

# An init that did not mount bpffs and securityfs (systemd 252 always does): undo it before
# warden-mounts.service runs.
NO_EARLY_MOUNTS = """[Unit]
Description=test bed: an init that did not mount bpffs and securityfs
DefaultDependencies=no
Before=warden-mounts.service warden.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/umount /sys/fs/bpf
ExecStart=/bin/umount /sys/kernel/security
"""

# cloud-api-adaptor podvm/files/etc/systemd/system/process-user-data.service (b4f8b98), the
# stand-in instead of /usr/local/bin/process-user-data.
PROCESS_USER_DATA_SERVICE = f"""# One-shot systemd service for running the process-user-data binary
# It must run before kata-agent.service

[Unit]
Description=Process user data
# some providers use cloud-init to provision config files, it does not matter if cloud-init disabled
After=network.target cloud-init.service
DefaultDependencies=no


[Service]
Type=oneshot
ExecStart={VENV_BIN / 'python'} {STANDINS / 'process_user_data.py'} provision-files
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
# The pod-VM image's drop-in (spotlesstofu/coco-podvm-scripts podvm_maker.sh), PCR8 extension verbatim.
PROCESS_USER_DATA_PCR8 = """[Service]
# The digest is a string in hex representation, we truncate it to a 32 bytes hex string
ExecStartPost=-/bin/bash -c 'tpm2_pcrextend 8:sha256=$(head -c64 /run/peerpod/initdata.digest)'
"""
# The test bed's vTPM appears through udev; wait for it, or the (ignored) extension would be lost.
PROCESS_USER_DATA_TPM = f"[Service]\nExecStartPre=/bin/sh -c '{WAIT_FOR_TPM}'\n"

# cloud-api-adaptor podvm/files/etc/systemd/system/kata-agent.service (93e9e8d), without
# BindsTo=netns@podns.service (no pod network namespace here), scratch storage and kata-agent-clean.
PEERPOD_KATA_AGENT_SERVICE = f"""[Unit]
Description=Kata Agent
After=process-user-data.service

[Service]
ExecStartPre=mkdir -p /run/kata-containers
ExecStart=/usr/bin/python3 {STANDINS / 'kata_agent.py'} serve --socket {AGENT_SOCKET}
SyslogIdentifier=kata-agent

[Install]
WantedBy=multi-user.target
"""
# cloud-api-adaptor podvm/files/etc/systemd/system/kata-agent.path, verbatim.
PEERPOD_KATA_AGENT_PATH = """[Unit]
Description=Monitor for the Confidential Data Hub socket

[Path]
PathExists=/run/confidential-containers/cdh.sock
Unit=kata-agent.service

[Install]
WantedBy=multi-user.target
"""

# The KBS's resource repository the CDH stand-in serves, <repo>/<type>/<tag> (trustee's LocalFs layout).
KBS_REPO = "/var/tmp/kbs-repo"
STANDIN_PYTHON = f"{VENV_BIN / 'python'} -m"


def standin_command(module: str, args: str) -> str:
    return f"{STANDIN_PYTHON} tests.guest.standins.{module} {args}".rstrip()


# Kata: what kata-agent's launch of its guest components amounts to, as units the test starts (the
# processes kata-agent would spawn: attestation-agent -c <initdata dir>/aa.toml, then the CDH).
KATA_ATTESTATION_AGENT = f"""[Unit]
Description=attestation-agent, as kata-agent launches it (test-bed stand-in)
After=kata-agent.service
[Service]
WorkingDirectory={REPO_ROOT}
ExecStart={standin_command("attestation_agent", "-c /run/confidential-containers/initdata/aa.toml")}
"""
KATA_CONFIDENTIAL_DATA_HUB = f"""[Unit]
Description=confidential-data-hub, as kata-agent launches it (test-bed stand-in)
After=kata-agent.service attestation-agent.service
[Service]
WorkingDirectory={REPO_ROOT}
ExecStart={standin_command("cdh", f"--resources {KBS_REPO}")}
"""

# cloud-api-adaptor podvm/files/etc/systemd/system/attestation-agent.service (1fbc636), the stand-in
# instead of /usr/local/bin/attestation-agent; no [Install]: the test starts it.
PEERPOD_ATTESTATION_AGENT = f"""[Unit]
Description=Attestation Agent TTRPC API Server
After=network.target cloud-init.service process-user-data.service

[Service]
Type=simple
WorkingDirectory={REPO_ROOT}
ExecStartPre=mkdir -p /run/confidential-containers/attestation-agent
ExecStart=/bin/bash -c \\
    'if [ -f /run/peerpod/aa.toml ]; \\
    then {standin_command("attestation_agent", "-c /run/peerpod/aa.toml")}; \\
    else {standin_command("attestation_agent", "")}; \\
    fi'
RestartSec=1
Restart=always
"""
# podvm/files/etc/systemd/system/confidential-data-hub.service (7315618): the stand-in takes no cdh.toml
# (it has no KBC to configure; it serves KBS_REPO); no [Install]: the test starts it.
PEERPOD_CONFIDENTIAL_DATA_HUB = f"""[Unit]
Description=Confidential Data Hub TTRPC API Server
After=network.target process-user-data.service

[Service]
Type=simple
WorkingDirectory={REPO_ROOT}
ExecStart={standin_command("cdh", f"--resources {KBS_REPO}")}
RestartSec=1
Restart=always
"""


@dataclass(frozen=True)
class PodImage:
    """What the image and the pod owner bring: trust key, baseline bundle, initdata, config overrides."""

    owner_pem: str
    baseline: str
    initdata: bytes  # the TOML document, exact bytes
    config: Mapping[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, str] = field(default_factory=dict)
    extra_links: Mapping[str, str] = field(default_factory=dict)


def warden_config(overrides: Mapping[str, Any]) -> str:
    """The shipped /etc/warden/warden.yaml with the test's overrides (as an image builder edits it)."""
    config = yaml.safe_load((UNITS / "etc" / "warden" / "warden.yaml").read_text())
    # The test bed's TEE is swtpm's vTPM, which no TEE vouches for: opted in, and reported INSECURE.
    settings = {"gate_failure_exit_s": 10, "record_ruleset": False, "agent": {"logPath": ALERTS},
                "gate": {"insecure_sources": ["vtpm"]}, **overrides}
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return json.dumps(config, indent=2)  # JSON is YAML


def enable_links(unit: str, source: str) -> dict[str, str]:
    """The links `systemctl enable` makes for `unit` from its [Install] WantedBy=."""
    links = {}
    for match in re.finditer(r"^WantedBy=(.+)$", source, flags=re.MULTILINE):
        for target in match.group(1).split():
            links[f"/etc/systemd/system/{target}.wants/{unit}"] = f"{SYSTEM}/{unit}"
    return links


def common(image: PodImage) -> tuple[dict[str, str], dict[str, str]]:
    """Files and links both profiles install: warden as the image has it."""
    files = {
        "/usr/bin/warden": f"#!/bin/sh\nexec {VENV_BIN / 'warden'} \"$@\"\n",
        "/etc/warden/warden.yaml": warden_config(image.config),
        "/etc/warden/trust/owner.pem": image.owner_pem,
        "/usr/share/warden/baseline.bundle.json": image.baseline,
    }
    # The presets say `enable warden.service`: what systemctl preset does with its [Install] section.
    links = enable_links("warden.service", (UNITS / "usr/lib/systemd/system/warden.service").read_text())
    return files, links


def host_services_off() -> dict[str, str]:
    """Drop-ins that keep the host image's enabled services (a database, ...) out of the pod VM."""
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    names = sorted(p.name for p in wants.iterdir() if p.name.endswith(".service")) if wants.is_dir() else []
    return {f"/etc/systemd/system/{name}.d/warden-testbed.conf": NOT_IN_A_POD_VM for name in names}


def kata(image: PodImage, disk_dir: Path) -> GuestOptions:
    disk_dir.mkdir(parents=True, exist_ok=True)
    disk = disk_dir / "initdata.img"
    disk.write_bytes(encode_image(image.initdata))
    digest = parse_initdata(image.initdata, origin="initdata").digest_hex
    files, links = common(image)
    files |= {
        f"{SYSTEM}/kata-containers.target": KATA_CONTAINERS_TARGET,
        f"{SYSTEM}/kata-agent.service": KATA_AGENT_SERVICE,
        "/etc/systemd/system/tee-launch-measurement.service":
            TEE_LAUNCH_MEASUREMENT.format(wait=WAIT_FOR_TPM, digest=digest[:64]),
        "/etc/systemd/system/testbed-no-early-mounts.service": NO_EARLY_MOUNTS,
        "/etc/systemd/system/attestation-agent.service": KATA_ATTESTATION_AGENT,
        "/etc/systemd/system/confidential-data-hub.service": KATA_CONFIDENTIAL_DATA_HUB,
        **image.extra_files,
    }
    links |= {
        "/etc/systemd/system/kata-containers.target.wants/tee-launch-measurement.service":
            "/etc/systemd/system/tee-launch-measurement.service",
        "/etc/systemd/system/kata-containers.target.wants/testbed-no-early-mounts.service":
            "/etc/systemd/system/testbed-no-early-mounts.service",
        **image.extra_links,
    }
    return GuestOptions(tpm=True, boot_unit="kata-containers.target", trees={"/": UNITS}, files=files,
                        executables=("/usr/bin/warden",), links=links, disks=((disk, "initdata"),))


def peerpod(image: PodImage) -> GuestOptions:
    user_data = {"write_files": [
        {"path": "/run/peerpod/initdata", "content": encode_annotation(image.initdata)},
        {"path": "/run/peerpod/agent-config.toml", "content": 'server_addr = "unix:///run/kata-standin/agent.sock"\n'},
    ]}
    files, links = common(image)
    files |= {
        "/media/cidata/user-data": yaml.safe_dump(user_data),  # the config drive's user data
        "/etc/systemd/system/process-user-data.service": PROCESS_USER_DATA_SERVICE,
        "/etc/systemd/system/process-user-data.service.d/10-override.conf": PROCESS_USER_DATA_PCR8,
        "/etc/systemd/system/process-user-data.service.d/20-testbed-tpm.conf": PROCESS_USER_DATA_TPM,
        "/etc/systemd/system/kata-agent.service": PEERPOD_KATA_AGENT_SERVICE,
        "/etc/systemd/system/kata-agent.path": PEERPOD_KATA_AGENT_PATH,
        "/etc/systemd/system/attestation-agent.service": PEERPOD_ATTESTATION_AGENT,
        "/etc/systemd/system/confidential-data-hub.service": PEERPOD_CONFIDENTIAL_DATA_HUB,
        **host_services_off(),
        **image.extra_files,
    }
    for unit in ("process-user-data.service", "kata-agent.service", "kata-agent.path"):
        links[f"/etc/systemd/system/multi-user.target.wants/{unit}"] = f"/etc/systemd/system/{unit}"
    links |= image.extra_links
    return GuestOptions(tpm=True, boot_unit="multi-user.target", trees={"/": UNITS}, files=files,
                        executables=("/usr/bin/warden",), links=links)
