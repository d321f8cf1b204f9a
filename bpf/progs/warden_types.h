/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_types.h: the layouts warden's BPF objects share with user space (bpf/kernel/maps.py and
 * bpf/kernel/events.py encode and decode exactly these bytes), and the path hash. It uses no BPF
 * helper, so the host tests compile it with the host compiler to prove that Python and C agree.
 */
#ifndef WARDEN_TYPES_H
#define WARDEN_TYPES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define WARDEN_PATH_MAX 256 /* bytes stored for a path: bpf.policy.limits.MAX_PATH_BYTES (255) + 1 */
#define WARDEN_MAX_DEPTH 32 /* bpf.policy.limits.MAX_PATH_DEPTH */

#define WARDEN_HASH_SEED 0xcbf29ce484222325ULL
#define WARDEN_HASH_MULT 0x9e3779b97f4a7c15ULL

/* Scope ids: the host (VM) scope and the rules for an unregistered mount namespace are fixed;
 * registered containers get ids from WARDEN_SCOPE_FIRST_CONTAINER up. */
#define WARDEN_SCOPE_HOST 1
#define WARDEN_SCOPE_ANY_CONTAINER 2
#define WARDEN_SCOPE_FIRST_CONTAINER 16

enum warden_category {
	WARDEN_CAT_FILE = 1,
	WARDEN_CAT_PROCESS = 2,
	WARDEN_CAT_NETWORK = 3,
	WARDEN_CAT_CAPABILITIES = 4,
	/* not a rule category: a directory above a file or process rule, keyed by its "dir/" string
	 * (bpf/kernel/maps.py CAT_ANCESTOR); its node's exact slot is the strongest rule below */
	WARDEN_CAT_ANCESTOR = 5,
	/* not a rule category: the filelessExec preset (exec of a file with no path on disk); its slot is
	 * warden_scope_cfg.strict[WARDEN_CAT_FILELESS_EXEC] (bpf/kernel/maps.py CAT_FILELESS_EXEC) */
	WARDEN_CAT_FILELESS_EXEC = 6,
};

enum warden_action {
	WARDEN_ACT_NONE = 0,
	WARDEN_ACT_ALLOW = 1,
	WARDEN_ACT_AUDIT = 2,
	WARDEN_ACT_BLOCK = 3,
};

#define WARDEN_RULE_READ_ONLY 1
#define WARDEN_RULE_OWNER_ONLY 2

/* scope_cfg.rules[category] bits */
#define WARDEN_SCOPE_RULES 1   /* rules without fromSource */
#define WARDEN_SCOPE_SOURCED 2 /* rules with fromSource */

/* Key of warden_rules. `hash` is the path hash (file/process), the protocol code (network) or the
 * capability number (capabilities); `source` is the hash of the fromSource path, 0 for any. */
struct warden_rule_key {
	__u64 hash;
	__u64 source;
	__u32 scope;
	__u8 category;
	__u8 pad[3];
};

struct warden_rule_slot {
	__u32 alert; /* alert id: user space maps it to policy name, severity, tags, message */
	__u8 action; /* enum warden_action; 0 = no rule of this kind here */
	__u8 flags;  /* WARDEN_RULE_* */
	__u16 pad;
};

/* One node per path string: an exact path ("/a/b") or a directory prefix ("/a/b/"). A prefix node
 * may carry a directory rule (direct children) and a recursive one, and says whether any rule lies
 * below it, so the kernel walk stops at the first prefix no rule needs. The path itself is stored
 * so that a hash hit is verified byte for byte: the hash is not collision resistant. */
struct warden_rule_node {
	struct warden_rule_slot exact;
	struct warden_rule_slot dir;
	struct warden_rule_slot recursive;
	__u8 below;
	__u8 skip; /* the next prefix worth a lookup is this many components down (bpf/kernel/maps.py: _set_skips) */
	__u16 len;
	__u32 pad2;
	char path[WARDEN_PATH_MAX];
};

struct warden_source_val {
	__u16 len;
	__u8 pad[6];
	char path[WARDEN_PATH_MAX];
};

struct warden_ns_key {
	__u32 pid_ns;
	__u32 mnt_ns;
};

struct warden_scope_cfg {
	__u8 posture[8]; /* by category: 0 none, WARDEN_ACT_AUDIT or WARDEN_ACT_BLOCK */
	__u8 rules[8];   /* by category: WARDEN_SCOPE_* bits */
	/* by category (file, process): the scope's strictest path rule (a Block before an Audit, the
	 * fewest readOnly/ownerOnly narrowings first), which decides when a path could not be walked to
	 * its root: the rules of the prefixes that were not seen might have applied (fail closed).
	 * strict[WARDEN_CAT_FILELESS_EXEC]: the filelessExec preset's action and alert. */
	struct warden_rule_slot strict[8];
};

/* Value of warden_task_scope (task storage): the scope a task belongs to, inherited by its children. */
struct warden_task_scope {
	__u32 scope;
	__u32 flags; /* WARDEN_TASK_*, inherited too */
};

/* The task, or an ancestor, exec'd a program while in a container scope (or the any-container one):
 * it runs the container's code, not the runtime's. Mounts are decided for such tasks only: a runtime
 * sets up a container's root (binds, pivot_root) in its namespaces before it execs the entrypoint. */
#define WARDEN_TASK_EXECED 1

