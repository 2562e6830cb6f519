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
 * Filter tier (VIP traffic only; host traffic always passes): the source is
 * looked up in an LPM trie of allow/deny CIDRs (longest prefix wins; in
 * allow-list mode an unmatched source is dropped), then the escalated
 * (blocked) sources, then per-VIP L4 rules
 * (allowed protocol/port pairs), then up to FG_MAX_RATE_RULES token buckets
 * (packets/s and bytes/s with bursts, keyed by source prefix or global,
 * optionally SYN-only, per VIP/port/protocol) kept in an LRU map so a spoofed
 * flood cannot exhaust it. Rule sets are double-buffered: userspace fills the
 * inactive generation, then flips `config.generation`; each frame reads the
 * generation once, so it sees either the old or the new set, never a mix.
 *
 * Counters: every frame increments exactly one *verdict* counter
 * (PASS_HOST, REDIRECT_VIP, PASS_VIP, DROP_*). The other counters classify:
 * ARP_VIP + IPV4_VIP + IPV6_VIP counts VIP frames that passed the filter, the
 * MALFORMED_* counters count malformed frames per reason, whatever their
 * verdict, and BAD_TCP_FLAGS counts impossible flag combinations (dropped as
 * malformed L4). Each rule also has per-CPU packets/bytes in
 * `rule_counters[rule index]`.
 *
 * Escalated sources (issue #20): `blocked4` / `blocked6` map a source
 * address to an expiry (bpf_ktime_get_ns, CLOCK_MONOTONIC). Userspace (an L7
 * rate limit) inserts abusive clients with a TTL; a VIP frame from a source
 * whose expiry is still ahead is dropped (DROP_ESCALATED) right after the
 * CIDR lookup. Expired entries are ignored here and swept by userspace.
 *
 * Documented drops for VIP traffic: malformed headers (every truncation, IHL
 * < 5, bad lengths, TCP data offset, bogus TCP flags: none, SYN+FIN, SYN+RST,
 * FIN/PSH/URG without ACK), IP fragments (the stack does not reassemble; TCP
 * from compliant peers sets DF), IPv6 extension chains longer than
 * FG_MAX_EXT_HEADERS or truncated, and well-formed frames carrying one
 * 802.1Q/802.1ad tag (DROP_VLAN_VIP: the stack speaks untagged Ethernet
 * only and would drop them silently). The tag is parsed so that a tagged
 * frame to a VIP is told from host traffic; tagged host traffic passes.
 * Non-VIP traffic is counted and passed.
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
#define FG_MAX_RULES 1024
#define FG_MAX_RATE_RULES 16
#define FG_MAX_PREFIXES (2 * 1024 * 1024)
#define FG_MAX_BUCKETS (256 * 1024)
#define FG_MAX_L4_RULES 4096
#define FG_MAX_EXT_HEADERS 6
#define FG_MAX_BLOCKED 65536
#define NSEC_PER_SEC 1000000000ULL

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
	FG_CNT_DROP_DENY,
	FG_CNT_DROP_NOT_ALLOWED,
	FG_CNT_DROP_RATE,
	FG_CNT_DROP_L4,
	FG_CNT_DROP_FRAGMENT_VIP,
	FG_CNT_DROP_NO_SOCKET,
	FG_CNT_BAD_TCP_FLAGS,
	FG_CNT_DROP_VLAN_VIP,
	FG_CNT_DROP_ESCALATED,
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

/* config.vip_miss: VIP frame on a queue without a socket (engine gone). */
enum fg_vip_miss {
	FG_MISS_PASS = 0, /* fail open: the kernel sees it (and drops it) */
	FG_MISS_DROP = 1, /* fail closed */
};

struct fg_config {
	__u32 vip_action;
	__u32 generation; /* 0 or 1: the active rule set */
	__u32 vip_miss;
	__u32 reserved;
};

/* Rate rule flags. */
#define FG_RATE_SYN_ONLY (1u << 0)
#define FG_RATE_MATCH_VIP (1u << 1)
#define FG_RATE_MATCH_PORT (1u << 2)
#define FG_RATE_MATCH_PROTO (1u << 3)
#define FG_RATE_GLOBAL (1u << 4)

struct fg_rate_rule {
	__u32 rule; /* index into rule_counters */
	__u32 flags;
	__u8 vip[16]; /* IPv4 in the first 4 bytes (network order) */
	__u16 port; /* network order */
	__u8 proto;
	__u8 prefix4; /* source prefix length that keys the bucket */
	__u8 prefix6;
	__u8 vip_is_v6;
	__u8 pad[2];
	__u64 pps; /* 0: no packet limit */
	__u64 burst_pkts;
	__u64 bps; /* bytes/s, 0: no byte limit */
	__u64 burst_bytes;
};

/* One generation of settings that are not per-prefix. */
struct fg_ruleset {
	__u32 default_deny; /* allow-list mode: unmatched sources are dropped */
	__u32 not_allowed_rule; /* rule counter for allow-list-mode drops */
	__u32 n_rate;
	__u32 pad;
	struct fg_rate_rule rate[FG_MAX_RATE_RULES];
};

_Static_assert(sizeof(struct fg_rate_rule) == 64, "fg_rate_rule layout");
_Static_assert(sizeof(struct fg_ruleset) == 16 + 64 * FG_MAX_RATE_RULES,
	       "fg_ruleset layout");

struct fg_lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct fg_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

enum fg_cidr_action {
	FG_CIDR_DENY = 0,
	FG_CIDR_ALLOW = 1,
	/* An upstream endpoint: its replies bypass every client rule. */
	FG_CIDR_UPSTREAM = 2,
};

struct fg_cidr_value {
	__u32 rule;
	__u32 action;
};

struct fg_l4_key {
	__u8 vip[16];
	__u8 proto; /* 0 with port 0: the VIP is restricted to listed pairs */
	__u8 pad;
	__u16 port; /* network order; 0 for protocols without ports */
};

struct fg_bucket_key {
	__u32 rule;
	__u32 pad;
	__u8 addr[16];
};

struct fg_bucket {
	__u64 last_ns;
	__u64 pkt_tokens; /* packets * 1e9 */
	__u64 byte_tokens; /* bytes * 1e9 */
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


#define FG_LPM_MAP(name, keytype)                                              \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                           \
		__uint(max_entries, FG_MAX_PREFIXES);                          \
		__uint(map_flags, BPF_F_NO_PREALLOC);                          \
		__type(key, keytype);                                          \
		__type(value, struct fg_cidr_value);                           \
	} name SEC(".maps")

FG_LPM_MAP(cidr4_0, struct fg_lpm4);
FG_LPM_MAP(cidr4_1, struct fg_lpm4);
FG_LPM_MAP(cidr6_0, struct fg_lpm6);
FG_LPM_MAP(cidr6_1, struct fg_lpm6);

#define FG_L4_MAP(name)                                                        \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_HASH);                               \
		__uint(max_entries, FG_MAX_L4_RULES);                          \
		__type(key, struct fg_l4_key);                                 \
		__type(value, __u32);                                          \
	} name SEC(".maps")

