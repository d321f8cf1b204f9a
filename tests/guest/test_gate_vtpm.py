"""The attestation gate in a guest with a real TPM 2.0 (swtpm), as on a vTPM-based pod VM.

The test does what the pod-VM image does (`tpm2_pcrextend 8:sha256=<initdata digest>`), then runs
`warden verify` with the vTPM source reading the kernel's /sys/class/tpm/tpm0/pcr-sha256/8: the
measured initdata passes; any other initdata fails with a PCR8 mismatch.

swtpm is a TPM no TEE vouches for (issue 15 item 5): refused unless `--insecure-source vtpm` opts in,
and then reported INSECURE, with the reason (no HCL report in NV 0x01400001). With an HCL report
written into that NV index, naming the swtpm's real attestation key but signed by a test chain, it
is still refused (the chain does not end in AMD's root); the same evidence with the test root passed
where production passes AMD's ARKs checks out link by link against the real TPM.

A forged attestation-agent on 127.0.0.1:8006 (issue 15 item 4) is refused:
one run by another uid, and one run by root that replays a recorded quote without our nonce.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from initdata.document import HashAlgorithm, parse_initdata
from tests.data.amd.hcl_factory import Chain, hcl_report, make_chain, snp_report, var_data
from tests.data.initdata.factory import EVIDENCE, HERE, KEYS, make_envelope, make_initdata, signing_key
from tests.guest.vm import VENV_BIN, GuestOptions, GuestVM

PCR8 = "/sys/class/tpm/tpm0/pcr-sha256/8"
MEASURED = HERE / "initdata-v1.toml"  # in the repository, so visible in the guest's root
WARDEN = VENV_BIN / "warden"


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions(tpm=True)


@pytest.fixture(scope="module")
def extended(guest: GuestVM) -> str:
    """PCR8 extended once with the sha256 digest of the measured initdata (done once per VM)."""
    digest = parse_initdata(MEASURED.read_bytes(), origin=str(MEASURED)).digest_hex
    assert guest.run(f"cat {PCR8}", check=True).stdout.strip() == "00" * 32
    guest.run(f"tpm2_pcrextend 8:sha256={digest}", check=True)
    return digest


def verify(guest: GuestVM, initdata: str, *extra: str) -> tuple[int, str, str]:
    result = guest.run(f"{WARDEN} verify {initdata} --trust-dir {KEYS} --threshold 2 {' '.join(extra)}", timeout=120)
    return result.returncode, result.stdout, result.stderr


OPT_IN = ("--insecure-source", "vtpm")


def test_a_bare_vtpm_is_refused_without_opt_in(guest: GuestVM, extended: str) -> None:
    code, out, err = verify(guest, str(MEASURED))
    assert code == 1 and out == ""
    assert "is not a TEE measurement; refusing unless insecure_sources lists vtpm" in err, err
    # The reason names what is missing: no HCL report in the swtpm's NV index.
    assert "(/dev/tpmrm0: nv 0x01400001: no HCL report readable (tpm2_nvread: " in err, err
    assert len(err.splitlines()) == 1, err


def test_measured_initdata_passes_with_auto_detection(guest: GuestVM, extended: str) -> None:
    expected_pcr8 = hashlib.sha256(bytes(32) + bytes.fromhex(extended)).hexdigest().upper()
    assert guest.run(f"cat {PCR8}", check=True).stdout.strip() == expected_pcr8
    # No --source: the default order (tdx, snp, attestation-agent, then vtpm, sample) finds the vTPM.
    code, out, err = verify(guest, str(MEASURED), "--json", *OPT_IN)
    assert code == 0, err
    assert '"measurement_source": "vtpm"' in out
    assert '"insecure": true' in out
    assert f'"initdata_digest": "sha256:{extended}"' in out


def test_measured_initdata_passes_with_the_vtpm_source(guest: GuestVM, extended: str) -> None:
    code, out, err = verify(guest, str(MEASURED), "--source", "vtpm", "--state-dir", "/run/warden", *OPT_IN)
    assert code == 0, err
    assert out.startswith("INSECURE (vtpm not vouched for by a TEE): ")
    assert "vtpm PCR8 matches initdata sha256:" in out
    state = guest.run("stat -c %a /run/warden/bundle-state.json", check=True).stdout.strip()
    assert state == "600"


def test_other_initdata_fails(guest: GuestVM, extended: str) -> None:
    # A correctly signed bundle in an initdata the TEE did not measure.
    other = make_initdata(make_envelope([signing_key("owner-ed25519"), signing_key("owner-p256")], version=2))
    encoded = base64.b64encode(other).decode()
    guest.run(f"mkdir -p /run/warden-test && echo {encoded} | base64 -d > /run/warden-test/other.toml", check=True)
    code, out, err = verify(guest, "/run/warden-test/other.toml", "--source", "vtpm", *OPT_IN)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warden: {PCR8}: PCR8: measured ")
    assert parse_initdata(other, origin="other").digest_hex in lines[0]


def test_sha384_initdata_is_refused_on_vtpm(guest: GuestVM, extended: str) -> None:
    sha384 = make_initdata(make_envelope([signing_key("owner-ed25519")]), algorithm=HashAlgorithm.SHA384)
    encoded = base64.b64encode(sha384).decode()
    guest.run(f"mkdir -p /run/warden-test && echo {encoded} | base64 -d > /run/warden-test/sha384.toml", check=True)
    code, _out, err = verify(guest, "/run/warden-test/sha384.toml", "--source", "vtpm", *OPT_IN)
    assert code == 1
    assert "algorithm: vTPM binding needs a sha256 initdata digest" in err


# -- issue 15 item 4: a forged local attestation-agent ---------------------------------------------

# A fake AA serving recorded TDX evidence for the measured initdata. With EMBED=1 it behaves like a
# real AA (our nonce, zero-padded, in the quote's REPORTDATA): only the listener's owner betrays it.
FAKE_AA = textwrap.dedent("""
    import base64, json, os, sys
    import encodings.idna  # noqa: F401  (HTTPServer's getfqdn needs it; the stdlib is not readable after setuid)
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs, urlsplit
    evidence = json.load(open(sys.argv[1]))
    uid, embed = int(sys.argv[2]), sys.argv[3] == "1"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            document = dict(evidence)
            if url.path == "/aa/evidence" and embed:
                quote = bytearray(base64.b64decode(document["quote"]))
                quote[568:632] = parse_qs(url.query)["runtime_data"][0].encode().ljust(64, b"\\0")
                document["quote"] = base64.b64encode(bytes(quote)).decode()
            body = json.dumps({"tee": "tdx"} if url.path == "/info" else document).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    os.setgid(uid); os.setuid(uid)  # first: the socket's owner (/proc/net/tcp) is whoever creates it
    server = HTTPServer(("127.0.0.1", 8006), Handler)
    print("listening", flush=True)
    server.serve_forever()
