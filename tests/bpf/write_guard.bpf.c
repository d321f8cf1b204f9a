// SPDX-License-Identifier: GPL-2.0
/*
 * write_guard: the smallest useful BPF-LSM object. It refuses to open for writing any file whose
 * parent directory is listed in `guarded_dirs` (by inode number and device). The test bed and
 * `make demo` use it to prove that a pinned link keeps enforcing after its loader has exited.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define EPERM 1
#define FMODE_WRITE 0x2

struct dir_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct dir_key);
	__type(value, __u8);
} guarded_dirs SEC(".maps");

SEC("lsm/file_open")
int BPF_PROG(write_guard_file_open, struct file *file, int ret)
{
	struct dir_key key = {};
	struct dentry *parent;

	if (ret)
		return ret; /* an earlier LSM already refused: keep its verdict */
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	parent = BPF_CORE_READ(file, f_path.dentry, d_parent);
	key.ino = BPF_CORE_READ(parent, d_inode, i_ino);
	key.dev = BPF_CORE_READ(parent, d_sb, s_dev);
	if (bpf_map_lookup_elem(&guarded_dirs, &key))
		return -EPERM;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
