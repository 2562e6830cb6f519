// SPDX-License-Identifier: GPL-2.0
/*
 * ferrogate XDP program.
 *
 * Decides per frame whether it belongs to the userspace stack (a VIP frame:
 * ARP whose target protocol address is a VIP, IPv4/IPv6 whose destination is a
 * VIP) or to the host kernel. VIP frames are redirected to the AF_XDP socket
 * of the receiving queue (or passed to the kernel for the AF_PACKET backend);
 * everything else is passed. Host traffic is never dropped: malformed frames
 * that are not addressed to a VIP are counted and passed (the kernel drops
 * them itself).
 *
 * Counters: every frame increments exactly one *verdict* counter
 * (PASS_HOST, REDIRECT_VIP, PASS_VIP, DROP_MALFORMED_VIP). The other counters
 * classify: ARP_VIP + IPV4_VIP + IPV6_VIP == REDIRECT_VIP + PASS_VIP, and the
 * MALFORMED_* counters count malformed frames per reason, whatever their
 * verdict.
 *
 * Keep `enum fg_counter` in step with `ferrogate_ebpf::counters` (a unit test
 * parses this file).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Not every uapi header set has these. */
#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif

#define FG_MAX_QUEUES 64
#define FG_MAX_VIPS 4096

/* Indices of the `counters` per-CPU array. */
enum fg_counter {
	FG_CNT_PASS_HOST = 0,
	FG_CNT_REDIRECT_VIP,
	FG_CNT_PASS_VIP,
	FG_CNT_DROP_MALFORMED_VIP,
	FG_CNT_ARP_VIP,
	FG_CNT_IPV4_VIP,
	FG_CNT_IPV6_VIP,
	FG_CNT_MALFORMED_ETH,
	FG_CNT_MALFORMED_VLAN,
	FG_CNT_MALFORMED_ARP,
	FG_CNT_MALFORMED_IPV4,
	FG_CNT_MALFORMED_IPV6,
	FG_CNT_MALFORMED_L4,
	FG_CNT_MAX,
};

/* config.vip_action */
enum fg_vip_action {
	FG_VIP_REDIRECT_XSK = 0,
	FG_VIP_PASS = 1,
};

struct fg_counter_value {
	__u64 packets;
	__u64 bytes;
};

struct fg_config {
	__u32 vip_action;
	__u32 reserved;
};

struct fg_vip6 {
	__u8 addr[16];
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* ARP for Ethernet/IPv4 (the fixed 28-byte body). */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FG_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FG_MAX_VIPS);
	__type(key, __u32); /* IPv4 address, network byte order */
	__type(value, __u32); /* flags (reserved, 0) */
} vips4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FG_MAX_VIPS);
	__type(key, struct fg_vip6);
	__type(value, __u32);
} vips6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fg_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FG_CNT_MAX);
	__type(key, __u32);
	__type(value, struct fg_counter_value);
} counters SEC(".maps");

static __always_inline void count(__u32 idx, __u64 bytes)
{
	struct fg_counter_value *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline int is_vip4(__u32 addr)
{
	return bpf_map_lookup_elem(&vips4, &addr) != NULL;
}

static __always_inline int is_vip6(const struct in6_addr *addr)
{
	struct fg_vip6 key;

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&vips6, &key) != NULL;
}

/* A well-formed VIP frame: redirect to the queue's socket or pass. */
static __always_inline int vip_verdict(struct xdp_md *ctx, __u32 proto_counter,
				       __u64 bytes)
{
	__u32 zero = 0;
	struct fg_config *cfg = bpf_map_lookup_elem(&config, &zero);
	long act = XDP_PASS;

	count(proto_counter, bytes);
	if (cfg && cfg->vip_action == FG_VIP_REDIRECT_XSK)
		act = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (act == XDP_REDIRECT) {
		count(FG_CNT_REDIRECT_VIP, bytes);
		return XDP_REDIRECT;
	}
	count(FG_CNT_PASS_VIP, bytes);
	return XDP_PASS;
}

/* A malformed frame: drop it if it is addressed to a VIP, else pass. */
static __always_inline int malformed(__u32 reason, int to_vip, __u64 bytes)
{
	count(reason, bytes);
	if (to_vip) {
		count(FG_CNT_DROP_MALFORMED_VIP, bytes);
		return XDP_DROP;
	}
	count(FG_CNT_PASS_HOST, bytes);
	return XDP_PASS;
}

