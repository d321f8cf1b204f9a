/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_patterns.h: KubeArmor matchPatterns (AppArmor globs), decided in BPF-LSM.
 *
 * The compiler (bpf/policy/glob.py) turns a scope's patterns of one category into a few minimal
 * DFAs; the kernel walks the object's path through each once, byte by byte: O(path length), however
 * many patterns. A DFA stops at its dead state, so a pattern whose literal prefix the path leaves
 * costs the bytes up to the first difference. A scope without patterns pays one bit test in
 * enforce_path_op (WARDEN_SCOPE_PATTERNS). The outcome combines with the exact and directory rules'
 * by strength: block > audit > pass > nothing (then the default posture decides).
 *
 * Paths that did not fit the walk (more than WARDEN_PATH_MAX - 1 bytes or WARDEN_MAX_DEPTH deep) are
 * not matched against patterns: the scope's strictest rule decides them instead (enforce_path_body,
 * fail closed), and the event flag WARDEN_EV_TRUNCATED marks the alert.
 */
#ifndef WARDEN_PATTERNS_H
#define WARDEN_PATTERNS_H

#include "warden_path.h"
#include "warden_patterns_types.h"

/* Its maps (warden_pat_heads, _dfas, _verdicts, _pool) are shared, pinned maps: warden_maps.h. */

/*
 * Where one decision collects the automata's outcomes. Map memory, not the stack: what a loop body
 * merges there is a value the verifier does not track, so the branches of the merge do not multiply
 * the states it explores (per automaton, the four outcomes could each be merged or not).
 */
struct warden_pat_acc {
	struct warden_pat_key key; /* scope, gen and category set once; automaton per walk */
	__u32 len;                 /* bytes to walk: the path, plus its trailing '/' for a directory */
	__u32 alert[4];
	__u8 action[4];
	__u8 needs_owner;
	__u8 pad[3];
	/* the automaton being walked (dfa_step_cb): where it is, after how many bytes */
	__u32 base;
	__u32 width;
	__u32 state;
	__u32 pos;
	__u32 dead; /* it reached its dead state: no pattern of it can match */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct warden_pat_acc);
} warden_pat_acc_map SEC(".maps");

/*
 * The walk of one automaton over the first acc->len bytes of the object's path (the scratch's obj),
 * DFA_STEP_BYTES per call of dfa_step_cb: a bpf_loop body, which the verifier checks once, where a
 * plain loop over up to WARDEN_PATH_MAX bytes is checked byte by byte (some 10k instructions in every
 * program that decides paths). The automaton's position is in acc (map memory): see warden_path.h on
 * what a loop body carries. For a directory the walk includes the '/' after the last name, which the
 * path walk wrote there (warden_walk.h put_done).
 */
#define DFA_STEP_BYTES 8

struct dfa_walk {
	const struct warden_pat_dfa *dfa;
	struct warden_pat_acc *acc; /* the path is the scratch's obj (two pointers keep this frame small) */
};

/* The state after byte i of the path; 0 (dead) also when the table has no such cell. */
static __always_inline __u32 dfa_next(const struct warden_pat_dfa *dfa, struct warden_pat_acc *acc,
				      struct pathbuf *pb, __u32 i, __u32 state)
{
	struct warden_pat_chunk *chunk;
	__u32 cell, key;
	__u8 c;

	c = pb->buf[(pb->start & (PATH_RIGHT - 1)) + (i & (WARDEN_PATH_MAX - 1))];
	cell = acc->base + state * acc->width + dfa->classes[c];
	key = cell / WARDEN_PAT_CHUNK;
	chunk = bpf_map_lookup_elem(&warden_pat_pool, &key);
	if (!chunk)
		return 0;
	return chunk->cell[cell & (WARDEN_PAT_CHUNK - 1)];
}

static long dfa_step_cb(__u32 k, void *data)
{
	struct dfa_walk *w = data;
	struct warden_pat_acc *acc = w->acc;
	__u32 state = acc->state, i = acc->pos, len = acc->len, j;
	struct scratch *s = get_scratch();
	int dead = 0;

	if (!s)
		return 1;

#pragma unroll
	for (j = 0; j < DFA_STEP_BYTES; j++) {
		if (i >= len || dead)
			break;
		state = dfa_next(w->dfa, acc, &s->obj, i, state);
		dead = !state; /* no pattern of this automaton can match any more */
		i++;
	}
	acc->state = state;
	acc->pos = i;
	acc->dead = dead;
	return dead;
}

/* The automaton's verdict number for the path, 0 for none. */
static __always_inline int warden_dfa_walk(const struct warden_pat_dfa *dfa, struct warden_pat_acc *acc)
{
	struct warden_pat_chunk *chunk;
	struct dfa_walk w = {};
	__u32 cell, key, len = acc->len;

	if (!dfa || len > WARDEN_PATH_MAX)
		return 0;
	acc->base = dfa->base;
	acc->width = dfa->width;
	acc->state = dfa->start;
	acc->pos = 0;
	acc->dead = 0;
	w.dfa = dfa;
	w.acc = acc;
	bpf_loop((len + DFA_STEP_BYTES - 1) / DFA_STEP_BYTES, dfa_step_cb, &w, 0);
	if (acc->dead)
		return 0;
	cell = acc->base + acc->state * acc->width + acc->width - 1;
	key = cell / WARDEN_PAT_CHUNK;
	chunk = bpf_map_lookup_elem(&warden_pat_pool, &key);
	if (!chunk)
		return 0;
	return chunk->cell[cell & (WARDEN_PAT_CHUNK - 1)];
}

/* Walk automaton acc->key.automaton and merge its verdict into acc (the stronger outcome per
 * operation). A global function too: verified once, its branches never reach the caller's states. */
