/*
 * tools/bench/decode.c — throughput of the streaming content decoder
 * (lib/transport/decode.c) against a plain one-shot decode of the same data
 * with zlib / libbrotlidec / libzstd, in the same run.
 *
 *   tools/bench/decode FILE [BR_QUALITY]
 *
 * FILE is compressed here (gzip level 6 as servers do on the fly; brotli at
 * BR_QUALITY, default 11 as for precompressed assets, window 22; zstd level 19,
 * as `zstd -19` makes precompressed assets, its window at most 8 MiB), then each
 * way of decoding is timed REPS times and the best run is reported, in MB/s
 * of decoded output (1 MB = 10^6 bytes). Every result is checked against FILE.
 * The decoder's sink copies each piece into one output buffer, so it does the
 * same work as a one-shot decode that writes into memory.
 */
#include "ns_setup.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <zlib.h>
#include <brotli/decode.h>
#include <brotli/encode.h>
#include <zstd.h>

#include "transport/decode.h"

#define REPS 9

typedef struct outbuf {
  uint8_t *p;
  size_t len;
  size_t cap;
} outbuf;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/decode: %s\n", msg);
  exit(1);
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  uint8_t *p;
  long n;
  if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
      fseek(f, 0, SEEK_SET) != 0)
    die("cannot read the input file");
  p = malloc((size_t)n + 1);
  if (!p || fread(p, 1, (size_t)n, f) != (size_t)n)
    die("cannot read the input file");
  fclose(f);
  *len = (size_t)n;
  return p;
}

static uint8_t *gzip_encode(const uint8_t *in, size_t len, size_t *out_len) {
  z_stream zs;
  size_t cap;
  uint8_t *out;
  memset(&zs, 0, sizeof(zs));
  if (deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK)
    die("deflateInit2");
  cap = deflateBound(&zs, (uLong)len);
  out = malloc(cap);
  if (!out)
    die("out of memory");
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.avail_in = (uInt)len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END)
    die("deflate");
  *out_len = zs.total_out;
  deflateEnd(&zs);
  return out;
}

static uint8_t *br_encode(const uint8_t *in, size_t len, int quality,
                          size_t *out_len) {
  size_t cap = BrotliEncoderMaxCompressedSize(len);
  uint8_t *out = malloc(cap);
  if (!out)
    die("out of memory");
  *out_len = cap;
  if (!BrotliEncoderCompress(quality, 22, BROTLI_MODE_TEXT, len, in, out_len,
                             out))
    die("BrotliEncoderCompress");
  return out;
}

static uint8_t *zstd_encode(const uint8_t *in, size_t len, size_t *out_len) {
  ZSTD_CCtx *cc = ZSTD_createCCtx();
  size_t cap = ZSTD_compressBound(len);
  uint8_t *out = malloc(cap);
  if (!out || !cc)
    die("out of memory");
  if (ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 19)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 23)))
    die("zstd parameters");
  *out_len = ZSTD_compress2(cc, out, cap, in, len);
  if (ZSTD_isError(*out_len))
    die("ZSTD_compress2");
  ZSTD_freeCCtx(cc);
  return out;
}

static size_t oneshot_zstd(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
  size_t n = ZSTD_decompress(out, cap, in, len);
  if (ZSTD_isError(n))
    die("one-shot zstd");
  return n;
}

static size_t oneshot_gzip(const uint8_t *in, size_t len, uint8_t *out,
                           size_t cap) {
  z_stream zs;
  size_t n;
  memset(&zs, 0, sizeof(zs));
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
    die("inflateInit2");
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.avail_in = (uInt)len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  if (inflate(&zs, Z_FINISH) != Z_STREAM_END)
    die("one-shot inflate");
  n = zs.total_out;
  inflateEnd(&zs);
  return n;
}

static size_t oneshot_br(const uint8_t *in, size_t len, uint8_t *out,
                         size_t cap) {
  size_t n = cap;
  if (BrotliDecoderDecompress(len, in, &n, out) != BROTLI_DECODER_RESULT_SUCCESS)
    die("one-shot brotli");
  return n;
}