/* What a mount operation would do (event arg[1]; bpf/kernel/events.py MOUNT_KINDS names them). */
enum warden_mount_kind {
	WARDEN_MOUNT_AT = 1,       /* a source-less file system mounted at, or a mount moved from or to, a path */
	WARDEN_MOUNT_BIND = 2,     /* mount(MS_BIND): the source is a string resolved after the hook */
	WARDEN_MOUNT_MOVE = 3,     /* mount(MS_MOVE): likewise */
	WARDEN_MOUNT_SOURCED = 4,  /* a file system with a path or device source (overlay lowerdir=, ext4, 9p ...) */
	WARDEN_MOUNT_DETACHED = 5, /* move_mount of a detached tree (open_tree clone, fsmount): its source is unknown */
	WARDEN_MOUNT_PIVOT = 6,    /* pivot_root */
};

struct warden_meta_key {
	char name[32];
};

struct warden_meta_val {
	__u8 digest[32];
};

/* Hook ids: KubeArmor's event ids (KubeArmor/BPF/syscalls.h) where it has one; bpf/kernel/events.py
 * names them as KubeArmor does (HOOK_NAMES). */
enum warden_hook {
	WARDEN_HOOK_BPRM_CHECK = 352,
	WARDEN_HOOK_FILE_OPEN = 450,
	WARDEN_HOOK_PATH_MKNOD = 452,
	WARDEN_HOOK_PATH_UNLINK = 453,
	WARDEN_HOOK_PATH_MKDIR = 454,
	WARDEN_HOOK_PATH_RMDIR = 455,
	WARDEN_HOOK_PATH_SYMLINK = 456,
	WARDEN_HOOK_PATH_LINK = 457,
	WARDEN_HOOK_PATH_CHMOD = 459,
	WARDEN_HOOK_PATH_TRUNCATE = 460,
	WARDEN_HOOK_SOCKET_CREATE = 461,
	WARDEN_HOOK_CAPABLE = 464,
	WARDEN_HOOK_PATH_CHOWN = 466,
	WARDEN_HOOK_PATH_RENAME = 8458,
	/* warden's own (KubeArmor has no event for these): metadata, held descriptors, mmap, mounts */
	WARDEN_HOOK_INODE_SETATTR = 8470,
	WARDEN_HOOK_INODE_SETXATTR = 8471,
	WARDEN_HOOK_INODE_REMOVEXATTR = 8472,
	WARDEN_HOOK_FILE_IOCTL = 8473,
	WARDEN_HOOK_FILE_PERMISSION = 8474,
	WARDEN_HOOK_MMAP_FILE = 8475,
	WARDEN_HOOK_SB_MOUNT = 8476,
	WARDEN_HOOK_MOVE_MOUNT = 8477,
	WARDEN_HOOK_SB_PIVOTROOT = 8478,
	WARDEN_HOOK_SOCKET_SENDMSG = 8479,
	WARDEN_HOOK_SOCKET_CONNECT = 8480,
	WARDEN_HOOK_BPRM_MEMFD = 8481,
	/* scope_guard's confinement of registered containers (WARDEN_EV_CONFINEMENT) */
	WARDEN_HOOK_PTRACE_ACCESS = 8490,
	WARDEN_HOOK_BPF = 8491,
	WARDEN_HOOK_KERNEL_LOAD = 8492,
	WARDEN_HOOK_SYSCTL_WRITE = 8493,
};

#define WARDEN_EV_DEFAULT_POSTURE 1 /* no rule matched: the scope's default posture decided */
#define WARDEN_EV_TRUNCATED 2       /* the path did not fit WARDEN_PATH_MAX / WARDEN_MAX_DEPTH */
#define WARDEN_EV_INCOMPLETE 4      /* the walk never reached the root: the scope's strictest rule decided */
#define WARDEN_EV_CONFINEMENT 8     /* no policy rule: a container's task acted outside its scope (scope_guard) */

struct warden_event {
	__u64 ts_boot_ns;
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 scope;
	__u32 mnt_ns;
	__u32 pid_ns;
	__u32 alert;
	__s32 retval;
	__u16 hook;
	__u8 category;
	__u8 action;
	__u8 flags;
	__u8 pad[3];
	__u32 arg[4]; /* socket: family, type, protocol; capable: cap; file: write */
	__u16 path_len;
	__u16 source_len;
	__u32 ns_tgid; /* tgid in the task's own pid namespace (the container's PID) */
	char comm[16];
	char path[WARDEN_PATH_MAX];
	char source[WARDEN_PATH_MAX];
	__u32 ns_ppid; /* the parent's tgid there; 0 when the parent is outside it */
};

/* The path hash, over 8-byte little-endian words of the string zero-padded to a multiple of 8,
 * then the length: cheap in BPF (one multiply per word, and every prefix reuses the words before
 * it), and spread well enough for hash-map keys. Hits are verified against the stored string. */
static inline __u64 warden_mix(__u64 h, __u64 w)
{
	h = (h ^ w) * WARDEN_HASH_MULT;
	return h ^ (h >> 32);
}

/* Mask of the first `rem` (1..7) bytes of a little-endian word. */
static inline __u64 warden_tail_mask(__u32 rem)
{
	return (1ULL << ((rem & 7) * 8)) - 1;
}

#endif /* WARDEN_TYPES_H */
