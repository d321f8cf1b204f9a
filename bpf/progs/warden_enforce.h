/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_enforce.h: decisions and events, and the two entry points the programs call:
 * enforce_path (file and process categories) and enforce_codes (network and capabilities).
 */
#ifndef WARDEN_ENFORCE_H
#define WARDEN_ENFORCE_H

#include "warden_scope.h"
#include "warden_match.h"
#include "warden_patterns.h"

#define EPERM 1
#define S_IFMT 00170000
#define S_IFDIR 0040000

/*
 * The decisions are global functions. The 6.1 verifier checks a global function once per program,
 * with its arguments as declared, where it checks a static one (and any code inlined) again at every
 * call site and on every path that reaches it: the branches of matching, of the default posture and
 * of the alert would multiply each other, and the load time with them. Their arguments are scalars:
 * the request and the paths are in the per-CPU scratch (warden_path.h), which each one looks up. A
 * pointer argument would do for reading only: 6.1 does not see a global function's writes through
 * one (what the caller then reads is what it wrote before the call), so outputs are map memory or
 * the return value. The object's path walk reads dentries with direct loads and stays in the
 * programs (a global function's pointer arguments cannot be kernel objects).
 */

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&warden_drops, &zero);

	if (drops)
		*drops += 1;
}

/* pid's number at pid-namespace level `level` (struct pid.numbers[level].nr), or 0 when pid is not
 * visible there (its own level is lower). */
static __always_inline __u32 pid_nr_at(struct pid *pid, unsigned int level)
{
	struct upid upid = {};

	if (!pid || BPF_CORE_READ(pid, level) < level)
		return 0;
	bpf_probe_read_kernel(&upid, sizeof(upid), (void *)pid + bpf_core_field_offset(struct pid, numbers) +
			      level * bpf_core_type_size(struct upid));
	return upid.nr;
}

/* Emit the event of the scratch's request (its source resolved: see emit_alert): the alert is what
 * `alert`, `action` and `flags` say. The only emitter: one copy of the event's code per program. */
__noinline int warden_emit(__u32 alert, __u32 action, __u32 flags)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct scratch *s = get_scratch();
	struct warden_event *ev;
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!s)
		return 0;
	s->req.alerted = 1;
	ev = bpf_ringbuf_reserve(&warden_events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(); /* enforcement already decided; only the alert is lost, and counted */
		return 0;
	}
	ev->ts_boot_ns = bpf_ktime_get_boot_ns();
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	ev->ppid = BPF_CORE_READ(t, real_parent, tgid);
	{
		/* KubeArmor's PID/PPID: numbered in the task's own pid namespace (level of its struct pid) */
		struct pid *own = BPF_CORE_READ(t, group_leader, thread_pid);
		unsigned int level = own ? BPF_CORE_READ(own, level) : 0;

		ev->ns_tgid = pid_nr_at(own, level);
		ev->ns_ppid = pid_nr_at(BPF_CORE_READ(t, real_parent, group_leader, thread_pid), level);
	}
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->scope = s->req.scope;
	ev->mnt_ns = s->req.nk.mnt_ns;
	ev->pid_ns = s->req.nk.pid_ns;
	ev->alert = alert;
	ev->retval = action == WARDEN_ACT_BLOCK ? -EPERM : 0;
	ev->hook = s->req.hook;
	ev->category = s->req.category;
	ev->action = action;
	ev->flags = flags;
	ev->arg[0] = s->req.arg[0];
	ev->arg[1] = s->req.arg[1];
	ev->arg[2] = s->req.arg[2];
	ev->arg[3] = s->req.arg[3];
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (s->req.has_path) {
		if (!s->obj.complete)
			ev->flags |= WARDEN_EV_TRUNCATED;
		if (!s->obj.reached)
			ev->flags |= WARDEN_EV_INCOMPLETE;
		ev->path_len = s->obj.len;
		bpf_probe_read_kernel(ev->path, sizeof(ev->path), s->obj.buf + (s->obj.start & (PATH_RIGHT - 1)));
	} else {
		ev->path_len = 0;
		ev->path[0] = 0;
	}
	ev->source_len = s->src.len;
	bpf_probe_read_kernel(ev->source, sizeof(ev->source), s->src.buf + (s->src.start & (PATH_RIGHT - 1)));
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* The alert of the scratch's request, with the task's executable as its source. */
static __always_inline void emit_alert(__u32 alert, __u32 action, __u32 flags)
{
	struct scratch *s = get_scratch();

	if (s && !s->req.src_resolved)
		warden_resolve_exe();
	warden_emit(alert, action, flags);
}

