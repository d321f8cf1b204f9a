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

struct warden_req {
	__u32 scope;
	__u32 category;
	__u16 hook;
	__u8 write;
	__u8 owner;     /* the task's fsuid owns the object */
	__u32 arg[4];
	struct warden_ns_key nk;
	int src_resolved;
	int has_path;
};

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

static __always_inline void emit(struct scratch *s, struct warden_req *r, struct warden_rule_slot *slot,
				 int retval, __u8 flags)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct warden_event *ev;
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!r->src_resolved)
		resolve_exe(s);
	ev = bpf_ringbuf_reserve(&warden_events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(); /* enforcement already decided; only the alert is lost, and counted */
		return;
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
	ev->scope = r->scope;
	ev->mnt_ns = r->nk.mnt_ns;
	ev->pid_ns = r->nk.pid_ns;
	ev->alert = slot->alert;
	ev->retval = retval;
	ev->hook = r->hook;
	ev->category = r->category;
	ev->action = slot->action;
	ev->flags = flags;
	ev->arg[0] = r->arg[0];
	ev->arg[1] = r->arg[1];
	ev->arg[2] = r->arg[2];
	ev->arg[3] = r->arg[3];
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (r->has_path) {
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
}

/* Apply the matched rule (or the default posture): returns 0 or -EPERM, emitting the event. One
 * emit call site keeps the verifier's work (and the load time) small. */
static __always_inline int decide(struct scratch *s, struct warden_req *r, struct warden_rule_slot *best,
				  __u8 posture)
{
	struct warden_rule_slot slot = *best;
	__u8 f = best->flags, flags = 0;
	int ok = (!(f & WARDEN_RULE_READ_ONLY) || !r->write) && (!(f & WARDEN_RULE_OWNER_ONLY) || r->owner);
	int retval = 0;

	if (best->action == WARDEN_ACT_ALLOW && ok)
		return 0;
	if (best->action == WARDEN_ACT_BLOCK || best->action == WARDEN_ACT_AUDIT) {
		/* readOnly / ownerOnly narrow what the rule refuses: a read, or the owner, passes */
		if (f && ok)
			return 0;
	} else {
		/* No rule (or an Allow whose readOnly/ownerOnly the operation breaks): default posture. */
		if (!posture)
			return 0;
		slot.alert = 0;
		slot.action = posture;
		slot.flags = 0;
		flags = WARDEN_EV_DEFAULT_POSTURE;
	}
	if (slot.action == WARDEN_ACT_BLOCK)
		retval = -EPERM;
	emit(s, r, &slot, retval, flags);
	return retval;
}

static __always_inline __u8 is_owner(struct inode *inode)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 fsuid = BPF_CORE_READ(t, cred, fsuid.val);

	return inode && BPF_CORE_READ(inode, i_uid.val) == fsuid;
}

/* File and process categories: the object is the path (d, vmnt). A subprogram, not inlined, so
 * that each program holds one copy however many times it calls it; static, not global, so that
 * the verifier keeps the arguments' BTF types and the walk reads dentries with direct loads.
 * `op` packs the hook id (bits 0-15), the category (16-23) and whether the operation writes (24). */
