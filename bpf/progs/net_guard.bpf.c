// SPDX-License-Identifier: GPL-2.0
/*
 * net_guard: KubeArmor `network.matchProtocols` at socket_create. A socket matches every protocol
 * name that describes it (a raw ICMP socket is both "raw" and "icmp"); the strongest matching
 * action wins. Only inet, inet6 and packet sockets are considered: AF_UNIX and netlink are how
 * systemd and the rest of the guest work, and KubeArmor's protocols do not name them.
 */
#include "warden_enforce.h"
#include "net_guard_types.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_TYPE_MASK 0xf

SEC("lsm/socket_create")
int BPF_PROG(warden_socket_create, int family, int type, int protocol, int kern, int ret)
{
	__u64 codes[4] = {};
	__u32 args[4] = {};
	int n = 0, inet, t = type & SOCK_TYPE_MASK;

	if (ret)
		return ret;
	if (kern)
		return 0; /* the kernel's own sockets */
	if (family != AF_INET && family != AF_INET6 && family != AF_PACKET)
		return 0;
	inet = family != AF_PACKET;
	args[0] = family;
	args[1] = type;
	args[2] = protocol;
	codes[n++] = WARDEN_PROTO_ALL;
	/* the socket type: stream, dgram, raw, rdm, seqpacket, dccp, packet (SOCK_PACKET or AF_PACKET) */
	switch (t) {
	case 1: codes[n++] = WARDEN_PROTO_STREAM; break;
	case 2: codes[n++] = WARDEN_PROTO_DGRAM; break;
	case 3: codes[n++] = WARDEN_PROTO_RAW; break;
	case 4: codes[n++] = WARDEN_PROTO_RDM; break;
	case 5: codes[n++] = WARDEN_PROTO_SEQPACKET; break;
	case 6: codes[n++] = WARDEN_PROTO_DCCP; break;
	case 10: codes[n++] = WARDEN_PROTO_PACKET; break;
	}
	if (!inet && t != 10)
		codes[n++] = WARDEN_PROTO_PACKET;
	/* the IP protocol, explicit or implied by the type (0 = the type's default) */
	if (inet) {
		if (protocol == 6 || (protocol == 0 && t == 1))
			codes[n & 3] = WARDEN_PROTO_TCP, n++;
		else if (protocol == 17 || (protocol == 0 && t == 2))
			codes[n & 3] = WARDEN_PROTO_UDP, n++;
		else if (protocol == 1 && family == AF_INET)
			codes[n & 3] = WARDEN_PROTO_ICMP, n++;
		else if (protocol == 58 && family == AF_INET6)
			codes[n & 3] = WARDEN_PROTO_ICMPV6, n++;
		else if (protocol == 132)
			codes[n & 3] = WARDEN_PROTO_SCTP, n++;
	}
	return enforce_codes(WARDEN_HOOK_SOCKET_CREATE, WARDEN_CAT_NETWORK, codes, n, args);
}