FG_L4_MAP(l4_0);
FG_L4_MAP(l4_1);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct fg_ruleset);
} rulesets SEC(".maps");

/*
 * Escalated sources: source address -> expiry (bpf_ktime_get_ns). Written by
 * userspace only (no preallocation: the set is usually tiny).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FG_MAX_BLOCKED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* IPv4 source, network byte order */
	__type(value, __u64);
} blocked4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FG_MAX_BLOCKED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fg_vip6); /* IPv6 source */
	__type(value, __u64);
} blocked6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FG_MAX_BUCKETS);
	__type(key, struct fg_bucket_key);
	__type(value, struct fg_bucket);
} buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct fg_counter_value);
} rule_counters SEC(".maps");

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

/* What the filter needs to know about an IP frame to a VIP. */
struct fg_pkt {
	__u8 src[16]; /* IPv4 in the first 4 bytes */
	__u8 dst[16];
	__u64 bytes;
	__u16 dport; /* network order; 0 without ports */
	__u8 v6;
	__u8 proto;
	__u8 syn; /* SYN without ACK: a new connection */
	__u8 exempt; /* neighbour discovery: never filtered */
	__u8 pad[2];
};

static __always_inline void count_rule(__u32 rule, __u64 bytes)
{
	struct fg_counter_value *c = bpf_map_lookup_elem(&rule_counters, &rule);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline struct fg_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* A VIP frame that passed the filter: redirect to the queue's socket or pass. */
static __always_inline int vip_verdict(struct xdp_md *ctx, __u32 proto_counter,
				       __u64 bytes)
{
	struct fg_config *cfg = get_config();
	long act = XDP_PASS;

	count(proto_counter, bytes);
	if (cfg && cfg->vip_action == FG_VIP_REDIRECT_XSK) {
		__u64 miss = cfg->vip_miss == FG_MISS_DROP ? XDP_DROP : XDP_PASS;

		act = bpf_redirect_map(&xsks, ctx->rx_queue_index, miss);
	}
	if (act == XDP_REDIRECT) {
		count(FG_CNT_REDIRECT_VIP, bytes);
		return XDP_REDIRECT;
	}
	if (act == XDP_DROP) {
		count(FG_CNT_DROP_NO_SOCKET, bytes);
		return XDP_DROP;
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

/* A well-formed VIP frame under a VLAN tag: the stack cannot answer it. */
static __always_inline int drop_vlan(__u64 bytes)
{
	count(FG_CNT_DROP_VLAN_VIP, bytes);
	return XDP_DROP;
}

static __always_inline int drop(__u32 verdict, __u32 rule, __u64 bytes)
{
	count(verdict, bytes);
	count_rule(rule, bytes);
	return XDP_DROP;
}

/* Impossible TCP flag combinations (scans, fingerprinting, state attacks). */
static __always_inline int bogus_tcp_flags(const struct tcphdr *th)
{
	if (!th->syn && !th->ack && !th->rst && !th->fin && !th->psh &&
	    !th->urg)
		return 1; /* null scan */
	if (th->syn && (th->fin || th->rst))
		return 1;
	if (!th->ack && (th->fin || th->psh || th->urg))
		return 1; /* FIN/xmas scans */
	return 0;
}

/*
 * Validates the TCP or UDP header at `l4`, with `l4_len` bytes of IP payload,
 * and records ports and flags in `pkt`. Returns 0 when fine (or another
 * protocol), -1 when malformed, -2 for bogus TCP flags.
 */
static __always_inline int parse_l4(void *l4, void *data_end, __u32 l4_len,
				    struct fg_pkt *pkt)
{
	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) > data_end || l4_len < sizeof(*th))
			return -1;
		doff = th->doff;
		if (doff < 5 || doff * 4 > l4_len)
			return -1;
		if (bogus_tcp_flags(th))
			return -2;
		pkt->dport = th->dest;
		pkt->syn = th->syn && !th->ack;
	} else if (pkt->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || l4_len < sizeof(*uh))
			return -1;
		pkt->dport = uh->dest;
	}
	return 0;
}