/* Apply the matched rule (alert, action, rule_flags; action 0: none) or the default posture to the
 * scratch's request: returns 0 or -EPERM, emitting the event. */
__noinline int warden_decide(__u32 alert, __u32 action, __u32 rule_flags, __u32 posture)
{
	struct scratch *s = get_scratch();
	__u8 f = rule_flags, flags = 0;
	int ok;

	if (!s)
		return 0;
	ok = (!(f & WARDEN_RULE_READ_ONLY) || !s->req.write) && (!(f & WARDEN_RULE_OWNER_ONLY) || s->req.owner);
	if (action == WARDEN_ACT_ALLOW && ok)
		return 0;
	if (action == WARDEN_ACT_BLOCK || action == WARDEN_ACT_AUDIT) {
		/* readOnly / ownerOnly narrow what the rule refuses: a read, or the owner, passes */
		if (f && ok)
			return 0;
	} else {
		/* No rule (or an Allow whose readOnly/ownerOnly the operation breaks): default posture. */
		if (!posture)
			return 0;
		alert = 0;
		action = posture;
		flags = WARDEN_EV_DEFAULT_POSTURE;
	}
	emit_alert(alert, action, flags);
	return action == WARDEN_ACT_BLOCK ? -EPERM : 0;
}

static __always_inline int decide(struct warden_rule_slot *best, __u8 posture)
{
	return warden_decide(best->alert, best->action, best->flags, posture);
}

/* Start the scratch's request: arg[0] is `write`; arg[1..3] and codes are the caller's to set. */
static __always_inline void begin_request(struct scratch *s, __u32 scope, struct warden_ns_key *nk, __u32 category,
					  __u16 hook, __u8 write)
{
	s->req.scope = scope;
	s->req.nk = *nk;
	s->req.category = category;
	s->req.hook = hook;
	s->req.write = write;
	s->req.owner = 0;
	s->req.arg[0] = write;
	s->req.arg[1] = 0;
	s->req.arg[2] = 0;
	s->req.arg[3] = 0;
	s->req.src_resolved = 0;
	s->req.has_path = 0;
	s->req.rules = 0;
	s->req.posture = 0;
	s->req.obj_dir = 0;
	s->req.cacheable = 0;
	s->req.owner_asked = 0;
	s->req.alerted = 0;
	s->req.owner_inode = 0;
	s->src.len = 0;
}

/* File and process categories: the object is the path (d, vmnt), or (d, the mount numbered `vmnt_num`,
 * whose root is `root_num`) when `by_number` (a constant at each use): a mount found by a search has
 * no typed pointer. */
#define OP_BLOCK_ONLY (1ULL << 25) /* only a Block rule acts: no Audit alert, no default posture */

/* Decide the scratch's request on its walked path (obj): the rules, the patterns, the default
 * posture. Sets req.cacheable. `op` is enforce_path_op's with the scope in bits 32-63. */
__noinline int warden_decide_path(__u64 op)
{
	struct warden_rule_slot best = {}, strict, found;
	struct scratch *s = get_scratch();
	__u32 scope = op >> 32, category = (op >> 16) & 0xff;
	__u8 rules;
	__u64 source = 0;

	if (!s)
		return 0;
	rules = s->req.rules;
	strict = s->req.strict;
	if (rules & WARDEN_SCOPE_SOURCED)
		source = current_source(s);
	if (source) {
		found = bits_slot(warden_match_path(scope, category, source));
		if (found.action)
			best = found;
	}
	if (!best.action && (rules & WARDEN_SCOPE_RULES)) {
		found = bits_slot(warden_match_path(scope, category, 0));
		if (found.action)
			best = found;
	}
	/* The walk never reached the root (too deep, too many mounts): a rule on a prefix it did not see
	 * might apply, so the scope's strictest rule does. Fail closed, never "only the rules on /". */
	if (!s->obj.reached && strict.action && strict.action >= best.action)
		best = strict;
	if (best.flags & WARDEN_RULE_OWNER_ONLY)
		s->req.owner = ask_owner(s);
	if (rules & WARDEN_SCOPE_PATTERNS) {
		best = bits_slot(warden_match_patterns(op, slot_bits(&best)));
		/* A path that did not fit the pattern walk (longer than WARDEN_PATH_MAX - 1 bytes or deeper
		 * than WARDEN_MAX_DEPTH) was matched against no pattern: any of them might apply, so the
		 * scope's strictest rule (patterns included) does. Fail closed, as for an unreached root. */
		if (!s->obj.complete && strict.action && strict.action >= best.action)
			best = strict;
	}
	if ((op & OP_BLOCK_ONLY) && best.action != WARDEN_ACT_BLOCK)
		return 0;
	/* an allow that depends on nothing but the path and the scope may be remembered: not one that
	 * asked whose the object is (ownerOnly, a rule's or a pattern's) or what the task runs (fromSource) */
	s->req.cacheable = !(rules & WARDEN_SCOPE_SOURCED) && !s->req.owner_asked && s->obj.complete;
	return decide(&best, s->req.posture);
}

