// SPDX-License-Identifier: GPL-2.0
/*
 * self_guard: keeps coco-warden from being switched off from inside the VM.
 *
 * Identity. A task is "warden" when its cgroup (v2) is the unit cgroup named in `self_config`
 * (by default system.slice/warden.service). Only PID 1 can create that cgroup while the unit
 * exists and only PID 1 or warden can move a task into it (both enforced below), so a
 * container's root cannot assume the identity. The name, not the cgroup id, is the identity
 * because systemd recreates the cgroup with a new id every time it restarts the service.
 *
 * Every other task, PID 1 and its not-yet-exec'd forks excepted (systemd must stay able to stop
 * and restart the service), is denied: signals to warden tasks, ptrace of them, detaching or updating BPF links, write access
 * to warden's maps, unlinking or renaming under <bpffs>/warden, unmounting or covering bpffs, and
 * changing anything under the protected inodes (installation, configuration, trust keys, state,
 * unit files). Each denial is reported on the `self_events` ring buffer.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "self_guard_types.h"

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define FMODE_WRITE 0x2
#define PTRACE_MODE_ATTACH 0x02 /* include/linux/ptrace.h */
#define BPF_FS_MAGIC 0xcafe4a11
#define CGROUP2_SUPER_MAGIC 0x63677270
#define MAX_ANCESTORS 32

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct self_config);
} self_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct inode_key);
	__type(value, __u8);
} self_inodes SEC(".maps");

/* Ids of the maps whose write access is reserved to warden (filled by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} self_map_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} self_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} self_drops SEC(".maps");

/* Linux 6.1 names the kernfs parent `parent`; newer kernels (our vmlinux.h) `__parent`. */
struct kernfs_node___v61 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	struct kernfs_node___v61 *old = (void *)kn;

	if (bpf_core_field_exists(old->parent))
		return BPF_CORE_READ(old, parent);
	return BPF_CORE_READ(kn, __parent);
}

static __always_inline bool name_is(const char *kernel_name, const char *want)
{
	char buf[SELF_NAME_LEN] = {};
	int i;

	if (bpf_probe_read_kernel_str(buf, sizeof(buf), kernel_name) < 0)
		return false;
	for (i = 0; i < SELF_NAME_LEN; i++) {
		if (buf[i] != want[i])
			return false;
		if (!buf[i])
			return true;
	}
	return false;
}

static __always_inline struct self_config *self_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&self_config, &zero);
}

static __always_inline bool task_is_warden(struct task_struct *task, struct self_config *cfg)
{
	struct kernfs_node *kn = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn);

	if (!kn || !name_is(BPF_CORE_READ(kn, name), cfg->unit_cgroup))
		return false;
	kn = kn_parent(kn);
	return kn && name_is(BPF_CORE_READ(kn, name), cfg->parent_cgroup);
}

/*
 * Trusted: warden itself, PID 1, and PID 1's own forks that have not exec'd yet. systemd starts
 * a service from such a fork, which moves itself into the unit's cgroup before exec; without
 * this, armed self-protection would stop systemd from restarting warden. Such a fork still
 * shares PID 1's `struct file` for its executable (exec, and prctl(PR_SET_MM_EXE_FILE), install
 * a new one), so the pointer comparison singles out code that is PID 1's own. A traced task is
 * never trusted this way: a tracer could be steering it.
 */
static __always_inline bool current_is_trusted(struct self_config *cfg)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct *parent;

	if (BPF_CORE_READ(task, tgid) == 1 || task_is_warden(task, cfg))
		return true;
	parent = BPF_CORE_READ(task, real_parent);
	return BPF_CORE_READ(parent, tgid) == 1 && BPF_CORE_READ(task, ptrace) == 0 &&
	       BPF_CORE_READ(task, mm, exe_file) == BPF_CORE_READ(parent, mm, exe_file);
}

