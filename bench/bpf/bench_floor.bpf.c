// SPDX-License-Identifier: GPL-2.0
/*
 * bench_floor: the benchmark's floor: an always-allow program on each hook warden uses, so that
 * `make bench` can separate the cost of having BPF-LSM programs on these hooks at all (trampoline,
 * under TCG inflated) from the cost of warden's matching. Never loaded by the engine.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define FLOOR(hook, ...)                                   \
	SEC("lsm/" #hook)                                  \
	int BPF_PROG(floor_##hook, ##__VA_ARGS__, int ret) \
	{                                                  \
		return ret;                                \
	}

FLOOR(file_open, struct file *file)
FLOOR(path_unlink, const struct path *dir, struct dentry *dentry)
FLOOR(path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode)
FLOOR(path_rmdir, const struct path *dir, struct dentry *dentry)
FLOOR(path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)
FLOOR(path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name)
FLOOR(path_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)
FLOOR(path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
      struct dentry *new_dentry, unsigned int flags)
FLOOR(path_truncate, const struct path *path)
FLOOR(path_chmod, const struct path *path, umode_t mode)
FLOOR(bprm_check_security, struct linux_binprm *bprm)
FLOOR(socket_create, int family, int type, int protocol, int kern)
FLOOR(capable, const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)
/* issue 14's hooks */
FLOOR(file_permission, struct file *file, int mask)
FLOOR(inode_setattr, struct dentry *dentry, struct iattr *attr)
FLOOR(inode_setxattr, void *mnt_userns, struct dentry *dentry, const char *name, const void *value, size_t size,
      int flags)
FLOOR(inode_removexattr, void *mnt_userns, struct dentry *dentry, const char *name)
FLOOR(file_ioctl, struct file *file, unsigned int cmd, unsigned long arg)
FLOOR(file_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg)
FLOOR(mmap_file, struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags)
FLOOR(file_mprotect, struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)
FLOOR(socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
FLOOR(socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)

char LICENSE[] SEC("license") = "GPL";