static __always_inline void mask_prefix(__u8 *addr, __u32 bits)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (bits >= 8) {
			bits -= 8;
		} else {
			addr[i] &= (__u8)(0xff << (8 - bits));
			bits = 0;
		}
	}
}

static __always_inline int same_addr(const __u8 *a, const __u8 *b, int v6)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	if (x[0] != y[0])
		return 0;
	if (!v6)
		return 1;
	return x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Refills the bucket for the time since its last use and takes one packet. */
static __always_inline int bucket_take(struct fg_bucket *b,
				       const struct fg_rate_rule *r, __u64 now,
				       __u64 bytes)
{
	__u64 elapsed = now > b->last_ns ? now - b->last_ns : 0;

	b->last_ns = now;
	if (r->pps) {
		__u64 cap = r->burst_pkts * NSEC_PER_SEC;

		if (elapsed >= cap / r->pps)
			b->pkt_tokens = cap;
		else if (b->pkt_tokens + elapsed * r->pps > cap)
			b->pkt_tokens = cap;
		else
			b->pkt_tokens += elapsed * r->pps;
	}
	if (r->bps) {
		__u64 cap = r->burst_bytes * NSEC_PER_SEC;

		if (elapsed >= cap / r->bps)
			b->byte_tokens = cap;
		else if (b->byte_tokens + elapsed * r->bps > cap)
			b->byte_tokens = cap;
		else
			b->byte_tokens += elapsed * r->bps;
	}
	if (r->pps && b->pkt_tokens < NSEC_PER_SEC)
		return -1;
	if (r->bps && b->byte_tokens < bytes * NSEC_PER_SEC)
		return -1;
	if (r->pps)
		b->pkt_tokens -= NSEC_PER_SEC;
	if (r->bps)
		b->byte_tokens -= bytes * NSEC_PER_SEC;
	return 0;
}

