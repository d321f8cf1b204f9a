/* SPDX-License-Identifier: GPL-2.0 */
/*
 * net_guard_types.h: the protocol codes net_guard looks up in warden_rules (a network rule's key
 * `hash`). User space writes the same codes: bpf/kernel/maps.py PROTOCOL_CODES, checked against
 * this header by tests/test_engine_maps.py.
 */
#ifndef NET_GUARD_TYPES_H
#define NET_GUARD_TYPES_H

/* KubeArmor's matchProtocols names, lowercase: WARDEN_PROTO_<NAME> is the code of "<name>". */
enum warden_protocol {
	WARDEN_PROTO_TCP = 1,
	WARDEN_PROTO_UDP = 2,
	WARDEN_PROTO_ICMP = 3,
	WARDEN_PROTO_ICMPV6 = 4,
	WARDEN_PROTO_RAW = 5,
	WARDEN_PROTO_SCTP = 6,
	WARDEN_PROTO_STREAM = 7,
	WARDEN_PROTO_DGRAM = 8,
	WARDEN_PROTO_RDM = 9,
	WARDEN_PROTO_SEQPACKET = 10,
	WARDEN_PROTO_DCCP = 11,
	WARDEN_PROTO_PACKET = 12,
	WARDEN_PROTO_ALL = 13,
};

#endif /* NET_GUARD_TYPES_H */
