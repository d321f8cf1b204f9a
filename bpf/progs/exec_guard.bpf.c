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
