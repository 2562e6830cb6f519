/* Helpers for what bindgen cannot see: macros and thread-local storage. */
#include <string.h>
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_mbuf.h>

int fg_rte_errno(void)
{
	return rte_errno;
}

void *fg_mbuf_data(struct rte_mbuf *m)
{
	return (char *)m->buf_addr + m->data_off;
}

uint16_t fg_mbuf_data_len(const struct rte_mbuf *m)
{
	return m->data_len;
}

int fg_mbuf_fill(struct rte_mbuf *m, const void *src, uint16_t len)
{
	char *dst = rte_pktmbuf_append(m, len);

	if (dst == NULL)
		return -1;
	memcpy(dst, src, len);
	return 0;
}
