"""A vTPM vouched for by the TEE (attest.hcl, attest.vtpm): every link from AMD's root to PCR8.

Vectors are built with `cryptography` (tests/data/amd/hcl_factory.py): a test ARK -> ASK -> VCEK
chain, an SNP report signed by the test VCEK binding var_data, the HCL report around it, and a
TPM2_Quote of PCR8 signed by the attestation key var_data names. The test root is passed through
the same `roots` parameter production uses with AMD's pinned ARKs; with the default (AMD's), the
same vectors are refused. A real Azure VCEK -> ASK -> ARK-Milan chain checks the pinned roots.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from attest.amd_roots import ARK_GENOA_PEM, ARK_GENOA_SHA256, ARK_MILAN_PEM, ARK_MILAN_SHA256, PINNED_ARK_PEMS
from attest.base import Measurement
from attest.detect import first_measurement
from attest.hcl import (
    VouchEvidence,
    _signed_by,
    parse_hcl_report,
    parse_snp_report,
    verify_quote,
    verify_vcek_chain,
    vouch_snp,
)
from attest.sample import SampleSource
from attest.tee import Tee
from attest.vtpm import VtpmSource, fetch_imds_certificates
from initdata.errors import InsecureSourceRefused, NotVouched
from supervisor.config import parse_gate_config
from tests.data.amd.hcl_factory import (
    HERE,
    NOW,
    Chain,
    SnpFields,
    certificate,
    ec_key,
    hcl_report,
    make_chain,
    quote_message,
    quote_signature,
    real_azure_chain,
    rsa_key,
    snp_report,
    var_data,
)

DEFAULT_FIELDS = SnpFields()
NONCE = hashlib.sha256(b"nonce").digest()
PCR8 = hashlib.sha256(b"pcr8").digest()


def evidence(chain: Chain | None = None, *, fields: SnpFields = DEFAULT_FIELDS, ak: str = "ak", signer: str = "ak",
             nonce: bytes = NONCE, **hcl: object) -> VouchEvidence:
    chain = chain or make_chain()
    data = var_data(rsa_key(ak).public_key())
    report = hcl_report(snp_report(chain, data, fields), data, **hcl)  # type: ignore[arg-type]
    message = quote_message(nonce, PCR8)
    return VouchEvidence(report, message, quote_signature(message, rsa_key(signer)), NONCE, PCR8, chain.vcek, chain.ask)


def vouch(ev: VouchEvidence, chain: Chain | None = None, *, now: datetime = NOW) -> str:
    roots = ((chain or make_chain()).ark_pem,)
    return vouch_snp(ev, now=now, origin="/dev/tpmrm0", roots=roots)


def refused(ev: VouchEvidence, match: str, chain: Chain | None = None, *, now: datetime = NOW) -> None:
    with pytest.raises(NotVouched, match=match):
        vouch(ev, chain, now=now)


def test_every_link_holds_with_the_test_root() -> None:
    assert vouch(evidence()) == "Test-ARK"


def test_the_same_evidence_is_not_vouched_under_amds_roots() -> None:
    """Production pins AMD's ARKs: a chain to any other root is refused, whatever else is right."""
    with pytest.raises(NotVouched, match=r"ask.issuer: CN=Test-ARK,O=Not AMD is not a pinned AMD root key \(ARK\)"):
        vouch_snp(evidence(), now=NOW, origin="/dev/tpmrm0")


def test_a_root_the_host_sends_along_is_never_used() -> None:
    # An ARK with AMD's name but another key: the ASK it signed does not verify with AMD's ARK.
    chain = make_chain()
    milan = x509.load_pem_x509_certificate(ARK_MILAN_PEM)
    fake_ask = chain.ask
    with pytest.raises(NotVouched, match=r"ask.issuer"):
        verify_vcek_chain(chain.vcek, fake_ask, now=NOW, origin="o")
    assert milan.subject != fake_ask.issuer