static __always_inline void report(__u32 attack, __u32 target_pid, __s32 detail, const unsigned char *name)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct self_event *event;

	event = bpf_ringbuf_reserve(&self_events, sizeof(*event), 0);
	if (!event) {
		__u32 zero = 0;
		__u64 *drops = bpf_map_lookup_elem(&self_drops, &zero);

		if (drops)
			*drops += 1;
		return;
	}
	event->ts_ns = bpf_ktime_get_boot_ns();
	event->attack = attack;
	event->pid = BPF_CORE_READ(task, tgid);
	event->uid = (__u32)bpf_get_current_uid_gid();
	event->target_pid = target_pid;
	event->detail = detail;
	event->pad = 0;
	event->mnt_ns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	event->name[0] = 0;
	if (name)
		bpf_probe_read_kernel_str(event->name, sizeof(event->name), name);
	bpf_ringbuf_submit(event, 0);
}

/* Is this dentry, or one of its ancestors on the same filesystem, a protected inode? */
static __always_inline bool under_protected_inode(struct dentry *dentry)
{
	struct inode_key key = {};
	struct dentry *parent;
	int i;

	key.dev = BPF_CORE_READ(dentry, d_sb, s_dev);
	for (i = 0; i < MAX_ANCESTORS; i++) {
		key.ino = BPF_CORE_READ(dentry, d_inode, i_ino);
		if (key.ino && bpf_map_lookup_elem(&self_inodes, &key))
			return true;
		parent = BPF_CORE_READ(dentry, d_parent);
		if (!parent || parent == dentry)
			return false;
		dentry = parent;
	}
	/* Deeper than we look: treat as protected only if nothing above could be; stay open. */
	return false;
}

/* Is this dentry <bpffs root>/<pin_dir> or below it? */
static __always_inline bool under_pin_dir(struct dentry *dentry, struct self_config *cfg)
{
	struct dentry *parent;
	int i;

	if (BPF_CORE_READ(dentry, d_sb, s_magic) != BPF_FS_MAGIC)
		return false;
	for (i = 0; i < MAX_ANCESTORS; i++) {
		parent = BPF_CORE_READ(dentry, d_parent);
		if (!parent || parent == dentry)
			return false; /* reached the root itself: not under the pin dir */
		if (BPF_CORE_READ(parent, d_parent) == parent)
			return name_is((const char *)BPF_CORE_READ(dentry, d_name.name), cfg->pin_dir);
		dentry = parent;
	}
	return false;
}

/* Is `dir` warden's parent cgroup (system.slice: a directory right under the cgroup2 root)? */
static __always_inline bool is_parent_cgroup_dir(struct dentry *dir, struct self_config *cfg)
{
	struct dentry *up = BPF_CORE_READ(dir, d_parent);

	return up && BPF_CORE_READ(up, d_parent) == up &&
	       name_is((const char *)BPF_CORE_READ(dir, d_name.name), cfg->parent_cgroup);
}

/* Is `dir` warden's unit cgroup (system.slice/warden.service)? */
static __always_inline bool is_unit_cgroup_dir(struct dentry *dir, struct self_config *cfg)
{
	struct dentry *up = BPF_CORE_READ(dir, d_parent);

	return up && name_is((const char *)BPF_CORE_READ(dir, d_name.name), cfg->unit_cgroup) &&
	       is_parent_cgroup_dir(up, cfg);
}

/* A file inside the warden unit's cgroup directory (cgroup.procs, cgroup.threads, ...). */
static __always_inline bool in_warden_cgroup_dir(struct dentry *dentry, struct self_config *cfg)
{
	struct dentry *dir;

	if (BPF_CORE_READ(dentry, d_sb, s_magic) != CGROUP2_SUPER_MAGIC)
		return false;
	dir = BPF_CORE_READ(dentry, d_parent);
	return dir && name_is((const char *)BPF_CORE_READ(dir, d_name.name), cfg->unit_cgroup);
}

/* A control file of warden's parent cgroup itself (system.slice/cgroup.kill, cgroup.freeze,
 * memory.max, pids.max, cgroup.subtree_control, ...): each reaches warden's tasks with no hook of
 * its own (cgroup.kill signals without task_kill; freezing stops it; a memory limit gets it
 * OOM-killed; taking the cpuset or memory controller away drops its own limits). Only systemd
 * writes them. */
static __always_inline bool is_parent_cgroup_control(struct dentry *dentry, struct self_config *cfg)
{
	struct dentry *dir;

	if (BPF_CORE_READ(dentry, d_sb, s_magic) != CGROUP2_SUPER_MAGIC)
		return false;
	dir = BPF_CORE_READ(dentry, d_parent);
	return dir && is_parent_cgroup_dir(dir, cfg);
}

