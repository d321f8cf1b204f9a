// SPDX-License-Identifier: GPL-2.0
/*
 * file_guard: KubeArmor `file` rules. file_open decides reads and writes by f_mode; the path_*
 * hooks catch the changes that never open the file (unlink, rename (both ends), link (both ends),
 * symlink, mkdir, rmdir, mknod, truncate, chmod, chown), so readOnly on /bin keeps /bin intact.
 * Every program returns an earlier LSM's refusal unchanged.
 */
#include "warden_held.h"

char LICENSE[] SEC("license") = "GPL";

#define FILE_RULES(hook, d, mnt, write, inode) enforce_path(hook, WARDEN_CAT_FILE, d, mnt, write, inode)

#define FMODE_WRITE 0x2
#define FMODE_NONOTIFY 0x4000000

/*
 * Whether `file` is the real file that a stacked file system (overlayfs) opens behind one of its
 * own files. On 6.1 overlayfs opens it inside the overlay file's ->open, with the overlay file's
 * path over the real inode ("fake path") and FMODE_NONOTIFY, so this hook has just decided the
 * very same path, task and access mode: deciding again would double the cost and the alerts of
 * every open on an overlay (a container's root file system). User space cannot open a file whose
 * inode differs from its path's, so the test admits nothing else. Kernels that give backing files
 * their real path (6.6+) fail this test and are simply decided twice.
 */
static __always_inline int is_overlay_real_file(struct file *file)
{
	return (file->f_mode & FMODE_NONOTIFY) && file->f_inode != file->f_path.dentry->d_inode;
}

SEC("lsm/file_open")
int BPF_PROG(warden_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	if (is_overlay_real_file(file))
		return 0;
	/* direct (BTF) loads: no helper call on the hottest hook; what is allowed is remembered for
	 * the reads and writes through this file (file_permission), and a reopen of the same path that
	 * gets the same struct file back (an open-close loop) is not walked again (warden_held.h) */
	return enforce_file(WARDEN_HOOK_FILE_OPEN, file, (file->f_mode & FMODE_WRITE) ? 1 : 0);
}

#define MAY_WRITE 0x2
#define MAY_READ 0x4
#define MAY_APPEND 0x8

/*
 * Every read and write through a descriptor, as KubeArmor re-checks them: a descriptor opened
 * before the policy (a /bin file held open for writing, a secret held open for reading) met no
 * file_open decision. A file the task's memo holds costs one task-storage lookup; one allowed to
 * another task, one hash lookup more (warden_held.h).
 */
SEC("lsm/file_permission")
int BPF_PROG(warden_file_permission, struct file *file, int mask, int ret)
{
	if (ret)
		return ret;
	if (!(mask & (MAY_READ | MAY_WRITE | MAY_APPEND)) || is_overlay_real_file(file))
		return 0;
	return enforce_file(WARDEN_HOOK_FILE_PERMISSION, file, (mask & (MAY_WRITE | MAY_APPEND)) ? 1 : 0);
}

SEC("lsm/path_unlink")
int BPF_PROG(warden_path_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_UNLINK, dentry, dir->mnt, 1, 0);
}

SEC("lsm/path_mkdir")
int BPF_PROG(warden_path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_MKDIR, dentry, dir->mnt, 1, 0);
}

SEC("lsm/path_rmdir")
int BPF_PROG(warden_path_rmdir, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_RMDIR, dentry, dir->mnt, 1, 0);
}

SEC("lsm/path_mknod")
int BPF_PROG(warden_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev,
	     int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_MKNOD, dentry, dir->mnt, 1, 0);
}

SEC("lsm/path_symlink")
int BPF_PROG(warden_path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_SYMLINK, dentry, dir->mnt, 1, 0);
}

SEC("lsm/path_link")
int BPF_PROG(warden_path_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry,
	     int ret)
{
	struct vfsmount *mnt = new_dir->mnt; /* links never cross mounts */

	if (ret)
		return ret;
	ret = FILE_RULES(WARDEN_HOOK_PATH_LINK, old_dentry, mnt, 1, 0);
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_LINK, new_dentry, mnt, 1, 0);
}

