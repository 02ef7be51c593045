/*
 * transport.h — the fetch engine behind include/netstash/fetch.h: libcurl
 * multi driven by the context's libuv loop (socket API), HTTP/1.1 and HTTP/2
 * over TLS. Internal.
 */
#ifndef NS_TRANSPORT_TRANSPORT_H
#define NS_TRANSPORT_TRANSPORT_H

#include "ns_setup.h"

#include "core/ctx.h"

typedef struct ns_transport ns_transport;

netstash_error ns_transport_new(netstash_ctx *ctx, ns_transport **out, char *detail,
                                size_t detail_len);
/* Loop thread (or before the loop started): ends every fetch with
 * NETSTASH_E_CANCELED, closes handles. NULL accepted. */
void ns_transport_shutdown(ns_transport *tr);
/* After the loop ended. NULL accepted. */
void ns_transport_del(ns_transport *tr);
/* The HTTP cache's writer committed a batch (ns_httpcache_set_writer's
 * notify; ud: the context): posts its settling to the loop. */
void ns_transport_hc_notify(void *ud);

/* Stops (pause 1) or restarts reading a fetch's response (the
 * interceptor's pull mode). Loop thread; NETSTASH_E_ILLEGAL_STATE when the
 * fetch has no transfer on the network (answered from a store, ended). */
netstash_error ns_transport_pause(netstash_fetch *f, int pause);

#endif
