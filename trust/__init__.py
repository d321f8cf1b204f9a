"""Every trust decision, and nothing else: bytes and values in, a verified decision or a GateError out.

The role of python-tuf's `trusted_metadata_set.py`: time is fixed when a decision starts, and the
caller does all I/O (finding initdata, asking the TEE, reading keys, bundles and the rollback state,
recording what was accepted: supervisor.gate_inputs).
"""
