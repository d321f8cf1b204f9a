/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_maps.h: the maps every warden BPF-LSM object shares. Each object declares them; the engine
 * makes the second and later objects reuse the pinned ones (bpf/kernel/pins.py), so there is one set
 * in the kernel. Key and value layouts: warden_types.h; sizes: bpf/kernel/maps.py.
 */
#ifndef WARDEN_MAPS_H
#define WARDEN_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "warden_types.h"
#include "warden_patterns_types.h"

/* Maps (pinned under /sys/fs/bpf/warden/ by the engine). */
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

/* The scope of each task that has one: set when a registered container's first process is seen
 * (by its namespaces, warden_ctrs) or by the engine at registration (through a pidfd), copied to
 * every child at task_alloc (scope_guard.bpf.c). A task's container scope never changes after. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct warden_task_scope);
} warden_task_scope SEC(".maps");

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

/* matchPatterns (warden_patterns.h, bpf.kernel.patterns): shared and pinned like the maps above, so
 * every object declares them, also those that never match a pattern (the engine reuses every pin). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct warden_pat_key);
	__type(value, struct warden_pat_head);
} warden_pat_heads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct warden_pat_key);
	__type(value, struct warden_pat_dfa);
} warden_pat_dfas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 17);
	__type(key, struct warden_pat_key);
	__type(value, struct warden_pat_verdict);
} warden_pat_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WARDEN_PAT_POOL_CHUNKS);
	__type(key, __u32);
	__type(value, struct warden_pat_chunk);
} warden_pat_pool SEC(".maps");

#endif /* WARDEN_MAPS_H */
