/*
 * decode.h — streaming content decoding (RFC 9110 8.4.1): br, gzip, deflate, zstd,
 * with a hard cap on decoded bytes (decompression-bomb safe). Internal.
 * Decoder state allocates through the context allocator.
 *
 * Behaviour, in one place (details in decode.c):
 *  - gzip: exactly one gzip member (RFC 1952); any byte after its trailer,
 *    including a second member, is NETSTASH_E_DECODE.
 *  - deflate: the zlib format (RFC 1950, as RFC 9110 8.4.1.2 says); when the
 *    first two bytes are not a valid zlib header the body is read as raw
 *    deflate (RFC 1951), as browsers do for misconfigured servers.
 *  - br: RFC 7932. Memory per br layer is bounded by the window the encoder
 *    chose (at most 16 MiB, RFC 7932 9.1; up to 1.5 times that for a moment
 *    while brotli grows its ring buffer); gzip/deflate need 32 KiB + ~7 KiB.
 *    Plus one NS_DECODE_CHUNK buffer per layer.
 *  - zstd: RFC 8878 frames (one or more, skippable frames ignored), a window
 *    of at most 8 MiB (RFC 9659 §3: what a decoder must support and may
 *    limit itself to, as Chromium does); a larger one is NETSTASH_E_DECODE.
 *    Memory per zstd layer: its window plus ~160 KiB of decoder state.
 *  - A layer that receives no bytes at all decodes to nothing (servers label
 *    empty bodies with Content-Encoding; browsers accept them).
 *  - Decoded output is passed on in pieces of at most NS_DECODE_CHUNK bytes
 *    (pass-through, n == 0, hands the input on as it comes); no buffer grows
 *    with the input.
 *
 * Thread rule: a decoder is used by one thread at a time.
 */
#ifndef NS_TRANSPORT_DECODE_H
#define NS_TRANSPORT_DECODE_H

#include "ns_setup.h"

typedef enum ns_coding {
  NS_CODING_IDENTITY = 0,
  NS_CODING_GZIP = 1,    /* also "x-gzip" */
  NS_CODING_DEFLATE = 2, /* zlib-wrapped, raw deflate tolerated as browsers do */
  NS_CODING_BR = 3,
  NS_CODING_UNKNOWN = 4,
  NS_CODING_ZSTD = 5 /* RFC 8878, as an HTTP coding RFC 9659 */
} ns_coding;

#define NS_DECODE_MAX_LAYERS 3
/* Size of each layer's fixed output buffer: the largest piece given to the
 * sink. */
#define NS_DECODE_CHUNK 16384

/* Parses a Content-Encoding field value (list, case-insensitive, OWS) into
 * codings in the order they were applied. value need not be NUL-terminated
 * (len bytes are read). Returns the number of layers (identity entries and
 * empty list elements skipped), or -1 when a coding is unknown, an element is
 * not a token, or there are more than NS_DECODE_MAX_LAYERS. */
int ns_coding_parse(const char *value, size_t len, ns_coding out[NS_DECODE_MAX_LAYERS]);
/* "identity", "gzip", "deflate", "br", "zstd" or "unknown"; never NULL. */
const char *ns_coding_name(ns_coding c);

typedef struct ns_decoder ns_decoder;

/* Receives decoded bytes (data valid until it returns); non-OK stops decoding
 * and is returned by write. */
typedef netstash_error (*ns_decoder_sink)(const uint8_t *data, size_t len,
                                          void *user_data);

/* A decoder that undoes codings[0..n-1] (n may be 0: pass-through; identity
 * entries are skipped). codings[] is in the order the codings were applied,
 * as ns_coding_parse returns it, so codings[n-1] is undone first. Decoded
 * output beyond max_out fails with NETSTASH_E_TOO_LARGE. The allocator is
 * copied. Errors: NETSTASH_E_INVALID_ARGUMENT (n out of range, NULL out),
 * NETSTASH_E_UNSUPPORTED (NS_CODING_UNKNOWN), NETSTASH_E_NOMEM; *out is NULL
 * on error. */
netstash_error ns_decoder_new(const ns_mem *mem, const ns_coding *codings, int n,
                              uint64_t max_out, ns_decoder **out);
/* NULL is accepted. */
void ns_decoder_del(ns_decoder *d);
/* Feeds encoded bytes. Errors: NETSTASH_E_DECODE (corrupt input or data after
 * the end of the stream), NETSTASH_E_TOO_LARGE, NETSTASH_E_NOMEM, or the
 * sink's error. When the cap is hit the sink has received exactly the first
 * max_out decoded bytes, whatever the input chunking. Errors are sticky: every
 * later write or finish returns the same code. Writing after a successful
 * finish is NETSTASH_E_ILLEGAL_STATE. */
netstash_error ns_decoder_write(ns_decoder *d, const uint8_t *in, size_t len,
                                ns_decoder_sink sink, void *user_data);
/* End of input: NETSTASH_E_TRUNCATED when the coded stream is incomplete.
 * Calling it again returns the same result. */
netstash_error ns_decoder_finish(ns_decoder *d, ns_decoder_sink sink,
                                 void *user_data);
/* Decoded bytes handed to the sink so far (never more than max_out). */
uint64_t ns_decoder_total_out(const ns_decoder *d);

#endif
