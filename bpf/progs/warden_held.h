/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_held.h: reads and writes through a descriptor (file_permission), which may have been
 * opened before the policy or under an older one. Only file_guard includes it: its maps are that
 * object's own.
 *
 * Deciding the path at every read(2) would cost a walk each, so an allowed access is remembered per
 * open file, with the generation it was decided under (warden_config[1]: the engine writes a new one
 * after every change of the rules and of the container registry) and the scope it was decided in.
 * A reused struct file at the same address is told apart by its path (dentry, mount); what is
 * remembered depends on nothing else (warden_decide_path's req.cacheable). Two levels:
 * - the task's memo (warden_task_memo, task storage): the scope the task resolved to, in which
 *   namespaces and under which generation, whether that scope has file rules at all, and the last
 *   files allowed to it. A read through one of them costs one task-storage lookup, no hash lookup;
 * - every task's allowed files (warden_held_files, by struct file address): a file shared between
 *   tasks, or more files at once than the memo holds, cost one hash lookup, as before the memo.
 */
#ifndef WARDEN_HELD_H
#define WARDEN_HELD_H

#include "warden_enforce.h"

#define HELD_READ 1
#define HELD_WRITE 2 /* a write allowed implies a read allowed: readOnly and Block refuse writes first */

struct held_file {
	__u64 generation;
	__u64 dentry;
	__u64 mnt;
	__u32 scope;
	__u16 allowed; /* HELD_* */
	__u16 alerted; /* the decision emitted an event (an Audit rule or posture): an open decides again */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64); /* the struct file's address */
	__type(value, struct held_file);
} warden_held_files SEC(".maps");

/* enforce_file_op's key and entry, in map memory: on its stack they would push file_open's call chain
 * (enforce_file_op, warden_match_patterns, warden_pat_one) towards the 512-byte BPF stack limit. */
struct held_scratch {
	__u64 key; /* the struct file's address */
	struct held_file entry;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct held_scratch);
} warden_held_scratch SEC(".maps");

/* Files a task's memo holds: a read loop, and a copy's source and destination, stay in it. */
#define MEMO_FILES 4

struct memo_file {
	__u64 file; /* the struct file's address */
	struct held_file held;
};

struct task_memo {
	/* resolve_scope's answer for this task, valid while the generation and the task's namespaces
	 * are those it was found under: it depends on nothing else (warden_scope.h; the engine writes
	 * a new generation after registering or unregistering a container, pidfd-recorded scope included) */
	__u64 generation;
	struct warden_ns_key nk;
	__u32 scope;
	__u32 file_rules; /* the scope has file rules or a file posture: without, nothing is decided */
	struct memo_file files[MEMO_FILES];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_memo);
} warden_task_memo SEC(".maps");

static __always_inline __u64 rules_generation(void)
{
	__u32 one = 1;
	__u64 *gen = bpf_map_lookup_elem(&warden_config, &one);

	return gen ? *gen : 0;
}

/* A file's slot in the memo, by inode number (the verifier allows no arithmetic on the file's
 * address): files made one after the other, a copy's source and destination, have consecutive ones. */
static __always_inline __u32 memo_slot(struct file *file)
{
	return file->f_inode->i_ino & (MEMO_FILES - 1);
}

/* Whether `h` allows `level` on `file` now. At an open (a new struct file at a reused address, for the
 * same path: an open-close loop), only a decision that alerted nothing: an Audit alert is per open. */
static __always_inline int held_allows(const struct held_file *h, __u64 generation, __u32 scope, struct file *file,
				       __u32 level, int at_open)
{
	return h->generation == generation && h->scope == scope && h->dentry == (__u64)file->f_path.dentry &&
	       h->mnt == (__u64)file->f_path.mnt && h->allowed >= level && !(at_open && h->alerted);
}

/* The memo of task `t`, when it still holds for `generation` and the task's namespaces, else NULL. */
static __always_inline struct task_memo *valid_memo(struct task_struct *t, __u64 generation)
{
	struct task_memo *m = bpf_task_storage_get(&warden_task_memo, t, 0, 0);
	struct nsproxy *nsp = t->nsproxy;

	if (!m || m->generation != generation || m->nk.mnt_ns != nsp->mnt_ns->ns.inum ||
	    m->nk.pid_ns != nsp->pid_ns_for_children->ns.inum)
		return NULL;
	return m;
}

