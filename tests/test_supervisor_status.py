"""supervisor.status: the STATUS line and the `warden status` document rendered from the state."""

from __future__ import annotations

import json
import re

from attest.sample import SampleSource
from initdata.document import parse_initdata
from supervisor.config import GateConfig
from supervisor.gate_inputs import gate_initdata
from supervisor.status import Enforced, EnforcedOrigin, Phase, SupervisorState, ready_line, status_document
from tests.data.initdata.factory import FIXTURE_NOW, KEYS, make_envelope, make_initdata, signing_key
from trust.gate import VerifiedPolicy


def verified(*, insecure: bool = False) -> VerifiedPolicy:
    document = parse_initdata(make_initdata(make_envelope([signing_key("owner-ed25519")], version=3)), origin="x")
    config = GateConfig(trust_dir=KEYS, state_dir=None, insecure_allow_sample=insecure)
    return gate_initdata(document, config, sources=[SampleSource()], now=FIXTURE_NOW)


def test_ready_line() -> None:
    policy = verified(insecure=True)
    enforced = Enforced(EnforcedOrigin.GATE, 3, policy.bundle_digest, "sha256:" + "c" * 64, adopted=False)
    line = ready_line(policy, enforced, None)
    assert re.fullmatch(r"enforcing bundle v3 \(sha256:[0-9a-f]{12}\), ruleset sha256:c{12}, "
                        r"measured by sample INSECURE\(sample\)", line), line


def test_status_document_before_the_gate_and_with_kept_pins() -> None:
    state = SupervisorState()
    document = status_document(state, engine=None, agent=None, containers=[])
    assert (document["phase"], document["gate"]["result"], document["enforcement"]) == ("starting", "pending", None)

    state.phase, state.gate_error = Phase.GATE_REFUSED, "x: PCR8: measured 00"
    state.enforced = Enforced(EnforcedOrigin.KEPT, None, None, "", adopted=True)
    document = json.loads(json.dumps(status_document(state, engine=None, agent=None, containers=["web-1"])))
    assert document["phase"] == "gate-refused"
    assert document["gate"] == {"result": "refused", "error": "x: PCR8: measured 00", "measurement_source": None,
                                "tee": None, "insecure": None, "bundle_version": None, "bundle_digest": None,
                                "initdata_digest": None}
    assert document["enforcement"]["origin"] == "kept"
    assert document["containers"] == ["web-1"]


def test_status_document_after_acceptance() -> None:
    policy = verified(insecure=True)
    state = SupervisorState(phase=Phase.READY, verified=policy)
    warning = "KubeArmorPolicy p: accepted, not enforced as written: spec.syscalls (not monitored)"
    state.enforced = Enforced(EnforcedOrigin.GATE, 3, policy.bundle_digest, "sha256:" + "c" * 64, adopted=True,
                              policy_warnings=(warning,))
    aael = {"ruleset": "sha256:" + "c" * 64, "bundle_version": 3, "recorded": False, "attempts": 2,
            "last_error": "unix:///x: connect: nothing listens", "recorded_after_s": None}
    document = status_document(state, engine={"links": 4}, agent=None, containers=[], aael=aael)
    assert document["gate"]["result"] == "accepted"
    assert document["gate"]["initdata_digest"] == f"sha256:{policy.initdata_digest}"
    assert document["enforcement"] == {"origin": "gate", "bundle_version": 3, "bundle_digest": policy.bundle_digest,
                                       "ruleset_digest": "sha256:" + "c" * 64, "adopted": True,
                                       "recorded_in_aael": False, "policy_warnings": [warning]}
    assert document["aael"] == aael
    other = dict(aael, ruleset="sha256:" + "d" * 64, recorded=True)  # an older RuleSet's record says nothing
    assert status_document(state, engine=None, agent=None, containers=[],
                           aael=other)["enforcement"]["recorded_in_aael"] is None


def test_warden_status_text_says_whether_the_aael_record_exists() -> None:
    from supervisor.commands.status import aael_line

    pending = {"ruleset": "sha256:" + "c" * 64, "recorded": False, "attempts": 3,
               "last_error": "unix:///run/x.sock: connect: nothing listens (No such file or directory)"}
    assert aael_line(pending) == ("NOT recorded yet (3 attempts; last error: unix:///run/x.sock: connect: nothing "
                                  "listens (No such file or directory))")
    done = dict(pending, recorded=True, recorded_after_s=4.2, attempts=4)
    assert aael_line(done) == f"recorded sha256:{'c' * 64} (after 4.2s, 4 attempts)"
    assert aael_line({"ruleset": None, "recorded": None}) == "nothing to record"
