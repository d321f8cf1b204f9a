"""Policy files and directories -> policies: which files are read, and how.

Directories are searched recursively for *.yaml and *.yml (sorted; symlinked directories are not descended
into, symlinked files are read). Nothing is skipped silently: a listed path that does not exist, a
directory that cannot be read or holds no policy file, a *.yaml entry that is not a readable regular file,
a file over 1 MiB or not UTF-8: each is a problem, and every problem in every file is reported together.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from bpf.policy.model import Policy, PolicyError, Problem
from bpf.policy.yaml_loader import MAX_TEXT_BYTES, duplicate_problems, parse_text, too_large_message


def load_policy_paths(paths: Sequence[Path]) -> tuple[Policy, ...]:
    """Load policy files and directories (recursively: *.yaml and *.yml, sorted; symlinked directories are
    not descended into, symlinked files are read). A file named explicitly is read whatever its suffix; a
    *.yaml entry that cannot be read is a problem, never skipped. Every problem in every file is reported
    together."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    seen: set[str] = set()
    for file in _policy_files(paths, problems):
        key = os.path.realpath(file)
        if key in seen:
            continue
        seen.add(key)
        text = _read_text(file, problems)
        if text is not None:
            policies.extend(parse_text(text, str(file), problems))
    problems.extend(duplicate_problems(policies))
    if problems:
        raise PolicyError(problems)
    return tuple(policies)


def _policy_files(paths: Sequence[Path], problems: list[Problem]) -> Iterator[Path]:
    for path in paths:
        try:
            mode = path.stat().st_mode  # follows symlinks given explicitly
        except FileNotFoundError:
            problems.append(Problem(str(path), 0, "path", "no such file or directory"))
            continue
        except (OSError, ValueError) as exc:  # e.g. ENAMETOOLONG, ELOOP, EACCES, an embedded NUL
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(Problem(str(path), 0, "path", f"cannot access: {why}"))
            continue
        if stat.S_ISDIR(mode):
            before = len(problems)
            found = sorted(_yaml_files_under(path, problems))
            if not found and len(problems) == before:
                problems.append(Problem(str(path), 0, "path", "directory holds no *.yaml or *.yml files"))
            yield from found
        elif stat.S_ISREG(mode):
            yield path
        else:
            problems.append(Problem(str(path), 0, "path", "not a regular file or directory"))


def _yaml_files_under(directory: Path, problems: list[Problem]) -> Iterator[Path]:
    def unreadable(error: OSError) -> None:
        # os.walk skips what it cannot list; a skipped directory would be policies silently not enforced.
        problems.append(Problem(str(error.filename or directory), 0, "path",
                                f"cannot read directory: {error.strerror or error}"))

    for root, dirs, files in os.walk(directory, onerror=unreadable, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            # A policy file that cannot be read (a dangling symlink, a FIFO) is reported, never skipped.
            candidate = Path(root, name)
            try:
                mode = candidate.stat().st_mode
            except OSError as exc:
                problems.append(Problem(str(candidate), 0, "path", f"cannot access: {exc.strerror or exc}"))
                continue
            if stat.S_ISREG(mode):
                yield candidate
            else:
                problems.append(Problem(str(candidate), 0, "path", "not a regular file"))


def _read_text(file: Path, problems: list[Problem]) -> str | None:
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(str(file), 0, "path", f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_TEXT_BYTES:
        problems.append(Problem(str(file), 0, "file", too_large_message()))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(file), 0, "file", f"not valid UTF-8 (byte offset {exc.start})"))
        return None