/* The fast path of file_open and file_permission: the task's memo allows `level` on `file`. */
static __always_inline int memo_allows(struct file *file, __u32 level, int at_open)
{
	__u64 generation = rules_generation();
	struct task_memo *m = valid_memo(bpf_get_current_task_btf(), generation);
	struct memo_file *slot;

	if (!m)
		return 0;
	if (!m->file_rules)
		return 1;
	slot = &m->files[memo_slot(file)];
	return slot->file == (__u64)file && held_allows(&slot->held, generation, m->scope, file, level, at_open);
}

/* Remember for task `t` what its scope is (`nk`, `scope`, `file_rules`) under `generation`, and, when
 * `held` is given, that `file` is allowed as it says. A new scope or generation empties the files. */
static __always_inline void memo_remember(struct task_struct *t, __u64 generation, struct warden_ns_key *nk,
					  __u32 scope, __u32 file_rules, struct file *file, struct held_file *held)
{
	struct task_memo *m = bpf_task_storage_get(&warden_task_memo, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	struct memo_file *slot;

	if (!m)
		return; /* no memory: every read is decided the long way, never wrongly */
	if (m->generation != generation || m->scope != scope || m->nk.mnt_ns != nk->mnt_ns ||
	    m->nk.pid_ns != nk->pid_ns) {
		__builtin_memset(m->files, 0, sizeof(m->files));
		m->generation = generation;
		m->nk = *nk;
		m->scope = scope;
	}
	m->file_rules = file_rules;
	if (!held)
		return;
	slot = &m->files[memo_slot(file)];
	slot->file = (__u64)file;
	slot->held = *held;
}

/* `file` is being opened, read or written at `level` (HELD_*), and the task's memo did not allow it:
 * decide it unless another task's allow holds (held_allows), and remember an allow that may be. The
 * generation is read first: an allow decided under rules that changed meanwhile is remembered under
 * the old generation, which the engine's write ends. */
static __noinline int enforce_file_op(__u64 op, struct file *file, __u32 level)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct dentry *d = file->f_path.dentry;
	struct vfsmount *vmnt = file->f_path.mnt;
	__u64 generation = rules_generation();
	struct warden_ns_key nk = {};
	struct warden_scope_cfg *cfg;
	struct held_scratch *hs;
	struct held_file *held;
	struct scratch *s;
	__u32 scope, zero = 0, category = (op >> 16) & 0xff;
	int ret;

	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg || (!cfg->rules[category & 7] && !cfg->posture[category & 7])) {
		/* no file rule in this scope: nothing to decide, until the generation or namespaces change */
		if (cfg)
			memo_remember(t, generation, &nk, scope, 0, file, NULL);
		return 0;
	}
	hs = bpf_map_lookup_elem(&warden_held_scratch, &zero);
	if (!hs)
		return 0;
	hs->key = (__u64)file;
	held = bpf_map_lookup_elem(&warden_held_files, &hs->key);
	if (held && held_allows(held, generation, scope, file, level, (op & 0xffff) == WARDEN_HOOK_FILE_OPEN)) {
		hs->entry = *held;
		memo_remember(t, generation, &nk, scope, 1, file, &hs->entry);
		return 0;
	}
	s = get_scratch();
	if (!s)
		return 0;
	s->req.cacheable = 0;
	ret = enforce_path_body(op, d, vmnt, 0, 0, file->f_inode, 0);
	if (ret || !s->req.cacheable)
		return ret;
	/* the scratch again: the decision above may have run on this CPU's copy in between (it does not
	 * sleep or migrate, so it is still ours), but its fields are set here, right before the update */
	hs->key = (__u64)file;
	hs->entry.generation = generation;
	hs->entry.dentry = (__u64)d;
	hs->entry.mnt = (__u64)vmnt;
	hs->entry.scope = scope;
	hs->entry.allowed = level;
	hs->entry.alerted = s->req.alerted;
	bpf_map_update_elem(&warden_held_files, &hs->key, &hs->entry, BPF_ANY);
	memo_remember(t, generation, &nk, scope, 1, file, &hs->entry);
	return 0;
}

static __always_inline int enforce_file(__u16 hook, struct file *file, int write)
{
	__u32 level = write ? HELD_WRITE : HELD_READ;

	if (memo_allows(file, level, hook == WARDEN_HOOK_FILE_OPEN))
		return 0;
	return enforce_file_op(path_op(hook, WARDEN_CAT_FILE, write), file, level);
}

#endif /* WARDEN_HELD_H */
