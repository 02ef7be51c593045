/*
 * decode_test.c — lib/transport/decode.c: content decoding round trips,
 * chunking independence, corrupt/truncated/trailing input, the output cap
 * (decompression bombs), Content-Encoding parsing and allocation failures.
 * Compressed inputs are produced here with zlib, brotlienc and libzstd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <cmocka.h>

#include <zlib.h>
#include <brotli/encode.h>
#include <zstd.h>

#include "ns_setup.h"
#include "transport/decode.h"

/* ------------------------------------------------------------------ helpers */

/* Deterministic text-like data: words from a small vocabulary, so it
 * compresses like prose but is not a trivial run. */
static uint8_t *make_text(size_t len) {
  static const char *const words[] = {
      "the ",  "cache ", "fetch ",   "header ", "origin ", "stream ", "gzip ",
      "body ", "of ",    "request ", "net ",    "stash\n", "a ",      "to ",
      "and ",  "brotli ", "deflate ", "window ", "chunk ",  "1234 "};
  uint8_t *p = malloc(len ? len : 1);
  uint32_t x = 2463534242u;
  size_t i = 0;
  assert_non_null(p);
  while (i < len) {
    const char *w;
    size_t wl;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w = words[x % NS_ARRAY_LEN(words)];
    wl = strlen(w);
    if (wl > len - i)
      wl = len - i;
    memcpy(p + i, w, wl);
    i += wl;
  }
  return p;
}

/* window_bits: 15 + 16 gzip, 15 zlib, -15 raw deflate. */
static uint8_t *zcompress(const uint8_t *in, size_t len, int window_bits,
                          size_t *out_len) {
  z_stream zs;
  uint8_t *out;
  size_t cap;
  memset(&zs, 0, sizeof(zs));
  assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8,
                                Z_DEFAULT_STRATEGY),
                   Z_OK);
  cap = deflateBound(&zs, (uLong)len) + 32;
  out = malloc(cap);
  assert_non_null(out);
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.avail_in = (uInt)len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
  *out_len = zs.total_out;
  deflateEnd(&zs);
  return out;
}

static uint8_t *brcompress(const uint8_t *in, size_t len, size_t *out_len) {
  size_t cap = BrotliEncoderMaxCompressedSize(len);
  uint8_t *out;
  if (cap == 0)
    cap = len + 1024;
  out = malloc(cap);
  assert_non_null(out);
  *out_len = cap;
  assert_true(BrotliEncoderCompress(5, BROTLI_DEFAULT_WINDOW, BROTLI_MODE_TEXT,
                                    len, in, out_len, out));
  return out;
}

/* One zstd frame (level 3); window_log 0: zstd's choice. With the content
 * size left out of the header, the frame declares its window. */
static uint8_t *zstdcompress(const uint8_t *in, size_t len, int window_log, size_t *out_len) {
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  size_t cap = ZSTD_compressBound(len), r;
  uint8_t *out = malloc(cap);
  assert_non_null(cc);
  assert_non_null(out);
  assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 3)));
  if (window_log) {
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, window_log)));
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0)));
  }
  r = ZSTD_compress2(cc, out, cap, in, len);
  assert_false(ZSTD_isError(r));
  ZSTD_freeCCtx(cc);
  *out_len = r;
  return out;
}

/* Encodes in with codings[0] first, then codings[1], ... */
static uint8_t *encode_stack(const uint8_t *in, size_t len,
                             const ns_coding *codings, int n, size_t *out_len) {
  uint8_t *cur = malloc(len ? len : 1);
  size_t cur_len = len;
  int i;
  assert_non_null(cur);
  memcpy(cur, in, len);
  for (i = 0; i < n; i++) {
    uint8_t *next = NULL;
    size_t next_len = 0;
    switch (codings[i]) {
    case NS_CODING_GZIP:
      next = zcompress(cur, cur_len, 15 + 16, &next_len);
      break;
    case NS_CODING_DEFLATE:
      next = zcompress(cur, cur_len, 15, &next_len);
      break;
    case NS_CODING_BR:
      next = brcompress(cur, cur_len, &next_len);
      break;
    case NS_CODING_ZSTD:
      next = zstdcompress(cur, cur_len, 0, &next_len);
      break;
    default:
      fail();
    }
    free(cur);
    cur = next;
    cur_len = next_len;
  }
  *out_len = cur_len;
  return cur;
}

/* Sink that collects output (up to keep bytes) and counts everything. */
typedef struct collect {
  uint8_t *data;
  size_t len;
  size_t cap;
  uint64_t total;
  size_t calls;
  size_t max_piece;
  int keep;                  /* store bytes, not only count them */
  size_t fail_at_call;       /* 1-based; 0: never */
  netstash_error fail_with;
} collect;

static netstash_error collect_sink(const uint8_t *data, size_t len, void *ud) {
  collect *c = ud;
  assert_true(len > 0);
  c->calls++;
  c->total += len; /* handed over, even if refused below */
  if (c->fail_at_call && c->calls == c->fail_at_call)
    return c->fail_with;
  if (len > c->max_piece)
    c->max_piece = len;
  if (c->keep) {
    if (c->len + len > c->cap) {
      size_t ncap = c->cap ? c->cap : 4096;
      while (ncap < c->len + len)
        ncap *= 2;
      c->data = realloc(c->data, ncap);
      assert_non_null(c->data);
      c->cap = ncap;
    }
    memcpy(c->data + c->len, data, len);
    c->len += len;
  }
  return NETSTASH_OK;
}