""")


def run_fake_aa(guest: GuestVM, uid: int, embed: bool) -> None:
    script = guest.write_shared("fake_aa.py", FAKE_AA)
    evidence = guest.write_shared("tdx.json", (EVIDENCE / "tdx.json").read_text())
    guest.run(f"setsid nohup {VENV_BIN}/python {script} {evidence} {uid} {int(embed)} > /run/fake-aa.log 2>&1 "
              "< /dev/null & echo $! > /run/fake-aa.pid", check=True)
    for _ in range(100):
        if "listening" in guest.run("cat /run/fake-aa.log").stdout:
            return
        guest.run("sleep 0.1")
    raise AssertionError(guest.run("cat /run/fake-aa.log").stdout)


def stop_fake_aa(guest: GuestVM) -> None:
    guest.run("kill $(cat /run/fake-aa.pid); sleep 0.5")


def rest_config(guest: GuestVM) -> str:
    """The AA's REST address: the default is its ttrpc socket, and the forgery here is on the port."""
    return guest.write_shared("aa-rest.yaml", "attestation_agent_url: http://127.0.0.1:8006\n")


@pytest.mark.parametrize(("uid", "embed", "refusal"), [
    (65534, True, "port 8006 is held by uid 65534, not 0: not the attestation-agent"),
    (0, False, "evidence.quote.report_data: does not carry the nonce we sent"),
])
def test_a_forged_local_attestation_agent_is_refused(guest: GuestVM, uid: int, embed: bool, refusal: str) -> None:
    run_fake_aa(guest, uid, embed)
    try:
        code, out, err = verify(guest, str(MEASURED), "--source", "attestation-agent", "--json",
                                "--config", rest_config(guest))
    finally:
        stop_fake_aa(guest)
    assert code == 1 and out == "", out
    assert refusal in err, err
    assert len(err.splitlines()) == 1


def test_the_same_evidence_from_a_root_agent_with_our_nonce_is_a_tdx_measurement(guest: GuestVM) -> None:
    """The control case: what the two refusals above differ in is exactly the owner and the nonce."""
    run_fake_aa(guest, 0, True)
    try:
        code, out, err = verify(guest, str(MEASURED), "--source", "attestation-agent", "--json",
                                "--config", rest_config(guest))
    finally:
        stop_fake_aa(guest)
    assert code == 0, err
    assert json.loads(out)["measurement_source"] == "attestation-agent"
    assert json.loads(out)["insecure"] is False


