/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden.h: what every warden BPF-LSM object shares: the maps (each object declares them; the
 * engine makes the second and later objects reuse the pinned ones, so there is one set in the
 * kernel), scope resolution, the path walk, prefix hashing and matching, decisions and events.
 *
 * Matching costs O(path depth), independent of the rule count: the walk from the object's dentry
 * to the root writes the path into a per-CPU buffer, leaf first, each name to the left of the last;
 * the words of the path are hashed once, in order, and each prefix ("/", "/var/", "/var/lib/", ...)
 * is looked up in one hash map, except prefixes the compiler marks as lying on the only way down to
 * the next rule (a node's `skip`); matching stops at the first prefix below which no rule lies.
 *
 * Loops run through bpf_loop. 6.1 verifies a loop body once, with the context as the first call
 * sees it, and drops code it never reached: so whatever a body carries from one call to the next
 * (the walk's position, the match cursor) lives in the per-CPU scratch, which the verifier treats
 * as any value, never in the context on the stack, where it would be a constant.
 */
#ifndef WARDEN_H
#define WARDEN_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "warden_types.h"

#define EPERM 1
#define FMODE_WRITE 0x2
#define S_IFMT 00170000
#define S_IFDIR 0040000

#define NAME_MAX 255
#define WALK_MAX 128    /* dentries followed from the leaf to the root */
#define PATH_RIGHT 1024 /* the walk writes the path leftwards from here (a power of two: offsets are masked) */
#define BUF_SIZE (PATH_RIGHT + WARDEN_PATH_MAX) /* any offset < PATH_RIGHT plus any read <= 256 stays inside */
#define MAX_COMPONENTS (WARDEN_MAX_DEPTH + 1) /* matched from the root: a 32-deep dir rule sees its children */
#define INLINE_WORDS 4 /* names of up to 31 bytes live inside the dentry: DNAME_INLINE_LEN >= 32 */

/* Maps (pinned under /sys/fs/bpf/warden/ by the engine). Sizes: see bpf/maps.py. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory follows the rule count */
	__uint(max_entries, 1 << 19);
	__type(key, struct warden_rule_key);
	__type(value, struct warden_rule_node);
} warden_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, struct warden_source_val);
} warden_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct warden_scope_cfg);
} warden_scopes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct warden_ns_key);
	__type(value, __u32);
} warden_ctrs SEC(".maps");

/* [0] = inode number of the host mount namespace (set before any link is attached). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} warden_config SEC(".maps");

/* What is loaded, in the kernel itself: object and RuleSet digests by name. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct warden_meta_key);
	__type(value, struct warden_meta_val);
} warden_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} warden_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} warden_drops SEC(".maps");

/*
 * The path of an object, written by the walk from the leaf to the root: each component goes to the
 * left of the one before, so the path ends at PATH_RIGHT and starts at `start`, and no second pass
 * copies it. Prefix k ("/" for k = 0, then the root and k components, each followed by '/') is
 * buf[start, start + prefix_end(pb, k)).
 */
struct pathbuf {
	char buf[BUF_SIZE];
	__u16 cend[WALK_MAX]; /* cend[n]: where walked component n (leaf first) ends, past its '/' */
	__u32 start;          /* buf[start] is the path's leading '/' */
	__u32 pos;            /* while walking: where the next component's trailing '/' goes */
	__u32 walked;         /* components walked */
	__u32 valid_from;     /* components walked before this one were dropped: see make_room */
	__u32 reached;        /* the walk reached the root */
	__u32 nprefix;        /* prefixes 0 .. nprefix - 1 may be looked up */
	__u32 ncomp;          /* components known from the root: prefix ncomp is the longest */
	__u32 complete;       /* the whole path fit: prefix ncomp is the object itself plus "/" */
	__u32 len;            /* bytes of the path shown in events */
	__u32 next;           /* match_path's cursor: the next prefix worth a lookup */
	__u64 wh[WARDEN_PATH_MAX / 8]; /* wh[j]: the hash after words 0..j (see hash_words) */
};

