"""Where an installed warden's configuration is (the image's layout: units/etc/warden/).

Kept apart from supervisor.config, which imports the whole gate: `warden run` names the default before
it imports anything heavy (supervisor.commands.run starts loading the BPF objects first).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/warden/warden.yaml")