__noinline int warden_pat_one(struct warden_pat_acc *acc)
{
	struct warden_pat_verdict *rec;
	struct warden_pat_dfa *dfa;
	struct warden_pat_key key;
	int v;

	if (!acc)
		return 0;
	key = acc->key;
	key.verdict = 0;
	dfa = bpf_map_lookup_elem(&warden_pat_dfas, &key);
	if (!dfa)
		return 0;
	v = warden_dfa_walk(dfa, acc);
	if (v <= 0)
		return 0;
	key.verdict = v;
	rec = bpf_map_lookup_elem(&warden_pat_verdicts, &key);
	if (!rec)
		return 0;
	if (rec->action[0] > acc->action[0]) {
		acc->action[0] = rec->action[0];
		acc->alert[0] = rec->alert[0];
	}
	if (rec->action[1] > acc->action[1]) {
		acc->action[1] = rec->action[1];
		acc->alert[1] = rec->alert[1];
	}
	if (rec->action[2] > acc->action[2]) {
		acc->action[2] = rec->action[2];
		acc->alert[2] = rec->alert[2];
	}
	if (rec->action[3] > acc->action[3]) {
		acc->action[3] = rec->action[3];
		acc->alert[3] = rec->alert[3];
	}
	acc->needs_owner |= rec->needs_owner;
	return 1;
}

/* Whether the current task's fsuid owns the inode at `inode_num` (warden_req.owner_inode). */
static __always_inline __u8 owns_inode(__u64 inode_num)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct inode *inode = (struct inode *)inode_num;
	__u32 fsuid = BPF_CORE_READ(t, cred, fsuid.val);

	return inode && BPF_CORE_READ(inode, i_uid.val) == fsuid;
}

/* owns_inode for the scratch's request, recording that the decision asked: an allow that depends on the
 * owner is never remembered (warden_decide_path's req.cacheable). The only way a decision asks. */
static __always_inline __u8 ask_owner(struct scratch *s)
{
	s->req.owner_asked = 1;
	return owns_inode(s->req.owner_inode);
}

/*
 * Combine the patterns' outcome for this operation with the exact/directory rule in `best`: when a
 * pattern's is stronger, `best` becomes it, without flags (the compiler resolved them). `op` is
 * enforce_path_op's (hook, category, write) with the scope in bits 32-63; the object's path is the
 * scratch's obj, whether it is a directory and whose owner counts are in the scratch's request.
 */
static __always_inline void match_patterns(struct scratch *s, __u64 op, struct warden_rule_slot *best)
{
	struct warden_pat_head *head;
	struct warden_pat_acc *acc;
	struct pathbuf *pb = &s->obj;
	__u8 owner = 0, f, eff, act, write = (op >> 24) & 1;
	__u32 zero = 0, len, count, i, alert;
	int ok;

	acc = bpf_map_lookup_elem(&warden_pat_acc_map, &zero);
	if (!acc || !pb->complete)
		return;
	/* the head's key, in acc: a key on the stack would deepen the longest call chain's frames */
	acc->key.scope = op >> 32;
	acc->key.gen = 0;
	acc->key.category = (op >> 16) & 0xff;
	acc->key.automaton = 0;
	acc->key.verdict = 0;
	head = bpf_map_lookup_elem(&warden_pat_heads, &acc->key);
	if (!head)
		return;
	count = head->count;
	len = pb->len;
	if (s->req.obj_dir && len > 1) /* AppArmor's path of a directory ends with '/'; the root is "/" */
		len += 1;
	acc->key.gen = head->gen;
	acc->len = len;
	acc->action[0] = acc->action[1] = acc->action[2] = acc->action[3] = 0;
	acc->needs_owner = 0;
	for (i = 0; i < WARDEN_PAT_MAX_AUTOMATA; i++) {
		if (i >= count)
			break;
		acc->key.automaton = i;
		warden_pat_one(acc);
	}
	if (!(acc->action[0] | acc->action[1] | acc->action[2] | acc->action[3]))
		return;
	f = best->flags;
	if (acc->needs_owner || (f & WARDEN_RULE_OWNER_ONLY))
		owner = ask_owner(s);
	/* the outcome of this operation, index write | owner << 1 (constant offsets: clang drops a mask
	 * it can prove redundant, the verifier cannot) */
	if (owner) {
		act = write ? acc->action[3] : acc->action[2];
		alert = write ? acc->alert[3] : acc->alert[2];
	} else {
		act = write ? acc->action[1] : acc->action[0];
		alert = write ? acc->alert[1] : acc->alert[0];
	}
	/* what the exact rule gives this operation, as decide() would apply it */
	ok = (!(f & WARDEN_RULE_READ_ONLY) || !write) && (!(f & WARDEN_RULE_OWNER_ONLY) || owner);
	if (best->action == WARDEN_ACT_ALLOW)
		eff = ok ? WARDEN_ACT_ALLOW : WARDEN_ACT_NONE;
	else if (best->action == WARDEN_ACT_BLOCK || best->action == WARDEN_ACT_AUDIT)
		eff = (f && ok) ? WARDEN_ACT_ALLOW : best->action;
	else
		eff = WARDEN_ACT_NONE;
	if (act > eff) {
		best->alert = alert;
		best->action = act;
		best->flags = 0;
	}
}

/* match_patterns as a global function, on a slot as slot_bits: verified once per program, and its
 * frame stays off the call chain to the alert (the 512-byte stack). */
__noinline __u64 warden_match_patterns(__u64 op, __u64 best_bits)
{
	struct warden_rule_slot best = bits_slot(best_bits);
	struct scratch *s = get_scratch();

	if (!s)
		return best_bits;
	match_patterns(s, op, &best);
	return slot_bits(&best);
}

#endif /* WARDEN_PATTERNS_H */