struct scratch {
	struct pathbuf obj;
	struct pathbuf src;
	__u64 name[1 + INLINE_WORDS]; /* a short name, after a word of slack: see put_inline_name */
	__u64 number;                 /* see as_number */
};

/* Per CPU, not pinned: each object has its own. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} warden_scratch SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&warden_scratch, &zero);
}

/* Word i of the path (unaligned: x86 BPF allows it). Reads stay inside buf: start < PATH_RIGHT and
 * i < WARDEN_PATH_MAX / 8. */
static __always_inline __u64 buf_word(struct pathbuf *pb, __u32 i)
{
	return *(__u64 *)(pb->buf + (pb->start & (PATH_RIGHT - 1)) + ((i << 3) & (WARDEN_PATH_MAX - 8)));
}

/* The length of prefix k, k <= ncomp. */
static __always_inline __u32 prefix_end(struct pathbuf *pb, __u32 k)
{
	if (!k)
		return 1;
	return pb->cend[(pb->walked - k) & (WALK_MAX - 1)] - pb->start;
}

/* A kernel pointer as a plain number: what went through map memory is a scalar to the verifier.
 * The far walk keeps its whole state as numbers, so that its verified state never changes kind. */
static __always_inline __u64 as_number(struct scratch *s, const void *p)
{
	s->number = (__u64)p;
	return *(volatile __u64 *)&s->number;
}

/* ---- scopes ------------------------------------------------------------------------------- */

static __always_inline __u32 resolve_scope(struct task_struct *t, struct warden_ns_key *nk)
{
	/* Direct (BTF, exception-protected) loads instead of probe-read helper calls: this runs on
	 * every hooked operation. A NULL nsproxy (an exiting task) reads as 0: any-container scope. */
	struct nsproxy *nsp = t->nsproxy;
	__u32 zero = 0, *id;
	__u64 *host;

	nk->mnt_ns = nsp->mnt_ns->ns.inum;
	nk->pid_ns = nsp->pid_ns_for_children->ns.inum;
	id = bpf_map_lookup_elem(&warden_ctrs, nk);
	if (id)
		return *id;
	host = bpf_map_lookup_elem(&warden_config, &zero);
	if (host && *host && *host == nk->mnt_ns)
		return WARDEN_SCOPE_HOST;
	/* Nobody registered this namespace: the rules for every container, never nothing. */
	return WARDEN_SCOPE_ANY_CONTAINER;
}

static __always_inline struct warden_scope_cfg *scope_cfg(__u32 *scope)
{
	struct warden_scope_cfg *cfg = bpf_map_lookup_elem(&warden_scopes, scope);

	if (!cfg) {
		/* A mapped scope always has its configuration written first; fail towards the
		 * any-container rules rather than towards nothing. */
		*scope = WARDEN_SCOPE_ANY_CONTAINER;
		cfg = bpf_map_lookup_elem(&warden_scopes, scope);
	}
	return cfg;
}

/* ---- path walk ------------------------------------------------------------------------------ */

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
	struct dentry *root_d;
	struct vfsmount *vmnt;
	struct vfsmount *root_vmnt;
	__u32 crossed; /* stopped at the root of a mount that is not the task's root */
};

