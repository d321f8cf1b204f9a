"""The signed policy bundle's payload (the JSON inside the DSSE envelope).

Payload type `application/vnd.coco-warden.bundle+json`, a JSON object with exactly these fields:

    {
      "version": 7,                              # integer >= 1; rollback protection compares it
      "expires": "2027-01-31T00:00:00Z",         # RFC 3339 with a zone; refused at or after this
      "issued_at": "2026-11-01T00:00:00Z",       # optional; when signed (bounds the validity window)
      "policies": [                              # 1..256 KubeArmor policy *files*, in order
        {"name": "block-shadow.yaml", "text": "apiVersion: security.kubearmor.com/v1\\n..."}
      ],
      "bpf_objects": {"warden_lsm.bpf.o": "sha256:<64 hex>"},   # what the engine must load
      "agent": {...},                            # optional agent settings, any JSON object
      "pod": {                                   # optional: the pod this bundle is for (signed)
        "namespace": "default",
        "labels": {"app": "mysql"},
        "containers": ["mysql", "sidecar"]
      }
    }

`pod` is the pod owner's statement of which pod the bundle governs: its namespace and labels (what
KubeArmor selectors match) and the names of the containers it expects. trust.identity decides from
it, never from annotations, which policies apply to each container the OCI hook registers.

Each policy entry is the text of one YAML file as its author wrote it (it may hold several `---`
documents); `name` becomes the origin in policy error messages. Keeping the author's text, rather
than a re-serialised form, means what was reviewed is byte for byte what was signed.
`warden bundle sign` writes the payload as canonical JSON (sorted keys, no spaces); the verifier
does not depend on that, because the signature covers the payload bytes whatever they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from initdata import strict_json
from initdata.bounded import read_bounded
from initdata.errors import InputTooLarge, MalformedBundle

PAYLOAD_KEYS = frozenset({"version", "expires", "issued_at", "policies", "bpf_objects", "agent", "pod"})
POD_KEYS = frozenset({"namespace", "labels", "containers"})
MAX_POD_LABELS = 64
MAX_POD_CONTAINERS = 64
# Kubernetes names: DNS-1123 labels (namespaces, container names); label keys/values without , or =
# (KubeArmor joins labels as "k=v,k=v"), printable.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
MAX_POLICY_FILES = 256
MAX_BPF_OBJECTS = 64
MAX_VERSION = 2**63 - 1
# Times far from now are refused outright, so later arithmetic (expiry - issue) never overflows.
MIN_YEAR, MAX_YEAR = 2000, 9000
POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
BPF_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256_REF = re.compile(r"sha256:[0-9a-f]{64}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class PolicyFile:
    name: str
    text: str


@dataclass(frozen=True)
class PodIdentity:
    """The signed identity of the pod a bundle governs (see the module docstring)."""

    namespace: str
    labels: Mapping[str, str] = field(hash=False)
    containers: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"namespace": self.namespace, "labels": dict(self.labels), "containers": list(self.containers)}


def parse_pod(value: object, *, origin: str, field: str = "payload.pod") -> PodIdentity:
    """The `pod` object -> PodIdentity; MalformedBundle naming the sub-field otherwise."""
    if not isinstance(value, dict):
        raise MalformedBundle(origin, field, "must be an object with namespace, labels, containers")
    unknown = sorted(set(value) - POD_KEYS)
    if unknown:
        raise MalformedBundle(origin, f"{field}.{unknown[0]}", "unknown field")
    namespace = value.get("namespace")
    if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
        raise MalformedBundle(origin, f"{field}.namespace", f"{namespace!r} is not a Kubernetes namespace name")
    labels = value.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_POD_LABELS:
        raise MalformedBundle(origin, f"{field}.labels", f"must be an object of at most {MAX_POD_LABELS} labels")
    for key, label in labels.items():
        if not LABEL_KEY.fullmatch(key) or not isinstance(label, str) or not LABEL_VALUE.fullmatch(label):
            raise MalformedBundle(origin, f"{field}.labels.{key[:60]}", "is not a Kubernetes label key=value")
    containers = value.get("containers")
    if not isinstance(containers, list) or not 1 <= len(containers) <= MAX_POD_CONTAINERS:
        raise MalformedBundle(origin, f"{field}.containers", f"must list 1..{MAX_POD_CONTAINERS} container names")
    for index, name in enumerate(containers):
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            raise MalformedBundle(origin, f"{field}.containers[{index}]", f"{name!r} is not a container name")
    if len(set(containers)) != len(containers):
        raise MalformedBundle(origin, f"{field}.containers", "names a container twice")
    return PodIdentity(namespace=namespace, labels=MappingProxyType(dict(labels)), containers=tuple(containers))


@dataclass(frozen=True)
class BundlePayload:
    version: int
    expires: datetime
    policies: tuple[PolicyFile, ...]
    bpf_objects: Mapping[str, str] = field(hash=False)
    agent: Mapping[str, object] = field(hash=False)
    digest: str  # "sha256:<hex>" of the payload bytes: identifies the exact bundle
    pod: PodIdentity | None = None  # None: the bundle names no pod (every container gets the union)
    issued_at: datetime | None = None  # None: not stated (the validity window is then counted from now)


def parse_rfc3339(value: object, *, origin: str, field: str) -> datetime:
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise MalformedBundle(origin, field, f"{value!r} is not an RFC 3339 time with a zone")
    text = value.upper()
    # Python's fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        raise MalformedBundle(origin, field, f"{value!r}: {exc}") from None
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise MalformedBundle(origin, field, f"{value!r} is outside the years {MIN_YEAR}..{MAX_YEAR}")
    return parsed


def format_rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry_argument(value: str, *, now: datetime, origin: str = "--expires") -> datetime:
    """CLI convenience: RFC 3339, or `+30d` / `+12h` relative to now."""
    relative = re.fullmatch(r"\+(\d{1,5})([dh])", value)
    if relative:
        amount = int(relative.group(1))
        delta = timedelta(days=amount) if relative.group(2) == "d" else timedelta(hours=amount)
        return (now + delta).replace(microsecond=0)
    return parse_rfc3339(value, origin=origin, field="expires")


def parse_payload(payload: bytes, *, origin: str) -> BundlePayload:
    """Payload bytes (already signature-checked) -> BundlePayload, refusing anything unexpected."""
    document = strict_json.loads(payload, origin=origin, field="payload", error=MalformedBundle)
    if not isinstance(document, dict):
        raise MalformedBundle(origin, "payload", "must be a JSON object")
    unknown = sorted(set(document) - PAYLOAD_KEYS)
    if unknown:
        raise MalformedBundle(origin, f"payload.{unknown[0]}", "unknown field")

    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise MalformedBundle(origin, "payload.version", f"{version!r} is not an integer >= 1")
    expires = parse_rfc3339(document.get("expires"), origin=origin, field="payload.expires")

    raw_policies = document.get("policies")
    if not isinstance(raw_policies, list) or not raw_policies:
        raise MalformedBundle(origin, "payload.policies", "must be a non-empty list")
    if len(raw_policies) > MAX_POLICY_FILES:
        raise InputTooLarge(
            origin, "payload.policies", f"{len(raw_policies)} files exceeds the limit of {MAX_POLICY_FILES}"
        )
    policies: list[PolicyFile] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw_policies):
        where = f"payload.policies[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "text"}:
            raise MalformedBundle(origin, where, "must be an object with exactly 'name' and 'text'")
        name, text = entry["name"], entry["text"]
        if not isinstance(name, str) or not POLICY_NAME.fullmatch(name):
            raise MalformedBundle(origin, f"{where}.name", f"{name!r} is not a plain file name")
        if name in seen:
            raise MalformedBundle(origin, f"{where}.name", f"{name!r} appears twice")
        if not isinstance(text, str) or not text.strip():
            raise MalformedBundle(origin, f"{where}.text", "must be non-empty YAML text")
        seen.add(name)
        policies.append(PolicyFile(name=name, text=text))

    raw_objects = document.get("bpf_objects", {})
    if not isinstance(raw_objects, dict):
        raise MalformedBundle(origin, "payload.bpf_objects", "must be an object of name -> sha256:<hex>")
    if len(raw_objects) > MAX_BPF_OBJECTS:
        raise InputTooLarge(origin, "payload.bpf_objects", f"more than {MAX_BPF_OBJECTS} objects")
    for name, ref in raw_objects.items():
        if not BPF_OBJECT_NAME.fullmatch(name):
            raise MalformedBundle(origin, f"payload.bpf_objects.{name}", "is not a plain file name")
        if not isinstance(ref, str) or not SHA256_REF.fullmatch(ref):
            raise MalformedBundle(origin, f"payload.bpf_objects.{name}", f"{ref!r} is not sha256:<64 hex>")

    agent = document.get("agent", {})
    if not isinstance(agent, dict):
        raise MalformedBundle(origin, "payload.agent", "must be a JSON object")

    pod = parse_pod(document["pod"], origin=origin) if "pod" in document else None
    issued_at = (parse_rfc3339(document["issued_at"], origin=origin, field="payload.issued_at")
                 if "issued_at" in document else None)
    if issued_at is not None and issued_at >= expires:
        raise MalformedBundle(origin, "payload.issued_at", "is not before payload.expires")

    return BundlePayload(
        version=version,
        expires=expires,
        policies=tuple(policies),
        bpf_objects=MappingProxyType(dict(raw_objects)),
        agent=MappingProxyType(dict(agent)),
        digest="sha256:" + hashlib.sha256(payload).hexdigest(),
        pod=pod,
        issued_at=issued_at,
    )


def build_payload(
    *,
    version: int,
    expires: datetime,
    policies: list[PolicyFile],
    bpf_objects: Mapping[str, str] | None = None,
    agent: Mapping[str, object] | None = None,
    pod: PodIdentity | None = None,
    issued_at: datetime | None = None,
    origin: str = "bundle",
) -> bytes:
    """Canonical payload bytes; parsed back before returning so sign never emits what verify refuses."""
    document: dict[str, object] = {
        "version": version,
        "expires": format_rfc3339(expires),
        "policies": [{"name": p.name, "text": p.text} for p in policies],
        "bpf_objects": dict(bpf_objects or {}),
    }
    if agent:
        document["agent"] = dict(agent)
    if pod is not None:
        document["pod"] = pod.to_json()
    if issued_at is not None:
        document["issued_at"] = format_rfc3339(issued_at)
    payload = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    parse_payload(payload, origin=origin)
    return payload


def read_policy_dir(directory: Path, *, limit: int) -> list[PolicyFile]:
    """The `*.yaml`/`*.yml` files of a directory (not recursive), sorted by name."""
    origin = str(directory)
    if not directory.is_dir():
        raise MalformedBundle(origin, "directory", "is not a directory")
    paths = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not paths:
        raise MalformedBundle(origin, "directory", "holds no *.yaml policy files")
    if len(paths) > MAX_POLICY_FILES:
        raise InputTooLarge(origin, "directory", f"{len(paths)} files exceeds the limit of {MAX_POLICY_FILES}")
    files: list[PolicyFile] = []
    for path in paths:
        raw = read_bounded(path, limit, error=MalformedBundle)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBundle(str(path), "text", "is not UTF-8") from None
        files.append(PolicyFile(name=path.name, text=text))
    return files


def sha256_file_ref(path: Path, *, limit: int) -> str:
    return "sha256:" + hashlib.sha256(read_bounded(path, limit, error=MalformedBundle)).hexdigest()
