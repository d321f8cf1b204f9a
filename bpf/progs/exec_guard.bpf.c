// SPDX-License-Identifier: GPL-2.0
/*
 * exec_guard: KubeArmor `process` rules at bprm_check_security. The object is the binary being
 * executed; fromSource is the executing task's current binary (its mm is not replaced yet).
 */
#include "warden_enforce.h"

char LICENSE[] SEC("license") = "GPL";

SEC("lsm/bprm_check_security")
int BPF_PROG(warden_bprm_check, struct linux_binprm *bprm, int ret)
{
	struct file *file;

	if (ret)
		return ret;
	file = bprm->file;
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