/* The object's walk into the scratch's obj, in a frame of its own: its loop contexts stay off the
 * deepest call chain (the decision's, to the alert). */
static __noinline int walk_object(struct dentry *d, struct vfsmount *vmnt)
{
	struct scratch *s = get_scratch();

	if (s)
		resolve_path(bpf_get_current_task_btf(), s, &s->obj, d, vmnt);
	return 0;
}

/* The same for an object under a mount known by number (see resolve_path_far). */
static __noinline int walk_object_far(__u64 d, __u64 vmnt, __u64 mnt_root)
{
	struct scratch *s = get_scratch();

	if (s)
		resolve_path_far(bpf_get_current_task_btf(), s, &s->obj, d, vmnt, mnt_root);
	return 0;
}

/* The typed part of a path decision: the scope, the walk, what the object's inode says; then
 * warden_decide_path. Returns 0 or -EPERM; the scratch's req.cacheable as warden_decide_path leaves
 * it (untouched when the scope has nothing to decide). */
static __always_inline int enforce_path_body(__u64 op, struct dentry *d, struct vfsmount *vmnt, __u64 vmnt_num,
					     __u64 root_num, struct inode *inode, int by_number)
{
	__u16 hook = op & 0xffff;
	__u32 category = (op >> 16) & 0xff;
	int write = (op >> 24) & 1;
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	struct inode *obj;
	struct scratch *s;
	__u8 rules, posture;
	__u32 scope;

	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg)
		return 0;
	rules = cfg->rules[category & 7];
	posture = cfg->posture[category & 7];
	if (!rules && !posture)
		return 0; /* the common case for an unrestricted scope: two lookups and out */
	s = get_scratch();
	if (!s)
		return 0;
	begin_request(s, scope, &nk, category, hook, write);
	s->req.has_path = 1;
	s->req.rules = rules;
	s->req.posture = posture;
	s->req.strict = cfg->strict[category & 7];
	if (by_number)
		walk_object_far(as_number(s, d), vmnt_num, root_num);
	else
		walk_object(d, vmnt);
	obj = d->d_inode; /* NULL for a name being created */
	if (!inode)
		inode = obj;
	if (inode && (inode->i_mode & S_IFMT) != S_IFDIR && s->obj.complete && s->obj.ncomp)
		s->obj.nprefix = s->obj.ncomp; /* not a directory: no "object/" prefix to look up */
	/* the dentry's own inode says whether the object is a directory (`inode` may be the parent's) */
	s->req.obj_dir = obj ? (obj->i_mode & S_IFMT) == S_IFDIR : hook == WARDEN_HOOK_PATH_MKDIR;
	/* ownerOnly asks about the object's owner; for a name being created, its directory's */
	s->req.owner_inode = (__u64)(inode ? inode : d->d_parent->d_inode);
	return warden_decide_path(op | ((__u64)scope << 32));
}

/* A subprogram, not inlined, so that each program holds one copy however many times it calls it;
 * static, not global, so that the verifier keeps the arguments' BTF types and the walk reads
 * dentries with direct loads. `op` packs the hook id (bits 0-15), the category (16-23) and whether
 * the operation writes (24). */
static __noinline int enforce_path_op(__u64 op, struct dentry *d, struct vfsmount *vmnt, struct inode *inode)
{
	return enforce_path_body(op, d, vmnt, 0, 0, inode, 0);
}

