/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_patterns_types.h: the layouts of the matchPatterns automata (bpf/kernel/patterns.py writes
 * exactly these bytes; tests/test_engine_maps.py checks sizes and offsets with the host compiler).
 *
 * A scope's patterns of one category compile into at most WARDEN_PAT_MAX_AUTOMATA minimal DFAs over
 * byte classes (bpf/policy/glob.py). Each automaton's transition table lives in a shared array pool
 * of 64-cell chunks: cell base + state * width + class is the next state (state 0 is dead), and the
 * last column (class = width - 1) the state's verdict number, 0 when it accepts nothing. A verdict
 * gives the outcome of each operation (index write | owner << 1), already resolved by the compiler
 * from every rule that matches there and their readOnly / ownerOnly flags.
 */
#ifndef WARDEN_PATTERNS_TYPES_H
#define WARDEN_PATTERNS_TYPES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define WARDEN_SCOPE_PATTERNS 4 /* scope_cfg.rules[category] bit: the scope has matchPatterns rules */
#define WARDEN_PAT_MAX_AUTOMATA 8 /* bpf.policy.glob.MAX_AUTOMATA */
#define WARDEN_PAT_CHUNK 64       /* cells per pool entry */
#define WARDEN_PAT_POOL_CHUNKS (1 << 16) /* 4M cells, 8 MiB */

/* One key type for the three pattern maps: a head has gen = automaton = verdict = 0; an automaton's
 * header its gen and number; a verdict record also its number (1-based). `gen` changes with the
 * content, so a new set of automata is written beside the old and switched to by its head. */
struct warden_pat_key {
	__u32 scope;
	__u32 gen;
	__u8 category;
	__u8 automaton;
	__u16 verdict;
};

struct warden_pat_head {
	__u32 gen;
	__u8 count; /* automata 0 .. count - 1 */
	__u8 pad[3];
};

struct warden_pat_dfa {
	__u32 base;    /* first cell in the pool, a multiple of WARDEN_PAT_CHUNK */
	__u16 nstates;
	__u16 width;   /* classes + 1 (the verdict column) */
	__u16 start;
	__u16 pad;
	__u32 pad2;
	__u8 classes[256];
};

struct warden_pat_verdict {
	__u32 alert[4];
	__u8 action[4]; /* enum warden_action; WARDEN_ACT_ALLOW = let it pass */
	__u8 needs_owner;
	__u8 pad[3];
};

struct warden_pat_chunk {
	__u16 cell[WARDEN_PAT_CHUNK];
};

#endif /* WARDEN_PATTERNS_TYPES_H */
