"""`warden policy check|compile`: exit codes and output format, through supervisor.cli.main."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bpf.policy.compiler import AnyContainerScope, ContainerScope, compile
from bpf.policy.files import load_policy_paths
from bpf.policy.ruleset import RuleSet
from supervisor.cli import main

DATA = Path(__file__).parent / "data" / "policies"
SEED = DATA / "seed"
INVALID = DATA / "invalid" / "mixed-problems.yaml"
PROBLEM_LINE = re.compile(r"^[^\n]+:\d+: \S+: \S.*$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["policy", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# check


def test_check_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(SEED), str(DATA / "examples"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[-1] == "ok: 6 policies" and len(lines) == 7
    assert all(": KubeArmor" in line and line.endswith(("rule", "rules")) for line in lines[:-1])


def test_check_one_policy_singular(capsys: pytest.CaptureFixture[str]) -> None:
    path = SEED / "net-raw-block.yaml"
    assert run(capsys, "check", str(path)) == (
        0, f"{path}:3: KubeArmorPolicy net-raw-block (no namespace): 1 rule\nok: 1 policy\n", "")


def test_check_reports_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(INVALID))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert all(PROBLEM_LINE.match(line) for line in lines)
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{INVALID}:12", "spec.file.matchPatterns[0].pattern"],
        [f"{INVALID}:14", "spec.file.matchDirectories[0].dir"],
        [f"{INVALID}:17", "spec.network.matchProtocols[0].protocol"],
    ]
    assert "is not absolute" in lines[0] and "regular expression" in lines[0]


def test_check_missing_path_is_a_problem_naming_the_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert run(capsys, "check", str(SEED), str(missing)) == (1, "", f"{missing}:0: path: no such file or directory\n")


def test_check_hostile_inputs_never_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text("a: &a [1, 2]\nb: [*a, *a]\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "huge.yaml").write_bytes(b"a: " + b"x" * (1 << 20))
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 10000 + "]" * 10000)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "ctrl\x1bname.yaml").write_text("- \x1b[31m")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 5 and all(PROBLEM_LINE.match(line) for line in lines)
    assert "Traceback" not in err and "\x1b" not in err
    assert "ctrl\\x1bname.yaml" in err


def test_check_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert "the following arguments are required: PATH" in usage_error(capsys, "check")
    code, out, err = run(capsys)
    assert out == ""
    assert code == 2 and "check" in err and "compile" in err


# --------------------------------------------------------------------------------------------------------
# compile


def test_compile_table_and_digest(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", str(SEED), "--scope", "container:mysql", "--label", "app=mysql")
    expected = compile(load_policy_paths([SEED]), ContainerScope("mysql", {"app": "mysql"}))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "scope: container:mysql"
    assert lines[-2:] == ["rules: 4", f"digest: {expected.digest}"]
    assert "file rules: 3, default posture: none (no Allow rules)" in lines
    rows = [line.split() for line in lines if line.startswith("  Block")]
    assert rows == [
        ["Block", "dir", "/bin/", "read-only", "-", "file-integrity-monitoring"],
        ["Block", "dir", "/sbin/", "read-only", "-", "file-integrity-monitoring"],
        ["Block", "dir_recursive", "/var/lib/mysql/", "-", "-", "block-mysql-data-access"],
        ["Block", "raw", "-", "net-raw-block"],
    ]


def test_compile_json_is_the_canonical_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", str(SEED), "--json")
    assert (code, err) == (0, "")
    assert out == compile(load_policy_paths([SEED]), AnyContainerScope()).to_json() + "\n"
    assert RuleSet.from_json(out.rstrip("\n")).rule_count == 4  # the union of the seed's policies


def test_compile_postures_and_host_scope(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "compile", str(DATA / "examples"), "--scope", "container:web", "--label", "app=web",
                       "--file-posture", "block", "--json")
    postures = json.loads(out)["postures"]
    assert code == 0 and postures == {"file": "block", "process": "block", "network": None,
                                      "capabilities": "audit"}
    code, out, _ = run(capsys, "compile", str(DATA / "examples"), "--scope", "host")
    assert code == 0 and "host-file-integrity-monitoring severity=5 tags=NIST,SI-7" in out
    code, out, _ = run(capsys, "compile", str(DATA / "examples"), "--scope", "host", "--node-label", "a=b")
    assert code == 0 and "rules: 3" in out  # an empty nodeSelector matchLabels matches any labels


def test_compile_refused_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", str(SEED), str(INVALID))
    assert (code, out) == (1, "") and len(err.splitlines()) == 3


@pytest.mark.parametrize(("argv", "words"), [
    (["--scope", "pod:x"], "is not host, container:NAME or any-container"),
    (["--scope", "container:"], "is not host, container:NAME or any-container"),
    (["--label", "novalue"], "is not KEY=VALUE"),
    (["--file-posture", "allow"], "invalid choice"),
])
def test_compile_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    assert words in usage_error(capsys, "compile", str(SEED), *argv)


@pytest.mark.parametrize(("argv", "words"), [
    (["--label", "app=mysql"], "--label needs --scope container:NAME"),
    (["--scope", "container:x", "--node-label", "a=b"], "--node-label needs --scope host"),
])
def test_compile_option_combinations(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    code, out, err = run(capsys, "compile", str(SEED), *argv)
    assert (code, out) == (2, "") and words in err


def test_registering_the_command_does_not_import_the_compiler() -> None:
    # Every `warden` invocation registers every command; only `warden policy` should pay for PyYAML.
    probe = ("import sys, supervisor.commands.policy; "
             "print(sorted(m for m in sys.modules if m.startswith(('bpf', 'yaml'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_compile_shows_patterns_and_their_automata(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "--scope", "container:pat-own", str(DATA / "patterns"))
    assert (code, err) == (0, "")
    assert re.search(r"^  Block\s+pattern\s+/etc/\*hado\?\s+-\s+-\s+own-file-star-question-block", out, re.MULTILINE)
    assert re.search(r"^  Block\s+pattern\s+/srv/data/secret_data\*\s+read-only,owner-only\s", out, re.MULTILINE)
    assert re.search(r"^  Audit\s+pattern\s+/\*\*/chmod\s", out, re.MULTILINE)
    assert re.search(r"^matchPatterns automata: 2 \(\d+ states\), sha256:[0-9a-f]{64}$", out, re.MULTILINE)
    code, out, _ = run(capsys, "compile", "--json", "--scope", "container:pat-own", str(DATA / "patterns"))
    data = json.loads(out)
    assert data["automata"].startswith("sha256:") and len(data["file_patterns"]) == 4
