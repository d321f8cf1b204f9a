// SPDX-License-Identifier: GPL-2.0
/*
 * scope_guard: a task's scope is its parent's. At task_alloc the child gets a copy of the parent's
 * warden_task_scope, so no fork, clone or vfork leaves a container's rules, whatever namespaces the
 * child is created in (unshare -p, clone(CLONE_NEWNS), setns before the fork). A child that would
 * lose its parent's scope (no memory for the copy) is not created.
 */
#include "warden_scope.h"

char LICENSE[] SEC("license") = "GPL";

#define ENOMEM 12

SEC("lsm/task_alloc")
int BPF_PROG(warden_task_alloc, struct task_struct *task, unsigned long clone_flags, int ret)
{
	struct warden_task_scope *parent, *child;

	if (ret)
		return ret;
	parent = bpf_task_storage_get(&warden_task_scope, bpf_get_current_task_btf(), 0, 0);
	if (!parent || !parent->scope)
		return 0;
	child = bpf_task_storage_get(&warden_task_scope, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!child)
		return -ENOMEM;
	child->scope = parent->scope;
	return 0;
}
