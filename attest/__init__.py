"""The TEE side: which register carries the initdata digest (tee), and the sources that read it."""
