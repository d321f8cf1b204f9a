"""Formats only: CoCo initdata, its encodings, DSSE envelopes, the bundle payload, keys, rollback state.

The lowest layer: it decides nothing (trust/ does) and imports no other warden package.
"""