static long near_walk_cb(__u32 i, void *data)
{
	struct near_walk *w = data;
	struct dentry *d = w->d;
	struct dentry *parent;

	if (!d || (d == w->root_d && w->vmnt == w->root_vmnt)) {
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

struct far_walk {
	struct pathbuf *pb;
	__u64 d, vmnt, mnt, mnt_root, root_d, root_vmnt;
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

	if (!d || (w->d == w->root_d && w->vmnt == w->root_vmnt)) {
		pb->reached = 1;
		return 1;
	}
	if (pb->walked >= WALK_MAX)
		return 1;
	if (w->d == w->mnt_root) {
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (!mnt_parent || mnt_parent == mnt) {
			pb->reached = 1; /* the root of the mount tree */
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

/* Write the path of (d, vmnt) into `pb`, relative to the task's root. */
static __always_inline void resolve_path(struct task_struct *t, struct scratch *s, struct pathbuf *pb,
					 struct dentry *d, struct vfsmount *vmnt)
{
	struct near_walk w = {};
	struct far_walk fw = {};
	__u32 walked, start;

	w.s = s;
	w.pb = pb;
	w.d = d;
	w.vmnt = vmnt;
	w.mnt_root = vmnt->mnt_root;
	w.root_d = t->fs->root.dentry;
	w.root_vmnt = t->fs->root.mnt;
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
		fw.root_d = as_number(s, w.root_d);
		fw.root_vmnt = as_number(s, w.root_vmnt);
		bpf_loop(WALK_MAX, far_walk_cb, &fw, 0);
	}
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

/* ---- hashing and matching ------------------------------------------------------------------- */

/*
 * Comparing a path with a stored one is a global function: the verifier checks a global function
 * once per program, with its arguments as declared, instead of at every call site and in every
 * iteration of the loops around it (a tenth of the instructions to verify, and of the load time).
 * At run time it is a plain BPF-to-BPF call, made only on a hash hit.
 */
struct stored_path {
	char bytes[WARDEN_PATH_MAX];
};

/* The hash of every prefix shares its words with the longer ones: hash each word of the longest
 * prefix once, in order, so that any prefix's hash is its last full word's entry plus its tail. */
static long hash_words_cb(__u32 j, void *data)
{
	struct pathbuf *pb = *(struct pathbuf **)data;
	__u64 h = j ? pb->wh[(j - 1) & (WARDEN_PATH_MAX / 8 - 1)] : WARDEN_HASH_SEED;

	pb->wh[j & (WARDEN_PATH_MAX / 8 - 1)] = warden_mix(h, buf_word(pb, j));
	return 0;
}

/* Fill pb->wh for the prefixes 0..ncomp (at most WARDEN_PATH_MAX bytes: see resolve_path). */
static __always_inline void hash_words(struct pathbuf *pb)
{
	__u32 words = prefix_end(pb, pb->ncomp) >> 3;

	bpf_loop(words < WARDEN_PATH_MAX / 8 ? words : WARDEN_PATH_MAX / 8, hash_words_cb, &pb, 0);
}

/* The hash of the path's first `len` bytes, len <= prefix_end(pb, ncomp), after hash_words. */
static __always_inline __u64 prefix_hash(struct pathbuf *pb, __u32 len)
{
	__u32 nw = len >> 3;
	__u64 h = nw ? pb->wh[(nw - 1) & (WARDEN_PATH_MAX / 8 - 1)] : WARDEN_HASH_SEED;

	if (len & 7)
		h = warden_mix(h, buf_word(pb, nw) & warden_tail_mask(len & 7));
	return warden_mix(h, len);
}

/* Whether `stored` holds `stored_len` bytes equal to pb->buf[0..len). */
__noinline int warden_same_path(const struct stored_path *stored, __u32 stored_len, struct pathbuf *pb, __u32 len)
{
	__u32 nw = len >> 3;
	__u64 a;
	int j;

	if (!stored || !pb || stored_len != len || len > WARDEN_PATH_MAX - 1)
		return 0;
	for (j = 0; j < WARDEN_PATH_MAX / 8; j++) {
		if (j >= nw)
			break;
		if (*(__u64 *)(stored->bytes + j * 8) != buf_word(pb, j))
			return 0;
	}
	if (len & 7) {
		a = *(__u64 *)(stored->bytes + ((nw << 3) & (WARDEN_PATH_MAX - 8)));
		if ((a ^ buf_word(pb, nw)) & warden_tail_mask(len & 7))
			return 0;
	}
	return 1;
}

struct match_ctx {
	struct pathbuf *pb;
	struct warden_rule_key key; /* scope, category and source set once; hash per prefix */
	__s32 last_below; /* deepest prefix found, verified, with rules below it; -1 none */
	struct warden_rule_slot best;
};

static __always_inline void take(struct warden_rule_slot *best, struct warden_rule_slot *slot)
{
	if (slot->action)
		*best = *slot;
}

/* One lookup per call: prefix pb->next. The cursor is in map memory, not in `m`: 6.1 checks a
 * bpf_loop body once, with the context as the first call sees it, so a cursor kept on the stack
 * would be the constant 0 to the verifier, which would drop the code for any other prefix. */
static long match_cb(__u32 i, void *data)
{
	struct match_ctx *m = data;
	struct pathbuf *pb = m->pb;
	struct warden_rule_node *node;
	__u32 k = pb->next, len;

	if (k >= pb->nprefix)
		return 1;
	len = prefix_end(pb, k);
	m->key.hash = prefix_hash(pb, len);
	node = bpf_map_lookup_elem(&warden_rules, &m->key);
	if (!node || !warden_same_path((const struct stored_path *)node->path, node->len, pb, len))
		return 1;
	/* Deeper prefixes come later and override: the most specific rule wins. A directory rule
	 * covers its direct children and the directory itself (prefix ncomp = the object + "/", there
	 * only when the object may be a directory). */
	take(&m->best, &node->recursive);
	if (pb->complete && (k + 1 == pb->ncomp || k == pb->ncomp))
		take(&m->best, &node->dir);
	if (!node->below)
		return 1;
	m->last_below = k;
	/* prefixes on the only way down to the next rule, with no rule of their own, are jumped */
	pb->next = k + (node->skip ? node->skip : 1);
	return 0;
}

/* Find the most specific rule for the path in `pb` in (scope, category, source). */
static __always_inline void match_path(struct pathbuf *pb, __u32 scope, __u32 category, __u64 source,
				       struct warden_rule_slot *best)
{
	struct match_ctx m = {};
	struct warden_rule_node *node;
	__u32 len;

	m.pb = pb;
	m.key.source = source;
	m.key.scope = scope;
	m.key.category = category;
	m.last_below = -1;
	pb->next = 0;
	hash_words(pb);
	bpf_loop(MAX_COMPONENTS + 1, match_cb, &m, 0);
	if (m.best.action)
		*best = m.best;
	/* The exact path, once the walk reached its parent directory with rules below it. */
	if (!pb->complete || !pb->ncomp || m.last_below + 1 < (__s32)pb->ncomp)
		return;
	len = pb->len; /* complete: the path without its trailing '/' */
	m.key.hash = prefix_hash(pb, len);
	node = bpf_map_lookup_elem(&warden_rules, &m.key);
	if (node && warden_same_path((const struct stored_path *)node->path, node->len, pb, len))
		take(best, &node->exact);
}

/* The current task's executable into pathbuf src; 0 when it has none (kernel threads). */
static __always_inline int resolve_exe(struct scratch *s)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct mm_struct *mm = t->mm;
	struct file *exe = mm ? mm->exe_file : 0;

	if (!exe) {
		s->src.len = 0;
		s->src.complete = 0;
		return 0;
	}
	resolve_path(t, s, &s->src, exe->f_path.dentry, exe->f_path.mnt);
	return 1;
}

/* The hash of the current task's executable if it is a known fromSource path, else 0. */
static __always_inline __u64 current_source(struct scratch *s, int *resolved)
{
	struct pathbuf *pb = &s->src;
	struct warden_source_val *val;
	__u32 len;
	__u64 hash;

	*resolved = 1;
	if (!resolve_exe(s) || !pb->complete || !pb->ncomp)
		return 0;
	len = pb->len;
	hash_words(pb);
	hash = prefix_hash(pb, len);
	val = bpf_map_lookup_elem(&warden_sources, &hash);
	if (!val || !warden_same_path((const struct stored_path *)val->path, val->len, pb, len))
		return 0; /* not a fromSource program of any rule, or a forged hash collision */
	return hash;
}

/* ---- decisions and events ------------------------------------------------------------------- */

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
	struct warden_rule_slot best = {};
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
	if (best.flags & WARDEN_RULE_OWNER_ONLY) {
		if (!inode) /* a name being created: its directory's owner */
			inode = d->d_parent->d_inode;
		r.owner = is_owner(inode);
	}
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

#endif /* WARDEN_H */