static __always_inline __u64 path_op(__u16 hook, __u32 category, int write)
{
	return hook | ((__u64)category << 16) | ((__u64)(write ? 1 : 0) << 24);
}

static __always_inline int enforce_path(__u16 hook, __u32 category, struct dentry *d, struct vfsmount *vmnt,
					int write, struct inode *inode)
{
	return enforce_path_op(path_op(hook, category, write), d, vmnt, inode);
}

/*
 * Hooks that get a dentry and no mount (inode_setattr, inode_setxattr, inode_removexattr): the
 * object's paths are those of the mounts of its superblock in the task's mount namespace under
 * which it lies. Each is decided (at most DENTRY_MOUNTS of them); any refusal refuses. A dentry
 * on no mount of the task's namespace (overlayfs's private upper layer, written by the overlay
 * after the overlay's own hook decided; a detached tree) has no path the rules can name.
 */
#define DENTRY_MOUNTS 4
#define SB_MOUNTS_MAX 256

struct dentry_mounts {
	__u64 head;   /* &sb->s_mounts */
	__u64 pos;    /* where sb_mounts_cb goes on */
	__u64 ns;     /* the task's mount namespace */
	__u64 d;      /* the object */
	__u64 sb_root;
	__u64 vmnt[DENTRY_MOUNTS];
	__u64 root[DENTRY_MOUNTS];
	__u32 n;
	__u32 under;    /* the ancestor walk found the mount's root */
	__u32 cursor_k; /* whose root the ancestor walk looks for */
	__u64 cursor;   /* the ancestor walk's dentry */
	__s32 ret;      /* the decision: in map memory, which the verifier does not take for a constant */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dentry_mounts);
} warden_dentry_mounts SEC(".maps");

/* A superblock's mounts: a list through mount.mnt_instance up to 6.12, a singly linked one through
 * mount.mnt_next_for_sb after (CO-RE picks). */
struct mount___instance {
	struct list_head mnt_instance;
} __attribute__((preserve_access_index));

struct mount___next_for_sb {
	struct mount *mnt_next_for_sb;
} __attribute__((preserve_access_index));

struct super_block___list {
	struct list_head s_mounts;
} __attribute__((preserve_access_index));

struct super_block___first {
	struct mount *s_mounts;
} __attribute__((preserve_access_index));

/* Each layout's offsets in a function of its own, called only where that layout is the kernel's: the
 * compiler would otherwise compute both (constants) and select, and the one the kernel lacks is an
 * invalid instruction wherever it is reached. */
static __noinline __u64 instance_offset(void)
{
	return bpf_core_field_offset(struct mount___instance, mnt_instance);
}

static __noinline __u64 next_for_sb_offset(void)
{
	return bpf_core_field_offset(struct mount___next_for_sb, mnt_next_for_sb);
}

static __noinline __u64 s_mounts_list_offset(void)
{
	return bpf_core_field_offset(struct super_block___list, s_mounts);
}

static __noinline __u64 s_mounts_first_offset(void)
{
	return bpf_core_field_offset(struct super_block___first, s_mounts);
}

/* One mount of the superblock per call. */
static long sb_mounts_cb(__u32 i, void *data)
{
	struct dentry_mounts *dm = *(struct dentry_mounts **)data;
	__u64 m, next = 0, ns = 0, vmnt, root = 0;
	__u32 n = dm->n;

	if (n >= DENTRY_MOUNTS || !dm->pos)
		return 1;
	if (bpf_core_field_exists(struct mount___instance, mnt_instance)) {
		/* pos: the list node read last; the head is &sb->s_mounts */
		if (bpf_probe_read_kernel(&next, sizeof(next), (void *)dm->pos) || !next || next == dm->head)
			return 1;
		dm->pos = next;
		m = next - instance_offset();
	} else {
		/* pos: this mount */
		m = dm->pos;
		bpf_probe_read_kernel(&next, sizeof(next), (void *)(m + next_for_sb_offset()));
		dm->pos = next;
	}
	bpf_probe_read_kernel(&ns, sizeof(ns), (void *)(m + bpf_core_field_offset(struct mount, mnt_ns)));
	if (ns != dm->ns)
		return 0;
	vmnt = m + bpf_core_field_offset(struct mount, mnt);
	bpf_probe_read_kernel(&root, sizeof(root), (void *)(vmnt + bpf_core_field_offset(struct vfsmount, mnt_root)));
	dm->vmnt[n & (DENTRY_MOUNTS - 1)] = vmnt;
	dm->root[n & (DENTRY_MOUNTS - 1)] = root;
	dm->n = n + 1;
	return 0;
}