static __noinline int enforce_path_op(__u64 op, struct dentry *d, struct vfsmount *vmnt, struct inode *inode)
{
	__u16 hook = op & 0xffff;
	__u32 category = (op >> 16) & 0xff;
	int write = (op >> 24) & 1;
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_rule_slot best = {}, strict;
	struct warden_scope_cfg *cfg;
	struct warden_req r = {};
	struct scratch *s;
	__u8 rules, posture;
	__u64 source = 0;

	r.scope = resolve_scope(t, &r.nk);
	cfg = scope_cfg(&r.scope);
	if (!cfg)
		return 0;
	rules = cfg->rules[category & 7];
	posture = cfg->posture[category & 7];
	if (!rules && !posture)
		return 0; /* the common case for an unrestricted scope: two lookups and out */
	strict = cfg->strict[category & 7];
	s = get_scratch();
	if (!s)
		return 0;
	r.category = category;
	r.hook = hook;
	r.write = write;
	r.arg[0] = write;
	r.has_path = 1;
	s->src.len = 0;
	resolve_path(t, s, &s->obj, d, vmnt);
	if (!inode)
		inode = d->d_inode; /* NULL for a name being created */
	if (inode && (inode->i_mode & S_IFMT) != S_IFDIR && s->obj.complete && s->obj.ncomp)
		s->obj.nprefix = s->obj.ncomp; /* not a directory: no "object/" prefix to look up */
	if (rules & WARDEN_SCOPE_SOURCED)
		source = current_source(s, &r.src_resolved);
	if (source)
		match_path(&s->obj, r.scope, category, source, &best);
	if (!best.action && (rules & WARDEN_SCOPE_RULES))
		match_path(&s->obj, r.scope, category, 0, &best);
	/* The walk never reached the root (too deep, too many mounts): a rule on a prefix it did not see
	 * might apply, so the scope's strictest rule does. Fail closed, never "only the rules on /". */
	if (!s->obj.reached && strict.action && strict.action >= best.action)
		best = strict;
	if (best.flags & WARDEN_RULE_OWNER_ONLY) {
		if (!inode) /* a name being created: its directory's owner */
			inode = d->d_parent->d_inode;
		r.owner = is_owner(inode);
	}
	if (rules & WARDEN_SCOPE_PATTERNS)
		warden_match_patterns(s, op | ((__u64)r.scope << 32), d, inode, &best);
	return decide(s, &r, &best, posture);
}

static __always_inline int enforce_path(__u16 hook, __u32 category, struct dentry *d, struct vfsmount *vmnt,
					int write, struct inode *inode)
{
	__u64 op = hook | ((__u64)category << 16) | ((__u64)(write ? 1 : 0) << 24);

	return enforce_path_op(op, d, vmnt, inode);
}

/* Network and capability categories: up to `n` codes, the strongest matching rule wins. */
static __always_inline void match_codes(__u32 scope, __u32 category, __u64 source, __u64 *codes, int n,
					struct warden_rule_slot *best)
{
	struct warden_rule_key key = {};
	struct warden_rule_node *node;
	int i;

	key.scope = scope;
	key.category = category;
	key.source = source;
	for (i = 0; i < 4; i++) {
		if (i >= n)
			break;
		key.hash = codes[i];
		node = bpf_map_lookup_elem(&warden_rules, &key);
		if (node && node->exact.action > best->action)
			*best = node->exact;
	}
}

static __always_inline int enforce_codes(__u16 hook, __u32 category, __u64 *codes, int n, __u32 *args)
{
	struct warden_rule_slot best = {};
	struct warden_scope_cfg *cfg;
	struct warden_req r = {};
	struct scratch *s;
	__u8 rules, posture;
	__u64 source = 0;

	r.scope = resolve_scope(bpf_get_current_task_btf(), &r.nk);
	cfg = scope_cfg(&r.scope);
	if (!cfg)
		return 0;
	rules = cfg->rules[category & 7];
	posture = cfg->posture[category & 7];
	if (!rules && !posture)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	r.category = category;
	r.hook = hook;
	r.arg[0] = args[0];
	r.arg[1] = args[1];
	r.arg[2] = args[2];
	r.arg[3] = args[3];
	s->src.len = 0;
	if (rules & WARDEN_SCOPE_SOURCED)
		source = current_source(s, &r.src_resolved);
	if (source)
		match_codes(r.scope, category, source, codes, n, &best);
	if (!best.action && (rules & WARDEN_SCOPE_RULES))
		match_codes(r.scope, category, 0, codes, n, &best);
	return decide(s, &r, &best, posture);
}

#endif /* WARDEN_ENFORCE_H */
