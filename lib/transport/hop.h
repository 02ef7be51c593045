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
/* The current hop's request as HTTP/2 / HTTP/3 fields: :method, :scheme,
 * :authority, :path (from the URL, no fragment), then f->hdr_list's fields
 * with lower-case names, connection-specific ones dropped, User-Agent added
 * when missing; with_priority adds an RFC 9218 priority field. Pointers
 * refer to out itself, the URL and the header list: valid until the hop's
 * header list changes. */
#define NS_HOP_MAX_FIELDS 128
typedef struct ns_hop_field {
  const char *name, *value;
  size_t nlen, vlen;
} ns_hop_field;
typedef struct ns_hop_fields {
  ns_hop_field f[NS_HOP_MAX_FIELDS];
  size_t n;
  char lower[NS_HOP_MAX_FIELDS][64];
  char authority[300];
  char prio[16];
  char clen[24];
} ns_hop_fields;
void ns_hop_request_fields(netstash_fetch *f, const char *scheme, int with_priority,
                           ns_hop_fields *out);
/* Method and User-Agent of the current hop. */
const char *ns_hop_method(const netstash_fetch *f);
const char *ns_hop_user_agent(const netstash_fetch *f);

#endif
