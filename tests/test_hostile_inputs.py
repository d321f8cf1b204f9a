"""Issue 15 items 2, 6, 7 and 8: hostile inputs end in a GateError-family error, never anything else.

Every parser of host-written data is swept with the inputs that used to escape as ValueError,
OverflowError or RecursionError (or, for duplicate keys, were silently read last-key-wins); the
supervisor's gate step turns whatever still escapes into the baseline; the trust directory refuses
FIFOs, symlinks and writable files without blocking; small-order Ed25519 keys are refused at load;
the hook's and the control server's timeouts bound a whole exchange however the peer trickles.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from attest.aa import _json_object, measurement_from_evidence
from attest.hcl import ak_public_key
from initdata import strict_json
from initdata.bundle import parse_payload
from initdata.dsse import BUNDLE_PAYLOAD_TYPE, parse_envelope, sign_envelope
from initdata.errors import GateError, MalformedBundle, TrustStoreError
from initdata.keys import ed25519_weak_reason, load_public_key_pem, load_trust_dir
from initdata.rollback import parse_state
from supervisor.control import ProtocolError, call, parse_request
from supervisor.hook import HookError
from supervisor.hook import parse_state as parse_oci_state
from tests.data.initdata.factory import FIXTURE_NOW, make_envelope, public_pem, signing_key
from trust.bundle import verify_bundle

HOSTILE: dict[str, bytes] = {
    "int-5000-digits": b'{"version": ' + b"9" * 5000 + b"}",
    "int-4301-digits-nested": b'{"a": [' + b"1" * 4301 + b"]}",
    "float-huge": b'{"version": 1e999}',
    "float-long": b'{"version": 1.' + b"5" * 5000 + b"}",
    "nan": b'{"version": NaN}',
    "infinity": b'{"version": Infinity}',
    "minus-infinity": b'{"version": -Infinity}',
    "deep-arrays": b"[" * 10_000 + b"]" * 10_000,
    "deep-objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep-unclosed": b"[" * 100_000,
    "duplicate-version": b'{"version": 5, "expires": "2030-01-01T00:00:00Z", "version": 99}',
    "not-utf8": b'{"version": "\xff"}',
}

# (parser, the error family it must raise): every parser of host-written JSON in the project.
PARSERS: dict[str, tuple[Callable[[bytes], Any], type[Exception]]] = {
    "dsse.parse_envelope": (lambda raw: parse_envelope(raw, origin="o"), GateError),
    "bundle.parse_payload": (lambda raw: parse_payload(raw, origin="o"), GateError),
    "rollback.parse_state": (lambda raw: parse_state(raw[:4096], origin="o"), GateError),
    "aa._json_object": (lambda raw: _json_object(raw, origin="o", field="f"), GateError),
    "aa.measurement_from_evidence": (
        lambda raw: measurement_from_evidence(raw, origin="o", source="attestation-agent"), GateError),
    "control.parse_request": (parse_request, ProtocolError),
    "hook.parse_state": (parse_oci_state, HookError),
    "hcl.ak_public_key (HCL var_data)": (lambda raw: ak_public_key(raw, origin="o"), GateError),
}


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
@pytest.mark.parametrize("input_name", sorted(HOSTILE))
def test_every_parser_refuses_hostile_json_with_its_error_type(parser_name: str, input_name: str) -> None:
    parser, family = PARSERS[parser_name]
    with pytest.raises(family) as caught:
        parser(HOSTILE[input_name])
    assert "\n" not in str(caught.value)


def test_rollback_state_too_deep_is_an_error_not_a_crash() -> None:
    # The state file's own size bound is 4096 bytes: 2000 levels fit, which used to be a RecursionError.
    with pytest.raises(GateError, match="nested deeper"):
        parse_state(b"[" * 2000 + b"]" * 2000, origin="state")


def test_duplicate_keys_are_refused_even_inside_a_validly_signed_payload() -> None:
    """Item 7: a signer's payload with "version":5 ... "version":99 is ambiguous; refused, not read as 99."""
    key = signing_key("owner-ed25519")
    good = json.loads(make_envelope([key]).to_json())
    payload = base64.b64decode(good["payload"]).decode()
    doubled = payload.replace('"version":1', '"version":5,"version":99', 1).encode()
    envelope = sign_envelope(doubled, BUNDLE_PAYLOAD_TYPE, [key]).to_json()
    from initdata.keys import TrustStore

    trust = TrustStore.from_keys([key.public], origin="test")
    with pytest.raises(MalformedBundle, match="duplicate key 'version'"):
        verify_bundle(envelope, origin="b", trust=trust, threshold=1, last_accepted=None, now=FIXTURE_NOW)