static void collect_free(collect *c) {
  free(c->data);
  memset(c, 0, sizeof(*c));
}

/* Decodes in, `piece` bytes per write (0: all at once), then finishes.
 * Returns the first error. */
static netstash_error run_decode(const ns_mem *mem, const ns_coding *codings,
                                 int n, uint64_t max_out, const uint8_t *in,
                                 size_t len, size_t piece, collect *c) {
  ns_decoder *d = NULL;
  netstash_error rv;
  size_t off = 0;

  rv = ns_decoder_new(mem, codings, n, max_out, &d);
  if (rv != NETSTASH_OK) {
    assert_null(d);
    return rv;
  }
  if (piece == 0)
    piece = len ? len : 1;
  while (off < len) {
    size_t k = NS_MIN(piece, len - off);
    rv = ns_decoder_write(d, in + off, k, collect_sink, c);
    if (rv != NETSTASH_OK)
      break;
    off += k;
  }
  if (rv == NETSTASH_OK)
    rv = ns_decoder_finish(d, collect_sink, c);
  assert_true(ns_decoder_total_out(d) <= max_out);
  assert_true(ns_decoder_total_out(d) == c->total);
  ns_decoder_del(d);
  return rv;
}

static void check_round_trip(const ns_coding *codings, int n, size_t text_len,
                             size_t piece) {
  uint8_t *text = make_text(text_len);
  size_t enc_len;
  uint8_t *enc = encode_stack(text, text_len, codings, n, &enc_len);
  collect c = {0};
  c.keep = 1;
  assert_int_equal(run_decode(ns_mem_default(), codings, n, UINT64_MAX, enc,
                              enc_len, piece, &c),
                   NETSTASH_OK);
  assert_int_equal(c.len, text_len);
  assert_memory_equal(c.data, text, text_len);
  assert_true(c.max_piece <= NS_DECODE_CHUNK); /* fixed buffers, no growth */
  collect_free(&c);
  free(enc);
  free(text);
}

/* ------------------------------------------------------------- round trips */

static const ns_coding k_gzip[] = {NS_CODING_GZIP};
static const ns_coding k_deflate[] = {NS_CODING_DEFLATE};
static const ns_coding k_br[] = {NS_CODING_BR};
static const ns_coding k_gzip_br[] = {NS_CODING_GZIP, NS_CODING_BR};
static const ns_coding k_zstd[] = {NS_CODING_ZSTD};
static const ns_coding k_br_zstd[] = {NS_CODING_BR, NS_CODING_ZSTD};
static const ns_coding k_three[] = {NS_CODING_DEFLATE, NS_CODING_GZIP,
                                    NS_CODING_BR};

static void test_round_trip_gzip(void **state) {
  (void)state;
  check_round_trip(k_gzip, 1, 200000, 0);
  check_round_trip(k_gzip, 1, 200000, 1000);
  check_round_trip(k_gzip, 1, 1, 0);
  check_round_trip(k_gzip, 1, 0, 0); /* a valid gzip of nothing */
}

static void test_round_trip_deflate_zlib(void **state) {
  (void)state;
  check_round_trip(k_deflate, 1, 200000, 0);
  check_round_trip(k_deflate, 1, 200000, 777);
  check_round_trip(k_deflate, 1, 0, 0);
}

static void test_round_trip_deflate_raw(void **state) {
  size_t len = 200000, enc_len, i;
  uint8_t *text = make_text(len);
  uint8_t *enc = zcompress(text, len, -15, &enc_len);
  size_t pieces[] = {0, 1, 2, 3, 4096};
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(pieces); i++) {
    collect c = {0};
    c.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), k_deflate, 1, UINT64_MAX,
                                enc, enc_len, pieces[i], &c),
                     NETSTASH_OK);
    assert_int_equal(c.len, len);
    assert_memory_equal(c.data, text, len);
    collect_free(&c);
  }
  free(enc);
  /* raw deflate of nothing is two bytes (03 00): done right after sniffing */
  enc = zcompress(text, 0, -15, &enc_len);
  assert_int_equal(enc_len, 2);
  {
    collect c = {0};
    assert_int_equal(run_decode(ns_mem_default(), k_deflate, 1, UINT64_MAX,
                                enc, enc_len, 1, &c),
                     NETSTASH_OK);
    assert_int_equal(c.total, 0);
  }
  free(enc);
  free(text);
}

static void test_round_trip_br(void **state) {
  (void)state;
  check_round_trip(k_br, 1, 200000, 0);
  check_round_trip(k_br, 1, 200000, 333);
  check_round_trip(k_br, 1, 0, 0);
}

static void test_round_trip_zstd(void **state) {
  (void)state;
  check_round_trip(k_zstd, 1, 200000, 0);
  check_round_trip(k_zstd, 1, 200000, 1000);
  check_round_trip(k_zstd, 1, 5000, 1);
  check_round_trip(k_br_zstd, 2, 100000, 777);
}

static void test_round_trip_stacked(void **state) {
  (void)state;
  /* "Content-Encoding: gzip, br": gzip applied first, br undone first */
  check_round_trip(k_gzip_br, 2, 150000, 0);
  check_round_trip(k_gzip_br, 2, 150000, 500);
  check_round_trip(k_three, 3, 150000, 0);
  check_round_trip(k_three, 3, 150000, 1);
}