/* Whether dm->root[k] is the object or one of its ancestors: one parent per call. */
static long under_root_cb(__u32 i, void *data)
{
	struct dentry_mounts *dm = *(struct dentry_mounts **)data;
	__u64 parent = 0, d = dm->cursor;

	if (d == dm->root[dm->cursor_k & (DENTRY_MOUNTS - 1)]) {
		dm->under = 1;
		return 1;
	}
	if (bpf_probe_read_kernel(&parent, sizeof(parent), (void *)(d + bpf_core_field_offset(struct dentry, d_parent)))
	    || !parent || parent == d)
		return 1;
	dm->cursor = parent;
	return 0;
}

struct dentry_decide {
	struct dentry_mounts *dm;
	struct dentry *d;
	__u64 op;
};

/* Decide the object under mount k: in a loop body, which the verifier checks once (a call per
 * mount written out would be checked once per call). */
static long dentry_decide_cb(__u32 k, void *data)
{
	struct dentry_decide *c = data;
	struct dentry_mounts *dm = c->dm;
	__u32 j = k & (DENTRY_MOUNTS - 1);

	if (k >= dm->n)
		return 1;
	if (dm->root[j] != dm->sb_root) { /* a bind mount of a subtree: is the object in it? */
		dm->under = 0;
		dm->cursor = dm->d;
		dm->cursor_k = j;
		bpf_loop(WALK_MAX, under_root_cb, &c->dm, 0);
		if (!dm->under)
			return 0;
	}
	/* inlined in this body (checked once): a frame of its own would deepen the longest call chain
	 * (to a pattern's automaton) past the 512-byte stack */
	dm->ret = enforce_path_body(c->op, c->d, 0, dm->vmnt[j], dm->root[j], 0, 1);
	return dm->ret ? 1 : 0;
}

static __noinline int enforce_dentry_op(__u64 op, struct dentry *d)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct super_block *sb = d->d_sb;
	struct warden_ns_key nk = {};
	struct dentry_decide c = {};
	struct warden_scope_cfg *cfg;
	struct dentry_mounts *dm;
	__u32 zero = 0, scope, category = (op >> 16) & 0xff;

	/* a scope with nothing to decide (the host's, usually) leaves before the superblock's mounts are
	 * searched: each decision below would leave at this same test */
	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg || (!cfg->rules[category & 7] && !cfg->posture[category & 7]))
		return 0;
	dm = bpf_map_lookup_elem(&warden_dentry_mounts, &zero);
	if (!dm || !sb)
		return 0;
	if (bpf_core_field_exists(struct mount___instance, mnt_instance)) {
		dm->head = (__u64)sb + s_mounts_list_offset();
		dm->pos = dm->head;
	} else {
		dm->head = 0;
		bpf_probe_read_kernel(&dm->pos, sizeof(dm->pos), (void *)((__u64)sb + s_mounts_first_offset()));
	}
	dm->ns = (__u64)t->nsproxy->mnt_ns;
	dm->d = (__u64)d;
	dm->sb_root = (__u64)sb->s_root;
	dm->n = 0;
	bpf_loop(SB_MOUNTS_MAX, sb_mounts_cb, &dm, 0); /* 6.1: the context must be on the stack */
	dm->ret = 0;
	c.dm = dm;
	c.d = d;
	c.op = op;
	bpf_loop(DENTRY_MOUNTS, dentry_decide_cb, &c, 0);
	return dm->ret;
}

/*
 * Whether the directory (d, vmnt) lies above a Block or Audit file or process rule (an ancestor node):
 * moving it would carry the protected path out from under its rule (`mv /srv/app /srv/x`, then
 * x/secrets/key). Decided as that rule decides, with its alert; 0 for anything else.
 */
