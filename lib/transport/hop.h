/*
 * hop.h — the response path of one hop, shared by libcurl's callbacks and
 * the HTTP/3 engine (h3.c). Implemented in transport.c. Loop thread only.
 * Internal.
 */
#ifndef NS_TRANSPORT_HOP_H
#define NS_TRANSPORT_HOP_H

#include "ns_setup.h"

#include "transport/fetch.h"

/* A header block starts with this status (1xx blocks may precede the final
 * one). */
void ns_hop_status(netstash_fetch *f, int status);
/* One response field; an error ends the hop (f->fail is set). */
netstash_error ns_hop_header(netstash_fetch *f, const char *name, size_t nlen,
                             const char *value, size_t vlen);
/* End of a header block: returns 0 when the hop must be aborted (f->fail). */
int ns_hop_head_end(netstash_fetch *f);
/* Body bytes off the wire: returns 0 when the hop must be aborted. */
int ns_hop_body(netstash_fetch *f, const uint8_t *data, size_t len);
/* The hop is over: NETSTASH_OK (complete response) or the error; f->timing
 * holds the hop's timings. Follows redirects, serves 304s, ends the fetch. */
void ns_hop_end(netstash_fetch *f, netstash_error err);
/* The h3 attempt gave up before any response byte: the hop goes over TCP. */
void ns_hop_h3_fallback(netstash_fetch *f, int why);
/* A QUIC connection to host:port (the origin) worked or failed: feeds the
 * broken-alternative bookkeeping. */
void ns_hop_h3_conn_status(netstash_ctx *ctx, const char *host, int port, int ok);
/* Method and User-Agent of the current hop. */
const char *ns_hop_method(const netstash_fetch *f);
const char *ns_hop_user_agent(const netstash_fetch *f);

#endif
