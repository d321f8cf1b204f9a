"""Engine limits shared by the policy compiler and the BPF enforcement engine.

The compiler refuses any policy that the engine could not load, so the engine sizes its BPF maps from these
numbers and never has to truncate. Changing a value here changes both sides at once; keep them in sync with
the key layout in the BPF programs.
"""

from __future__ import annotations

from typing import Final

# Longest path the engine stores, in UTF-8 bytes, without the terminating NUL. For a directory rule the
# trailing "/" counts. KubeArmor stops at 200 bytes (its key is char[200] with the NUL); ours is char[256].
MAX_PATH_BYTES: Final = 255

# Most path components (names between slashes) in a path or directory rule. The kernel-side prefix walk is
# bounded by this, so a deeper rule could never match.
MAX_PATH_DEPTH: Final = 32

# Most rules (after fromSource expansion and conflict resolution) in the RuleSet of one scope.
MAX_RULES_PER_SCOPE: Final = 65536