/* Applies one rate rule; 0 = within the rate (or not matched), -1 = over. */
static __always_inline int rate_check(const struct fg_rate_rule *r,
				      const struct fg_pkt *pkt, __u64 now)
{
	struct fg_bucket_key key = {};
	struct fg_bucket *b;

	if ((r->flags & FG_RATE_SYN_ONLY) && !pkt->syn)
		return 0;
	if ((r->flags & FG_RATE_MATCH_PROTO) && r->proto != pkt->proto)
		return 0;
	if ((r->flags & FG_RATE_MATCH_PORT) && r->port != pkt->dport)
		return 0;
	if (r->flags & FG_RATE_MATCH_VIP) {
		if (r->vip_is_v6 != pkt->v6 || !same_addr(r->vip, pkt->dst, pkt->v6))
			return 0;
	}
	key.rule = r->rule;
	/* A global rule has one bucket for both families; a source bucket
	 * keeps them apart (an IPv4 address is not the IPv6 one it prefixes). */
	if (!(r->flags & FG_RATE_GLOBAL)) {
		key.pad = pkt->v6;
		__builtin_memcpy(key.addr, pkt->src, sizeof(key.addr));
		mask_prefix(key.addr, pkt->v6 ? r->prefix6 : r->prefix4);
	}
	b = bpf_map_lookup_elem(&buckets, &key);
	if (!b) {
		struct fg_bucket fresh = {
			.last_ns = now,
			.pkt_tokens = r->burst_pkts * NSEC_PER_SEC,
			.byte_tokens = r->burst_bytes * NSEC_PER_SEC,
		};

		bucket_take(&fresh, r, now, pkt->bytes);
		bpf_map_update_elem(&buckets, &key, &fresh, BPF_ANY);
		return 0;
	}
	return bucket_take(b, r, now, pkt->bytes);
}

static __always_inline struct fg_cidr_value *cidr_lookup(__u32 gen,
							const struct fg_pkt *pkt)
{
	if (pkt->v6) {
		struct fg_lpm6 k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, pkt->src, 16);
		if (gen)
			return bpf_map_lookup_elem(&cidr6_1, &k);
		return bpf_map_lookup_elem(&cidr6_0, &k);
	} else {
		struct fg_lpm4 k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, pkt->src, 4);
		if (gen)
			return bpf_map_lookup_elem(&cidr4_1, &k);
		return bpf_map_lookup_elem(&cidr4_0, &k);
	}
}

/* Whether the source is an escalated (blocked) one whose expiry is ahead. */
static __always_inline int escalated(const struct fg_pkt *pkt)
{
	__u64 *until;

	if (pkt->v6) {
		struct fg_vip6 k;

		__builtin_memcpy(k.addr, pkt->src, sizeof(k.addr));
		until = bpf_map_lookup_elem(&blocked6, &k);
	} else {
		__u32 k;

		__builtin_memcpy(&k, pkt->src, sizeof(k));
		until = bpf_map_lookup_elem(&blocked4, &k);
	}
	/* The clock is read on a hit only; an expired entry passes on. */
	return until && bpf_ktime_get_ns() < *until;
}

static __always_inline __u32 *l4_lookup(__u32 gen, struct fg_l4_key *k)
{
	if (gen)
		return bpf_map_lookup_elem(&l4_1, k);
	return bpf_map_lookup_elem(&l4_0, k);
}

/*
 * The filter tier for an IP frame to a VIP. Returns -1 to continue to the
 * VIP verdict, or an XDP action (the frame was dropped and counted).
 */
