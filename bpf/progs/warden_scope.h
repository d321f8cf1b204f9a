/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_scope.h: which scope's rules apply to the current task.
 *
 * The scope belongs to the task, not to its namespaces (threat-model.md, "Scopes"): it is kept in
 * task storage (warden_task_scope) and copied to every child at task_alloc. Namespaces only find a
 * task's scope the first time: a registered container's (pid-ns-for-children, mnt-ns) pair, the
 * host's mount namespace, else the rules for every container. Once a task holds a container scope,
 * unshare, setns, chroot and user namespaces change nothing. A task holding the any-container scope
 * may still be found to belong to a registered container (its container was registered after the
 * task was first seen), never the host. The host scope is not recorded: a host process that enters
 * a container (runc exec, nsenter) takes that container's scope at its next hook.
 */
#ifndef WARDEN_SCOPE_H
#define WARDEN_SCOPE_H

#include "warden_maps.h"

static __always_inline __u32 resolve_scope(struct task_struct *t, struct warden_ns_key *nk)
{
	/* Direct (BTF, exception-protected) loads instead of probe-read helper calls: this runs on
	 * every hooked operation. A NULL nsproxy (an exiting task) reads as 0: any-container scope. */
	struct nsproxy *nsp = t->nsproxy;
	struct warden_task_scope *ts;
	__u32 zero = 0, *id, scope;
	__u64 *host;

	nk->mnt_ns = nsp->mnt_ns->ns.inum;
	nk->pid_ns = nsp->pid_ns_for_children->ns.inum;
	ts = bpf_task_storage_get(&warden_task_scope, t, 0, 0);
	if (ts && ts->scope >= WARDEN_SCOPE_FIRST_CONTAINER)
		return ts->scope;
	id = bpf_map_lookup_elem(&warden_ctrs, nk);
	if (id) {
		scope = *id;
	} else if (ts && ts->scope) {
		return ts->scope; /* any-container: never the host again */
	} else {
		host = bpf_map_lookup_elem(&warden_config, &zero);
		if (host && *host && *host == nk->mnt_ns)
			return WARDEN_SCOPE_HOST;
		/* Nobody registered this namespace: the rules for every container, never nothing. */
		scope = WARDEN_SCOPE_ANY_CONTAINER;
	}
	if (!ts)
		ts = bpf_task_storage_get(&warden_task_scope, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		ts->scope = scope;
	return scope;
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

/* Whether the task's cgroup v2 directory is a systemd service's ("*.service"): a container is in a
 * ".scope" (kata-agent's systemd cgroup driver) or in a cgroup its runtime names. */
static __always_inline bool in_service_cgroup(struct task_struct *t)
{
	static const char suffix[] = ".service";
	char name[128];
	long n, i;

	n = bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, name));
	if (n < (long)sizeof(suffix) || n > (long)sizeof(name))
		return false;
	n -= sizeof(suffix); /* where the suffix starts: the length without the NUL, minus 8 */
	for (i = 0; i < (long)sizeof(suffix) - 1; i++)
		if (name[(n + i) & (sizeof(name) - 1)] != suffix[i])
			return false;
	return true;
}

#endif /* WARDEN_SCOPE_H */