# -- issue 15 item 5: a vTPM the TEE vouches for, and one it does not -----------------------------

# The AK as Azure's paravisor makes it: a restricted RSA signing key (RSASSA/SHA-256) persisted at
# 0x81000003 (kinvolk/azure-cvm-tooling az-cvm-vtpm/src/vtpm/mod.rs VTPM_AK_HANDLE).
MAKE_AK = (
    "cd /run/warden-test && tpm2_createprimary -Q -C o -G rsa2048:rsassa-sha256:null "
    "-a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign' -c ak.ctx "
    "&& tpm2_evictcontrol -Q -C o -c ak.ctx 0x81000003 && tpm2_readpublic -Q -c 0x81000003 -f pem -o ak.pem "
    "&& cat ak.pem"
)


@pytest.fixture(scope="module")
def hcl_chain(guest: GuestVM, extended: str) -> Chain:
    """An HCL report in NV 0x01400001 of the swtpm, as on an Azure CVM, but signed by a test chain.

    Everything but the root is right: the SNP report binds var_data, var_data names the swtpm's
    real AK, so quotes verify. Returns the test chain; its VCEK and ASK are in CERTS.
    """
    guest.run("mkdir -p /run/warden-test", check=True)
    ak = serialization.load_pem_public_key(guest.run(MAKE_AK, check=True).stdout.encode())
    assert isinstance(ak, rsa.RSAPublicKey)
    chain = make_chain()
    data = var_data(ak)
    report = hcl_report(snp_report(chain, data), data)
    shared = guest.write_shared("hcl.b64", base64.b64encode(report).decode())
    guest.run(f"base64 -d {shared} > /run/warden-test/hcl.bin && tpm2_nvdefine -Q 0x01400001 -C o -s {len(report)} "
              "-a 'ownerread|ownerwrite' && tpm2_nvwrite -Q 0x01400001 -C o -i /run/warden-test/hcl.bin", check=True)
    guest.write_shared("test-amd-chain.pem", chain.pem().decode())
    guest.write_shared("test-ark.pem", chain.ark_pem.decode())
    return chain


CERTS = "/testbed/scratch/test-amd-chain.pem"


def vtpm_config(guest: GuestVM) -> str:
    return guest.write_shared("vtpm-certs.yaml", f"vtpm_amd_certs: {CERTS}\n")


def test_an_hcl_report_signed_by_a_chain_that_is_not_amds_is_refused(guest: GuestVM, hcl_chain: Chain) -> None:
    code, out, err = verify(guest, str(MEASURED), "--source", "vtpm", "--config", vtpm_config(guest))
    assert code == 1 and out == "", out
    assert len(err.splitlines()) == 1, err
    assert ("a vtpm measurement no TEE vouches for (/dev/tpmrm0: ask.issuer: CN=Test-ARK,O=Not AMD is not a "
            "pinned AMD root key (ARK)) is not a TEE measurement; refusing unless insecure_sources lists vtpm") in err


def test_the_unvouched_vtpm_is_still_accepted_insecure_with_opt_in(guest: GuestVM, hcl_chain: Chain) -> None:
    code, out, err = verify(guest, str(MEASURED), "--source", "vtpm", "--config", vtpm_config(guest), *OPT_IN)
    assert code == 0, err
    assert out.startswith("INSECURE (vtpm not vouched for by a TEE): ")


# The same source with the test root passed where production passes AMD's ARKs (the `roots`
# parameter, not a switch): the real swtpm's NV index, its AK's quote over our nonce, the kernel's PCR8.
VOUCH_WITH_TEST_ROOT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from attest.vtpm import VtpmSource
    root = Path(sys.argv[1]).read_bytes()
    measurement = VtpmSource(amd_certs=sys.argv[2], roots=(root,)).measure()
    print(json.dumps({"source": measurement.source, "insecure": measurement.insecure,
                      "detail": measurement.detail, "value": measurement.value.hex(),
                      "reason": measurement.unvouched_reason}))
""")


def test_with_the_test_root_injected_every_link_holds_on_the_real_tpm(guest: GuestVM, hcl_chain: Chain,
                                                                      extended: str) -> None:
    script = guest.write_shared("vouch.py", VOUCH_WITH_TEST_ROOT)
    result = guest.run(f"cd {HERE.parents[2]} && {VENV_BIN}/python {script} /testbed/scratch/test-ark.pem {CERTS}",
                       timeout=120)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured == {
        "source": "azure-snp-vtpm", "insecure": False, "reason": "",
        "detail": f"{PCR8} (vouched by an SEV-SNP HCL report, VCEK chain to Test-ARK)",
        "value": hashlib.sha256(bytes(32) + bytes.fromhex(extended)).hexdigest(),
    }
