// SPDX-License-Identifier: GPL-2.0
/*
 * cap_guard: KubeArmor `capabilities.matchCapabilities` at the capable hook (every capability
 * check, audited or not). Scopes without capability rules leave after two map lookups.
 */
#include "warden_enforce.h"

char LICENSE[] SEC("license") = "GPL";

SEC("lsm/capable")
int BPF_PROG(warden_capable, const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts, int ret)
{
	__u64 codes[4] = {};
	__u32 args[4] = {};

	if (ret)
		return ret;
	codes[0] = (__u32)cap;
	args[0] = cap;
	args[1] = opts;
	return enforce_codes(WARDEN_HOOK_CAPABLE, WARDEN_CAT_CAPABILITIES, codes, 1, args, 0);
}
