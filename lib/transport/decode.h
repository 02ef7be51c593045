/*
 * decode.h — streaming content decoding (RFC 9110 8.4.1): br, gzip, deflate,
 * with a hard cap on decoded bytes (decompression-bomb safe). Internal.
 * Decoder state allocates through the context allocator.
 */
#ifndef NS_TRANSPORT_DECODE_H
#define NS_TRANSPORT_DECODE_H

#include "ns_setup.h"

typedef enum ns_coding {
  NS_CODING_IDENTITY = 0,
  NS_CODING_GZIP = 1,    /* also "x-gzip" */
  NS_CODING_DEFLATE = 2, /* zlib-wrapped, raw deflate tolerated as browsers do */
  NS_CODING_BR = 3,
  NS_CODING_UNKNOWN = 4
} ns_coding;

#define NS_DECODE_MAX_LAYERS 3

/* Parses a Content-Encoding field value (list, case-insensitive, OWS) into
 * codings in the order they were applied. Returns the number of layers
 * (identity entries skipped), or -1 when a coding is unknown or there are
 * more than NS_DECODE_MAX_LAYERS. */
int ns_coding_parse(const char *value, size_t len, ns_coding out[NS_DECODE_MAX_LAYERS]);
const char *ns_coding_name(ns_coding c);

typedef struct ns_decoder ns_decoder;

/* Receives decoded bytes; non-OK stops decoding and is returned by write. */
typedef netstash_error (*ns_decoder_sink)(const uint8_t *data, size_t len,
                                          void *user_data);

/* A decoder that undoes codings[0..n-1] (n may be 0: pass-through). Decoded
 * output beyond max_out fails with NETSTASH_E_TOO_LARGE. */
netstash_error ns_decoder_new(const ns_mem *mem, const ns_coding *codings, int n,
                              uint64_t max_out, ns_decoder **out);
void ns_decoder_del(ns_decoder *d);
/* Feeds encoded bytes. Errors: NETSTASH_E_DECODE (corrupt input or data after
 * the end of the stream), NETSTASH_E_TOO_LARGE, NETSTASH_E_NOMEM, or the
 * sink's error. */
netstash_error ns_decoder_write(ns_decoder *d, const uint8_t *in, size_t len,
                                ns_decoder_sink sink, void *user_data);
/* End of input: NETSTASH_E_TRUNCATED when the coded stream is incomplete. */
netstash_error ns_decoder_finish(ns_decoder *d, ns_decoder_sink sink,
                                 void *user_data);
uint64_t ns_decoder_total_out(const ns_decoder *d);

#endif