/* Its decision on the walked directory (scratch obj), from its ancestor node. Global: see above. */
__noinline int warden_decide_ancestor(void)
{
	struct scratch *s = get_scratch();
	struct warden_rule_key key = {};
	struct warden_rule_node *node;
	__u32 len;

	if (!s || !s->obj.complete || !s->obj.ncomp)
		return 0;
	hash_words(&s->obj);
	len = prefix_end(&s->obj, s->obj.ncomp); /* the directory and its '/' */
	key.hash = prefix_hash(&s->obj, len);
	key.scope = s->req.scope;
	key.category = WARDEN_CAT_ANCESTOR;
	node = bpf_map_lookup_elem(&warden_rules, &key);
	if (!node || !warden_same_path((const struct stored_path *)node->path, node->len, &s->obj, len))
		return 0;
	return warden_decide(node->exact.alert, node->exact.action, node->exact.flags, 0);
}

static __noinline int enforce_ancestor_op(__u64 op, struct dentry *d, struct vfsmount *vmnt)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct inode *inode = d->d_inode;
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	struct scratch *s;
	__u32 scope;

	if (!inode || (inode->i_mode & S_IFMT) != S_IFDIR)
		return 0; /* only a directory has paths below it */
	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg || !cfg->rules[WARDEN_CAT_ANCESTOR])
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	begin_request(s, scope, &nk, WARDEN_CAT_FILE, op & 0xffff, 1);
	s->req.has_path = 1;
	resolve_path(t, s, &s->obj, d, vmnt);
	return warden_decide_ancestor();
}

static __always_inline int enforce_ancestor(__u16 hook, struct dentry *d, struct vfsmount *vmnt)
{
	return enforce_ancestor_op(hook, d, vmnt);
}

/*
 * Mounts: no second path to protected data (threat-model.md, "Mounts"). Decided only for a task
 * that runs a container's code (WARDEN_TASK_EXECED: it, or an ancestor, exec'd in a container or the
 * any-container scope; a runtime's binds and pivot_root before the entrypoint's exec are its set-up)
 * in a scope with file or process rules.
 */
static __noinline int mount_confined(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_task_scope *ts;
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	__u32 scope;

	scope = resolve_scope(t, &nk);
	if (scope == WARDEN_SCOPE_HOST)
		return 0;
	ts = bpf_task_storage_get(&warden_task_scope, t, 0, 0);
	if (!ts || !(ts->flags & WARDEN_TASK_EXECED))
		return 0;
	cfg = scope_cfg(&scope);
	if (!cfg)
		return 0;
	return (cfg->rules[WARDEN_CAT_FILE] | cfg->rules[WARDEN_CAT_PROCESS] | cfg->posture[WARDEN_CAT_FILE] |
		cfg->posture[WARDEN_CAT_PROCESS]) != 0;
}

/*
 * A mount whose source the hook cannot see resolved (a bind or move names it by a string the kernel
 * looks up after the hook, relative or through symlinks; overlay's lowerdir= likewise; a device; a
 * detached tree; a new root): it might show any protected path at (d, vmnt), so the scope's
 * strictest path rule decides, as for a path the walk could not finish; without one, the file
 * default posture. The alert names the target and, in arg[1], what the mount would do.
 */
static __noinline int enforce_unresolved_mount_op(__u64 op, struct dentry *d, struct vfsmount *vmnt)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_rule_slot best;
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	struct scratch *s;
	__u8 posture;
	__u32 scope;

	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg)
		return 0;
	best = cfg->strict[WARDEN_CAT_FILE];
	if (cfg->strict[WARDEN_CAT_PROCESS].action > best.action)
		best = cfg->strict[WARDEN_CAT_PROCESS];
	posture = cfg->posture[WARDEN_CAT_FILE];
	if (!best.action && !posture)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	/* a mount changes what is at its target: a readOnly rule refuses it (write) */
	begin_request(s, scope, &nk, WARDEN_CAT_FILE, op & 0xffff, 1);
	s->req.arg[1] = op >> 32;
	s->req.has_path = 1;
	resolve_path(t, s, &s->obj, d, vmnt);
	return decide(&best, posture);
}

/*
 * A mount at (d, vmnt), or of the mount there, of `kind` (enum warden_mount_kind). WARDEN_MOUNT_AT
 * (a tmpfs, proc ... mounted there; either end of a move_mount of an attached mount) is decided as a
 * write at the path: refused at or under a file rule that refuses writes (readOnly, Block), at or
 * under a Block process rule, and at a directory above any Block or Audit file or process rule
 * (mounting over /var/lib hides /var/lib/mysql behind the mount's own tree). Every other kind's
 * source is unresolved (enforce_unresolved_mount_op). Called from the hook's own frame: the path
 * decisions' call chains stay within the 512-byte stack.
 */