static void test_identity_passthrough(void **state) {
  static const uint8_t msg[] = "plain bytes, no coding";
  static const ns_coding ident[] = {NS_CODING_IDENTITY};
  collect c = {0};
  (void)state;
  c.keep = 1;
  assert_int_equal(run_decode(ns_mem_default(), NULL, 0, UINT64_MAX, msg,
                              sizeof(msg), 3, &c),
                   NETSTASH_OK);
  assert_int_equal(c.len, sizeof(msg));
  assert_memory_equal(c.data, msg, sizeof(msg));
  collect_free(&c);
  /* identity entries in the list are skipped */
  c.keep = 1;
  assert_int_equal(run_decode(ns_mem_default(), ident, 1, UINT64_MAX, msg,
                              sizeof(msg), 0, &c),
                   NETSTASH_OK);
  assert_int_equal(c.len, sizeof(msg));
  collect_free(&c);
  /* still counted against max_out: exactly the first 5 bytes arrive */
  c.keep = 1;
  assert_int_equal(run_decode(ns_mem_default(), NULL, 0, 5, msg, sizeof(msg), 2,
                              &c),
                   NETSTASH_E_TOO_LARGE);
  assert_int_equal(c.len, 5);
  assert_memory_equal(c.data, msg, 5);
  collect_free(&c);
}

/* 1-byte writes give the same output and the same pieces as one write. */
static void test_byte_by_byte(void **state) {
  const ns_coding *sets[] = {k_gzip, k_deflate, k_br, k_gzip_br};
  const int ns[] = {1, 1, 1, 2};
  size_t len = 60000, i;
  uint8_t *text = make_text(len);
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(sets); i++) {
    size_t enc_len;
    uint8_t *enc = encode_stack(text, len, sets[i], ns[i], &enc_len);
    collect a = {0}, b = {0};
    a.keep = b.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], UINT64_MAX,
                                enc, enc_len, 0, &a),
                     NETSTASH_OK);
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], UINT64_MAX,
                                enc, enc_len, 1, &b),
                     NETSTASH_OK);
    assert_int_equal(a.len, len);
    assert_int_equal(b.len, len);
    assert_memory_equal(a.data, text, len);
    assert_memory_equal(b.data, text, len);
    collect_free(&a);
    collect_free(&b);
    free(enc);
  }
  free(text);
}

static void test_empty_body(void **state) {
  ns_decoder *d;
  collect c = {0};
  (void)state;
  /* servers label empty bodies with Content-Encoding: accepted as empty */
  assert_int_equal(ns_decoder_new(ns_mem_default(), k_gzip_br, 2, 10, &d),
                   NETSTASH_OK);
  assert_int_equal(ns_decoder_write(d, NULL, 0, collect_sink, &c), NETSTASH_OK);
  assert_int_equal(ns_decoder_finish(d, collect_sink, &c), NETSTASH_OK);
  assert_int_equal(ns_decoder_finish(d, collect_sink, &c), NETSTASH_OK);
  assert_int_equal(c.calls, 0);
  /* and the decoder is closed now */
  assert_int_equal(ns_decoder_write(d, (const uint8_t *)"x", 1, collect_sink, &c),
                   NETSTASH_E_ILLEGAL_STATE);
  ns_decoder_del(d);
}

/* ------------------------------------------------------- error conditions */