/* The common check for every hook that changes a file or directory entry. */
static __always_inline int guard_change(struct dentry *dentry, struct self_config *cfg)
{
	if (under_pin_dir(dentry, cfg)) {
		report(ATTACK_PIN_CHANGE, 0, 0, BPF_CORE_READ(dentry, d_name.name));
		return -EPERM;
	}
	if (under_protected_inode(dentry)) {
		report(ATTACK_PROTECTED_WRITE, 0, 0, BPF_CORE_READ(dentry, d_name.name));
		return -EPERM;
	}
	return 0;
}

#define GUARD_PROLOGUE(ret)                                   \
	struct self_config *cfg;                              \
	if (ret)                                              \
		return ret;                                   \
	cfg = self_cfg();                                       \
	if (!cfg || !cfg->unit_cgroup[0] || current_is_trusted(cfg)) \
		return 0;

SEC("lsm/task_kill")
int BPF_PROG(self_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred, int ret)
{
	GUARD_PROLOGUE(ret);
	if (sig == 0 || !task_is_warden(p, cfg))
		return 0;
	report(ATTACK_SIGNAL, BPF_CORE_READ(p, tgid), sig, 0);
	return -EPERM;
}

/* SIGIO/SIGURG that a file's owner setting (F_SETOWN, F_SETSIG) routes to a task: delivered from
 * whatever context does the I/O, so `current` tells nothing about who asked. warden never makes
 * itself a file's owner: nothing is delivered to it this way, from anyone. */
SEC("lsm/file_send_sigiotask")
int BPF_PROG(self_sigio, struct task_struct *tsk, struct fown_struct *fown, int sig, int ret)
{
	struct self_config *cfg;

	if (ret)
		return ret;
	cfg = self_cfg();
	if (!cfg || !cfg->unit_cgroup[0] || !task_is_warden(tsk, cfg))
		return 0;
	report(ATTACK_SIGNAL, BPF_CORE_READ(tsk, tgid), sig, 0);
	return -EPERM;
}

/* prlimit(2) on warden (RLIMIT_NOFILE, RLIMIT_AS, RLIMIT_CPU 0...) would make it fail or be killed
 * by its own next allocation or CPU second, without a signal anyone sent. */
SEC("lsm/task_setrlimit")
int BPF_PROG(self_setrlimit, struct task_struct *p, unsigned int resource, struct rlimit *new_rlim, int ret)
{
	GUARD_PROLOGUE(ret);
	if (!task_is_warden(p, cfg))
		return 0;
	report(ATTACK_RLIMIT, BPF_CORE_READ(p, tgid), (__s32)resource, 0);
	return -EPERM;
}

/* SCHED_IDLE, nice 19, the lowest I/O class or a one-CPU affinity starve warden until its watchdog
 * expires: a stop without a signal. (sched_setaffinity and cpuset's migration check ask
 * task_setscheduler too.) */
static __always_inline int guard_sched(struct task_struct *p, __s32 detail)
{
	struct self_config *cfg = self_cfg();

	if (!cfg || !cfg->unit_cgroup[0] || current_is_trusted(cfg) || !task_is_warden(p, cfg))
		return 0;
	report(ATTACK_SCHED, BPF_CORE_READ(p, tgid), detail, 0);
	return -EPERM;
}

SEC("lsm/task_setscheduler")
int BPF_PROG(self_setscheduler, struct task_struct *p, int ret)
{
	if (ret)
		return ret;
	return guard_sched(p, 0);
}

SEC("lsm/task_setnice")
int BPF_PROG(self_setnice, struct task_struct *p, int nice, int ret)
{
	if (ret)
		return ret;
	return guard_sched(p, nice);
}