static __always_inline int filter(const struct fg_pkt *pkt)
{
	struct fg_config *cfg = get_config();
	struct fg_ruleset *rs;
	struct fg_cidr_value *cv;
	struct fg_l4_key lk = {};
	__u32 gen, *marker, n;
	__u64 now;

	if (!cfg || pkt->exempt)
		return -1;
	gen = cfg->generation & 1;
	rs = bpf_map_lookup_elem(&rulesets, &gen);
	if (!rs)
		return -1;

	cv = cidr_lookup(gen, pkt);
	if (cv) {
		if (cv->action == FG_CIDR_UPSTREAM) {
			count_rule(cv->rule, pkt->bytes);
			return -1;
		}
		if (cv->action == FG_CIDR_DENY)
			return drop(FG_CNT_DROP_DENY, cv->rule, pkt->bytes);
		count_rule(cv->rule, pkt->bytes);
	} else if (rs->default_deny) {
		return drop(FG_CNT_DROP_NOT_ALLOWED, rs->not_allowed_rule,
			    pkt->bytes);
	}

	/*
	 * Escalated sources: after the CIDR decision, so upstream replies stay
	 * exempt (an origin must never be cut off by a client-side limit) and
	 * the operator's deny / allow-list rules keep their own counters; before
	 * the L4 lookups and the rate buckets, so a blocked source costs one hash
	 * lookup and takes no bucket tokens from legitimate clients. Userspace
	 * never inserts allow-listed sources, so checking allowed ones too is
	 * harmless and saves a branch.
	 */
	if (escalated(pkt)) {
		count(FG_CNT_DROP_ESCALATED, pkt->bytes);
		return XDP_DROP;
	}

	__builtin_memcpy(lk.vip, pkt->dst, 16);
	marker = l4_lookup(gen, &lk);
	if (marker) {
		__u32 restricted_rule = *marker;

		lk.proto = pkt->proto;
		lk.port = pkt->dport;
		if (!l4_lookup(gen, &lk))
			return drop(FG_CNT_DROP_L4, restricted_rule, pkt->bytes);
	}

	n = rs->n_rate;
	if (n == 0)
		return -1;
	now = bpf_ktime_get_ns();
	for (__u32 i = 0; i < FG_MAX_RATE_RULES; i++) {
		if (i >= n)
			break;
		if (rate_check(&rs->rate[i], pkt, now) < 0)
			return drop(FG_CNT_DROP_RATE, rs->rate[i].rule,
				    pkt->bytes);
	}
	return -1;
}

static __always_inline int is_vip_bytes(const __u8 *addr, int v6)
{
	if (v6) {
		struct fg_vip6 key;

		__builtin_memcpy(key.addr, addr, sizeof(key.addr));
		return bpf_map_lookup_elem(&vips6, &key) != NULL;
	}
	__u32 a;

	__builtin_memcpy(&a, addr, 4);
	return is_vip4(a);
}

static __always_inline int handle_arp(struct xdp_md *ctx, void *l3,
				      void *data_end, __u64 bytes, int tagged)
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
	if (tagged)
		return drop_vlan(bytes);
	return vip_verdict(ctx, FG_CNT_ARP_VIP, bytes);
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, void *l3,
				       void *data_end, __u64 bytes, int tagged)
{
	struct iphdr *iph = l3;
	struct fg_pkt pkt = { .bytes = bytes };
	__u32 avail, ihl, hlen, tot_len;
	int vip, r;

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
	/* Fragments: the stack does not reassemble; ports are unknown. */
	if (iph->frag_off & bpf_htons(0x3FFF)) {
		count(FG_CNT_DROP_FRAGMENT_VIP, bytes);
		return XDP_DROP;
	}
	if (hlen > 60) /* for the verifier: ihl is 4 bits */
		return malformed(FG_CNT_MALFORMED_IPV4, vip, bytes);
	pkt.proto = iph->protocol;
	__builtin_memcpy(pkt.src, &iph->saddr, 4);
	__builtin_memcpy(pkt.dst, &iph->daddr, 4);
	r = parse_l4(l3 + hlen, data_end, tot_len - hlen, &pkt);
	if (r == -2)
		count(FG_CNT_BAD_TCP_FLAGS, bytes);
	if (r < 0)
		return malformed(FG_CNT_MALFORMED_L4, vip, bytes);
	/* After the malformed checks, before any rule: rules never see it. */
	if (tagged)
		return drop_vlan(bytes);
	r = filter(&pkt);
	if (r >= 0)
		return r;
	return vip_verdict(ctx, FG_CNT_IPV4_VIP, bytes);
}

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#define NEXTHDR_ICMPV6 58
#define ICMPV6_NS 135