static void test_corrupt(void **state) {
  size_t len = 50000, enc_len;
  uint8_t *text = make_text(len);
  uint8_t *enc;
  collect c = {0};
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  (void)state;

  /* gzip: bad magic */
  enc = encode_stack(text, len, k_gzip, 1, &enc_len);
  enc[0] ^= 0xff;
  assert_int_equal(run_decode(ns_mem_default(), k_gzip, 1, UINT64_MAX, enc,
                              enc_len, 0, &c),
                   NETSTASH_E_DECODE);
  enc[0] ^= 0xff;
  /* gzip: CRC-32 in the trailer (RFC 1952 2.3.1) */
  enc[enc_len - 8] ^= 0x01;
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_gzip, 1, UINT64_MAX, enc,
                              enc_len, 100, &c),
                   NETSTASH_E_DECODE);
  enc[enc_len - 8] ^= 0x01;
  /* gzip: ISIZE in the trailer */
  enc[enc_len - 1] ^= 0x01;
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_gzip, 1, UINT64_MAX, enc,
                              enc_len, 0, &c),
                   NETSTASH_E_DECODE);
  free(enc);

  /* zlib: Adler-32 */
  enc = encode_stack(text, len, k_deflate, 1, &enc_len);
  enc[enc_len - 1] ^= 0x01;
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_deflate, 1, UINT64_MAX, enc,
                              enc_len, 0, &c),
                   NETSTASH_E_DECODE);
  free(enc);

  /* not zlib, not valid raw deflate either (BTYPE 11 is reserved) */
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_deflate, 1, UINT64_MAX, junk,
                              sizeof(junk), 1, &c),
                   NETSTASH_E_DECODE);
  /* gzip wanted, zlib given */
  enc = encode_stack(text, 100, k_deflate, 1, &enc_len);
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_gzip, 1, UINT64_MAX, enc,
                              enc_len, 0, &c),
                   NETSTASH_E_DECODE);
  free(enc);
  /* zlib header asking for a preset dictionary: read as raw, fails */
  {
    static const uint8_t fdict[] = {0x78, 0xbb, 0x00, 0x00, 0x00, 0x01, 0xff};
    memset(&c, 0, sizeof(c));
    assert_int_equal(run_decode(ns_mem_default(), k_deflate, 1, UINT64_MAX,
                                fdict, sizeof(fdict), 0, &c),
                     NETSTASH_E_DECODE);
  }

  /* br: garbage, and a damaged stream */
  memset(&c, 0, sizeof(c));
  assert_int_equal(run_decode(ns_mem_default(), k_br, 1, UINT64_MAX, junk,
                              sizeof(junk), 0, &c),
                   NETSTASH_E_DECODE);
  enc = encode_stack(text, len, k_br, 1, &enc_len);
  enc[enc_len / 2] ^= 0x55;
  enc[enc_len / 2 + 1] ^= 0xaa;
  memset(&c, 0, sizeof(c));
  c.keep = 1;
  {
    netstash_error rv = run_decode(ns_mem_default(), k_br, 1, UINT64_MAX, enc,
                                   enc_len, 0, &c);
    /* br has no checksum: a damaged stream may still parse, but then it cannot
     * decode to the original */
    assert_true(rv == NETSTASH_E_DECODE || rv == NETSTASH_E_TRUNCATED ||
                c.len != len || memcmp(c.data, text, len) != 0);
  }
  collect_free(&c);
  free(enc);

  /* stacked: inner gzip corrupt under a valid br */
  {
    size_t glen, blen;
    uint8_t *g = encode_stack(text, len, k_gzip, 1, &glen);
    uint8_t *b;
    g[glen - 5] ^= 0x10;
    b = encode_stack(g, glen, k_br, 1, &blen);
    memset(&c, 0, sizeof(c));
    assert_int_equal(run_decode(ns_mem_default(), k_gzip_br, 2, UINT64_MAX, b,
                                blen, 64, &c),
                     NETSTASH_E_DECODE);
    free(b);
    free(g);
  }
  free(text);
}

static void test_truncated(void **state) {
  const ns_coding *sets[] = {k_gzip, k_deflate, k_br, k_gzip_br};
  const int ns[] = {1, 1, 1, 2};
  size_t len = 50000, i;
  uint8_t *text = make_text(len);
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(sets); i++) {
    size_t enc_len, cuts[3], k;
    uint8_t *enc = encode_stack(text, len, sets[i], ns[i], &enc_len);
    cuts[0] = 1;
    cuts[1] = enc_len / 2;
    cuts[2] = enc_len - 1;
    for (k = 0; k < NS_ARRAY_LEN(cuts); k++) {
      collect c = {0};
      assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], UINT64_MAX,
                                  enc, cuts[k], 7, &c),
                       NETSTASH_E_TRUNCATED);
      assert_true(c.total <= len); /* a cut trailer loses no data */
    }
    free(enc);
  }
  free(text);
}

static void test_trailing_garbage(void **state) {
  const ns_coding *sets[] = {k_gzip, k_deflate, k_br, k_gzip_br};
  const int ns[] = {1, 1, 1, 2};
  size_t len = 20000, i;
  uint8_t *text = make_text(len);
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(sets); i++) {
    size_t enc_len;
    uint8_t *enc = encode_stack(text, len, sets[i], ns[i], &enc_len);
    uint8_t *ext = malloc(enc_len + 1);
    ns_decoder *d;
    collect c = {0};
    assert_non_null(ext);
    memcpy(ext, enc, enc_len);
    ext[enc_len] = 0;
    /* in the same write */
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], UINT64_MAX,
                                ext, enc_len + 1, 0, &c),
                     NETSTASH_E_DECODE);
    /* in a later write, and sticky afterwards */
    memset(&c, 0, sizeof(c));
    assert_int_equal(ns_decoder_new(ns_mem_default(), sets[i], ns[i],
                                    UINT64_MAX, &d),
                     NETSTASH_OK);
    assert_int_equal(ns_decoder_write(d, enc, enc_len, collect_sink, &c),
                     NETSTASH_OK);
    assert_int_equal(c.total, len);
    assert_int_equal(ns_decoder_write(d, ext + enc_len, 1, collect_sink, &c),
                     NETSTASH_E_DECODE);
    assert_int_equal(ns_decoder_finish(d, collect_sink, &c), NETSTASH_E_DECODE);
    ns_decoder_del(d);
    free(ext);
    free(enc);
  }
  free(text);
}

/* Documented choice: a second gzip member is refused like any trailing data. */
static void test_gzip_second_member(void **state) {
  size_t len = 1000, enc_len;
  uint8_t *text = make_text(len);
  uint8_t *enc = encode_stack(text, len, k_gzip, 1, &enc_len);
  uint8_t *two = malloc(2 * enc_len);
  collect c = {0};
  (void)state;
  assert_non_null(two);
  memcpy(two, enc, enc_len);
  memcpy(two + enc_len, enc, enc_len);
  assert_int_equal(run_decode(ns_mem_default(), k_gzip, 1, UINT64_MAX, two,
                              2 * enc_len, 0, &c),
                   NETSTASH_E_DECODE);
  free(two);
  free(enc);
  free(text);
}

