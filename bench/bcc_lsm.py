"""The bcc way, for comparison: compile at boot, then load an LSM program equivalent to write_guard.

Runs inside the guest with Debian's python3-bpfcc and the guest kernel's headers
(linux-headers-$(uname -r)), under the system interpreter: `python3 bench/bcc_lsm.py DIR`.
Prints JSON: compile+load+attach seconds, and whether a write into DIR was then denied.
"""

import json
import os
import sys
import time

from bcc import BPF  # type: ignore[import-not-found]

PROGRAM = r"""
#include <linux/fs.h>
#include <linux/dcache.h>

struct dir_key { u64 ino; u32 dev; u32 pad; };
BPF_HASH(guarded_dirs, struct dir_key, u8, 64);

LSM_PROBE(file_open, struct file *file, int ret)
{
    struct dir_key key = {};
    struct dentry *parent;

    if (ret)
        return ret;
    if (!(file->f_mode & FMODE_WRITE))
        return 0;
    parent = file->f_path.dentry->d_parent;
    key.ino = parent->d_inode->i_ino;
    key.dev = parent->d_sb->s_dev;
    if (guarded_dirs.lookup(&key))
        return -EPERM;
    return 0;
}
"""


def main() -> None:
    guarded = sys.argv[1]
    started = time.monotonic()
    bpf = BPF(text=PROGRAM)  # compiles with clang/LLVM in process, loads, and attaches LSM_PROBE
    loaded = time.monotonic() - started
    st = os.stat(guarded)
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    table = bpf["guarded_dirs"]
    table[table.Key(st.st_ino, dev, 0)] = table.Leaf(1)
    try:
        with open(os.path.join(guarded, "probe"), "w"):
            denied = False
    except PermissionError:
        denied = True
    print(json.dumps({"compile_load_attach_s": loaded, "write_denied": denied}))


if __name__ == "__main__":
    main()
