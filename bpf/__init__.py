"""BPF-LSM enforcement, in two layers: the KubeArmor policy language (bpf.policy, no kernel needed) and the
kernel side that enforces it (bpf.kernel, which imports bpf.policy). The C programs and their headers are
in bpf/progs/; make builds them into build/bpf/*.bpf.o."""
