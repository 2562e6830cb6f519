/* What ferrogate uses from DPDK. bindgen reads this with the full
 * `pkg-config --cflags libdpdk`; its static inline functions get C wrappers
 * (wrap_static_fns) compiled by build.rs. */
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_bus_vdev.h>
#include <rte_ring.h>

/* Hand-written helpers (helpers.c): rte_errno is a thread-local macro, and
 * rte_pktmbuf_mtod is a macro over buf_addr + data_off. */
int fg_rte_errno(void);
void *fg_mbuf_data(struct rte_mbuf *m);
uint16_t fg_mbuf_data_len(const struct rte_mbuf *m);
/* Appends `len` bytes copied from `src` to an empty mbuf; 0 on success. */
int fg_mbuf_fill(struct rte_mbuf *m, const void *src, uint16_t len);