@pytest.mark.parametrize(("fields", "match"), [
    (SnpFields(report_data=b"\1" * 32), "snp_report.report_data: 0101.* is not sha256\\(var_data\\)"),
    (SnpFields(vmpl=1), "snp_report.vmpl: 1: not made by the paravisor at VMPL0"),
    (SnpFields(policy=0x30000 | 1 << 19), "snp_report.policy: allows debugging"),
    (SnpFields(signature_algo=2), "snp_report.signature_algo: 2 is not ECDSA P-384"),
    (SnpFields(key_info=1 << 2), "snp_report.signing_key: 1 is not the VCEK"),
    (SnpFields(key_info=1 << 1), "snp_report.mask_chip_key"),
    (SnpFields(version=1), "snp_report.version: 1"),
])
def test_report_fields_that_refuse(fields: SnpFields, match: str) -> None:
    refused(evidence(fields=fields), match)


def test_a_report_changed_after_signing_is_refused() -> None:
    chain = make_chain()
    ev = evidence(chain)
    tampered = bytearray(ev.hcl_report)
    tampered[32 + 0x90] ^= 1  # MEASUREMENT, inside the signed bytes
    refused(replace(ev, hcl_report=bytes(tampered)), "snp_report.signature: does not verify with the VCEK", chain)


def test_a_report_signed_by_another_vcek_is_refused() -> None:
    chain, other = make_chain(), make_chain()
    other = Chain(other.ark, other.ask, other.vcek, ec_key("another vcek"))
    data = var_data(rsa_key("ak").public_key())
    ev = replace(evidence(chain), hcl_report=hcl_report(snp_report(other, data), data))
    refused(ev, "snp_report.signature: does not verify", chain)


@pytest.mark.parametrize(("hcl", "match"), [
    ({"report_type": 4}, "report_type: a TDX TD report: verifying it needs Intel PCS collateral"),
    ({"report_type": 3}, "report_type: 3 is neither SNP"),
    ({"hash_type": 2}, "report_data_hash_type: 2 is not SHA-256"),
    ({"var_size": 5000}, "variable_data_size: 5000 bytes run past the end"),
    ({"var_size": 1 << 30}, "variable_data_size: 1073741824 exceeds"),
    ({"magic": b"HCLB"}, "header.signature: 48434c42 is not 'HCLA'"),
])
def test_hcl_fields_that_refuse(hcl: dict[str, object], match: str) -> None:
    refused(evidence(**hcl), match)


def test_every_truncation_is_a_not_vouched_line() -> None:
    ev = evidence()
    for size in range(0, len(ev.hcl_report), 7):
        with pytest.raises(NotVouched) as info:
            vouch(replace(ev, hcl_report=ev.hcl_report[:size]))
        assert len(str(info.value).splitlines()) == 1
    for size in range(len(ev.quote_message)):
        with pytest.raises(NotVouched, match=r"quote"):
            vouch(replace(ev, quote_message=ev.quote_message[:size]))