SEC("lsm/task_setioprio")
int BPF_PROG(self_setioprio, struct task_struct *p, int ioprio, int ret)
{
	if (ret)
		return ret;
	return guard_sched(p, ioprio);
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(self_ptrace, struct task_struct *child, unsigned int mode, int ret)
{
	GUARD_PROLOGUE(ret);
	/* Read mode (ps, journald's metadata, /proc/<pid>/status) stays open: denying it only makes
	 * noise. Attach mode is what reads or changes warden: ptrace attach, /proc/<pid>/mem,
	 * process_vm_readv/writev, pidfd_getfd. */
	if (!(mode & PTRACE_MODE_ATTACH) || !task_is_warden(child, cfg))
		return 0;
	report(ATTACK_PTRACE, BPF_CORE_READ(child, tgid), (__s32)mode, 0);
	return -EPERM;
}

SEC("lsm/bpf")
int BPF_PROG(self_bpf, int cmd, union bpf_attr *attr, unsigned int size, int ret)
{
	GUARD_PROLOGUE(ret);
	/* LSM (tracing) links cannot be detached or updated in place on 6.1 anyway; refuse the
	 * attempt outright so that a later kernel adding that ability does not open a hole. */
	if (cmd != BPF_LINK_DETACH && cmd != BPF_LINK_UPDATE)
		return 0;
	report(ATTACK_BPF_CMD, 0, cmd, 0);
	return -EPERM;
}

SEC("lsm/bpf_map")
int BPF_PROG(self_bpf_map, struct bpf_map *map, fmode_t fmode, int ret)
{
	__u32 id;

	GUARD_PROLOGUE(ret);
	if (!(fmode & FMODE_WRITE))
		return 0;
	id = BPF_CORE_READ(map, id);
	if (!bpf_map_lookup_elem(&self_map_ids, &id))
		return 0;
	report(ATTACK_MAP_WRITE, 0, (__s32)id, (const unsigned char *)map->name);
	return -EPERM;
}

SEC("lsm/file_open")
int BPF_PROG(self_file_open, struct file *file, int ret)
{
	struct dentry *dentry;

	GUARD_PROLOGUE(ret);
	if (!(BPF_CORE_READ(file, f_mode) & FMODE_WRITE))
		return 0;
	dentry = BPF_CORE_READ(file, f_path.dentry);
	if (in_warden_cgroup_dir(dentry, cfg)) {
		report(ATTACK_CGROUP_JOIN, 0, 0, BPF_CORE_READ(dentry, d_name.name));
		return -EPERM;
	}
	if (is_parent_cgroup_control(dentry, cfg)) {
		report(ATTACK_CGROUP_CONTROL, 0, 0, BPF_CORE_READ(dentry, d_name.name));
		return -EPERM;
	}
	return guard_change(dentry, cfg);
}

SEC("lsm/path_unlink")
int BPF_PROG(self_path_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(dentry, cfg);
}

SEC("lsm/path_rmdir")
int BPF_PROG(self_path_rmdir, const struct path *dir, struct dentry *dentry, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(dentry, cfg);
}

SEC("lsm/path_mkdir")
int BPF_PROG(self_path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode, int ret)
{
	struct dentry *parent;

	GUARD_PROLOGUE(ret);
	parent = BPF_CORE_READ(dir, dentry);
	/* Nobody but PID 1 may create the unit cgroup: it is warden's identity. Nor a cgroup inside
	 * it: a task moved there (its cgroup.procs is not in warden's directory) would leave the
	 * identity behind, and its new cgroup's cgroup.kill would reach it without task_kill. */
	if (BPF_CORE_READ(parent, d_sb, s_magic) == CGROUP2_SUPER_MAGIC &&
	    (name_is((const char *)BPF_CORE_READ(dentry, d_name.name), cfg->unit_cgroup) ||
	     is_unit_cgroup_dir(parent, cfg))) {
		report(ATTACK_CGROUP_JOIN, 0, 0, BPF_CORE_READ(dentry, d_name.name));
		return -EPERM;
	}
	return guard_change(parent, cfg);
}

SEC("lsm/path_mknod")
int BPF_PROG(self_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(BPF_CORE_READ(dir, dentry), cfg);
}

SEC("lsm/path_symlink")
int BPF_PROG(self_path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name,
	     int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(BPF_CORE_READ(dir, dentry), cfg);
}

SEC("lsm/path_link")
int BPF_PROG(self_path_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	int denied;

	GUARD_PROLOGUE(ret);
	denied = guard_change(old_dentry, cfg);
	if (denied)
		return denied;
	return guard_change(BPF_CORE_READ(new_dir, dentry), cfg);
}

SEC("lsm/path_rename")
int BPF_PROG(self_path_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	int denied;

	GUARD_PROLOGUE(ret);
	denied = guard_change(old_dentry, cfg);
	if (denied)
		return denied;
	return guard_change(BPF_CORE_READ(new_dir, dentry), cfg);
}

SEC("lsm/path_truncate")
int BPF_PROG(self_path_truncate, const struct path *path, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(BPF_CORE_READ(path, dentry), cfg);
}

SEC("lsm/path_chmod")
int BPF_PROG(self_path_chmod, const struct path *path, umode_t mode, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(BPF_CORE_READ(path, dentry), cfg);
}

/* kuid_t/kgid_t are structs passed by value (one slot each), which BPF_PROG cannot unpack: the
 * context directly, `ret` in the fourth slot (as file_guard's path_chown). A chowned trust key is
 * refused at the next start (initdata/keys.py): the gate would fail. */
SEC("lsm/path_chown")
int self_path_chown(unsigned long long *ctx)
{
	const struct path *path = (const struct path *)ctx[0];
	int ret = (int)ctx[3];

	GUARD_PROLOGUE(ret);
	return guard_change(BPF_CORE_READ(path, dentry), cfg);
}

/* Times (touch, utimensat): what reaches inode_setattr only; modes, owners and sizes come through
 * path_chmod, path_chown and path_truncate above, with the same answer. */
SEC("lsm/inode_setattr")
int BPF_PROG(self_inode_setattr, struct dentry *dentry, struct iattr *attr, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(dentry, cfg);
}

/* security.capability on the interpreter, or any other xattr on what warden runs or reads. */
SEC("lsm/inode_setxattr")
int BPF_PROG(self_inode_setxattr, void *mnt_userns, struct dentry *dentry, const char *name, const void *value,
	     size_t size, int flags, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(dentry, cfg);
}

SEC("lsm/inode_removexattr")
int BPF_PROG(self_inode_removexattr, void *mnt_userns, struct dentry *dentry, const char *name, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_change(dentry, cfg);
}

/* Reaching pins at all (BPF_OBJ_GET, listing, traversal) needs permission on the pin directory,
 * whose bpffs inode the loader lists in self_inodes: cheaper than parsing bpf() path arguments,
 * and immune to bind mounts of bpffs. The magic check comes first: this hook is hot. */
SEC("lsm/inode_permission")
int BPF_PROG(self_inode_permission, struct inode *inode, int mask, int ret)
{
	struct inode_key key = {};
	struct self_config *cfg;

	if (ret)
		return ret;
	if (BPF_CORE_READ(inode, i_sb, s_magic) != BPF_FS_MAGIC)
		return 0;
	key.ino = BPF_CORE_READ(inode, i_ino);
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (!bpf_map_lookup_elem(&self_inodes, &key))
		return 0;
	cfg = self_cfg();
	if (!cfg || !cfg->unit_cgroup[0] || current_is_trusted(cfg))
		return 0;
	report(ATTACK_PIN_CHANGE, 0, mask, 0);
	return -EPERM;
}

SEC("lsm/sb_umount")
int BPF_PROG(self_sb_umount, struct vfsmount *mnt, int flags, int ret)
{
	GUARD_PROLOGUE(ret);
	if (BPF_CORE_READ(mnt, mnt_sb, s_magic) != BPF_FS_MAGIC)
		return 0;
	report(ATTACK_BPFFS_MOUNT, 0, flags, 0);
	return -EPERM;
}

/* Mounting over bpffs or a protected directory would hide pins or swap configuration. */
static __always_inline int guard_mount_target(struct dentry *target, struct self_config *cfg)
{
	if (BPF_CORE_READ(target, d_sb, s_magic) == BPF_FS_MAGIC) {
		report(ATTACK_BPFFS_MOUNT, 0, 0, BPF_CORE_READ(target, d_name.name));
		return -EPERM;
	}
	if (under_protected_inode(target)) {
		report(ATTACK_PROTECTED_WRITE, 0, 0, BPF_CORE_READ(target, d_name.name));
		return -EPERM;
	}
	return 0;
}

SEC("lsm/sb_mount")
int BPF_PROG(self_sb_mount, const char *dev_name, const struct path *path, const char *type,
	     unsigned long flags, void *data, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_mount_target(BPF_CORE_READ(path, dentry), cfg);
}

SEC("lsm/move_mount")
int BPF_PROG(self_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	GUARD_PROLOGUE(ret);
	return guard_mount_target(BPF_CORE_READ(to_path, dentry), cfg);
}