static __always_inline int pass_host(__u64 bytes)
{
	count(FG_CNT_PASS_HOST, bytes);
	return XDP_PASS;
}

/*
 * Validates the TCP or UDP header at `l4`, with `l4_len` bytes of IP payload.
 * Returns 0 when fine (or not TCP/UDP), -1 when malformed.
 */
static __always_inline int check_l4(void *l4, void *data_end, __u32 l4_len,
				    __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) > data_end || l4_len < sizeof(*th))
			return -1;
		doff = th->doff;
		if (doff < 5 || doff * 4 > l4_len)
			return -1;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || l4_len < sizeof(*uh))
			return -1;
	}
	return 0;
}

static __always_inline int handle_arp(struct xdp_md *ctx, void *l3,
				      void *data_end, __u64 bytes)
{
	struct arp_ipv4 *arp = l3;
	__u32 tpa;

	if ((void *)(arp + 1) > data_end)
		return malformed(FG_CNT_MALFORMED_ARP, 0, bytes);
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != 6 || arp->plen != 4)
		return pass_host(bytes); /* not Ethernet/IPv4 ARP: not ours */
	__builtin_memcpy(&tpa, arp->tpa, sizeof(tpa));
	if (!is_vip4(tpa))
		return pass_host(bytes);
	return vip_verdict(ctx, FG_CNT_ARP_VIP, bytes);
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, void *l3,
				       void *data_end, __u64 bytes)
{
	struct iphdr *iph = l3;
	__u32 avail, ihl, hlen, tot_len;
	int vip;

	if ((void *)(iph + 1) > data_end)
		return malformed(FG_CNT_MALFORMED_IPV4, 0, bytes);
	vip = is_vip4(iph->daddr);
	avail = (__u32)((long)data_end - (long)l3);
	ihl = iph->ihl;
	hlen = ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	if (ihl < 5 || hlen > avail || tot_len > avail || tot_len < hlen)
		return malformed(FG_CNT_MALFORMED_IPV4, vip, bytes);
	if (!vip)
		return pass_host(bytes);
	/* Non-first fragments carry no L4 header. */
	if ((iph->frag_off & bpf_htons(0x1FFF)) == 0) {
		if (hlen > 60) /* for the verifier: ihl is 4 bits */
			return malformed(FG_CNT_MALFORMED_IPV4, vip, bytes);
		if (check_l4(l3 + hlen, data_end, tot_len - hlen,
			     iph->protocol) < 0)
			return malformed(FG_CNT_MALFORMED_L4, vip, bytes);
	}
	return vip_verdict(ctx, FG_CNT_IPV4_VIP, bytes);
}

static __always_inline int handle_ipv6(struct xdp_md *ctx, void *l3,
				       void *data_end, __u64 bytes)
{
	struct ipv6hdr *ip6 = l3;
	__u32 avail, payload;
	int vip;

	if ((void *)(ip6 + 1) > data_end)
		return malformed(FG_CNT_MALFORMED_IPV6, 0, bytes);
	vip = is_vip6(&ip6->daddr);
	avail = (__u32)((long)data_end - (long)l3) - sizeof(*ip6);
	payload = bpf_ntohs(ip6->payload_len);
	if (payload > avail)
		return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes);
	if (!vip)
		return pass_host(bytes);
	/* Only an L4 header directly after the fixed header is checked. */
	if (check_l4(ip6 + 1, data_end, payload, ip6->nexthdr) < 0)
		return malformed(FG_CNT_MALFORMED_L4, vip, bytes);
	return vip_verdict(ctx, FG_CNT_IPV6_VIP, bytes);
}

SEC("xdp")
int ferrogate_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = (__u64)(data_end - data);
	struct ethhdr *eth = data;
	void *l3;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return malformed(FG_CNT_MALFORMED_ETH, 0, bytes);
	proto = eth->h_proto;
	l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > data_end)
			return malformed(FG_CNT_MALFORMED_VLAN, 0, bytes);
		proto = vh->encap_proto;
		l3 = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_ARP))
		return handle_arp(ctx, l3, data_end, bytes);
	if (proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, l3, data_end, bytes);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(ctx, l3, data_end, bytes);
	/* Anything else (incl. a second VLAN tag) belongs to the host. */
	return pass_host(bytes);
}

char LICENSE[] SEC("license") = "GPL";
