/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_walk.h: the path walk, from an object's dentry to the root of its mount tree (never the
 * task's root: chroot changes no path), writing each name in place into a path buffer (warden_path.h).
 */
#ifndef WARDEN_WALK_H
#define WARDEN_WALK_H

#include "warden_path.h"

#define NAME_MAX 255

/*
 * The walk goes leaf to root and writes each dentry's name in place. Up to the first mount root it
 * holds typed pointers and reads fields with direct loads (no helper call: this is the hot path of
 * every open). A mount crossing reads struct mount, which is reachable only by offset from the
 * vfsmount (a number to the verifier); from there on, the far walk reads through
 * bpf_probe_read_kernel. Every bound the later steps rely on lives in the per-CPU scratch, not in
 * loop state, so no decision depends on how many iterations of a loop the verifier assumed.
 */

/* Where a dentry keeps a short name: d_iname up to 6.13, d_shortname after (CO-RE picks). */
struct dentry___iname {
	unsigned char d_iname[32];
} __attribute__((preserve_access_index));

struct dentry___shortname {
	struct {
		unsigned char string[40];
	} d_shortname;
} __attribute__((preserve_access_index));

/*
 * Where the next component, `len` bytes, ends (its trailing '/' goes there); 0 when it cannot be
 * part of a path (an empty name). A path too long for the buffer keeps its root side, which is all
 * that can match (rules are at most 255 bytes): what was written is dropped and writing starts
 * again at the right end. The margin leaves room for the word stores of put_inline_name.
 */
static __always_inline __u32 make_room(struct pathbuf *pb, __u32 len)
{
	__u32 pos = pb->pos;

	if (len == 0 || len > NAME_MAX) {
		pb->walked += 1;
		pb->valid_from = pb->walked;
		pb->pos = PATH_RIGHT - 1;
		return 0;
	}
	if (pos < len + 1 + INLINE_WORDS * 8) {
		pb->valid_from = pb->walked;
		pos = PATH_RIGHT - 1;
	}
	return pos;
}

/* The component that ends at `pos` is written: its '/', its end, and room for the next one. */
static __always_inline void put_done(struct pathbuf *pb, __u32 pos, __u32 len)
{
	__u32 n = pb->walked;

	pb->buf[pos & (PATH_RIGHT - 1)] = '/';
	pb->cend[n & (WALK_MAX - 1)] = pos + 1;
	pb->pos = pos - len - 1;
	pb->walked = n + 1;
}

static __always_inline void put_far_name(struct pathbuf *pb, const unsigned char *name, __u32 len)
{
	__u32 pos = make_room(pb, len);

	if (!pos)
		return;
	bpf_probe_read_kernel(pb->buf + ((pos - len) & (PATH_RIGHT - 1)), len & NAME_MAX, name);
	put_done(pb, pos, len);
}

/*
 * A name stored inside the dentry (most are; under 32 bytes) is copied with direct loads, then
 * stored as whole words that end where the name ends, right to left. The bytes a word puts before
 * the name are overwritten by the parent's name and '/' (written next), or lie before the path.
 */
static __always_inline void put_inline_name(struct scratch *s, struct pathbuf *pb, const __u64 *inl, __u32 len)
{
	__u32 pos = make_room(pb, len);
	char *from = (char *)s->name; /* the name is at from[8, 8 + len) */

	if (!pos)
		return;
	s->name[1] = inl[0];
	if (len > 8)
		s->name[2] = inl[1];
	if (len > 16)
		s->name[3] = inl[2];
	if (len > 24)
		s->name[4] = inl[3];
	*(__u64 *)(pb->buf + ((pos - 8) & (PATH_RIGHT - 1))) = *(__u64 *)(from + (len & 31));
	if (len > 8)
		*(__u64 *)(pb->buf + ((pos - 16) & (PATH_RIGHT - 1))) = *(__u64 *)(from + ((len - 8) & 31));
	if (len > 16)
		*(__u64 *)(pb->buf + ((pos - 24) & (PATH_RIGHT - 1))) = *(__u64 *)(from + ((len - 16) & 31));
	if (len > 24)
		*(__u64 *)(pb->buf + ((pos - 32) & (PATH_RIGHT - 1))) = *(__u64 *)(from + ((len - 24) & 31));
	put_done(pb, pos, len);
}

static __always_inline void put_near_name(struct scratch *s, struct pathbuf *pb, struct dentry *d)
{
	const unsigned char *name = d->d_name.name;
	const __u64 *inl;
	__u32 len = d->d_name.len;

	if (bpf_core_field_exists(struct dentry___iname, d_iname))
		inl = (const __u64 *)((struct dentry___iname *)d)->d_iname;
	else
		inl = (const __u64 *)((struct dentry___shortname *)d)->d_shortname.string;
	if ((const void *)name == (const void *)inl && len < INLINE_WORDS * 8)
		put_inline_name(s, pb, inl, len);
	else
		put_far_name(pb, name, len);
}

