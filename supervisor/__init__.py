"""coco-warden supervisor: daemon, CLI, agent supervision and the OCI hook."""

__version__ = "0.1.0"
