"""/etc/warden/warden.yaml: the shipped example parses to the defaults; every bad key is named."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from initdata.errors import ConfigError
from supervisor.config import AGENT_KEYS, KEYS, GateConfig, WardenConfig, load_config, parse_config, parse_gate_config
from trust.rules import TrustMode

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "units" / "etc" / "warden" / "warden.yaml"
WARDEN = REPO / ".venv" / "bin" / "warden"


def test_shipped_example_parses_to_the_built_in_defaults() -> None:
    config = load_config(EXAMPLE)
    defaults = WardenConfig()
    assert config.gate == defaults.gate
    assert config.agent == defaults.agent
    for name in KEYS:
        if name not in ("gate", "agent"):
            assert getattr(config, name) == getattr(defaults, name), name


def test_shipped_example_documents_every_key() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    assert set(document) == set(KEYS)
    text = EXAMPLE.read_text()
    for name in AGENT_KEYS:
        assert f"{name}:" in text, name


def test_empty_document_is_all_defaults() -> None:
    assert parse_config(None, origin="x") == WardenConfig(origin="x")


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [
        ({"pin_dirr": "/x"}, "pin_dirr", "unknown key"),
        ({"agent": {"maxAlertsPerSec": 5}}, "agent.maxAlertsPerSec", "unknown key"),
        ({"gate": {"treshold": 2}}, "gate.treshold", "unknown key"),
        ({"gate": {"threshold": 0}}, "gate.threshold", "integer >= 1"),
        ({"postures": {"file": "deny"}}, "postures.file", "not one of allow, audit, block"),
        ({"postures": {"files": "audit"}}, "postures.files", "unknown key"),
        ({"pin_dir": "relative/path"}, "pin_dir", "not an absolute path"),
        ({"gate_failure_exit_s": -1}, "gate_failure_exit_s", "number of seconds"),
        ({"record_ruleset": "yes"}, "record_ruleset", "true or false"),
        ({"agent": {"command": "warden agent"}}, "agent.command", "list of strings"),
        ({"agent": {"command": ["warden", "agent"]}}, "agent.command", "absolute path"),
        ({"agent": {"crash_budget": True}}, "agent.crash_budget", "integer"),
        ({"agent": {"backoff_initial_s": 10, "backoff_max_s": 1}}, "agent.backoff_initial_s", "larger"),
        (["a", "list"], "", "must be a mapping"),
    ],
)
def test_bad_values_name_the_key(document: object, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, origin="/etc/warden/warden.yaml")
    assert caught.value.origin == "/etc/warden/warden.yaml"
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert "\n" not in str(caught.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "warden.yaml"
    path.write_text("pin_dir: /sys/fs/bpf/warden\nagent: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field.startswith("line ")


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be opened"):
        load_config(tmp_path / "absent.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 70_000 + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_kubearmor_agent_keys_map_to_settings() -> None:
    config = parse_config(
        {"agent": {"alertThrottling": False, "maxAlertPerSec": 3, "throttleSec": 7, "logPath": "/var/log/a.json",
                   "command": ["/opt/kubearmor/kubearmor", "/opt/kubearmor/kubearmor.yaml"]}},
        origin="x",
    )
    assert (config.agent.alert_throttling, config.agent.max_alert_per_sec, config.agent.throttle_sec) == (False, 3, 7)
    assert config.agent.log_path == Path("/var/log/a.json")
    assert config.agent.argv() == ("/opt/kubearmor/kubearmor", "/opt/kubearmor/kubearmor.yaml")


def test_cli_reports_a_bad_key_in_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "warden.yaml"
    path.write_text("agent:\n  maxAlertPerSecond: 5\n")
    result = subprocess.run([WARDEN, "run", "--config", str(path), "--check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"warden: {path}: agent.maxAlertPerSecond: unknown key")
    assert "Traceback" not in result.stderr


def test_gate_keys_alone_as_warden_verify_reads_them() -> None:
    cfg = parse_gate_config(
        {
            "trust_dir": "/opt/keys",
            "threshold": 2,
            "trust_modes": ["image", "initdata"],
            "measurement_sources": ["vtpm", "sample"],
            "insecure_allow_sample": True,
            "state_dir": "/run/x",
            "attestation_agent_url": "http://127.0.0.1:9",
            "attestation_agent_timeout": 1,
        },
        origin="gate.yaml",
    )
    assert cfg.trust_dir == Path("/opt/keys")
    assert cfg.trust_modes == (TrustMode.IMAGE, TrustMode.INITDATA)
    assert cfg.measurement_sources == ("vtpm", "sample")
    assert cfg.attestation_agent_timeout == 1.0
    defaults = GateConfig()
    assert defaults.trust_dir == Path("/etc/warden/trust")
    assert defaults.state_dir == Path("/run/warden")
    assert defaults.attestation_agent_url == "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
    assert defaults.insecure_allow_sample is False


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"treshold": 2}, "treshold"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": "2"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"trust_modes": ["tpm"]}, "trust_modes"),
        ({"trust_modes": []}, "trust_modes"),
        ({"measurement_sources": ["sgx"]}, "measurement_sources"),
        ({"insecure_allow_sample": "yes"}, "insecure_allow_sample"),
        ({"trust_dir": "relative"}, "trust_dir"),
        ({"attestation_agent_url": "tcp://127.0.0.1:50002"}, "attestation_agent_url"),
        ({"attestation_agent_url": "unix://relative.sock"}, "attestation_agent_url"),
        ({"attestation_agent_timeout": 0}, "attestation_agent_timeout"),
    ],
)
def test_gate_key_errors_name_the_key(mapping: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_gate_config(mapping, origin="/etc/warden/warden.yaml")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"/etc/warden/warden.yaml: {field}: ")