/* 6.1 passes the RENAME_* flags as a fifth argument (checked against the guest's BTF). */
SEC("lsm/path_rename")
int BPF_PROG(warden_path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	ret = FILE_RULES(WARDEN_HOOK_PATH_RENAME, old_dentry, old_dir->mnt, 1, 0);
	if (ret)
		return ret;
	ret = FILE_RULES(WARDEN_HOOK_PATH_RENAME, new_dentry, new_dir->mnt, 1, 0);
	if (ret)
		return ret;
	/* A directory above a protected path moves the path with it; so does the target of an
	 * exchange (RENAME_EXCHANGE), and an existing target would be replaced: both ends are checked. */
	ret = enforce_ancestor(WARDEN_HOOK_PATH_RENAME, old_dentry, old_dir->mnt);
	if (ret)
		return ret;
	return enforce_ancestor(WARDEN_HOOK_PATH_RENAME, new_dentry, new_dir->mnt);
}

SEC("lsm/path_truncate")
int BPF_PROG(warden_path_truncate, const struct path *path, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_TRUNCATE, path->dentry, path->mnt, 1, 0);
}

SEC("lsm/path_chmod")
int BPF_PROG(warden_path_chmod, const struct path *path, umode_t mode, int ret)
{
	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_CHMOD, path->dentry, path->mnt, 1, 0);
}

/* kuid_t/kgid_t are structs passed by value (one 8-byte slot each), which BPF_PROG cannot
 * unpack: read the context directly. `ret` is the fourth slot. */
SEC("lsm/path_chown")
int warden_path_chown(unsigned long long *ctx)
{
	const struct path *path = (const struct path *)ctx[0];
	int ret = (int)ctx[3];

	if (ret)
		return ret;
	return FILE_RULES(WARDEN_HOOK_PATH_CHOWN, path->dentry, path->mnt, 1, 0);
}

/*
 * readOnly means the metadata too. chmod, chown and truncate reach path_chmod, path_chown and
 * path_truncate above, with a path; what reaches only inode_setattr is the times (utimensat,
 * futimens, touch): decided here, on the paths the dentry has in the task's mount namespace.
 */
#define ATTR_MODE (1 << 0)
#define ATTR_UID (1 << 1)
#define ATTR_GID (1 << 2)
#define ATTR_SIZE (1 << 3)
#define ATTR_ATIME (1 << 4)
#define ATTR_MTIME (1 << 5)

SEC("lsm/inode_setattr")
int BPF_PROG(warden_inode_setattr, struct dentry *dentry, struct iattr *attr, int ret)
{
	unsigned int valid;

	if (ret)
		return ret;
	valid = attr->ia_valid;
	if (!(valid & (ATTR_ATIME | ATTR_MTIME)) || (valid & (ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE)))
		return 0;
	return enforce_dentry(WARDEN_HOOK_INODE_SETATTR, WARDEN_CAT_FILE, dentry, 1);
}

/* Extended attributes, security.capability (file capabilities) and ACLs among them. 6.1 passes
 * the mount's user namespace first (an idmap after 6.3: the pointer is not read). */
SEC("lsm/inode_setxattr")
int BPF_PROG(warden_inode_setxattr, void *mnt_userns, struct dentry *dentry, const char *name, const void *value,
	     size_t size, int flags, int ret)
{
	if (ret)
		return ret;
	return enforce_dentry(WARDEN_HOOK_INODE_SETXATTR, WARDEN_CAT_FILE, dentry, 1);
}

SEC("lsm/inode_removexattr")
int BPF_PROG(warden_inode_removexattr, void *mnt_userns, struct dentry *dentry, const char *name, int ret)
{
	if (ret)
		return ret;
	return enforce_dentry(WARDEN_HOOK_INODE_REMOVEXATTR, WARDEN_CAT_FILE, dentry, 1);
}

/* The inode-flag ioctls (immutable, append-only, ...), which need no writable descriptor. The
 * 32-bit FS_IOC32_SETFLAGS comes through the compat hook, before the kernel translates it. */
#define FS_IOC_SETFLAGS 0x40086602   /* _IOW('f', 2, long) */
#define FS_IOC32_SETFLAGS 0x40046602 /* _IOW('f', 2, int) */
#define FS_IOC_FSSETXATTR 0x401c5820 /* _IOW('X', 32, struct fsxattr) */

static __always_inline int sets_inode_flags(unsigned int cmd)
{
	return cmd == FS_IOC_SETFLAGS || cmd == FS_IOC32_SETFLAGS || cmd == FS_IOC_FSSETXATTR;
}

