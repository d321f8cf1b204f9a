/* SPDX-License-Identifier: GPL-2.0 */
/*
 * self_guard_types.h: the layouts self_guard shares with user space (bpf/kernel/self_protect.py
 * writes the configuration and inode keys and decodes the events). It uses no BPF helper, so the
 * host tests compile it with the host compiler to prove that Python and C agree.
 */
#ifndef SELF_GUARD_TYPES_H
#define SELF_GUARD_TYPES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define SELF_NAME_LEN 64

/* What a denial was about (self_event.attack). */
enum self_attack {
	ATTACK_SIGNAL = 1,
	ATTACK_PTRACE = 2,
	ATTACK_BPF_CMD = 3,
	ATTACK_MAP_WRITE = 4,
	ATTACK_PIN_CHANGE = 5,
	ATTACK_BPFFS_MOUNT = 6,
	ATTACK_PROTECTED_WRITE = 7,
	ATTACK_CGROUP_JOIN = 8,
	ATTACK_RLIMIT = 9,
	ATTACK_SCHED = 10,          /* scheduling policy, priority, affinity or I/O priority of warden */
	ATTACK_CGROUP_CONTROL = 11, /* a control file of warden's parent cgroup (kill, freeze, limits) */
};

/* self_config[0]: warden's identity and its pin directory, written when self-protection is armed. */
struct self_config {
	char unit_cgroup[SELF_NAME_LEN];   /* e.g. "warden.service" */
	char parent_cgroup[SELF_NAME_LEN]; /* e.g. "system.slice" */
	char pin_dir[SELF_NAME_LEN];       /* the top directory in bpffs, e.g. "warden" */
};

/* Key of self_inodes: a protected file or directory. */
struct inode_key {
	__u64 ino;
	__u32 dev; /* kernel dev_t encoding (MAJOR << 20 | MINOR) */
	__u32 pad;
};

/* A denial, on the self_events ring buffer. */
struct self_event {
	__u64 ts_ns;
	__u32 attack;    /* enum self_attack */
	__u32 pid;       /* tgid of the attacker */
	__u32 uid;
	__u32 target_pid; /* signal/ptrace target, else 0 */
	__s32 detail;     /* signal number, bpf cmd, or 0 */
	__u32 pad;
	__u64 mnt_ns;
	char comm[16];
	char name[SELF_NAME_LEN]; /* the file, pin or map name involved */
};

#endif /* SELF_GUARD_TYPES_H */
