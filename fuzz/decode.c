/*
 * fuzz/decode.c — lib/transport/decode.c (content decoding) under libFuzzer.
 *
 * Input layout:
 *   byte 0, bits 0-3  coding stack, an index into k_stacks below
 *   byte 0, bits 4-7  seed for the chunking of the second run
 *   bytes 1..         the coded body
 * The body is decoded twice, once in a single write and once in pseudo-random
 * pieces of 1..4096 bytes, with a small output cap (MAX_OUT). It is also
 * parsed as a Content-Encoding field value.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - never more than MAX_OUT bytes reach the sink; the decoder's count agrees;
 *  - success does not depend on chunking: if either run succeeds both do,
 *    with identical output;
 *  - NETSTASH_E_TOO_LARGE means the sink saw exactly MAX_OUT bytes;
 *  - only the documented error codes come back, and errors are sticky;
 *  - ns_coding_parse returns -1..NS_DECODE_MAX_LAYERS and only known codings.
 */
#include "ns_setup.h"

#include <stdlib.h>

#include "transport/decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OUT ((uint64_t)64 << 10)

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

static const struct {
  int n;
  ns_coding c[NS_DECODE_MAX_LAYERS]; /* in the order applied */
} k_stacks[16] = {
    {0, {NS_CODING_IDENTITY}},
    {1, {NS_CODING_GZIP}},
    {1, {NS_CODING_DEFLATE}},
    {1, {NS_CODING_BR}},
    {2, {NS_CODING_GZIP, NS_CODING_BR}},
    {2, {NS_CODING_BR, NS_CODING_GZIP}},
    {2, {NS_CODING_DEFLATE, NS_CODING_BR}},
    {3, {NS_CODING_DEFLATE, NS_CODING_GZIP, NS_CODING_BR}},
    {1, {NS_CODING_ZSTD}},
    {2, {NS_CODING_BR, NS_CODING_ZSTD}},
    {2, {NS_CODING_ZSTD, NS_CODING_GZIP}},
    {2, {NS_CODING_GZIP, NS_CODING_ZSTD}},
    {1, {NS_CODING_ZSTD}},
    {1, {NS_CODING_ZSTD}},
    {2, {NS_CODING_DEFLATE, NS_CODING_ZSTD}},
    {3, {NS_CODING_GZIP, NS_CODING_BR, NS_CODING_ZSTD}},
};

typedef struct digest {
  uint64_t hash; /* FNV-1a over all output */
  uint64_t len;
  int passthrough; /* no coding: input pieces are passed on whole */
} digest;

static netstash_error sink(const uint8_t *p, size_t len, void *ud) {
  digest *dg = ud;
  size_t i;
  CHECK(len > 0 && (dg->passthrough || len <= NS_DECODE_CHUNK));
  for (i = 0; i < len; i++) {
    dg->hash ^= p[i];
    dg->hash *= 1099511628211ull;
  }
  dg->len += len;
  return NETSTASH_OK;
}

static uint32_t xorshift(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}

static int allowed(netstash_error e) {
  return e == NETSTASH_OK || e == NETSTASH_E_DECODE ||
         e == NETSTASH_E_TRUNCATED || e == NETSTASH_E_TOO_LARGE;
}

/* seed 0: one write; otherwise pieces drawn from the seed. */
static netstash_error run(int stack, const uint8_t *body, size_t len,
                          uint32_t seed, digest *dg) {
  ns_decoder *d = NULL;
  netstash_error rv;
  size_t off = 0;

  dg->hash = 14695981039346656037ull;
  dg->len = 0;
  dg->passthrough = k_stacks[stack].n == 0;
  rv = ns_decoder_new(ns_mem_default(), k_stacks[stack].c, k_stacks[stack].n,
                      MAX_OUT, &d);
  CHECK(rv == NETSTASH_OK && d != NULL);
  while (off < len) {
    size_t piece = len - off;
    if (seed != 0) {
      size_t max = (size_t)1 << (xorshift(&seed) % 13);
      size_t want = 1 + xorshift(&seed) % max; /* 1..4096 */
      piece = NS_MIN(piece, want);
    }
    rv = ns_decoder_write(d, body + off, piece, sink, dg);
    if (rv != NETSTASH_OK)
      break;
    off += piece;
  }
  if (rv == NETSTASH_OK) {
    rv = ns_decoder_finish(d, sink, dg);
  } else {
    /* sticky */
    CHECK(ns_decoder_write(d, body, len, sink, dg) == rv);
    CHECK(ns_decoder_finish(d, sink, dg) == rv);
  }
  CHECK(allowed(rv));
  CHECK(ns_decoder_total_out(d) == dg->len);
  CHECK(dg->len <= MAX_OUT);
  if (rv == NETSTASH_E_TOO_LARGE)
    CHECK(dg->len == MAX_OUT);
  ns_decoder_del(d);
  return rv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ns_coding out[NS_DECODE_MAX_LAYERS];
  digest one, many;
  netstash_error a, b;
  int stack, n, i;
  uint32_t seed;

  if (size < 1)
    return 0;
  stack = data[0] & 15;
  seed = 0x9e3779b9u ^ ((uint32_t)(data[0] >> 4) * 2654435761u);
  if (seed == 0)
    seed = 1;

  a = run(stack, data + 1, size - 1, 0, &one);
  b = run(stack, data + 1, size - 1, seed, &many);
  if (a == NETSTASH_OK || b == NETSTASH_OK) {
    CHECK(a == b);
    CHECK(one.len == many.len && one.hash == many.hash);
  }

  n = ns_coding_parse((const char *)data + 1, size - 1, out);
  CHECK(n >= -1 && n <= NS_DECODE_MAX_LAYERS);
  for (i = 0; i < n; i++)
    CHECK(out[i] == NS_CODING_GZIP || out[i] == NS_CODING_DEFLATE || out[i] == NS_CODING_BR ||
          out[i] == NS_CODING_ZSTD);
  return 0;
}
