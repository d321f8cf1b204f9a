"""tests/kubearmor_corpus.py, the corpus check `.ci/run` runs over KubeArmor's documents, run here over the
project's own corpus (tests/data/policies/compat: one document per compatibility case, its MANIFEST.tsv says
what KubeArmor and warden do with each), so a clone without the third-party corpus still tests every case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import kubearmor_corpus
from tests.kubearmor_corpus import check_corpus, main

COMPAT = Path(__file__).parent / "data" / "policies" / "compat"


def test_own_corpus_every_case_as_the_manifest_says() -> None:
    result = check_corpus(COMPAT)
    assert result.failures == []
    assert (result.valid, result.valid_accepted, result.refused_by_design, result.invalid) == (31, 20, 11, 4)
    assert result.false_refusals == []


def test_main_reports_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(COMPAT)]) == 0
    out = capsys.readouterr().out
    assert "valid documents accepted: 20/31 (64.5%)" in out
    assert "invalid documents refused with FILE:LINE: 4/4" in out


def _copy(tmp_path: Path, names: list[str], manifest: str) -> Path:
    for name in names:
        shutil.copy(COMPAT / name, tmp_path / name)
    (tmp_path / "MANIFEST.tsv").write_text(manifest)
    return tmp_path


def test_invalid_document_accepted_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _copy(tmp_path, ["namespace.yaml"], "file\texpected\nnamespace.yaml\tinvalid\n")
    assert main([str(corpus)]) == 1
    assert "namespace.yaml: KubeArmor refuses it" in capsys.readouterr().err


def test_false_refusal_counted_not_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _copy(tmp_path, ["apparmor.yaml", "namespace.yaml"],
                   "file\texpected\napparmor.yaml\tvalid\nnamespace.yaml\tvalid\n")
    assert main([str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "false refusal: " in out and "1/2 (50.0%)" in out
    assert main([str(corpus), "--min-accept", "98"]) == 1


def test_crash_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _copy(tmp_path, ["namespace.yaml"], "file\texpected\nnamespace.yaml\tvalid\n")

    def crash(paths: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(kubearmor_corpus, "load_policy_paths", crash)
    assert main([str(corpus)]) == 1
    assert "crashed: RuntimeError: boom" in capsys.readouterr().err


def test_manifest_verdict_mismatch_fails(tmp_path: Path) -> None:
    corpus = _copy(tmp_path, ["syscalls-audit.yaml"],
                   "file\texpected\twarden\twhy\nsyscalls-audit.yaml\tvalid\taccepted\t\n")
    (failure,) = check_corpus(corpus).failures
    assert "accepted with a warning the manifest does not expect" in failure


def test_not_a_corpus(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 2
