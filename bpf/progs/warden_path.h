/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_path.h: the per-CPU buffers a decision works in: the path of the object and of the
 * task's executable, as the walk (warden_walk.h) writes them, and how to read their prefixes.
 *
 * Loops run through bpf_loop. 6.1 verifies a loop body once, with the context as the first call
 * sees it, and drops code it never reached: so whatever a body carries from one call to the next
 * (the walk's position, the match cursor) lives in the per-CPU scratch, which the verifier treats
 * as any value, never in the context on the stack, where it would be a constant.
 */
#ifndef WARDEN_PATH_H
#define WARDEN_PATH_H

#include "warden_maps.h"

#define WALK_MAX 128    /* dentries followed from the leaf to the root */
#define PATH_RIGHT 1024 /* the walk writes the path leftwards from here (a power of two: offsets are masked) */
#define BUF_SIZE (PATH_RIGHT + WARDEN_PATH_MAX) /* any offset < PATH_RIGHT plus any read <= 256 stays inside */
#define MAX_COMPONENTS (WARDEN_MAX_DEPTH + 1) /* matched from the root: a 32-deep dir rule sees its children */
#define INLINE_WORDS 4 /* names of up to 31 bytes live inside the dentry: DNAME_INLINE_LEN >= 32 */

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

/*
 * What one decision is about. A program fills it in the scratch before it calls the global functions
 * that decide and alert (warden_enforce.h): they take scalars only and find the rest here (see there
 * why). Map memory, which the verifier treats as any value: a constant set on one path does not make
 * its states differ from another path's.
 */
struct warden_req {
	__u32 scope;
	__u32 category;
	__u16 hook;
	__u8 write;
	__u8 owner; /* the task's fsuid owns the object (worked out only when a rule asks) */
	__u32 arg[4];
	struct warden_ns_key nk;
	__u32 src_resolved; /* src holds the task's executable */
	__u32 has_path;     /* obj holds the object's path */
	__u8 rules;         /* the scope's configuration for the category: scope_cfg.rules[category] */
	__u8 posture;       /* scope_cfg.posture[category] */
	__u8 obj_dir;       /* the object is (or is created as) a directory */
	__u8 cacheable;     /* out: warden_decide_path's allow depends on nothing but the path and the scope */
	__u8 owner_asked;   /* the decision asked whether the task owns the object (owner) */
	__u8 alerted;       /* out: the request emitted an event */
	struct warden_rule_slot strict; /* scope_cfg.strict[category] */
	__u64 owner_inode;  /* the inode whose owner ownerOnly asks about (a name being created: its
			     * directory's), as a number */
	__u64 codes[4];     /* network and capability categories: the codes looked up */
};

/* A rule slot as one scalar (the return value of a global function): alert, action << 32, flags << 40. */
static __always_inline __u64 slot_bits(const struct warden_rule_slot *slot)
{
	return slot->alert | ((__u64)slot->action << 32) | ((__u64)slot->flags << 40);
}

static __always_inline struct warden_rule_slot bits_slot(__u64 bits)
{
	struct warden_rule_slot slot = {};

	slot.alert = (__u32)bits;
	slot.action = (bits >> 32) & 0xff;
	slot.flags = (bits >> 40) & 0xff;
	return slot;
}

struct scratch {
	struct warden_req req;
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

#endif /* WARDEN_PATH_H */