static void test_sink_error_propagated(void **state) {
  size_t len = 100000, enc_len;
  uint8_t *text = make_text(len);
  uint8_t *enc = encode_stack(text, len, k_gzip_br, 2, &enc_len);
  ns_decoder *d;
  collect c = {0};
  (void)state;
  c.fail_at_call = 2;
  c.fail_with = NETSTASH_E_CALLBACK;
  assert_int_equal(ns_decoder_new(ns_mem_default(), k_gzip_br, 2, UINT64_MAX, &d),
                   NETSTASH_OK);
  assert_int_equal(ns_decoder_write(d, enc, enc_len, collect_sink, &c),
                   NETSTASH_E_CALLBACK);
  assert_int_equal(c.calls, 2); /* stopped right there */
  assert_int_equal(ns_decoder_write(d, enc, 1, collect_sink, &c),
                   NETSTASH_E_CALLBACK);
  assert_int_equal(ns_decoder_finish(d, collect_sink, &c), NETSTASH_E_CALLBACK);
  assert_int_equal(c.calls, 2);
  ns_decoder_del(d);
  /* and through the identity path */
  memset(&c, 0, sizeof(c));
  c.fail_at_call = 1;
  c.fail_with = NETSTASH_E_IO;
  assert_int_equal(run_decode(ns_mem_default(), NULL, 0, UINT64_MAX, text, len,
                              0, &c),
                   NETSTASH_E_IO);
  free(enc);
  free(text);
}

/* --------------------------------------------------------------- the cap */

static void test_max_out_exact(void **state) {
  const ns_coding *sets[] = {k_gzip, k_deflate, k_br, k_gzip_br};
  const int ns[] = {1, 1, 1, 2};
  size_t len = 100000, i;
  uint8_t *text = make_text(len);
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(sets); i++) {
    size_t enc_len;
    uint8_t *enc = encode_stack(text, len, sets[i], ns[i], &enc_len);
    collect c = {0};
    c.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], len, enc,
                                enc_len, 0, &c),
                     NETSTASH_OK);
    assert_int_equal(c.len, len);
    collect_free(&c);
    /* one byte less: the sink gets exactly len - 1 bytes, the right ones */
    c.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], len - 1, enc,
                                enc_len, 1, &c),
                     NETSTASH_E_TOO_LARGE);
    assert_int_equal(c.len, len - 1);
    assert_memory_equal(c.data, text, len - 1);
    collect_free(&c);
    /* max_out 0 allows only an empty body */
    assert_int_equal(run_decode(ns_mem_default(), sets[i], ns[i], 0, enc,
                                enc_len, 0, &c),
                     NETSTASH_E_TOO_LARGE);
    assert_int_equal(c.calls, 0);
    free(enc);
  }
  free(text);
}

/* An allocator that counts live blocks and bytes, tracks the peak, and can
 * fail the Nth call. */
typedef struct counting {
  size_t calls;
  size_t fail_at; /* 1-based; 0: never */
  long live;
  size_t bytes;
  size_t peak;
} counting;

#define HDR 16

static void *cnt_take(counting *a, size_t n) {
  uint8_t *p;
  a->calls++;
  if (a->fail_at && a->calls == a->fail_at)
    return NULL;
  p = malloc(n + HDR);
  if (!p)
    return NULL;
  memcpy(p, &n, sizeof(n));
  a->live++;
  a->bytes += n;
  if (a->bytes > a->peak)
    a->peak = a->bytes;
  return p + HDR;
}

static void *cnt_malloc(size_t n, void *ud) { return cnt_take(ud, n); }

static void *cnt_calloc(size_t a, size_t b, void *ud) {
  size_t n;
  void *p;
  if (!ns_mul_size(a, b, &n))
    return NULL;
  p = cnt_take(ud, n);
  if (p)
    memset(p, 0, n);
  return p;
}

static void cnt_free(void *p, void *ud) {
  counting *a = ud;
  size_t n;
  if (!p)
    return;
  memcpy(&n, (uint8_t *)p - HDR, sizeof(n));
  a->live--;
  a->bytes -= n;
  free((uint8_t *)p - HDR);
}

static void *cnt_realloc(void *p, size_t n, void *ud) {
  void *q = cnt_take(ud, n);
  size_t old;
  if (!q)
    return NULL;
  if (p) {
    memcpy(&old, (uint8_t *)p - HDR, sizeof(old));
    memcpy(q, p, NS_MIN(old, n));
    cnt_free(p, ud);
  }
  return q;
}

static ns_mem counting_mem(counting *a) {
  ns_mem m = {a, cnt_malloc, cnt_free, cnt_calloc, cnt_realloc};
  return m;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define BOMB_SIZE ((size_t)64 << 20)
#define BOMB_CAP ((uint64_t)1 << 20)

/* 64 MiB of zeros, gzip, compressed 1 MiB at a time (never held whole). */
static uint8_t *gzip_bomb(size_t *out_len) {
  z_stream zs;
  uint8_t *zeros = calloc(1, 1 << 20);
  size_t cap = 256 << 10, done_in = 0;
  uint8_t *out = malloc(cap);
  assert_non_null(zeros);
  assert_non_null(out);
  memset(&zs, 0, sizeof(zs));
  assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 9, Z_RLE), Z_OK);
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  while (done_in < BOMB_SIZE) {
    int rc;
    done_in += 1 << 20;
    zs.next_in = zeros;
    zs.avail_in = 1 << 20;
    rc = deflate(&zs, done_in == BOMB_SIZE ? Z_FINISH : Z_NO_FLUSH);
    assert_true(rc == Z_OK || rc == Z_STREAM_END);
    assert_int_equal(zs.avail_in, 0);
    assert_true(zs.avail_out > 0);
  }
  *out_len = zs.total_out;
  deflateEnd(&zs);
  free(zeros);
  return out;
}