def test_duplicate_envelope_keys_are_refused() -> None:
    raw = b'{"payload": "e30=", "payloadType": "x", "payload": "e30=", "signatures": []}'
    with pytest.raises(MalformedBundle, match="duplicate key 'payload'"):
        parse_envelope(raw, origin="e")


@pytest.mark.parametrize("expires", [
    "9999-12-31T23:59:59-01:00",  # past datetime.max once in UTC: was OverflowError
    "0001-01-01T00:00:00+01:00",  # before datetime.min once in UTC
    "9999-12-31T23:59:59Z",       # parses, but beyond the bound that keeps later arithmetic safe
    "1900-01-01T00:00:00Z",
])
def test_far_dates_are_malformed_bundles(expires: str) -> None:
    document = {"version": 1, "expires": expires, "policies": [{"name": "a.yaml", "text": "x: 1"}]}
    with pytest.raises(MalformedBundle, match=r"payload\.expires"):
        parse_payload(json.dumps(document).encode(), origin="o")


def test_strict_json_accepts_what_warden_writes() -> None:
    value = {"version": 7, "ratio": 0.5, "nested": {"a": [1, 2, {"b": "[{not nesting}]"}]}, "neg": -3}
    assert strict_json.loads(json.dumps(value).encode(), origin="o", field="f", error=GateError) == value
    # Brackets inside strings (with escaped quotes) do not count as nesting.
    text = json.dumps({"s": '\\"' + "[" * 500})
    assert strict_json.loads(text, origin="o", field="f", error=GateError)["s"].endswith("[")


# -- item 8: weak keys ----------------------------------------------------------------------------

P = 2**255 - 19
SMALL_ORDER_ENCODINGS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    # non-canonical encodings of the same points (y >= p, or the identity with the sign bit set)
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]


def _pem_of_raw(raw: bytes) -> bytes:
    # SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix + the 32-byte point.
    der = bytes.fromhex("302a300506032b6570032100") + raw
    body = base64.encodebytes(der).replace(b"\n", b"")
    return b"-----BEGIN PUBLIC KEY-----\n" + body + b"\n-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize("encoding", SMALL_ORDER_ENCODINGS)
def test_small_order_ed25519_keys_are_refused(encoding: str) -> None:
    raw = bytes.fromhex(encoding)
    assert ed25519_weak_reason(raw) is not None
    with pytest.raises(TrustStoreError, match=r"refused: .*(small order|non-canonical)"):
        load_public_key_pem(_pem_of_raw(raw), origin="weak.pem")


def test_identity_key_would_verify_a_forgery_without_the_check() -> None:
    """Why the check exists: the library verifies R = identity, s = 0 against the identity key."""
    weak = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(SMALL_ORDER_ENCODINGS[0]))
    weak.verify(bytes.fromhex(SMALL_ORDER_ENCODINGS[0]) + b"\0" * 32, b"any message at all")


def test_ordinary_keys_still_load() -> None:
    for _ in range(64):
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert ed25519_weak_reason(raw) is None
    load_public_key_pem(public_pem("owner-ed25519"), origin="owner.pem")


# -- item 6 and 8: the trust directory ------------------------------------------------------------


@pytest.fixture
def trust_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "trust"
    directory.mkdir(mode=0o755)
    (directory / "owner.pem").write_bytes(public_pem("owner-ed25519"))
    os.chmod(directory / "owner.pem", 0o644)
    return directory