struct near_walk {
	struct scratch *s;
	struct pathbuf *pb;
	struct dentry *d;
	struct dentry *mnt_root;
	struct vfsmount *vmnt;
	__u32 crossed; /* stopped at the root of a mount: the far walk goes on to the mount tree's root */
};

static long near_walk_cb(__u32 i, void *data)
{
	struct near_walk *w = data;
	struct dentry *d = w->d;
	struct dentry *parent;

	if (!d) {
		w->pb->reached = 1;
		return 1;
	}
	if (d == w->mnt_root) {
		w->crossed = 1;
		return 1;
	}
	parent = d->d_parent;
	if (!parent || parent == d) {
		w->pb->reached = 1; /* root of a filesystem that is not mounted (pipes, sockets) */
		return 1;
	}
	put_near_name(w->s, w->pb, d);
	w->d = parent;
	return 0;
}

/*
 * Whether a mount belongs to no mount namespace a process lives in: a detached tree
 * (open_tree(OPEN_TREE_CLONE), fsmount) is in an anonymous namespace (6.1: is_anon_ns(), seq 0),
 * and a lazily unmounted one in none. Its paths start at its own root, so showing protected data
 * there is a second path no rule names: a walk that ends in one is incomplete (fail closed).
 * Kernel-internal mounts (MNT_NS_INTERNAL, an error pointer) are not detached: pipes, sockets and
 * memfds live there. A kernel without 6.1's `seq` is checked for NULL only.
 */
struct mnt_namespace___seq {
	__u64 seq;
} __attribute__((preserve_access_index));

#define MNT_NS_INTERNAL ((__u64)-22) /* ERR_PTR(-EINVAL) */

static __always_inline int ns_detached(struct mnt_namespace___seq *ns)
{
	if (!ns)
		return 1;
	if ((__u64)ns == MNT_NS_INTERNAL)
		return 0;
	if (bpf_core_field_exists(struct mnt_namespace___seq, seq))
		return BPF_CORE_READ(ns, seq) == 0;
	return 0;
}

/* Whether the current task runs a container's code (WARDEN_TASK_EXECED, set by exec_guard). */
static __always_inline int runs_container_code(void)
{
	struct warden_task_scope *ts = bpf_task_storage_get(&warden_task_scope, bpf_get_current_task_btf(), 0, 0);

	return ts && (ts->flags & WARDEN_TASK_EXECED);
}

static __always_inline int mount_detached(struct mount *mnt)
{
	return ns_detached((struct mnt_namespace___seq *)BPF_CORE_READ(mnt, mnt_ns));
}

/* The same for a vfsmount handed to a hook (its struct mount lies around it: read at a positive offset). */
static __always_inline int vfsmount_detached(struct vfsmount *vmnt)
{
	struct mnt_namespace___seq *ns = 0;

	bpf_probe_read_kernel(&ns, sizeof(ns), (void *)vmnt + (bpf_core_field_offset(struct mount, mnt_ns) -
								  bpf_core_field_offset(struct mount, mnt)));
	return ns_detached(ns);
}

/* Whether a vfsmount handed to a hook is kernel-internal (kern_mount: pipes, sockets, memfds). */
static __always_inline int vfsmount_internal(struct vfsmount *vmnt)
{
	__u64 ns = 0;

	bpf_probe_read_kernel(&ns, sizeof(ns), (void *)vmnt + (bpf_core_field_offset(struct mount, mnt_ns) -
							       bpf_core_field_offset(struct mount, mnt)));
	return ns == MNT_NS_INTERNAL;
}

struct far_walk {
	struct pathbuf *pb;
	__u64 d, vmnt, mnt, mnt_root;
};