static uint8_t *br_bomb(size_t *out_len) {
  BrotliEncoderState *e = BrotliEncoderCreateInstance(NULL, NULL, NULL);
  uint8_t *zeros = calloc(1, 1 << 20);
  size_t cap = 256 << 10, done_in = 0;
  uint8_t *out = malloc(cap);
  uint8_t *next_out = out;
  size_t avail_out = cap;
  assert_non_null(e);
  assert_non_null(zeros);
  assert_non_null(out);
  BrotliEncoderSetParameter(e, BROTLI_PARAM_QUALITY, 1);
  BrotliEncoderSetParameter(e, BROTLI_PARAM_LGWIN, 22);
  while (done_in < BOMB_SIZE || !BrotliEncoderIsFinished(e)) {
    const uint8_t *next_in = zeros;
    size_t avail_in = done_in < BOMB_SIZE ? (size_t)1 << 20 : 0;
    BrotliEncoderOperation op =
        done_in + avail_in >= BOMB_SIZE ? BROTLI_OPERATION_FINISH
                                        : BROTLI_OPERATION_PROCESS;
    size_t before = avail_in;
    assert_true(BrotliEncoderCompressStream(e, op, &avail_in, &next_in,
                                            &avail_out, &next_out, NULL));
    done_in += before - avail_in;
    assert_true(avail_out > 0);
  }
  *out_len = cap - avail_out;
  BrotliEncoderDestroyInstance(e);
  free(zeros);
  return out;
}

static void check_bomb(const ns_coding *codings, int n, const uint8_t *bomb,
                       size_t bomb_len, size_t peak_limit) {
  counting a = {0};
  ns_mem mem = counting_mem(&a);
  collect c = {0};
  double t0 = now_s(), dt;
  assert_int_equal(run_decode(&mem, codings, n, BOMB_CAP, bomb, bomb_len, 4096,
                              &c),
                   NETSTASH_E_TOO_LARGE);
  dt = now_s() - t0;
  assert_int_equal(c.total, BOMB_CAP); /* exactly the cap, never more */
  assert_int_equal(a.live, 0);
  print_message("    %s bomb: %zu coded bytes, stopped at %llu decoded bytes "
                "in %.1f ms, peak decoder memory %zu bytes\n",
                ns_coding_name(codings[n - 1]), bomb_len,
                (unsigned long long)c.total, dt * 1e3, a.peak);
  assert_true(a.peak <= peak_limit);
  assert_true(dt < 5.0); /* generous: valgrind; natively a few ms */
}

static void test_bomb_gzip(void **state) {
  size_t len;
  uint8_t *bomb = gzip_bomb(&len);
  (void)state;
  assert_true(len < 100000); /* it is a bomb: > 600x */
  /* fixed buffer + zlib state + 32K window; nothing proportional to output */
  check_bomb(k_gzip, 1, bomb, len, 64 << 10);
  free(bomb);
}

/* RFC 8878 §3.1: a stream of frames — several, skippable ones among them —
 * is their decoded concatenation; a window over 8 MiB (RFC 9659 §3) is
 * refused; a frame cut short is truncated; garbage is not zstd. */
static void test_zstd_frames(void **state) {
  uint8_t *text = make_text(60000), *a, *b, *all;
  size_t al, bl, n;
  static const uint8_t skip[] = {0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'n', 's', 't', '!'};
  collect c = {0};
  (void)state;
  a = zstdcompress(text, 20000, 0, &al);
  b = zstdcompress(text + 20000, 40000, 0, &bl);
  all = malloc(al + sizeof(skip) + bl);
  assert_non_null(all);
  memcpy(all, a, al);
  memcpy(all + al, skip, sizeof(skip));
  memcpy(all + al + sizeof(skip), b, bl);
  n = al + sizeof(skip) + bl;
  for (size_t piece = 1; piece <= 4096; piece *= 8) {
    c.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, all, n, piece, &c),
                     NETSTASH_OK);
    assert_int_equal(c.len, 60000);
    assert_memory_equal(c.data, text, 60000);
    collect_free(&c);
  }
  /* cut inside the second frame */
  assert_int_equal(run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, all, n - 3, 0, &c),
                   NETSTASH_E_TRUNCATED);
  collect_free(&c);
  /* a frame, then a skippable frame that ends the stream */
  c.keep = 1;
  assert_int_equal(
      run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, all, al + sizeof(skip), 5, &c),
      NETSTASH_OK);
  assert_int_equal(c.len, 20000);
  collect_free(&c);
  /* half a magic number after a frame: cut short */
  assert_int_equal(run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, all, al + 2, 0, &c),
                   NETSTASH_E_TRUNCATED);
  collect_free(&c);
  /* a legacy (zstd 0.6) magic number: not an HTTP coding, whatever the
   * chunking (libzstd would decode it, differently per chunking) */
  {
    static const uint8_t legacy[] = {0x26, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 0x00, 0x00};
    for (size_t piece = 1; piece <= 8; piece *= 2) {
      assert_int_equal(
          run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, legacy, sizeof(legacy), piece, &c),
          NETSTASH_E_DECODE);
      collect_free(&c);
    }
  }
  /* garbage after a frame */
  memset(all + al, 0xee, 16);
  assert_int_equal(run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, all, al + 16, 0, &c),
                   NETSTASH_E_DECODE);
  collect_free(&c);
  free(a);
  free(b);
  free(all);
  free(text);
  {
    /* a 16 MiB window: refused, before any big allocation */
    size_t big = 9u << 20, zl;
    uint8_t *t = make_text(big), *z = zstdcompress(t, big, 24, &zl);
    counting ca = {0};
    ns_mem mem = counting_mem(&ca);
    assert_int_equal(run_decode(&mem, k_zstd, 1, UINT64_MAX, z, zl, 65536, &c), NETSTASH_E_DECODE);
    assert_int_equal(ca.live, 0);
    assert_true(ca.peak < (1 << 20));
    collect_free(&c);
    free(z);
    /* the same content in an 8 MiB window decodes */
    z = zstdcompress(t, big, 23, &zl);
    c.keep = 1;
    assert_int_equal(run_decode(ns_mem_default(), k_zstd, 1, UINT64_MAX, z, zl, 65536, &c),
                     NETSTASH_OK);
    assert_int_equal(c.len, big);
    assert_memory_equal(c.data, t, big);
    collect_free(&c);
    free(z);
    free(t);
  }
}

