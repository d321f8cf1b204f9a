"""`warden bundle sign|verify`: author and check signed policy bundles (DSSE envelopes).

sign:   POLICY_DIR's *.yaml files (validated first) + version + expiry + BPF object digests ->
        envelope JSON signed by every --key.
verify: signatures (threshold of distinct trusted keys), expiry, optional rollback state, policy
        validation: the gate's steps 2-4, without a measurement.
Exit codes: 0 ok; 1 refused (one line on stderr naming the file and field); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from initdata.bounded import read_bounded
from initdata.bundle import (
    PodIdentity,
    build_payload,
    format_rfc3339,
    parse_expiry_argument,
    parse_payload,
    parse_pod,
    parse_rfc3339,
    read_policy_dir,
    sha256_file_ref,
)
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES, sign_envelope
from initdata.errors import MalformedBundle
from initdata.keys import (
    MAX_PEM_BYTES,
    PublicKey,
    TrustStore,
    load_public_keys_pem,
    load_signing_key_pem,
    load_trust_dir,
)
from supervisor.cli_support import guarded, write_output
from supervisor.exit_codes import EXIT_OK, EXIT_USAGE
from supervisor.gate_inputs import read_rollback_state
from trust.bundle import validate_policies, verify_bundle

MAX_POLICY_FILE_BYTES = 256 * 1024
MAX_BPF_OBJECT_BYTES = 64 * 1024 * 1024
MAX_AGENT_SETTINGS_BYTES = 64 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bundle", help="sign and verify policy bundles", description="Sign and verify policy bundles."
    )
    actions = parser.add_subparsers(dest="bundle_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: _usage(parser))

    sign = actions.add_parser(
        "sign",
        help="sign the policies of a directory into a bundle",
        description="Validate POLICY_DIR/*.yaml and sign them as a DSSE bundle envelope.",
    )
    sign.add_argument("policy_dir", type=Path, metavar="POLICY_DIR")
    sign.add_argument(
        "--key",
        action="append",
        required=True,
        type=Path,
        metavar="KEY",
        help="private key PEM; repeat for more signatures",
    )
    sign.add_argument("--version", required=True, type=int, metavar="N", help="bundle version (>= 1)")
    sign.add_argument(
        "--expires", required=True, metavar="T", help="expiry: RFC 3339 (2027-01-31T00:00:00Z) or relative (+30d, +12h)"
    )
    sign.add_argument(
        "--bpf-object",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a BPF object the engine must load; its sha256 is signed (repeatable)",
    )
    sign.add_argument("--agent-settings", type=Path, metavar="FILE", help="agent settings as a JSON or YAML mapping")
    sign.add_argument("--pod", type=Path, metavar="POD.yaml",
                      help="the pod this bundle governs: a Pod manifest, or {namespace, labels, containers}; "
                           "its labels and container names decide which policies apply to which container")
    sign.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here instead of stdout")
    sign.set_defaults(handler=run_sign)

    verify = actions.add_parser(
        "verify",
        help="verify a bundle envelope offline",
        description="Check signatures, expiry, optional rollback state and policies of an envelope.",
    )
    verify.add_argument("envelope", type=Path, metavar="ENVELOPE")
    verify.add_argument("--trust-dir", type=Path, metavar="DIR", help="directory of *.pem public keys")
    verify.add_argument(
        "--trust-key",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="a trusted public key file (repeatable; instead of --trust-dir)",
    )
    verify.add_argument("--threshold", type=int, default=1, metavar="K", help="distinct keys required")
    verify.add_argument("--state-dir", type=Path, metavar="DIR", help="check (not update) the rollback state kept here")
    verify.add_argument("--now", metavar="T", help="check expiry at this RFC 3339 time instead of now")
    verify.set_defaults(handler=run_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _load_agent_settings(path: Path) -> dict[str, Any]:
    raw = read_bounded(path, MAX_AGENT_SETTINGS_BYTES, field="agent settings", error=MalformedBundle)
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MalformedBundle(str(path), "agent settings", f"not JSON or YAML ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise MalformedBundle(str(path), "agent settings", "must be a mapping")
    try:
        json.dumps(document)
    except (TypeError, ValueError):
        raise MalformedBundle(str(path), "agent settings", "holds values JSON cannot carry") from None
    return document


def pod_document(document: Any) -> dict[str, Any]:
    """A Kubernetes Pod manifest -> the bundle's `pod` object; any other mapping is taken as that object.

    From a Pod: metadata.namespace (default "default"), metadata.labels, and the names of
    spec.initContainers and spec.containers (every container the runtime will create)."""
    if not isinstance(document, dict) or document.get("kind") != "Pod":
        return document if isinstance(document, dict) else {}
    metadata = document.get("metadata") or {}
    spec = document.get("spec") or {}
    names = [c.get("name") for key in ("initContainers", "containers") for c in (spec.get(key) or [])
             if isinstance(c, dict)]
    return {"namespace": metadata.get("namespace", "default"), "labels": metadata.get("labels") or {},
            "containers": names}


def load_pod(path: Path) -> PodIdentity:
    raw = read_bounded(path, MAX_AGENT_SETTINGS_BYTES, field="pod", error=MalformedBundle)
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MalformedBundle(str(path), "pod", f"not YAML ({type(exc).__name__})") from None
    return parse_pod(pod_document(document), origin=str(path), field="pod")


@guarded
def run_sign(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    expires = parse_expiry_argument(args.expires, now=now)
    if expires <= now:
        raise MalformedBundle("--expires", "expires", f"{format_rfc3339(expires)} is already in the past")
    if args.version < 1:
        raise MalformedBundle("--version", "version", f"{args.version} is not >= 1")
    keys = [load_signing_key_pem(read_bounded(p, MAX_PEM_BYTES, field="key"), origin=str(p)) for p in args.key]
    distinct = {k.public.spki_der for k in keys}
    if len(distinct) != len(keys):
        raise MalformedBundle("--key", "key", "the same key is given twice; it would count once")
    policies = read_policy_dir(args.policy_dir, limit=MAX_POLICY_FILE_BYTES)
    bpf_objects = {p.name: sha256_file_ref(p, limit=MAX_BPF_OBJECT_BYTES) for p in args.bpf_object}
    agent = _load_agent_settings(args.agent_settings) if args.agent_settings else None
    pod = load_pod(args.pod) if args.pod else None
    payload = build_payload(
        version=args.version,
        expires=expires,
        policies=policies,
        bpf_objects=bpf_objects,
        agent=agent,
        pod=pod,
        issued_at=now.replace(microsecond=0),  # bounds the validity window (gate.max_validity_days)
        origin=str(args.policy_dir),
    )
    validate_policies(parse_payload(payload, origin=str(args.policy_dir)), origin=str(args.policy_dir))
    envelope = sign_envelope(payload, BUNDLE_PAYLOAD_TYPE, keys).to_json()
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise MalformedBundle(str(args.policy_dir), "policies", "the signed bundle exceeds the size limit")
    write_output(args.output, envelope)
    if args.output is not None:
        print(
            f"bundle v{args.version} ({len(policies)} policy files, {len(keys)} signatures, "
            f"expires {format_rfc3339(expires)}) written to {args.output}"
        )
    return EXIT_OK


@guarded
def run_verify(args: argparse.Namespace) -> int:
    if args.trust_dir is None and not args.trust_key:
        return _usage_error("bundle verify: give --trust-dir or --trust-key")
    if args.trust_key:
        keys: list[PublicKey] = []
        for path in args.trust_key:
            keys.extend(load_public_keys_pem(read_bounded(path, MAX_PEM_BYTES, field="key"), origin=str(path)))
        trust = TrustStore.from_keys(keys, origin=", ".join(str(p) for p in args.trust_key))
    else:
        trust = load_trust_dir(args.trust_dir, owner_uid=None)  # a workstation's files, not the guest's
    now = parse_rfc3339(args.now, origin="--now", field="now") if args.now else datetime.now(UTC)
    envelope = read_bounded(args.envelope, MAX_ENVELOPE_BYTES, field="envelope", error=MalformedBundle)
    bundle = verify_bundle(
        envelope,
        origin=str(args.envelope),
        trust=trust,
        threshold=args.threshold,
        last_accepted=read_rollback_state(args.state_dir),
        now=now,
    )
    payload = bundle.payload
    print(
        f"bundle v{payload.version} ({payload.digest[:19]}) verified: {len(bundle.signers)}/{args.threshold} "
        f"signatures, {len(bundle.policies)} policies, expires {format_rfc3339(payload.expires)}"
    )
    return EXIT_OK


def _usage_error(message: str) -> int:
    print(f"warden: {message}", file=sys.stderr)
    return EXIT_USAGE