def test_trust_dir_loads_root_owned_regular_files(trust_dir: Path) -> None:
    assert len(load_trust_dir(trust_dir).keys) == 1


def test_fifo_in_trust_dir_is_refused_without_blocking(trust_dir: Path) -> None:
    os.mkfifo(trust_dir / "zz.pem")
    started = time.monotonic()
    with pytest.raises(TrustStoreError, match=r"zz\.pem: file: is not a regular file"):
        load_trust_dir(trust_dir)
    assert time.monotonic() - started < 2


def test_symlinked_key_is_refused(trust_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(public_pem("owner-p256"))
    (trust_dir / "link.pem").symlink_to(elsewhere)
    with pytest.raises(TrustStoreError, match=r"link\.pem: file: is a symlink"):
        load_trust_dir(trust_dir)


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_writable_key_file_is_refused(trust_dir: Path, mode: int) -> None:
    os.chmod(trust_dir / "owner.pem", mode)
    with pytest.raises(TrustStoreError, match="group- or world-writable"):
        load_trust_dir(trust_dir)


def test_writable_trust_dir_is_refused(trust_dir: Path) -> None:
    os.chmod(trust_dir, 0o777)
    with pytest.raises(TrustStoreError, match="directory: is group- or world-writable"):
        load_trust_dir(trust_dir)


def test_key_not_owned_by_root_is_refused(trust_dir: Path) -> None:
    os.chown(trust_dir / "owner.pem", 65534, 65534)
    with pytest.raises(TrustStoreError, match="owned by uid 65534, not 0"):
        load_trust_dir(trust_dir)


# -- item 6: bounded exchanges --------------------------------------------------------------------


@pytest.fixture
def trickling_server(tmp_path: Path) -> Iterator[Path]:
    """A control-socket peer that answers one byte every 0.2 s, forever (never a newline)."""
    path = tmp_path / "trickle.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while not stop.is_set():
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break
                    time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_control_call_timeout_bounds_the_whole_exchange(trickling_server: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        call(trickling_server, {"op": "status"}, timeout=1.0)
    assert time.monotonic() - started < 1.6


def test_hook_timeout_bounds_a_trickling_supervisor(trickling_server: Path, tmp_path: Path) -> None:
    from supervisor.hook import Stage, run_hook

    state = json.dumps({"ociVersion": "1.0.2", "id": "abc", "status": "created", "pid": os.getpid(),
                        "bundle": "/b", "annotations": {}}).encode()
    started = time.monotonic()
    with pytest.raises(HookError, match="failing closed"):
        run_hook(state, stage=Stage.CREATE_RUNTIME, socket_path=trickling_server, timeout_s=1.5)
    assert time.monotonic() - started < 2.5


def test_control_server_drops_a_trickling_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import supervisor.control as control
    from supervisor.control import ControlServer, Reply

    monkeypatch.setattr(control, "READ_TIMEOUT_S", 1.0)
    server = ControlServer(tmp_path / "c.sock", lambda request: Reply(ok=True))
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(tmp_path / "c.sock"))
            started = time.monotonic()
            reply = b""
            for byte in b'{"op": "status"          ':
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.1)
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    reply += conn.recv(4096)
                conn.setblocking(True)
                if reply:
                    break
            assert b"no complete request" in reply
            assert time.monotonic() - started < 2.0
    finally:
        server.close()


# -- item 2: whatever escapes the gate ends in the baseline ---------------------------------------
# The host kernel refuses LSM programs, so the engine here records what it was asked to load; the
# same path under the real warden.service and kernel is tests/guest/test_supervisor_service.py.


class RecordingEngine:
    def __init__(self) -> None:
        self.loaded: list[tuple[Any, ...]] = []

    def is_loaded(self) -> bool:
        return False

    def load(self, policies: tuple[Any, ...], *_postures: Any, **_options: Any) -> Any:
        from supervisor.enforcement import LoadSummary

        self.loaded.append(policies)
        return LoadSummary("sha256:" + "0" * 64, {}, adopted=False, timings_s={})