static void test_bomb_zstd(void **state) {
  size_t len, zl;
  uint8_t *zeros = calloc(1, 64u << 20), *bomb;
  (void)state;
  assert_non_null(zeros);
  bomb = zstdcompress(zeros, 64u << 20, 22, &zl); /* 64 MiB of zeros, 4 MiB window */
  free(zeros);
  len = zl;
  assert_true(len < 100000);
  /* the window (4 MiB) and the decoder's state; nothing proportional to output */
  check_bomb(k_zstd, 1, bomb, len, (4 << 20) + (512 << 10));
  free(bomb);
}

static void test_bomb_br(void **state) {
  size_t len;
  uint8_t *bomb = br_bomb(&len);
  (void)state;
  assert_true(len < 100000);
  /* bounded by the encoder's window (4 MiB here): 1.5x while brotli grows its
   * ring buffer (old and new both live), plus decoder tables */
  check_bomb(k_br, 1, bomb, len, (6 << 20) + (512 << 10));
  free(bomb);
}

/* ------------------------------------------------ allocation failures */

/* Fails the 1st, 2nd, ... allocation until a run succeeds. Every failure is
 * NETSTASH_E_NOMEM and leaves nothing allocated. */
static void check_failmalloc(const ns_coding *codings, int n) {
  size_t len = 40000, enc_len, fail_at;
  uint8_t *text = make_text(len);
  uint8_t *enc = encode_stack(text, len, codings, n, &enc_len);
  int succeeded = 0;
  size_t nomem = 0;

  for (fail_at = 1; fail_at < 1000 && !succeeded; fail_at++) {
    counting a = {0};
    ns_mem mem = counting_mem(&a);
    collect c = {0};
    netstash_error rv;
    a.fail_at = fail_at;
    c.keep = 1;
    rv = run_decode(&mem, codings, n, UINT64_MAX, enc, enc_len, 1000, &c);
    assert_int_equal(a.live, 0);
    if (a.calls < fail_at) {
      /* the failure point was never reached: a clean, complete run */
      assert_int_equal(rv, NETSTASH_OK);
      assert_int_equal(c.len, len);
      assert_memory_equal(c.data, text, len);
      succeeded = 1;
    } else if (rv == NETSTASH_OK) {
      fail_msg("allocation %zu failed but decoding succeeded", fail_at);
    } else {
      assert_int_equal(rv, NETSTASH_E_NOMEM);
      nomem++;
    }
    collect_free(&c);
  }
  assert_true(succeeded);
  assert_true(nomem >= 1); /* at least the decoder struct */
  free(enc);
  free(text);
}

static void test_failmalloc(void **state) {
  (void)state;
  check_failmalloc(k_gzip, 1);
  check_failmalloc(k_deflate, 1);
  check_failmalloc(k_br, 1);
  check_failmalloc(k_zstd, 1);
  check_failmalloc(k_br_zstd, 2);
  check_failmalloc(k_gzip_br, 2);
  check_failmalloc(k_three, 3);
  check_failmalloc(NULL, 0);
}

/* ------------------------------------------------------- API contract */