struct ipv6_opt_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline int handle_ipv6(struct xdp_md *ctx, void *l3,
				       void *data_end, __u64 bytes, int tagged)
{
	struct ipv6hdr *ip6 = l3;
	struct fg_pkt pkt = { .bytes = bytes, .v6 = 1 };
	__u32 avail, payload, consumed = 0;
	void *cur;
	__u8 next;
	int vip, r;

	if ((void *)(ip6 + 1) > data_end)
		return malformed(FG_CNT_MALFORMED_IPV6, 0, bytes);
	vip = is_vip6(&ip6->daddr);
	avail = (__u32)((long)data_end - (long)l3) - sizeof(*ip6);
	payload = bpf_ntohs(ip6->payload_len);
	if (payload > avail)
		return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes);

	/* Walk the extension header chain (bounded). */
	next = ip6->nexthdr;
	cur = ip6 + 1;
#pragma unroll
	for (int i = 0; i < FG_MAX_EXT_HEADERS; i++) {
		struct ipv6_opt_hdr_min *eh = cur;
		__u32 len;

		if (next != NEXTHDR_HOP && next != NEXTHDR_ROUTING &&
		    next != NEXTHDR_DEST && next != NEXTHDR_AUTH &&
		    next != NEXTHDR_FRAGMENT)
			break;
		if ((void *)(eh + 1) > data_end)
			return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes);
		if (next == NEXTHDR_FRAGMENT) {
			if (!vip)
				return pass_host(bytes);
			count(FG_CNT_DROP_FRAGMENT_VIP, bytes);
			return XDP_DROP;
		}
		len = next == NEXTHDR_AUTH ? ((__u32)eh->hdrlen + 2) * 4 :
					     ((__u32)eh->hdrlen + 1) * 8;
		consumed += len;
		if (consumed > payload)
			return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes);
		next = eh->nexthdr;
		cur += len;
		if (cur > data_end)
			return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes);
	}
	if (next == NEXTHDR_HOP || next == NEXTHDR_ROUTING ||
	    next == NEXTHDR_DEST || next == NEXTHDR_AUTH ||
	    next == NEXTHDR_FRAGMENT)
		return malformed(FG_CNT_MALFORMED_IPV6, vip, bytes); /* too long */

	pkt.proto = next;
	if (next == NEXTHDR_ICMPV6) {
		/* type(1) code(1) csum(2) body; NS: reserved(4) target(16) */
		__u8 *icmp = cur;

		if ((void *)(icmp + 4) > data_end)
			return vip ? malformed(FG_CNT_MALFORMED_L4, vip, bytes) :
				     pass_host(bytes);
		/* Neighbour discovery (133..137) is never filtered. */
		pkt.exempt = icmp[0] >= 133 && icmp[0] <= 137;
		/* A solicitation for a VIP goes to the solicited-node group. */
		if (!vip && icmp[0] == ICMPV6_NS) {
			if ((void *)(icmp + 24) > data_end)
				return pass_host(bytes);
			vip = is_vip_bytes(icmp + 8, 1);
		}
	}
	if (!vip)
		return pass_host(bytes);
	__builtin_memcpy(pkt.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt.dst, &ip6->daddr, 16);
	r = parse_l4(cur, data_end, payload - consumed, &pkt);
	if (r == -2)
		count(FG_CNT_BAD_TCP_FLAGS, bytes);
	if (r < 0)
		return malformed(FG_CNT_MALFORMED_L4, vip, bytes);
	/* After the malformed checks, before any rule: rules never see it. */
	if (tagged)
		return drop_vlan(bytes);
	r = filter(&pkt);
	if (r >= 0)
		return r;
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
	int tagged = 0;

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
		tagged = 1;
	}

	if (proto == bpf_htons(ETH_P_ARP))
		return handle_arp(ctx, l3, data_end, bytes, tagged);
	if (proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, l3, data_end, bytes, tagged);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(ctx, l3, data_end, bytes, tagged);
	/* Anything else (incl. a second VLAN tag) belongs to the host. */
	return pass_host(bytes);
}

char LICENSE[] SEC("license") = "GPL";