def test_var_data_must_name_one_rsa_attestation_key() -> None:
    chain = make_chain()
    for data, match in [
        (b'{"keys": []}', "0 keys with kid HCLAkPub"),
        (b'{"keys": 1}', "var_data.keys: missing or not a list"),
        (b'{"keys": [], "keys": []}', "duplicate"),
        (b"not json", "var_data: not JSON"),
        (json.dumps({"keys": [{"kid": "HCLAkPub", "kty": "EC"}]}).encode(), "kty: 'EC' is not 'RSA'"),
        (json.dumps({"keys": [{"kid": "HCLAkPub", "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}).encode(),
         "not a usable RSA key"),
    ]:
        ev = replace(evidence(chain), hcl_report=hcl_report(snp_report(chain, data), data))
        refused(ev, match, chain)


def test_quotes_that_do_not_bind_pcr8_to_our_nonce_are_refused() -> None:
    ak = rsa_key("ak").public_key()
    good = quote_message(NONCE, PCR8)

    def check(message: bytes, signer: str = "ak", *, pcr8: bytes = PCR8) -> None:
        verify_quote(message, quote_signature(message, rsa_key(signer)), ak, nonce=NONCE, pcr8=pcr8, origin="o")

    check(good)
    with pytest.raises(NotVouched, match=r"quote.extraData: does not carry the nonce we sent"):
        check(quote_message(b"\0" * 32, PCR8))
    with pytest.raises(NotVouched, match=r"quote_signature: does not verify with the HCL report's HCLAkPub"):
        check(good, signer="not the ak")
    with pytest.raises(NotVouched, match=r"quote.pcrSelect: selects bank 0x000b PCRs \[0, 8\]"):
        check(quote_message(NONCE, PCR8, bitmap=b"\x01\x01\x00"))
    with pytest.raises(NotVouched, match=r"quote.pcrSelect: selects bank 0x0004"):
        check(quote_message(NONCE, PCR8, bank=0x0004))
    with pytest.raises(NotVouched, match=r"quote.pcrDigest: is not the digest of the PCR8 value"):
        check(good, pcr8=b"\0" * 32)
    with pytest.raises(NotVouched, match=r"quote: 1 bytes after the structure"):
        check(good + b"\0")
    with pytest.raises(NotVouched, match=r"quote.magic"):
        check(b"\0" * 4 + good[4:])


@pytest.mark.parametrize(("chain", "match"), [
    (make_chain(ask_signer="not the ark"), "ask: signature does not verify with CN=Test-ARK,O=Not AMD"),
    (make_chain(vcek_signer="not the ask"), "vcek: signature does not verify with CN=Test-ASK,O=Not AMD"),
    (make_chain(vcek_not_after=NOW - timedelta(days=1)), "vcek: not valid at 2026-12-07"),
])
def test_broken_chains_are_refused(chain: Chain, match: str) -> None:
    refused(evidence(chain), match, make_chain())


def test_the_pinned_roots_are_amds() -> None:
    """Fingerprints as printed by openssl for AMD's KDS certificates; each is self-signed with RSA-PSS."""
    for pem, fingerprint, cn in ((ARK_MILAN_PEM, ARK_MILAN_SHA256, "ARK-Milan"),
                                 (ARK_GENOA_PEM, ARK_GENOA_SHA256, "ARK-Genoa")):
        ark = x509.load_pem_x509_certificate(pem)
        assert hashlib.sha256(ark.public_bytes(Encoding.DER)).hexdigest() == fingerprint
        assert ark.subject.rfc4514_string().startswith(f"CN={cn},O=Advanced Micro Devices")
        _signed_by(ark, ark, origin="pinned", field="ark")
    assert PINNED_ARK_PEMS == (ARK_MILAN_PEM, ARK_GENOA_PEM)


# AMD's VCEKs carry serial number 0, which RFC 5280 disallows: cryptography 51 warns when it loads
# one (and says a later release will refuse it; pin the dependency before that).
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
def test_a_real_azure_vcek_chain_ends_in_the_pinned_milan_root() -> None:
    vcek, ask, _ark = real_azure_chain()
    _key, root = verify_vcek_chain(vcek, ask, now=datetime(2026, 12, 7, tzinfo=UTC), origin="azure")
    assert root == "ARK-Milan"
    genoa_ask = x509.load_pem_x509_certificate((HERE / "genoa-ask.pem").read_bytes())
    _signed_by(genoa_ask, x509.load_pem_x509_certificate(ARK_GENOA_PEM), origin="kds", field="ask")
    # The real VCEK expires on 2030-01-01: after that, the same chain is refused.
    with pytest.raises(NotVouched, match=r"vcek: not valid at 2030-06-01"):
        verify_vcek_chain(vcek, ask, now=datetime(2030, 6, 1, tzinfo=UTC), origin="azure")
    # The real VCEK under a test ASK's name is refused (its signature is AMD's, not the test key's).
    with pytest.raises(NotVouched, match=r"ask.issuer"):
        verify_vcek_chain(vcek, make_chain().ask, now=NOW, origin="azure")


# -- attest.vtpm: the source around it -------------------------------------------------------------


def pcr8_file(tmp_path: Path, value: bytes) -> Path:
    path = tmp_path / "class" / "tpm" / "tpm0" / "pcr-sha256" / "8"
    path.parent.mkdir(parents=True)
    path.write_text(value.hex().upper() + "\n")
    return path


def test_a_vtpm_without_a_device_is_measured_but_not_vouched(tmp_path: Path) -> None:
    path = pcr8_file(tmp_path, PCR8)
    source = VtpmSource(tmp_path, device=tmp_path / "tpmrm0")
    measurement = source.measure()
    assert measurement == Measurement("vtpm", Tee.VTPM, PCR8, str(path), vouched_by_tee=False,
                                      unvouched_reason=f"{tmp_path}/tpmrm0: device: no TPM resource manager "
                                                       "device, so no HCL report to read")
    assert measurement.insecure_kind == "vtpm"


def test_the_refusal_names_why_the_vtpm_is_not_vouched(tmp_path: Path) -> None:
    from initdata.document import parse_initdata
    from tests.data.initdata.factory import HERE as INITDATA
    from trust.gate import BootGate
    from trust.rules import GateRules

    document = parse_initdata((INITDATA / "initdata-v1.toml").read_bytes(), origin="i")
    measurement = Measurement("vtpm", Tee.VTPM, PCR8, "pcr8", vouched_by_tee=False,
                              unvouched_reason="/dev/tpmrm0: nv 0x01400001: no HCL report readable")
    with pytest.raises(InsecureSourceRefused) as info:
        BootGate(document, GateRules()).check_measurement(measurement)
    assert str(info.value) == ("pcr8: measurement: a vtpm measurement no TEE vouches for (/dev/tpmrm0: nv "
                               "0x01400001: no HCL report readable) is not a TEE measurement; refusing unless "
                               "insecure_sources lists vtpm")


def test_a_vouched_vtpm_wins_over_sample_whatever_the_order() -> None:
    class Vouched:
        name = "vtpm"

        def available(self) -> bool:
            return True

        def tee_detected(self) -> bool:
            return False

        def measure(self) -> Measurement:
            return Measurement("azure-snp-vtpm", Tee.VTPM, PCR8, "pcr8")

    assert first_measurement([SampleSource(), Vouched()]).source == "azure-snp-vtpm"


def test_certificates_from_a_file(tmp_path: Path) -> None:
    chain = make_chain()
    path = tmp_path / "amd.pem"
    path.write_bytes(chain.pem())
    vcek, ask = VtpmSource(tmp_path, amd_certs=str(path)).certificates()
    assert (vcek, ask) == (chain.vcek, chain.ask)
    path.write_bytes(chain.vcek.public_bytes(Encoding.PEM))
    with pytest.raises(NotVouched, match=r"amd.pem: certificates: 1 certificates, expected the VCEK then the ASK"):
        VtpmSource(tmp_path, amd_certs=str(path)).certificates()
    path.write_bytes(chain.pem()[:700])
    with pytest.raises(NotVouched, match=r"amd.pem: certificates: not PEM certificates"):
        VtpmSource(tmp_path, amd_certs=str(path)).certificates()


@pytest.fixture
def imds() -> Iterator[tuple[str, list[bytes]]]:
    """A real HTTP server answering like Azure's THIM endpoint (the answer is whatever the test sets)."""
    answers: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = answers[0] if self.headers.get("Metadata") == "true" else b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metadata/THIM/amd/certification", answers
    finally:
        server.shutdown()


def test_certificates_from_imds(imds: tuple[str, list[bytes]]) -> None:
    url, answers = imds
    chain = make_chain()
    pems = [c.public_bytes(Encoding.PEM).decode() for c in (chain.vcek, chain.ask, chain.ark)]
    answers.append(json.dumps({"vcekCert": pems[0], "certificateChain": pems[1] + pems[2]}).encode())
    assert fetch_imds_certificates(timeout=2, url=url) == (pems[0].encode(), (pems[1] + pems[2]).encode())
    answers[0] = b'{"vcekCert": 1, "certificateChain": ""}'
    with pytest.raises(NotVouched, match=r"vcekCert and certificateChain must be strings"):
        fetch_imds_certificates(timeout=2, url=url)
    answers[0] = b'{"vcekCert": "", "vcekCert": ""}'
    with pytest.raises(NotVouched, match=r"duplicate"):
        fetch_imds_certificates(timeout=2, url=url)


def test_imds_unreachable_is_not_vouched() -> None:
    with pytest.raises(NotVouched, match=r"certificates: cannot be fetched"):
        fetch_imds_certificates(timeout=1, url="http://127.0.0.1:9/metadata/THIM/amd/certification")


def test_the_certificate_source_is_configured() -> None:
    assert parse_gate_config({}, origin="c").vtpm_amd_certs == "imds"
    assert parse_gate_config({"vtpm_amd_certs": "/etc/warden/amd.pem"}, origin="c").vtpm_amd_certs == \
        "/etc/warden/amd.pem"
    with pytest.raises(Exception, match=r"vtpm_amd_certs: must be imds or an absolute path"):
        parse_gate_config({"vtpm_amd_certs": "relative.pem"}, origin="c")


def test_parsers_alone() -> None:
    chain = make_chain()
    data = var_data(rsa_key("ak").public_key())
    parsed = parse_hcl_report(hcl_report(snp_report(chain, data), data) + b"\0" * 100, origin="o")
    assert parsed.var_data == data and parsed.report_type == 2  # an NV index larger than its content is fine
    assert parse_snp_report(parsed.hw_report, origin="o").report_data[:32] == hashlib.sha256(data).digest()


# -- attest.vtpm against a real TPM: swtpm on the host, reached over its TCP TCTI ------------------


def free_port_pair() -> int:
    """A port whose successor is free too: the swtpm TCTI finds the control channel at port + 1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two adjacent free ports")


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh swtpm (TPM 2.0) and the environment tpm2-tools need to reach it."""
    state = tmp_path / "swtpm"
    state.mkdir()
    port = free_port_pair()
    process = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server", f"type=tcp,port={port}",
         "--ctrl", f"type=tcp,port={port + 1}", "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "swtpm.log").open("wb"))
    tcti = f"swtpm:port={port}"
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
    try:
        for _ in range(200):
            probe = subprocess.run(["tpm2_getrandom", "8"], env=env, capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"swtpm did not answer on port {port}: {probe.stderr.decode(errors='replace')}"
                                 f"{(tmp_path / 'swtpm.log').read_text()}")
        yield tcti, env
    finally:
        process.terminate()
        process.wait(timeout=10)


def tpm(env: dict[str, str], command: str) -> bytes:
    done = subprocess.run(command, shell=True, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))
    return done.stdout


def test_a_real_tpm_with_an_hcl_report(swtpm: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """Real TPM commands end to end: NV read, a quote by the AK over our nonce, PCR8 from the TPM."""
    tcti, env = swtpm
    chain = make_chain()
    certs = tmp_path / "amd.pem"
    certs.write_bytes(chain.pem())
    tpm(env, "tpm2_pcrextend 8:sha256=" + hashlib.sha256(b"initdata").hexdigest())
    pcr8 = tpm(env, f"tpm2_pcrread -Q sha256:8 -o {tmp_path}/pcr8 && cat {tmp_path}/pcr8")
    sysfs = tmp_path / "sys"
    pcr8_file(sysfs, pcr8)

    def source(**options: object) -> VtpmSource:
        return VtpmSource(sysfs, tcti=tcti, amd_certs=str(certs), **options)  # type: ignore[arg-type]

    bare = source(roots=(chain.ark_pem,)).measure()
    assert bare.insecure and bare.unvouched_reason.startswith(
        "/dev/tpmrm0: nv 0x01400001: no HCL report readable (tpm2_nvread: Esys_TR_FromTPMPublic(0x18B)")
    ak_pem = tpm(env, f"cd {tmp_path} && tpm2_createprimary -Q -C o -G rsa2048:rsassa-sha256:null -a "
                      "'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign' -c ak.ctx && "
                      "tpm2_evictcontrol -Q -C o -c ak.ctx 0x81000003 && "
                      "tpm2_readpublic -Q -c 0x81000003 -f pem -o ak.pem && cat ak.pem")
    ak = serialization.load_pem_public_key(ak_pem)
    assert isinstance(ak, rsa.RSAPublicKey)
    data = var_data(ak)
    report = hcl_report(snp_report(chain, data), data)
    (tmp_path / "hcl.bin").write_bytes(report)
    tpm(env, f"tpm2_nvdefine -Q 0x01400001 -C o -s {len(report)} -a 'ownerread|ownerwrite' && "
             f"tpm2_nvwrite -Q 0x01400001 -C o -i {tmp_path}/hcl.bin")

    vouched = source(roots=(chain.ark_pem,)).measure()
    assert (vouched.source, vouched.insecure, vouched.value) == ("azure-snp-vtpm", False, pcr8)
    assert vouched.detail.endswith("(vouched by an SEV-SNP HCL report, VCEK chain to Test-ARK)")
    # Under AMD's roots (production), the same TPM and report are not vouched for.
    amd = source().measure()
    assert amd.insecure and amd.unvouched_reason == \
        "/dev/tpmrm0: ask.issuer: CN=Test-ARK,O=Not AMD is not a pinned AMD root key (ARK)"
    # PCR8 moves after the kernel's value was read: the quote no longer matches it.
    tpm(env, "tpm2_pcrextend 8:sha256=" + hashlib.sha256(b"later").hexdigest())
    moved = source(roots=(chain.ark_pem,)).measure()
    assert moved.unvouched_reason == \
        "/dev/tpmrm0: quote.pcrDigest: is not the digest of the PCR8 value read from the kernel"
    # No attestation key at 0x81000003 (evicted): no quote, so not vouched.
    tpm(env, "tpm2_evictcontrol -Q -C o -c 0x81000003")
    pcr8_file_update(sysfs, tpm(env, f"tpm2_pcrread -Q sha256:8 -o {tmp_path}/pcr8b && cat {tmp_path}/pcr8b"))
    no_ak = source(roots=(chain.ark_pem,)).measure()
    assert no_ak.unvouched_reason.startswith("/dev/tpmrm0: ak 0x81000003: no quote from the attestation key")


def pcr8_file_update(sysfs: Path, value: bytes) -> None:
    (sysfs / "class" / "tpm" / "tpm0" / "pcr-sha256" / "8").write_text(value.hex().upper() + "\n")


def test_a_vcek_that_is_not_ecdsa_p384_is_refused() -> None:
    chain = make_chain()
    rsa_vcek = certificate("Test-VCEK", "Test-ASK", rsa_key("rsa vcek").public_key(), rsa_key("ask"))
    with pytest.raises(NotVouched, match=r"vcek: its key is not ECDSA P-384"):
        verify_vcek_chain(rsa_vcek, chain.ask, now=NOW, origin="o", roots=(chain.ark_pem,))
    ask_pkcs1 = certificate("Test-ASK", "Test-ARK", rsa_key("ask").public_key(), rsa_key("ark"), pss=False)
    with pytest.raises(NotVouched, match=r"ask: is not signed with RSASSA-PSS"):
        verify_vcek_chain(chain.vcek, ask_pkcs1, now=NOW, origin="o", roots=(chain.ark_pem,))
