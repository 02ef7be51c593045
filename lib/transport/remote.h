/*
 * remote.h — remote mode (netstash_options_set_remote): hops sent to netd
 * over its unix socket, HTTP/2 with prior knowledge (nghttp2). Internal.
 */
#ifndef NS_TRANSPORT_REMOTE_H
#define NS_TRANSPORT_REMOTE_H

#include "ns_setup.h"

#include "core/ctx.h"

typedef struct ns_remote ns_remote;

netstash_error ns_remote_new(netstash_ctx *ctx, ns_remote **out);
/* Loop thread: drops every stream (the transport ended their fetches) and
 * closes the connection. NULL accepted. */
void ns_remote_shutdown(ns_remote *r);
void ns_remote_del(ns_remote *r);
/* Sends f's current hop (method, f->hdr_list, body) to netd; the answer goes
 * through transport/hop.h. */
netstash_error ns_remote_start(ns_remote *r, netstash_fetch *f);
/* No more hop calls for f; its stream is reset if still open. */
void ns_remote_detach(netstash_fetch *f);
/* Pull mode: stops (1) or restarts consuming f's body (flow control). */
netstash_error ns_remote_pause(netstash_fetch *f, int pause);

#endif
