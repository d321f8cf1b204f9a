"""vTPM: PCR8 of the sha256 bank, extended once with the sha256 initdata digest; vouched for or not.

The pod-VM image extends PCR8 (`tpm2_pcrextend 8:sha256=<digest>`, or the AA's az/tpm attesters do
it); from a zero PCR that gives sha256(32 zero bytes || digest), which the gate expects. The kernel
prints PCRs as uppercase hex plus a newline (drivers/char/tpm/tpm-sysfs.c).

A TPM alone is not a TEE: the VMM that emulates it can set PCR8 to anything. It counts as one only
when the TEE vouches for it (attest.hcl: Azure CVMs' HCL report in NV index 0x01400001, an SNP
report signed by AMD that names the vTPM's attestation key, and a fresh quote of PCR8 by that key).
Then the measurement is reported as source `azure-snp-vtpm`, not INSECURE. Otherwise it carries the
reason it is not vouched for, and the gate accepts it only with `insecure_sources: [vtpm]` and
reports it INSECURE (issue 15 item 5).

Evidence is read with tpm2-tools (tpm2_nvread, tpm2_quote; the same TPM commands as
kinvolk/azure-cvm-tooling az-cvm-vtpm/src/vtpm/mod.rs `get_report` and `get_quote`), each call
bounded in time, on the resource manager device. The VCEK and ASK come from where the configuration
says (`gate.vtpm_amd_certs`): Azure's IMDS THIM endpoint (az-snp-vtpm/src/imds.rs; the host answers
it, which is fine, since the chain must end in a pinned AMD root), or a PEM file (VCEK, then ASK).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from attest.amd_roots import PINNED_ARK_PEMS
from attest.base import Measurement
from attest.hcl import (
    AK_HANDLE,
    HCL_NV_INDEX,
    MAX_CERT_PEM,
    MAX_HCL_REPORT,
    VouchEvidence,
    load_certificates,
    vouch_snp,
)
from attest.tee import Tee
from initdata import strict_json
from initdata.bounded import read_bounded
from initdata.errors import GateError, MeasurementUnavailable, NotVouched

if TYPE_CHECKING:
    from cryptography import x509

PCR_INDEX = 8
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
VOUCHED_SOURCE_NAME = "azure-snp-vtpm"
IMDS = "imds"
IMDS_CERT_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
DEFAULT_TPM_DEVICE = Path("/dev/tpmrm0")
TOOL_TIMEOUT_S = 10.0
MAX_QUOTE_FILE = 4096
PIPE_SIZE = 256 * 1024  # > MAX_HCL_REPORT


class VtpmSource:
    name = "vtpm"

    def __init__(
        self,
        sysfs_root: Path = Path("/sys"),
        tpm: str = "tpm0",
        *,
        device: Path = DEFAULT_TPM_DEVICE,
        amd_certs: str = IMDS,
        roots: Sequence[bytes] = PINNED_ARK_PEMS,
        timeout: float = TOOL_TIMEOUT_S,
        tcti: str | None = None,
    ) -> None:
        self.pcr_path = sysfs_root / "class" / "tpm" / tpm / "pcr-sha256" / str(PCR_INDEX)
        self.device = device
        self.amd_certs = amd_certs
        self.roots = tuple(roots)  # AMD's ARKs; tests pass their own test root here
        self.timeout = timeout
        # How tpm2-tools reach the TPM: the resource manager device, unless told otherwise (the host
        # tests talk to a real swtpm over TCP: "swtpm:port=N").
        self.tcti = tcti if tcti is not None else f"device:{device}"

    def tee_detected(self) -> bool:
        # Stands for a TEE only once measure() has checked the HCL report; until then, a TPM is
        # not a TEE, and a failure here must not keep `sample` from being refused as usual.
        return False

    def available(self) -> bool:
        return self.pcr_path.exists()

    def measure(self) -> Measurement:
        origin = str(self.pcr_path)
        try:
            with self.pcr_path.open("rb") as handle:
                raw = handle.read(256)
        except OSError as exc:
            raise MeasurementUnavailable(origin, "pcr8", f"cannot be read ({exc.strerror})") from None
        text = raw.decode("ascii", errors="replace").strip()
        if not _HEX64.fullmatch(text):
            raise MeasurementUnavailable(origin, "pcr8", "is not 64 hex digits")
        pcr8 = bytes.fromhex(text)
        try:
            root = self.vouch(pcr8)
        except GateError as exc:
            return Measurement(source=self.name, tee=Tee.VTPM, value=pcr8, detail=origin, vouched_by_tee=False,
                               unvouched_reason=str(exc))
        return Measurement(source=VOUCHED_SOURCE_NAME, tee=Tee.VTPM, value=pcr8,
                           detail=f"{origin} (vouched by an SEV-SNP HCL report, VCEK chain to {root})")

    # -- the evidence ------------------------------------------------------------------------------

    def vouch(self, pcr8: bytes) -> str:
        """Check the TEE's evidence for this TPM; the AMD root's name, or NotVouched."""
        origin = str(self.device)
        if self.tcti == f"device:{self.device}" and not self.device.exists():
            raise NotVouched(origin, "device", "no TPM resource manager device, so no HCL report to read")
        nonce = os.urandom(32)
        try:
            (hcl,) = self._tool(["tpm2_nvread", "-C", "o", "-o", "{0}", f"{HCL_NV_INDEX:#010x}"], (MAX_HCL_REPORT,),
                                field=f"nv {HCL_NV_INDEX:#010x}", what="no HCL report readable")
            message, signature = self._tool(
                ["tpm2_quote", "-c", f"{AK_HANDLE:#010x}", "-l", f"sha256:{PCR_INDEX}", "-q", nonce.hex(),
                 "-g", "sha256", "-m", "{0}", "-s", "{1}"], (MAX_QUOTE_FILE, MAX_QUOTE_FILE),
                field=f"ak {AK_HANDLE:#010x}", what="no quote from the attestation key")
            vcek, ask = self.certificates()
        except OSError as exc:
            raise NotVouched(origin, "evidence", f"cannot be collected ({exc.strerror or exc})") from None
        evidence = VouchEvidence(hcl, message, signature, nonce, pcr8, vcek, ask)
        return vouch_snp(evidence, now=datetime.now(UTC), origin=origin, roots=self.roots)

    def _tool(self, argv: list[str], limits: tuple[int, ...], *, field: str, what: str) -> list[bytes]:
        """Run a tpm2-tools command whose output files ({0}, {1}, ...) are pipes, not files: warden's
        unit has a read-only file system (ProtectSystem=strict) and no private /tmp."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TPM2TOOLS_TCTI": self.tcti}
        pipes = [os.pipe() for _ in limits]
        readers = [r for r, _w in pipes]
        try:
            writers = [w for _r, w in pipes]
            for w in writers:  # room for the largest output we accept, so the tool never blocks on it
                with contextlib.suppress(OSError):
                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            try:
                argv = [arg.format(*(f"/dev/fd/{w}" for w in writers)) for arg in argv]
                result = subprocess.run(argv, env=env, capture_output=True, timeout=self.timeout, check=False,
                                        pass_fds=writers)
            except FileNotFoundError:
                raise NotVouched(str(self.device), field, f"{what}: {argv[0]} is not installed") from None
            except subprocess.TimeoutExpired:
                raise NotVouched(str(self.device), field, f"{what}: {argv[0]} took over {self.timeout:g} s") from None
            finally:
                for w in writers:
                    os.close(w)
            # The tool has exited: each pipe holds what it wrote, at most the pipe's size (a tool
            # writing more would have blocked and timed out above).
            outputs = [_drain(r, limit) for r, limit in zip(readers, limits, strict=True)]
        finally:
            for r in readers:
                os.close(r)
        if result.returncode != 0:
            # tpm2-tools end with "ERROR: Unable to run ..."; the line before names the TPM's error.
            lines = result.stderr[-4096:].decode("utf-8", errors="replace").strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR: ") and "Unable to run" not in line]
            detail = (errors or lines or ["failed"])[-1].removeprefix("ERROR: ")
            raise NotVouched(str(self.device), field, f"{what} ({argv[0]}: {detail})")
        for output, limit in zip(outputs, limits, strict=True):
            if len(output) > limit:
                raise NotVouched(str(self.device), field, f"{argv[0]} wrote more than {limit} bytes")
        return outputs

    def certificates(self) -> tuple[x509.Certificate, x509.Certificate]:
        """The VCEK and ASK, from IMDS or a PEM file (VCEK first, then ASK; a third, the ARK, is ignored)."""
        if self.amd_certs == IMDS:
            vcek_pem, chain_pem = fetch_imds_certificates(timeout=min(self.timeout, 3.0))
            vceks = load_certificates(vcek_pem, origin=IMDS_CERT_URL)
            chain = load_certificates(chain_pem, origin=IMDS_CERT_URL)
            if len(vceks) != 1 or not chain:
                raise NotVouched(IMDS_CERT_URL, "certificates", "expected one VCEK and an ASK/ARK chain")
            return vceks[0], chain[0]
        path = Path(self.amd_certs)
        certs = load_certificates(read_bounded(path, MAX_CERT_PEM, field="file", error=NotVouched), origin=str(path))
        if len(certs) < 2:
            raise NotVouched(str(path), "certificates", f"{len(certs)} certificates, expected the VCEK then the ASK")
        return certs[0], certs[1]


def _drain(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def fetch_imds_certificates(*, timeout: float, url: str = IMDS_CERT_URL) -> tuple[bytes, bytes]:
    """Azure IMDS THIM: {"vcekCert": PEM, "certificateChain": PEM}. Bounded in time and size."""
    import urllib.request  # here: http.client and email are for Azure's vouching only (see attest.aa)

    request = urllib.request.Request(url, headers={"Metadata": "true"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_CERT_PEM + 1)
    except (OSError, ValueError) as exc:
        raise NotVouched(url, "certificates", f"cannot be fetched ({exc})") from None
    if len(body) > MAX_CERT_PEM:
        raise NotVouched(url, "certificates", f"the answer exceeds {MAX_CERT_PEM} bytes")
    document = strict_json.loads(body, origin=url, field="certificates", error=NotVouched)
    vcek = document.get("vcekCert") if isinstance(document, dict) else None
    chain = document.get("certificateChain") if isinstance(document, dict) else None
    if not isinstance(vcek, str) or not isinstance(chain, str):
        raise NotVouched(url, "certificates", "vcekCert and certificateChain must be strings")
    return vcek.encode(), chain.encode()