static void test_new_args(void **state) {
  ns_decoder *d = (ns_decoder *)(uintptr_t)1;
  static const ns_coding four[] = {NS_CODING_GZIP, NS_CODING_GZIP,
                                   NS_CODING_GZIP, NS_CODING_GZIP};
  static const ns_coding unk[] = {NS_CODING_UNKNOWN};
  (void)state;
  assert_int_equal(ns_decoder_new(ns_mem_default(), four, 4, 1, &d),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_null(d);
  assert_int_equal(ns_decoder_new(ns_mem_default(), four, -1, 1, &d),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_decoder_new(ns_mem_default(), NULL, 1, 1, &d),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_decoder_new(NULL, four, 1, 1, &d),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_decoder_new(ns_mem_default(), unk, 1, 1, &d),
                   NETSTASH_E_UNSUPPORTED);
  assert_null(d);
  assert_int_equal(ns_decoder_new(ns_mem_default(), four, 3, 1, &d),
                   NETSTASH_OK);
  assert_int_equal(ns_decoder_write(d, (const uint8_t *)"x", 1, NULL, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_decoder_write(NULL, (const uint8_t *)"x", 1, NULL, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
  ns_decoder_del(d);
  ns_decoder_del(NULL);
  assert_int_equal(ns_decoder_total_out(NULL), 0);
  assert_int_equal(ns_decoder_finish(NULL, NULL, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
}

/* ------------------------------------------------------------ parsing */

static int parse(const char *s, ns_coding out[NS_DECODE_MAX_LAYERS]) {
  return ns_coding_parse(s, strlen(s), out);
}

static void test_coding_parse(void **state) {
  ns_coding o[NS_DECODE_MAX_LAYERS];
  (void)state;
  assert_int_equal(parse("gzip", o), 1);
  assert_int_equal(o[0], NS_CODING_GZIP);
  assert_int_equal(parse("GZip ,  br", o), 2);
  assert_int_equal(o[0], NS_CODING_GZIP);
  assert_int_equal(o[1], NS_CODING_BR);
  assert_int_equal(parse("x-gzip", o), 1);
  assert_int_equal(o[0], NS_CODING_GZIP);
  assert_int_equal(parse("X-GZIP", o), 1);
  assert_int_equal(parse(", ,br", o), 1);
  assert_int_equal(o[0], NS_CODING_BR);
  assert_int_equal(parse("deflate,", o), 1);
  assert_int_equal(o[0], NS_CODING_DEFLATE);
  assert_int_equal(parse("\tbr\t,\tDeflate ", o), 2);
  assert_int_equal(o[1], NS_CODING_DEFLATE);
  assert_int_equal(parse("compress", o), -1);
  assert_int_equal(parse("x-compress", o), -1);
  assert_int_equal(parse("zstd", o), 1);
  assert_int_equal(o[0], NS_CODING_ZSTD);
  assert_int_equal(parse("br, ZSTD", o), 2);
  assert_int_equal(o[1], NS_CODING_ZSTD);
  assert_string_equal(ns_coding_name(NS_CODING_ZSTD), "zstd");
  assert_int_equal(parse("gzip, compress", o), -1);
  assert_int_equal(parse("gzip, gzip, gzip, gzip", o), -1);
  assert_int_equal(parse("gzip, gzip, gzip", o), 3);
  assert_int_equal(parse("identity", o), 0);
  assert_int_equal(parse("identity, gzip, IDENTITY, br, deflate", o), 3);
  assert_int_equal(o[0], NS_CODING_GZIP);
  assert_int_equal(o[2], NS_CODING_DEFLATE);
  assert_int_equal(parse("", o), 0);
  assert_int_equal(parse(" , \t, ", o), 0);
  assert_int_equal(ns_coding_parse(NULL, 0, o), 0);
  assert_int_equal(ns_coding_parse(NULL, 3, o), -1);
  assert_int_equal(ns_coding_parse("gzip", 4, NULL), -1);
  /* not tokens */
  assert_int_equal(parse("gz ip", o), -1);
  assert_int_equal(parse("gzip;q=1", o), -1);
  assert_int_equal(parse("\"gzip\"", o), -1);
  assert_int_equal(parse("gzip\r\n", o), -1);
  assert_int_equal(parse("br\xc3\xa9", o), -1);
  assert_int_equal(parse("gzi", o), -1);
  assert_int_equal(parse("gzipp", o), -1);
  /* len bounds the read: no NUL needed, none looked for */
  assert_int_equal(ns_coding_parse("gzipXYZ", 4, o), 1);
  assert_int_equal(o[0], NS_CODING_GZIP);
  assert_int_equal(ns_coding_parse("br\0gzip", 7, o), -1);
  assert_string_equal(ns_coding_name(NS_CODING_BR), "br");
  assert_string_equal(ns_coding_name(NS_CODING_GZIP), "gzip");
  assert_string_equal(ns_coding_name(NS_CODING_DEFLATE), "deflate");
  assert_string_equal(ns_coding_name(NS_CODING_IDENTITY), "identity");
  assert_string_equal(ns_coding_name((ns_coding)99), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_gzip),
      cmocka_unit_test(test_round_trip_deflate_zlib),
      cmocka_unit_test(test_round_trip_deflate_raw),
      cmocka_unit_test(test_round_trip_br),
      cmocka_unit_test(test_round_trip_zstd),
      cmocka_unit_test(test_zstd_frames),
      cmocka_unit_test(test_round_trip_stacked),
      cmocka_unit_test(test_identity_passthrough),
      cmocka_unit_test(test_byte_by_byte),
      cmocka_unit_test(test_empty_body),
      cmocka_unit_test(test_corrupt),
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_trailing_garbage),
      cmocka_unit_test(test_gzip_second_member),
      cmocka_unit_test(test_sink_error_propagated),
      cmocka_unit_test(test_max_out_exact),
      cmocka_unit_test(test_bomb_gzip),
      cmocka_unit_test(test_bomb_br),
      cmocka_unit_test(test_bomb_zstd),
      cmocka_unit_test(test_failmalloc),
      cmocka_unit_test(test_new_args),
      cmocka_unit_test(test_coding_parse),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  printf("%d passed, %d failed\n", (int)NS_ARRAY_LEN(tests) - failed, failed);
  return failed ? 1 : 0;
}
