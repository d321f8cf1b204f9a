"""Issue 15 items 4, 5 and 9: measurement sources that cannot be impersonated, and key choice.

- item 4: the attestation-agent's REST path counts only when uid 0 holds the loopback port and the
  evidence carries the nonce we sent (a replayed quote, another uid's listener, a remote URL: refused);
- item 5: a vTPM no TEE vouches for is INSECURE and opt-in, like `sample`;
- item 9: `sample` (and `vtpm`) never win over a present TEE whatever the configured order, and with
  both trust modes allowed, initdata keys never replace the image's keys.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from attest.aa import AttestationAgentClient, AttestationAgentSource, check_loopback_listener
from attest.base import Measurement
from attest.detect import first_measurement
from attest.tee import Tee, expected_measurement
from initdata.errors import InsecureSourceRefused, MeasurementUnavailable, SignatureThresholdNotMet
from tests.data.initdata.factory import FIXTURE_NOW, make_envelope, public_pem, signing_key, tdx_evidence
from tests.test_attest_aa import FIXTURE_INITDATA, FakeAgent, fake_agent  # noqa: F401 (fixture)
from tests.test_trust_gate import IMAGE_KEYS, document, measurement_of
from trust.gate import BootGate
from trust.rules import GateRules, TrustMode

# -- item 4 ----------------------------------------------------------------------------------------


def tdx_register() -> bytes:
    return expected_measurement(FIXTURE_INITDATA.digest, FIXTURE_INITDATA.algorithm, Tee.TDX)


def test_evidence_with_our_nonce_from_a_root_listener_is_a_measurement(fake_agent: FakeAgent) -> None:  # noqa: F811
    fake_agent.evidence = tdx_evidence(tdx_register())
    measurement = AttestationAgentSource(AttestationAgentClient(fake_agent.url)).measure()
    assert measurement.tee is Tee.TDX and not measurement.insecure


def test_replayed_evidence_is_refused(fake_agent: FakeAgent) -> None:  # noqa: F811
    """A genuine quote recorded earlier (right MRCONFIGID, someone else's nonce) is not a measurement now."""
    fake_agent.evidence = tdx_evidence(tdx_register(), report_data=b"an earlier nonce")
    fake_agent.replay = True
    with pytest.raises(MeasurementUnavailable, match="does not carry the nonce we sent"):
        AttestationAgentSource(AttestationAgentClient(fake_agent.url)).measure()


@pytest.fixture
def nobody_listener() -> Iterator[int]:
    """A loopback listener owned by uid 65534: what any local user can start on a free port."""
    script = ("import os, socket, time; os.setgid(65534); os.setuid(65534); s = socket.socket(); "
              "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def test_a_listener_of_another_uid_is_not_the_attestation_agent(nobody_listener: int) -> None:
    url = f"http://127.0.0.1:{nobody_listener}"
    with pytest.raises(MeasurementUnavailable, match=f"port {nobody_listener} is held by uid 65534, not 0"):
        AttestationAgentSource(AttestationAgentClient(url, timeout=0.5)).measure()


def test_a_remote_attestation_agent_is_not_a_local_measurement() -> None:
    with pytest.raises(MeasurementUnavailable, match="over the network"):
        check_loopback_listener("http://192.0.2.1:8006")


# -- item 5 ----------------------------------------------------------------------------------------


def vtpm_measurement(doc: object) -> Measurement:
    value = expected_measurement(doc.digest, doc.algorithm, Tee.VTPM)  # type: ignore[attr-defined]
    return Measurement("vtpm", Tee.VTPM, value, "/sys/class/tpm/tpm0/pcr-sha256/8", vouched_by_tee=False)


def test_a_bare_vtpm_is_refused_without_opt_in() -> None:
    doc = document(make_envelope([signing_key("owner-ed25519")]))
    gate = BootGate(doc, GateRules(), now=FIXTURE_NOW)
    with pytest.raises(InsecureSourceRefused, match="insecure_sources lists vtpm"):
        gate.check_measurement(vtpm_measurement(doc))
    # insecure_allow_sample does not stretch to a vTPM
    with pytest.raises(InsecureSourceRefused):
        BootGate(doc, GateRules(insecure_allow_sample=True), now=FIXTURE_NOW).check_measurement(vtpm_measurement(doc))


def test_an_opted_in_vtpm_is_compared_and_reported_insecure() -> None:
    doc = document(make_envelope([signing_key("owner-ed25519")]))
    gate = BootGate(doc, GateRules(insecure_sources=frozenset({"vtpm"})), now=FIXTURE_NOW)
    gate.check_measurement(vtpm_measurement(doc))
    verified = gate.accept(image_keys=IMAGE_KEYS, last_accepted=None)
    assert verified.insecure and verified.status_line().startswith("INSECURE (vtpm not vouched for by a TEE): ")
    wrong = Measurement("vtpm", Tee.VTPM, b"\0" * 32, "pcr8", vouched_by_tee=False)
    with pytest.raises(Exception, match="PCR8: measured"):
        BootGate(doc, GateRules(insecure_sources=frozenset({"vtpm"})), now=FIXTURE_NOW).check_measurement(wrong)


# -- item 9: order ---------------------------------------------------------------------------------


class Source:
    """A measurement source standing for hardware this host does not have (TDX) or for vtpm/sample."""

    def __init__(self, name: str, *, tee: bool, fails: bool = False) -> None:
        self.name, self._tee, self._fails = name, tee, fails

    def available(self) -> bool:
        return True

    def tee_detected(self) -> bool:
        return self._tee

    def measure(self) -> Measurement:
        if self._fails:
            raise MeasurementUnavailable(self.name, "report", "device error")
        if self.name == "sample":
            return Measurement("sample", None, b"", "no TEE")
        if self.name == "vtpm":
            return Measurement("vtpm", Tee.VTPM, b"\1" * 32, "pcr8", vouched_by_tee=False)
        return Measurement(self.name, Tee.TDX, b"\2" * 48, "tdx")


def test_sample_listed_first_never_wins_over_a_present_tee() -> None:
    measured = first_measurement([Source("sample", tee=False), Source("vtpm", tee=False), Source("tdx", tee=True)])
    assert measured.source == "tdx"


def test_a_failing_tee_fails_closed_instead_of_falling_back() -> None:
    with pytest.raises(MeasurementUnavailable, match="tdx: tdx: report: device error"):
        first_measurement([Source("sample", tee=False), Source("vtpm", tee=False), Source("tdx", tee=True, fails=True)])


def test_without_a_tee_the_insecure_sources_are_tried_in_order() -> None:
    assert first_measurement([Source("vtpm", tee=False), Source("sample", tee=False)]).source == "vtpm"


# -- item 9: trust modes ---------------------------------------------------------------------------


def test_initdata_keys_never_replace_image_keys() -> None:
    """Both modes allowed, the image ships keys: a bundle signed only by initdata-carried keys is refused."""
    rules = GateRules(trust_modes=(TrustMode.INITDATA, TrustMode.IMAGE))
    carried = document(make_envelope([signing_key("owner-p384")]), trust_pems=[public_pem("owner-p384")])
    gate = BootGate(carried, rules, now=FIXTURE_NOW)
    gate.check_measurement(measurement_of(carried))
    assert gate.trust_mode(image_has_keys=True) is TrustMode.IMAGE
    with pytest.raises(SignatureThresholdNotMet):
        gate.accept(image_keys=IMAGE_KEYS, last_accepted=None)
    # A generic image with no keys: the measured initdata keys are the only ones there are.
    generic = BootGate(carried, rules, now=FIXTURE_NOW)
    generic.check_measurement(measurement_of(carried))
    assert generic.accept(image_keys=None, last_accepted=None).trust_mode is TrustMode.INITDATA