SEC("lsm/file_ioctl")
int BPF_PROG(warden_file_ioctl, struct file *file, unsigned int cmd, unsigned long arg, int ret)
{
	if (ret || !sets_inode_flags(cmd))
		return ret;
	return FILE_RULES(WARDEN_HOOK_FILE_IOCTL, file->f_path.dentry, file->f_path.mnt, 1, file->f_inode);
}

SEC("lsm/file_ioctl_compat")
int BPF_PROG(warden_file_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg, int ret)
{
	if (ret || !sets_inode_flags(cmd))
		return ret;
	return FILE_RULES(WARDEN_HOOK_FILE_IOCTL, file->f_path.dentry, file->f_path.mnt, 1, file->f_inode);
}

/*
 * No second path to protected data by mounting (issue 14; threat-model.md, "Mounts"). The target of
 * a mount is a resolved path; its source often is not: a bind's and a move's source and overlay's
 * lowerdir= are strings the kernel resolves after this hook (relative, or through symlinks), and a
 * device shows a whole file system. Those are decided as unresolved (the scope's strictest rule),
 * and only source-less file systems are decided at their target. Remounts change a mount's flags,
 * and propagation changes (`unshare -m` makes / private) which mounts propagate, not what any path
 * shows: both pass. path_mount()'s own order decides which of these a call is.
 */
#define MS_REMOUNT 32
#define MS_BIND 4096
#define MS_MOVE 8192
#define MS_UNBINDABLE (1 << 17)
#define MS_PRIVATE (1 << 18)
#define MS_SLAVE (1 << 19)
#define MS_SHARED (1 << 20)
#define MOUNT_TYPE_LEN 16

static __always_inline int same_bytes(const char *a, const char *b, int len)
{
	int i;

#pragma unroll
	for (i = 0; i < MOUNT_TYPE_LEN; i++) {
		if (i >= len)
			break;
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

/* File systems that take no source: what they show is their own (or the kernel's) state. */
static __always_inline int sourceless_type(const char *type)
{
	char name[MOUNT_TYPE_LEN] = {};
	long n;

	if (!type)
		return 0;
	n = bpf_probe_read_kernel_str(name, sizeof(name), type);
	if (n <= 0)
		return 0;
#define IS(lit) (n == sizeof(lit) && same_bytes(name, lit, sizeof(lit)))
	return IS("tmpfs") || IS("ramfs") || IS("proc") || IS("sysfs") || IS("devpts") || IS("mqueue") ||
	       IS("cgroup") || IS("cgroup2");
#undef IS
}

SEC("lsm/sb_mount")
int BPF_PROG(warden_sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags,
	     void *data, int ret)
{
	__u32 kind;

	if (ret || (flags & MS_REMOUNT))
		return ret;
	if (flags & MS_BIND)
		kind = WARDEN_MOUNT_BIND;
	else if (flags & (MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE))
		return 0;
	else if (flags & MS_MOVE)
		kind = WARDEN_MOUNT_MOVE;
	else
		kind = sourceless_type(type) ? WARDEN_MOUNT_AT : WARDEN_MOUNT_SOURCED;
	return enforce_mount(WARDEN_HOOK_SB_MOUNT, kind, path->dentry, path->mnt);
}

/* The new mount API's attach and move (also `mount --move` of newer util-linux). A detached tree
 * (open_tree(OPEN_TREE_CLONE): a bind; fsmount: overlay or any file system) carries a source the
 * hook cannot see; an attached mount moved is decided at both ends. */
SEC("lsm/move_mount")
int BPF_PROG(warden_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	struct vfsmount *from = from_path->mnt;

	if (ret)
		return ret;
	if (vfsmount_detached(from))
		return enforce_mount(WARDEN_HOOK_MOVE_MOUNT, WARDEN_MOUNT_DETACHED, to_path->dentry, to_path->mnt);
	ret = enforce_mount(WARDEN_HOOK_MOVE_MOUNT, WARDEN_MOUNT_AT, from_path->dentry, from);
	if (ret)
		return ret;
	return enforce_mount(WARDEN_HOOK_MOVE_MOUNT, WARDEN_MOUNT_AT, to_path->dentry, to_path->mnt);
}

/* A new root: every path of the task changes meaning (and the old root can be shown anywhere). */
SEC("lsm/sb_pivotroot")
int BPF_PROG(warden_sb_pivotroot, const struct path *old_path, const struct path *new_path, int ret)
{
	if (ret)
		return ret;
	return enforce_mount(WARDEN_HOOK_SB_PIVOTROOT, WARDEN_MOUNT_PIVOT, new_path->dentry, new_path->mnt);
}
