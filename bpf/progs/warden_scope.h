/* SPDX-License-Identifier: GPL-2.0 */
/*
 * warden_scope.h: which scope's rules apply to the current task: a registered container's (by its
 * pid and mount namespaces), the host's (PID 1's mount namespace), or else the rules for every
 * container.
 */
#ifndef WARDEN_SCOPE_H
#define WARDEN_SCOPE_H

#include "warden_maps.h"

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

#endif /* WARDEN_SCOPE_H */