def _supervisor(tmp_path: Path, **config: Any) -> Any:
    from supervisor.config import GateConfig, WardenConfig
    from supervisor.daemon import Supervisor
    from supervisor.notify import Notifier

    trust = tmp_path / "trust"
    trust.mkdir(mode=0o755)
    (trust / "owner.pem").write_bytes(public_pem("owner-ed25519"))
    baseline = tmp_path / "baseline.bundle.json"
    baseline.write_bytes(make_envelope([signing_key("owner-ed25519")], version=1).to_json())
    warden = WardenConfig(gate=GateConfig(trust_dir=trust, state_dir=tmp_path / "state"), baseline_bundle=baseline,
                          state_dir=tmp_path / "state", gate_failure_exit_s=0, **config)
    supervisor = Supervisor(warden, notifier=Notifier(environ={}))
    supervisor.engine = RecordingEngine()
    return supervisor


@pytest.mark.parametrize("escaping", [ValueError("Exceeds the limit (4300 digits)"),
                                      OverflowError("date value out of range"),
                                      RecursionError("maximum recursion depth exceeded"), KeyError("x")])
def test_any_exception_from_the_gate_gives_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture,
                                                        escaping: Exception) -> None:
    import supervisor.daemon as daemon
    from supervisor.status import EnforcedOrigin, Phase

    def start_gate(_config: Any) -> Any:
        raise escaping

    monkeypatch.setattr(daemon, "start_gate", start_gate)
    supervisor = _supervisor(tmp_path)
    assert supervisor._run_started() == 1
    assert supervisor.state.phase is Phase.GATE_REFUSED
    assert supervisor.state.enforced.origin is EnforcedOrigin.BASELINE
    assert len(supervisor.engine.loaded) == 1
    assert f"internal error {type(escaping).__name__}" in supervisor.state.status_line
    assert "enforcing baseline bundle v1" in supervisor.state.status_line
    assert [r for r in caplog.records if "internal error" in r.getMessage()]


def test_attestation_has_a_total_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 6: a gate that never returns (a trickling attestation-agent) is refused at the deadline,
    and systemd is never asked for more start time than the deadline leaves."""
    import supervisor.daemon as daemon
    from supervisor.status import EnforcedOrigin

    release = threading.Event()
    monkeypatch.setattr(daemon, "start_gate", lambda _config: release.wait(30))
    supervisor = _supervisor(tmp_path, attestation_deadline_s=2.0, extend_timeout_s=1.0)
    extensions: list[float] = []
    monkeypatch.setattr(supervisor.notifier, "extend_timeout", lambda seconds: extensions.append(seconds) or True)
    started = time.monotonic()
    try:
        assert supervisor._run_started() == 1
    finally:
        release.set()
    assert time.monotonic() - started < 4
    assert "attestation_deadline_s=2s" in supervisor.state.status_line
    assert supervisor.state.enforced.origin is EnforcedOrigin.BASELINE
    # the gate's extensions never pass the deadline; the one after them is the load's (enforce_timeout_s),
    # asked once before the baseline's BPF objects load
    assert len(extensions) >= 2 and max(extensions[:-1]) <= 2.0 + 1.0
    assert extensions[-1] == supervisor.config.enforce_timeout_s == 300.0
    assert len(supervisor.engine.loaded) == 1


def test_a_trickling_attestation_agent_body_is_bounded_per_request() -> None:
    """Item 6: the AA REST client's timeout bounds the body as a whole, not each read."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from attest.aa import AttestationAgentClient
    from initdata.errors import AttestationAgentError

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(200):
                try:
                    self.wfile.write(b"{")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = AttestationAgentClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=1.0, attempts=1)
        started = time.monotonic()
        with pytest.raises(AttestationAgentError, match="did not arrive within the timeout"):
            client.request("GET", "/aa/evidence")
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
        server.server_close()