static netstash_error copy_sink(const uint8_t *p, size_t len, void *ud) {
  outbuf *o = ud;
  if (len > o->cap - o->len)
    return NETSTASH_E_TOO_LARGE;
  memcpy(o->p + o->len, p, len);
  o->len += len;
  return NETSTASH_OK;
}

/* piece 0: one write of the whole input. */
static size_t stream_decode(ns_coding c, const uint8_t *in, size_t len,
                            size_t piece, outbuf *o) {
  ns_decoder *d;
  size_t off = 0;
  o->len = 0;
  if (ns_decoder_new(ns_mem_default(), &c, 1, UINT64_MAX, &d) != NETSTASH_OK)
    die("ns_decoder_new");
  if (piece == 0)
    piece = len;
  while (off < len) {
    size_t k = NS_MIN(piece, len - off);
    if (ns_decoder_write(d, in + off, k, copy_sink, o) != NETSTASH_OK)
      die("ns_decoder_write");
    off += k;
  }
  if (ns_decoder_finish(d, copy_sink, o) != NETSTASH_OK)
    die("ns_decoder_finish");
  ns_decoder_del(d);
  return o->len;
}

static void check(const uint8_t *got, size_t got_len, const uint8_t *want,
                  size_t want_len) {
  if (got_len != want_len || memcmp(got, want, want_len) != 0)
    die("decoded output differs from the input file");
}

static void bench(const char *label, ns_coding c, const uint8_t *enc,
                  size_t enc_len, const uint8_t *orig, size_t orig_len) {
  outbuf o;
  double best[3] = {1e9, 1e9, 1e9};
  int r, k;
  o.cap = orig_len;
  o.p = malloc(orig_len + 1);
  if (!o.p)
    die("out of memory");
  for (r = 0; r < REPS; r++) {
    for (k = 0; k < 3; k++) {
      double t0 = now_s(), dt;
      size_t n;
      memset(o.p, 0, 1); /* keep the buffer live */
      if (k == 0)
        n = c == NS_CODING_GZIP   ? oneshot_gzip(enc, enc_len, o.p, o.cap)
            : c == NS_CODING_ZSTD ? oneshot_zstd(enc, enc_len, o.p, o.cap)
                                  : oneshot_br(enc, enc_len, o.p, o.cap);
      else
        n = stream_decode(c, enc, enc_len, k == 1 ? 0 : 16384, &o);
      dt = now_s() - t0;
      check(o.p, n, orig, orig_len);
      if (dt < best[k])
        best[k] = dt;
    }
  }
  printf("%-5s %9zu -> %9zu bytes | one-shot %7.1f MB/s | ns_decoder 1 write "
         "%7.1f MB/s (%.2fx) | ns_decoder 16 KiB writes %7.1f MB/s (%.2fx)\n",
         label, enc_len, orig_len, orig_len / best[0] / 1e6,
         orig_len / best[1] / 1e6, best[0] / best[1], orig_len / best[2] / 1e6,
         best[0] / best[2]);
  free(o.p);
}

int main(int argc, char **argv) {
  size_t len, gz_len, br_len, zs_len;
  uint8_t *orig, *gz, *br, *zs;
  int quality = 11;

  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s FILE [BR_QUALITY]\n", argv[0]);
    return 2;
  }
  if (argc == 3)
    quality = (int)strtol(argv[2], NULL, 10);
  orig = read_file(argv[1], &len);
  gz = gzip_encode(orig, len, &gz_len);
  br = br_encode(orig, len, quality, &br_len);
  printf("input %s: %zu bytes; best of %d runs; brotli quality %d\n", argv[1],
         len, REPS, quality);
  bench("gzip", NS_CODING_GZIP, gz, gz_len, orig, len);
  bench("br", NS_CODING_BR, br, br_len, orig, len);
  zs = zstd_encode(orig, len, &zs_len);
  bench("zstd", NS_CODING_ZSTD, zs, zs_len, orig, len);
  free(zs);
  free(br);
  free(gz);
  free(orig);
  return 0;
}
