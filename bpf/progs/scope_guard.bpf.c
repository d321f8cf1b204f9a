// SPDX-License-Identifier: GPL-2.0
/*
 * scope_guard: a task's scope is its parent's, and a registered container's task cannot act outside it.
 *
 * 1. At task_alloc the child gets a copy of the parent's warden_task_scope, so no fork, clone or vfork
 *    leaves a container's rules, whatever namespaces the child is created in (unshare -p,
 *    clone(CLONE_NEWNS), setns before the fork). A child that would lose its parent's scope (no memory
 *    for the copy) is not created. The mark of a container's code (WARDEN_TASK_EXECED) is copied too.
 * 2. Confinement: the kernel interfaces through which a container's root acts as another task or as the
 *    whole machine are refused to a container's task, with an alert (WARDEN_EV_CONFINEMENT), whatever
 *    the policy says. A container's task is one of a registered container's scope, or of the
 *    any-container scope outside a systemd service's cgroup: under CoCo's agent policy no guest hook
 *    runs, so every container is unregistered, and host services that systemd starts with a mount
 *    namespace of their own (warden among them) share that scope but sit in a "*.service" cgroup.
 *    - ptrace_access_check towards a task of any other scope: ptrace itself, and every /proc/<pid>
 *      link the kernel guards the same way (root, cwd, exe, ns/..., fd/..., mem, environ), pidfd_getfd,
 *      process_vm_readv/writev, kcmp. Without it a root that shares the VM's pid namespace reaches PID 1's
 *      mount namespace and root (/proc/1/ns/mnt, /proc/1/root) and through them systemd and warden's
 *      control socket.
 *    - bpf(2), every command: a program of the container's own could write warden's maps through a
 *      read-only fd (the kernel binds an fd's mode to the syscall, not to programs), signal warden, or
 *      detach nothing but still read every map.
 *    - kernel_read_file / kernel_load_data other than firmware: loading a kernel module or a kexec image.
 *    - opening a global sysctl (/proc/sys, wherever proc is mounted) for writing: kernel.core_pattern
 *      or kernel.modprobe would make the kernel run a program of the container's choosing as a host
 *      task. The sysctls of the container's own namespaces (net.*, the ipc ones), which runtimes set
 *      from the pod's spec inside the container, stay writable.
 *    The host scope and host services are not confined (threat-model.md, section 4, "Confinement").
 */
#include "warden_enforce.h"

char LICENSE[] SEC("license") = "GPL";

#define ENOMEM 12
#define FMODE_WRITE 0x2
#define PROC_SUPER_MAGIC 0x9fa0

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
	child->flags = parent->flags;
	return 0;
}

/* The current task's scope when it runs a container's code (WARDEN_TASK_EXECED, exec_guard: not a
 * host service's, see 2. above), else 0 (not confined). Before the entrypoint's exec, a task in a
 * container's namespaces is its runtime setting it up: joining the sandbox's namespaces through
 * /proc/<pid>/ns, setting the spec's sysctls. */
static __always_inline __u32 confined_scope(struct warden_req *r)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_task_scope *ts;

	r->scope = resolve_scope(t, &r->nk);
	if (r->scope < WARDEN_SCOPE_ANY_CONTAINER)
		return 0;
	ts = bpf_task_storage_get(&warden_task_scope, t, 0, 0);
	return ts && (ts->flags & WARDEN_TASK_EXECED) ? r->scope : 0;
}

/* Refuse and alert: the operation is outside what any container may do. A lost alert (full ring, no
 * scratch) still refuses. */
static __always_inline int refuse(struct warden_req *r, struct dentry *d, struct vfsmount *vmnt)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct scratch *s = get_scratch();

	if (!s)
		return -EPERM;
	s->req = *r;
	s->src.len = 0;
	if (d) {
		s->req.has_path = 1;
		resolve_path(t, s, &s->obj, d, vmnt);
	}
	emit_alert(0, WARDEN_ACT_BLOCK, WARDEN_EV_CONFINEMENT);
	return -EPERM;
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(warden_ptrace_access, struct task_struct *child, unsigned int mode, int ret)
{
	struct warden_req r = {};
	struct warden_ns_key nk = {};
	__u32 scope;

	if (ret)
		return ret;
	scope = confined_scope(&r);
	if (!scope || resolve_scope(child, &nk) == scope)
		return 0;
	r.category = WARDEN_CAT_PROCESS;
	r.hook = WARDEN_HOOK_PTRACE_ACCESS;
	r.arg[0] = BPF_CORE_READ(child, tgid);
	r.arg[1] = mode;
	return refuse(&r, 0, 0);
}

SEC("lsm/bpf")
int BPF_PROG(warden_bpf, int cmd, union bpf_attr *attr, unsigned int size, int ret)
{
	struct warden_req r = {};

	if (ret)
		return ret;
	if (!confined_scope(&r))
		return 0;
	r.category = WARDEN_CAT_PROCESS;
	r.hook = WARDEN_HOOK_BPF;
	r.arg[0] = cmd;
	return refuse(&r, 0, 0);
}

SEC("lsm/kernel_read_file")
int BPF_PROG(warden_kernel_read_file, struct file *file, enum kernel_read_file_id id, bool contents, int ret)
{
	struct warden_req r = {};

	if (ret)
		return ret;
	if (id == READING_FIRMWARE || !confined_scope(&r))
		return 0;
	r.category = WARDEN_CAT_PROCESS;
	r.hook = WARDEN_HOOK_KERNEL_LOAD;
	r.arg[0] = id;
	return refuse(&r, file->f_path.dentry, file->f_path.mnt);
}

SEC("lsm/kernel_load_data")
int BPF_PROG(warden_kernel_load_data, enum kernel_load_data_id id, bool contents, int ret)
{
	struct warden_req r = {};

	if (ret)
		return ret;
	if (id == LOADING_FIRMWARE || !confined_scope(&r))
		return 0;
	r.category = WARDEN_CAT_PROCESS;
	r.hook = WARDEN_HOOK_KERNEL_LOAD;
	r.arg[0] = id;
	return refuse(&r, 0, 0);
}

/* A sysctl is a procfs inode whose proc_inode has a ctl_table header: the test the kernel's own
 * proc_sys_* operations rest on, whatever path proc is mounted at. A global one is in the root's
 * default table set, the one set without an is_seen callback; a namespace's set (net, ipc) has one. */
SEC("lsm/file_open")
int BPF_PROG(warden_sysctl_open, struct file *file, int ret)
{
	struct warden_req r = {};
	struct inode *inode;
	void *header;

	if (ret)
		return ret;
	if (!(file->f_mode & FMODE_WRITE))
		return 0;
	inode = file->f_inode;
	if (!inode || inode->i_sb->s_magic != PROC_SUPER_MAGIC)
		return 0;
	if (bpf_probe_read_kernel(&header, sizeof(header),
				  (void *)inode - bpf_core_field_offset(struct proc_inode, vfs_inode) +
					  bpf_core_field_offset(struct proc_inode, sysctl)) ||
	    !header)
		return 0;
	if (BPF_CORE_READ((struct ctl_table_header *)header, set, is_seen))
		return 0; /* the container's own namespace's sysctl */
	if (!confined_scope(&r))
		return 0;
	r.category = WARDEN_CAT_FILE;
	r.hook = WARDEN_HOOK_SYSCTL_WRITE;
	r.write = 1;
	return refuse(&r, file->f_path.dentry, file->f_path.mnt);
}
