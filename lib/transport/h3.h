/*
 * h3.h — HTTP/3 over QUIC for the fetch engine: ngtcp2 (QUIC) + nghttp3
 * (HTTP/3 framing, QPACK) + ngtcp2's GnuTLS crypto backend, on UDP sockets
 * driven by the context's libuv loop. Internal.
 *
 * One engine per transport keeps a pool of QUIC connections keyed by
 * (origin host, origin port, address, UDP port); every fetch hop sent over h3
 * is one bidirectional stream on a pooled connection. Response events go back
 * to transport.c through the hop functions of transport/hop.h, so content
 * decoding, the HTTP cache, cookies, redirects and limits are the same code
 * for every HTTP version.
 *
 * Certificate rules are the TCP path's: the context's CA file/dir (else the
 * system store), the host name checked against the certificate, TLS 1.3 only
 * (QUIC has nothing else), the same error codes.
 */
#ifndef NS_TRANSPORT_H3_H
#define NS_TRANSPORT_H3_H

#include "ns_setup.h"

#include "core/ctx.h"

typedef struct ns_h3 ns_h3;

/* Where a hop goes over h3. */
typedef struct ns_h3_target {
  const char *host; /* origin host: SNI, certificate check, :authority */
  int port;         /* origin port (:authority) */
  const char *addr; /* numeric IPv4/IPv6 address to send to */
  int udp_port;     /* the alternative's port */
} ns_h3_target;

/* Why a hop handed back to TCP (ns_hop_h3_fallback). */
typedef enum ns_h3_fallback {
  NS_H3_FB_SLOW = 1,  /* handshake not done within the race delay */
  NS_H3_FB_FAILED = 2 /* the QUIC connection failed (UDP blocked, TLS, …) */
} ns_h3_fallback;

netstash_error ns_h3_new(netstash_ctx *ctx, ns_h3 **out);
/* Loop thread: closes every connection (CONNECTION_CLOSE sent, handles
 * closed); streams still attached are dropped without callbacks (the
 * transport ends their fetches first). NULL accepted. */
void ns_h3_shutdown(ns_h3 *h);
/* After the loop ended. NULL accepted. */
void ns_h3_del(ns_h3 *h);

/* Sends f's current hop (method_of, f->hdr_list, in-memory body) over h3.
 * race_ms > 0: the hop may fall back to TCP — when the connection is not
 * established within race_ms, or fails while connecting, the hop is handed
 * back through ns_hop_h3_fallback(). race_ms == 0: h3 is forced, failures end
 * the hop with their error. Errors returned here are immediate (no stream). */
netstash_error ns_h3_start(ns_h3 *h, netstash_fetch *f, const ns_h3_target *t, uint32_t race_ms);
/* Detaches f from its stream (reset with H3_REQUEST_CANCELLED when still
 * open); no more hop calls for f. No-op when f has no stream. */
void ns_h3_detach(netstash_fetch *f);
/* Pull mode: stops (1) or restarts (0) delivering f's body; while paused,
 * received data is held and the stream's flow-control window is not
 * extended, so the server stops sending. */
netstash_error ns_h3_pause(netstash_fetch *f, int pause);

/* Counters for tests and benchmarks. */
typedef struct ns_h3_stats {
  uint64_t conns_opened, handshakes, streams, resumed, zero_rtt;
} ns_h3_stats;
void ns_h3_get_stats(const ns_h3 *h, ns_h3_stats *out);

#endif
