// SPDX-License-Identifier: GPL-2.0
/*
 * net_guard: KubeArmor `network.matchProtocols` at socket_create, and again at socket_sendmsg and
 * socket_connect for sockets made before the policy (or passed in from outside). A socket matches
 * every protocol name that describes it (a raw ICMP socket is both "raw" and "icmp"); the strongest
 * matching action wins.
 *
 * "raw" is every socket that crafts or sniffs packets below the transport layer: SOCK_RAW in any
 * family, every AF_PACKET socket (SOCK_RAW and SOCK_DGRAM alike) and SOCK_PACKET. KubeArmor reads
 * it as SOCK_RAW of inet and inet6 only, which leaves packet sockets (spoofing, sniffing) open.
 * AF_UNIX and netlink are not network sockets (systemd, ip and the rest of the guest talk through
 * them; netlink's SOCK_RAW crafts no packet), so no protocol names them; other families than inet,
 * inet6 and packet are considered only when they are raw.
 */
#include "warden_enforce.h"
#include "net_guard_types.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_UNIX 1
#define AF_INET 2
#define AF_NETLINK 16
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_TYPE_MASK 0xf
#define SOCK_RAW 3
#define SOCK_PACKET 10

/* The protocol codes that describe a socket; 0 codes: not a socket the rules name. */
static __always_inline int socket_codes(int family, int type, int protocol, __u64 *codes, __u32 *args)
{
	int n = 0, inet, t = type & SOCK_TYPE_MASK;
	int raw = t == SOCK_RAW || t == SOCK_PACKET || family == AF_PACKET;

	if (family == AF_UNIX || family == AF_NETLINK)
		return 0;
	inet = family == AF_INET || family == AF_INET6;
	if (!inet && family != AF_PACKET && !raw)
		return 0;
	args[0] = family;
	args[1] = type;
	args[2] = protocol;
	if (!inet && family != AF_PACKET) {
		codes[0] = WARDEN_PROTO_RAW; /* a raw socket of another family (CAN, XDP, ...): only "raw" */
		return 1;
	}
	codes[n++] = WARDEN_PROTO_ALL;
	/* the socket type: stream, dgram, rdm, seqpacket, dccp; raw and packet below */
	switch (t) {
	case 1: codes[n++] = WARDEN_PROTO_STREAM; break;
	case 2: codes[n++] = WARDEN_PROTO_DGRAM; break;
	case 4: codes[n++] = WARDEN_PROTO_RDM; break;
	case 5: codes[n++] = WARDEN_PROTO_SEQPACKET; break;
	case 6: codes[n++] = WARDEN_PROTO_DCCP; break;
	}
	if (raw)
		codes[n & 3] = WARDEN_PROTO_RAW, n++;
	if (!inet || t == SOCK_PACKET) {
		codes[n & 3] = WARDEN_PROTO_PACKET, n++;
		return n;
	}
	/* the IP protocol, explicit or implied by the type (0 = the type's default) */
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
	return n;
}

SEC("lsm/socket_create")
int BPF_PROG(warden_socket_create, int family, int type, int protocol, int kern, int ret)
{
	__u64 codes[4] = {};
	__u32 args[4] = {};
	int n;

	if (ret)
		return ret;
	if (kern)
		return 0; /* the kernel's own sockets */
	n = socket_codes(family, type, protocol, codes, args);
	if (!n)
		return 0;
	return enforce_codes(WARDEN_HOOK_SOCKET_CREATE, WARDEN_CAT_NETWORK, codes, n, args, 0);
}

/*
 * A socket made before the policy (or received over a unix socket) never met socket_create's
 * decision: its sends and connects are decided again, refusing only (a Block rule, or a Block
 * posture with no Allow): an Audit rule was alerted at creation, not at every packet.
 */
static __always_inline int recheck_socket(__u16 hook, struct socket *sock)
{
	struct sock *sk = sock->sk;
	__u64 codes[4] = {};
	__u32 args[4] = {};
	int n;

	if (!sk)
		return 0;
	n = socket_codes(sk->__sk_common.skc_family, sk->sk_type, sk->sk_protocol, codes, args);
	if (!n)
		return 0;
	return enforce_codes(hook, WARDEN_CAT_NETWORK, codes, n, args, 1);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(warden_socket_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return ret;
	return recheck_socket(WARDEN_HOOK_SOCKET_SENDMSG, sock);
}

SEC("lsm/socket_connect")
int BPF_PROG(warden_socket_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	return recheck_socket(WARDEN_HOOK_SOCKET_CONNECT, sock);
}
