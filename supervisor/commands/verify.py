"""`warden verify INITDATA`: run the whole gate offline (CI pipelines) or against live sources.

With --measurement-hex and --tee, the measurement is the given register value (what a CI pipeline
expects the TEE to report). Without them, the configured live sources are asked (--source to pick
them, e.g. `--source vtpm` in a guest with a TPM). --tee sample plus --insecure-allow-sample checks
everything except the measurement, and says INSECURE.
Exit codes: 0 accepted; 1 refused (one line on stderr naming the file and field); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.base import MeasurementSource
from attest.detect import SOURCE_NAMES
from attest.sample import GivenMeasurementSource
from attest.tee import Tee
from initdata.bundle import format_rfc3339, parse_rfc3339
from initdata.errors import ConfigError
from initdata.locate import locate_initdata
from supervisor.cli_support import guarded
from supervisor.config import GateConfig, parse_gate_config, read_config_document
from supervisor.exit_codes import EXIT_OK, EXIT_USAGE
from supervisor.gate_inputs import gate_initdata, live_sources
from trust.gate import VerifiedPolicy
from trust.rules import TrustMode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="run the attestation gate on an initdata document",
        description="Run the gate: measurement, signatures, version and expiry, policy validation.",
    )
    parser.add_argument(
        "initdata",
        type=Path,
        nargs="?",
        metavar="INITDATA",
        help="initdata file (TOML, annotation or image); default: where the guest has it",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="gate configuration (YAML mapping)")
    parser.add_argument("--measurement-hex", metavar="HEX", help="the register value the TEE reports")
    parser.add_argument(
        "--tee",
        choices=[*(t.value for t in Tee), "sample"],
        help="which register --measurement-hex is (or 'sample': no TEE)",
    )
    parser.add_argument(
        "--source",
        action="append",
        choices=SOURCE_NAMES,
        metavar="SOURCE",
        help=f"live measurement source to try, in order ({', '.join(SOURCE_NAMES)})",
    )
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    parser.add_argument("--trust-dir", type=Path, metavar="DIR", help="trusted public keys (*.pem)")
    parser.add_argument(
        "--trust-mode",
        action="append",
        choices=[m.value for m in TrustMode],
        help="allowed trust mode (repeatable; default from config, else image)",
    )
    parser.add_argument("--threshold", type=int, metavar="K", help="distinct signing keys required")
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="rollback state directory (default: none, an offline check)"
    )
    parser.add_argument(
        "--insecure-allow-sample",
        action="store_true",
        help="accept running without a TEE (development only; reported INSECURE)",
    )
    parser.add_argument(
        "--insecure-source",
        action="append",
        default=[],
        choices=["vtpm", "sample"],
        help="accept this measurement no TEE vouches for (repeatable; reported INSECURE)",
    )
    parser.add_argument("--now", metavar="T", help="check expiry at this RFC 3339 time")
    parser.add_argument("--json", action="store_true", help="print the accepted bundle as JSON")
    parser.set_defaults(handler=run_verify)


def _load_config(args: argparse.Namespace) -> GateConfig:
    """The gate keys from --config (a mapping of GateConfig keys), overridden by the options given."""
    mapping: dict[str, Any] = {"state_dir": None}
    if args.config is not None:
        loaded = read_config_document(args.config)
        if not isinstance(loaded, dict):
            raise ConfigError(str(args.config), "config", "must be a mapping")
        mapping.update(loaded)
    if args.trust_dir is not None:
        mapping["trust_dir"] = str(args.trust_dir.absolute())
    if args.trust_mode:
        mapping["trust_modes"] = list(args.trust_mode)
    if args.threshold is not None:
        mapping["threshold"] = args.threshold
    if args.state_dir is not None:
        mapping["state_dir"] = str(args.state_dir.absolute())
    if args.insecure_allow_sample:
        mapping["insecure_allow_sample"] = True
    if args.insecure_source:
        mapping["insecure_sources"] = list(args.insecure_source)
    if args.source:
        mapping["measurement_sources"] = list(args.source)
    return parse_gate_config(mapping, origin=str(args.config or "command line"))


def _sources(args: argparse.Namespace, config: GateConfig) -> list[MeasurementSource]:
    if args.tee == "sample":
        return [GivenMeasurementSource(None, b"", detail="--tee sample")]
    if args.measurement_hex is None:
        return live_sources(config, sysfs_root=args.sysfs_root)
    text = args.measurement_hex.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"(?:[0-9a-f]{2})+", text):
        raise ConfigError("--measurement-hex", "measurement", "is not an even number of hex digits")
    return [GivenMeasurementSource(Tee(args.tee), bytes.fromhex(text), detail="--measurement-hex")]


def _summary(verified: VerifiedPolicy) -> dict[str, Any]:
    return {
        "bundle_version": verified.bundle_version,
        "bundle_digest": verified.bundle_digest,
        "expires": format_rfc3339(verified.expires),
        "policies": [p.name for p in verified.policies],
        "policy_count": len(verified.parsed_policies),
        "bpf_objects": dict(verified.bpf_objects),
        "agent_settings": dict(verified.agent_settings),
        "measurement_source": verified.measurement_source,
        "tee": verified.tee,
        "insecure": verified.insecure,
        "initdata_digest": f"{verified.initdata_algorithm}:{verified.initdata_digest}",
        "trust_mode": verified.trust_mode.value,
        "signers": list(verified.signer_keyids),
    }


@guarded
def run_verify(args: argparse.Namespace) -> int:
    if (args.measurement_hex is None) != (args.tee is None or args.tee == "sample"):
        print("warden: verify: --measurement-hex and --tee (tdx|snp|cca|vtpm) go together", file=sys.stderr)
        return EXIT_USAGE
    config = _load_config(args)
    sources = _sources(args, config)
    now = parse_rfc3339(args.now, origin="--now", field="now") if args.now else datetime.now(UTC)
    document = locate_initdata(args.initdata)
    verified = gate_initdata(document, config, sources=sources, now=now)
    if args.json:
        print(json.dumps(_summary(verified), indent=2, sort_keys=True))
    else:
        print(verified.status_line())
    return EXIT_OK
