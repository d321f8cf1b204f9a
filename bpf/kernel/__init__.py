"""The kernel side of enforcement: the BPF-LSM objects, their maps and pins, and the engine that drives them.

- `libbpf`: the ctypes binding over the system libbpf.so.1 (objects, programs, links, maps, ring buffers);
- `objects`: where the compiled CO-RE objects live, and their digests;
- `maps`: the byte layouts of the engine's maps (progs/warden_types.h) and RuleSet -> map contents;
- `patterns`: matchPatterns automata in the maps (progs/warden_patterns_types.h), written make-before-break;
- `events`: ring-buffer events -> KubeArmor alerts;
- `pins`: where the engine pins everything under bpffs, and the bookkeeping of those pins;
- `manifest`: the engine's record in /run/warden (objects, program tags, scopes, alert metadata);
- `sync`: changing map contents without a gap (additions before removals);
- `engine`: the engine's verbs: load, adopt, sync, attach (make-before-break upgrade), teardown;
- `status`: reading back what is pinned and loaded (status, health); `errors`: what the engine raises;
- `self_protect`: the self_guard object (load, adopt, arm, teardown) that keeps warden from being switched off.

Imports the language (bpf.policy) and nothing above bpf: what to enforce and what to protect is the
caller's to say.
"""
