/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_match.h: prefix hashing and matching of a walked path against warden_rules, and the
 * fromSource lookup of the task's executable.
 *
 * Matching costs O(path depth), independent of the rule count: the walk from the object's dentry
 * to the root writes the path into a per-CPU buffer, leaf first, each name to the left of the last;
 * the words of the path are hashed once, in order, and each prefix ("/", "/var/", "/var/lib/", ...)
 * is looked up in one hash map, except prefixes the compiler marks as lying on the only way down to
 * the next rule (a node's `skip`); matching stops at the first prefix below which no rule lies.
 */
#ifndef WARDEN_MATCH_H
#define WARDEN_MATCH_H

#include "warden_walk.h"

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

/*
 * The most specific rule for the object's path (scratch obj) in (scope, category, source), as
 * slot_bits; its action is 0 when no rule matched. Global: verified once per program however many
 * times it is called (the fromSource rules, then the others), and its branches (which prefix
 * matched, which slot it had) never multiply the caller's states: what it returns is any value.
 */
__noinline __u64 warden_match_path(__u32 scope, __u32 category, __u64 source)
{
	struct scratch *s = get_scratch();
	struct warden_rule_node *node;
	struct match_ctx m = {};
	struct pathbuf *pb;
	__u32 len;

	if (!s)
		return 0;
	pb = &s->obj;
	m.pb = pb;
	m.key.source = source;
	m.key.scope = scope;
	m.key.category = category;
	m.last_below = -1;
	pb->next = 0;
	hash_words(pb);
	bpf_loop(MAX_COMPONENTS + 1, match_cb, &m, 0);
	/* The exact path, once the walk reached its parent directory with rules below it. */
	if (!pb->complete || !pb->ncomp || m.last_below + 1 < (__s32)pb->ncomp)
		return slot_bits(&m.best);
	len = pb->len; /* complete: the path without its trailing '/' */
	m.key.hash = prefix_hash(pb, len);
	node = bpf_map_lookup_elem(&warden_rules, &m.key);
	if (node && warden_same_path((const struct stored_path *)node->path, node->len, pb, len))
		take(&m.best, &node->exact);
	return slot_bits(&m.best);
}

/* The current task's executable into the scratch's pathbuf src; 0 when it has none (kernel threads).
 * Global: one copy of the walk per program for the fromSource lookup and the alert's source, in a
 * frame of its own (the deepest call chains, to the alert, stay within the 512-byte stack). */
__noinline int warden_resolve_exe(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct scratch *s = get_scratch();
	struct mm_struct *mm = t->mm;
	struct file *exe = mm ? mm->exe_file : 0;

	if (!s)
		return 0;
	s->req.src_resolved = 1;
	if (!exe) {
		s->src.len = 0;
		s->src.complete = 0;
		return 0;
	}
	resolve_path(t, s, &s->src, exe->f_path.dentry, exe->f_path.mnt);
	return 1;
}

/* The hash of the current task's executable if it is a known fromSource path, else 0. */
static __always_inline __u64 current_source(struct scratch *s)
{
	struct pathbuf *pb = &s->src;
	struct warden_source_val *val;
	__u32 len;
	__u64 hash;

	if (!warden_resolve_exe() || !pb->complete || !pb->ncomp)
		return 0;
	len = pb->len;
	hash_words(pb);
	hash = prefix_hash(pb, len);
	val = bpf_map_lookup_elem(&warden_sources, &hash);
	if (!val || !warden_same_path((const struct stored_path *)val->path, val->len, pb, len))
		return 0; /* not a fromSource program of any rule, or a forged hash collision */
	return hash;
}

#endif /* WARDEN_MATCH_H */