static long far_walk_cb(__u32 i, void *data)
{
	struct far_walk *w = data;
	struct pathbuf *pb = w->pb;
	struct dentry *d = (struct dentry *)w->d;
	struct mount *mnt = (struct mount *)w->mnt;
	struct vfsmount *vmnt;
	struct mount *mnt_parent;
	struct dentry *parent;
	struct qstr q = {};

	if (!d) {
		pb->reached = 1;
		return 1;
	}
	if (pb->walked >= WALK_MAX)
		return 1;
	if (w->d == w->mnt_root) {
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (!mnt_parent || mnt_parent == mnt) {
			/* the root of the mount tree, unless detached and the task runs a container's code:
			 * runc and crun re-exec themselves through a lazily unmounted bind of their binary */
			pb->reached = !mount_detached(mnt) || !runs_container_code();
			return 1;
		}
		w->d = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = (__u64)mnt_parent;
		vmnt = (struct vfsmount *)((__u64)mnt_parent + bpf_core_field_offset(struct mount, mnt));
		w->vmnt = (__u64)vmnt;
		w->mnt_root = (__u64)BPF_CORE_READ(vmnt, mnt_root); /* a local: CO-RE relocates kernel types only */
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d) {
		pb->reached = 1;
		return 1;
	}
	BPF_CORE_READ_INTO(&q, d, d_name); /* length and name in one read */
	put_far_name(pb, q.name, q.len);
	w->d = (__u64)parent;
	return 0;
}

/* How many components from the root fit a rule: at most MAX_COMPONENTS, ending within WARDEN_PATH_MAX. */
static long fit_cb(__u32 i, void *data)
{
	struct pathbuf *pb = *(struct pathbuf **)data;
	__u32 k = i + 1;

	if (k > pb->walked - pb->valid_from || prefix_end(pb, k) > WARDEN_PATH_MAX)
		return 1;
	pb->ncomp = k;
	return 0;
}

/* What the walk wrote -> the path's start, how many components match, and the length shown. */
static __always_inline void finish_walk(struct pathbuf *pb)
{
	__u32 walked, start;

	start = pb->pos & (PATH_RIGHT - 1);
	pb->buf[start] = '/';
	pb->start = start;
	walked = pb->walked;
	if (!pb->reached) {
		pb->ncomp = 0; /* deeper than we follow: the root side is unknown */
		pb->complete = 0;
	} else if (!pb->valid_from && walked <= MAX_COMPONENTS && PATH_RIGHT - start <= WARDEN_PATH_MAX) {
		pb->ncomp = walked;
		pb->complete = 1;
	} else {
		pb->ncomp = 0;
		pb->complete = 0;
		bpf_loop(MAX_COMPONENTS, fit_cb, &pb, 0);
	}
	pb->nprefix = pb->ncomp + 1;
	/* The path shown in events: "/a/b" (no trailing slash) or "/" */
	if (pb->ncomp && pb->complete)
		pb->len = PATH_RIGHT - start - 1;
	else
		pb->len = prefix_end(pb, pb->ncomp);
}

/* Write the path of (d, vmnt) into `pb`, from the root of its mount tree: the mount namespace's root
 * (a container's root file system as its runtime pivoted into it); a detached tree's root is not
 * reached (see mount_detached).
 * The task's own root (chroot) is not a stop: a chrooted process sees the paths it saw before.
 * `pb->reached` says whether the walk got there within WALK_MAX steps (else the path is incomplete). */
static __always_inline void resolve_path(struct task_struct *t, struct scratch *s, struct pathbuf *pb,
					 struct dentry *d, struct vfsmount *vmnt)
{
	struct near_walk w = {};
	struct far_walk fw = {};

	w.s = s;
	w.pb = pb;
	w.d = d;
	w.vmnt = vmnt;
	w.mnt_root = vmnt->mnt_root;
	pb->pos = PATH_RIGHT - 1;
	pb->walked = 0;
	pb->valid_from = 0;
	pb->reached = 0;
	bpf_loop(WALK_MAX, near_walk_cb, &w, 0);
	if (w.crossed) {
		fw.pb = pb;
		fw.d = as_number(s, w.d);
		fw.vmnt = as_number(s, vmnt);
		fw.mnt = fw.vmnt - bpf_core_field_offset(struct mount, mnt);
		fw.mnt_root = fw.d;
		bpf_loop(WALK_MAX, far_walk_cb, &fw, 0);
	}
	finish_walk(pb);
}

/*
 * The same for a mount known only as a number (found by a search of the superblock's mounts, not
 * handed to the hook as a typed pointer): the far walk from the leaf, every read a probe read.
 */
static __always_inline void resolve_path_far(struct task_struct *t, struct scratch *s, struct pathbuf *pb,
					     __u64 d, __u64 vmnt, __u64 mnt_root)
{
	struct far_walk fw = {};

	pb->pos = PATH_RIGHT - 1;
	pb->walked = 0;
	pb->valid_from = 0;
	pb->reached = 0;
	fw.pb = pb;
	fw.d = d;
	fw.vmnt = vmnt;
	fw.mnt = vmnt - bpf_core_field_offset(struct mount, mnt);
	fw.mnt_root = mnt_root;
	bpf_loop(WALK_MAX, far_walk_cb, &fw, 0);
	finish_walk(pb);
}

#endif /* WARDEN_WALK_H */
