"""coco-warden supervisor: I/O and processes (daemon, CLI, the gate's inputs, agent supervision, OCI hook)."""

__version__ = "0.1.0"
