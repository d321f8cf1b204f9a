"""BPF-LSM enforcement: CO-RE objects, the libbpf loader and the policy compiler."""
