// SPDX-License-Identifier: GPL-2.0
/*
 * exec_guard: KubeArmor `process` rules at bprm_check_security. The object is the binary being
 * executed; fromSource is the executing task's current binary (its mm is not replaced yet).
 */
#include "warden_enforce.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * A task that execs in a container scope (or the any-container one) runs the container's code from
 * then on, and so do its children: its mounts are decided (warden_enforce.h, enforce_mount). Before
 * that exec, a task in a container's namespaces is its runtime setting the container up. Marked
 * whatever the exec's outcome: a refused exec leaves the task marked, never unmarked.
 */
static __noinline int mark_container_code(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct warden_task_scope *ts;
	struct warden_ns_key nk = {};

	__u32 scope = resolve_scope(t, &nk);

	if (scope == WARDEN_SCOPE_HOST)
		return 0;
	/* a host service that systemd starts with a mount namespace of its own shares the any-container
	 * scope with unregistered containers; its cgroup tells it apart (threat-model.md, "Confinement") */
	if (scope == WARDEN_SCOPE_ANY_CONTAINER && in_service_cgroup(t))
		return 0;
	ts = bpf_task_storage_get(&warden_task_scope, t, 0, 0);
	if (ts)
		ts->flags |= WARDEN_TASK_EXECED;
	return 0;
}

/*
 * KubeArmor's filelessExec preset (KubeArmor/BPF/filelessexec.bpf.c): the exec of a file with no
 * path on disk. Fileless here: no link left (a memfd, an O_TMPFILE file, a deleted file: i_nlink 0),
 * a file on a kernel-internal mount (memfd_create's shm mount), or one under /dev/shm/ or /run/shm/
 * (shared memory, as KubeArmor counts it). The scope's configuration holds the preset's slot.
 */
#define DEV_SHM 0x6d68732f7665642fULL /* "/dev/shm" as a little-endian word */
#define RUN_SHM 0x6d68732f6e75722fULL /* "/run/shm" */

static __noinline int enforce_fileless_op(struct file *file)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct vfsmount *vmnt = file->f_path.mnt;
	struct warden_rule_slot slot;
	struct warden_scope_cfg *cfg;
	struct warden_ns_key nk = {};
	struct scratch *s;
	__u32 scope;
	__u64 word;
	int fileless;

	scope = resolve_scope(t, &nk);
	cfg = scope_cfg(&scope);
	if (!cfg)
		return 0;
	slot = cfg->strict[WARDEN_CAT_FILELESS_EXEC];
	if (!slot.action)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	begin_request(s, scope, &nk, WARDEN_CAT_PROCESS, WARDEN_HOOK_BPRM_MEMFD, 0);
	s->req.has_path = 1;
	resolve_path(t, s, &s->obj, file->f_path.dentry, vmnt);
	if (!s->obj.walked && s->obj.reached) {
		/* a pseudo file (a memfd: its dentry is its own parent): its name is all the path it has */
		struct dentry *d = file->f_path.dentry;

		s->obj.pos = PATH_RIGHT - 1;
		put_far_name(&s->obj, d->d_name.name, d->d_name.len);
		finish_walk(&s->obj);
	}
	fileless = file->f_inode->i_nlink == 0 || vfsmount_internal(vmnt);
	if (!fileless && s->obj.len > 9) {
		word = buf_word(&s->obj, 0);
		fileless = (word == DEV_SHM || word == RUN_SHM) &&
			   s->obj.buf[(s->obj.start + 8) & (PATH_RIGHT - 1)] == '/';
	}
	if (!fileless)
		return 0;
	return decide(&slot, 0);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(warden_bprm_check, struct linux_binprm *bprm, int ret)
{
	struct file *file;

	if (ret)
		return ret;
	mark_container_code();
	file = bprm->file;
	ret = enforce_fileless_op(file);
	if (ret)
		return ret;
	return enforce_path(WARDEN_HOOK_BPRM_CHECK, WARDEN_CAT_PROCESS, file->f_path.dentry, file->f_path.mnt, 0,
			    file->f_inode);
}

/*
 * A blocked binary mapped executable without exec(2): `ld.so /usr/bin/id` maps id's code itself,
 * and an mprotect can make a read-only mapping executable later. A Block rule on the file refuses
 * the mapping as it refuses the exec. Only Block acts here: every shared library of every process
 * is mapped executable, so an allow-list's default posture (and Audit's alerts) stay with exec.
 */
#define PROT_EXEC 0x4

static __always_inline int enforce_exec_mapping(struct file *file)
{
	return enforce_path_op(path_op(WARDEN_HOOK_MMAP_FILE, WARDEN_CAT_PROCESS, 0) | OP_BLOCK_ONLY,
			       file->f_path.dentry, file->f_path.mnt, file->f_inode);
}

SEC("lsm/mmap_file")
int BPF_PROG(warden_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags,
	     int ret)
{
	if (ret || !file || !(prot & PROT_EXEC))
		return ret;
	return enforce_exec_mapping(file);
}

SEC("lsm/file_mprotect")
int BPF_PROG(warden_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot, int ret)
{
	struct file *file;

	if (ret || !(prot & PROT_EXEC))
		return ret;
	file = vma->vm_file;
	if (!file)
		return 0;
	return enforce_exec_mapping(file);
}