static __always_inline int enforce_mount(__u16 hook, __u32 kind, struct dentry *d, struct vfsmount *vmnt)
{
	int ret;

	if (!mount_confined())
		return 0;
	if (kind != WARDEN_MOUNT_AT)
		return enforce_unresolved_mount_op(hook | ((__u64)kind << 32), d, vmnt);
	ret = enforce_path_op(path_op(hook, WARDEN_CAT_FILE, 1), d, vmnt, 0);
	if (ret)
		return ret;
	ret = enforce_path_op(path_op(hook, WARDEN_CAT_PROCESS, 1) | OP_BLOCK_ONLY, d, vmnt, 0);
	if (ret)
		return ret;
	return enforce_ancestor_op(hook, d, vmnt);
}

static __always_inline int enforce_dentry(__u16 hook, __u32 category, struct dentry *d, int write)
{
	return enforce_dentry_op(path_op(hook, category, write), d);
}

/* Network and capability categories: the scratch's request holds up to `n` codes (req.codes); the
 * strongest matching rule in (scope, category, source), as slot_bits. */
static __always_inline __u64 match_codes(struct scratch *s, __u64 source, __u32 n)
{
	struct warden_rule_slot best = {};
	struct warden_rule_key key = {};
	struct warden_rule_node *node;
	int i;

	key.scope = s->req.scope;
	key.category = s->req.category;
	key.source = source;
	for (i = 0; i < 4; i++) {
		if (i >= n)
			break;
		key.hash = s->req.codes[i];
		node = bpf_map_lookup_elem(&warden_rules, &key);
		if (node && node->exact.action > best.action)
			best = node->exact;
	}
	return slot_bits(&best);
}

/* Decide the scratch's request on its `n` codes. `refuse_only`: a re-check of something already
 * decided once (a socket at send): only a refusal (a Block rule, or a Block posture with no Allow)
 * acts, and alerts; Audit stays silent. Global: see above. */
__noinline int warden_decide_codes(__u32 n, __u32 refuse_only)
{
	struct warden_rule_slot best = {}, found;
	struct scratch *s = get_scratch();
	__u8 rules, posture;
	__u64 source = 0;

	if (!s)
		return 0;
	rules = s->req.rules;
	posture = s->req.posture;
	if (rules & WARDEN_SCOPE_SOURCED)
		source = current_source(s);
	if (source) {
		found = bits_slot(match_codes(s, source, n));
		if (found.action)
			best = found;
	}
	if (!best.action && (rules & WARDEN_SCOPE_RULES)) {
		found = bits_slot(match_codes(s, 0, n));
		if (found.action)
			best = found;
	}
	if (refuse_only) {
		if (best.action == WARDEN_ACT_AUDIT || (best.action != WARDEN_ACT_BLOCK && posture != WARDEN_ACT_BLOCK))
			return 0;
	}
	return decide(&best, posture);
}

/* The codes and args (four each) of a network or capability operation: the scope, and if it has
 * rules or a posture for the category, warden_decide_codes. */
static __always_inline int enforce_codes(__u16 hook, __u32 category, __u64 *codes, int n, __u32 *args,
					 int refuse_only)
{
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	struct scratch *s;
	__u8 rules, posture;
	__u32 scope;

	scope = resolve_scope(bpf_get_current_task_btf(), &nk);
	cfg = scope_cfg(&scope);
	if (!cfg)
		return 0;
	rules = cfg->rules[category & 7];
	posture = cfg->posture[category & 7];
	if (!rules && !posture)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	begin_request(s, scope, &nk, category, hook, 0);
	s->req.rules = rules;
	s->req.posture = posture;
	s->req.arg[0] = args[0];
	s->req.arg[1] = args[1];
	s->req.arg[2] = args[2];
	s->req.arg[3] = args[3];
	s->req.codes[0] = codes[0];
	s->req.codes[1] = codes[1];
	s->req.codes[2] = codes[2];
	s->req.codes[3] = codes[3];
	return warden_decide_codes(n, refuse_only);
}

#endif /* WARDEN_ENFORCE_H */
