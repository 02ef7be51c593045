/*
 * tools/bench/lookup-lat.c — the latency of the kernel's synchronous fast
 * path through netd for an HTTP-cache entry, one at a time: a remote-mode
 * context (netstash_options_set_remote), then per lookup
 * netstash_request_new(), netstash_intercept_lookup() (one round trip on the
 * hit's own connection: netd tries its preload store, then its HTTP cache;
 * until session 15 netstash_intercept_cached alone), the body copied out, the
 * hit released, the request deleted. Driven by
 * tools/bench/lookup-load, which keeps netd's event loop busy meanwhile.
 *
 *   lookup-lat [-n N] [-w WARMUP] [-g GAP_US] SOCKET URL
 *
 * N (10000) lookups after WARMUP (200) unmeasured ones, GAP_US (200) µs of
 * sleep between two (a kernel does not ask back to back). Every answer must
 * be a cache hit (NETSTASH_SOURCE_CACHE) with a body, else the run fails
 * (exit 1). Prints one line: "RESULT n=N p50_us=.. p90_us=.. p99_us=..
 * p999_us=.. max_us=..".
 */
#define _GNU_SOURCE /* nftw (benchutil.h) */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "benchutil.h"

__attribute__((noreturn)) static void die(const char *what, netstash_error e) {
  fprintf(stderr, "lookup-lat: %s: %s\n", what, netstash_error_name(e));
  exit(1);
}

/* One lookup: the hit's body copied into buf; its size. */
static size_t lookup_once(netstash_preload_hit *h, const char *url, uint8_t *buf, size_t cap) {
  netstash_request *req;
  netstash_error e;
  size_t off = 0;
  if ((e = netstash_request_new(&req, url)) != NETSTASH_OK)
    die("netstash_request_new", e);
  if ((e = netstash_intercept_lookup(req, h)) != NETSTASH_OK)
    die("netstash_intercept_lookup (is the URL a fresh entry of netd's HTTP cache?)", e);
  if (netstash_preload_hit_source(h) != NETSTASH_SOURCE_CACHE)
    die("the answer's source", NETSTASH_E_INTERNAL);
  for (uint32_t i = 0; i < netstash_preload_hit_chunk_count(h); i++) {
    const uint8_t *d;
    size_t n;
    if ((e = netstash_preload_hit_chunk(h, i, &d, &n)) != NETSTASH_OK)
      die("netstash_preload_hit_chunk", e);
    if (n > cap - off)
      die("a body over the buffer", NETSTASH_E_TOO_LARGE);
    memcpy(buf + off, d, n);
    off += n;
  }
  netstash_preload_hit_release(h);
  netstash_request_del(req);
  return off;
}

int main(int argc, char **argv) {
  size_t n = 10000, warmup = 200;
  unsigned gap_us = 200;
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_preload_hit *h;
  netstash_error e;
  char detail[256];
  uint64_t *lat;
  static uint8_t buf[1 << 20];
  int c;
  while ((c = getopt(argc, argv, "n:w:g:")) != -1) {
    switch (c) {
    case 'n': n = strtoul(optarg, NULL, 10); break;
    case 'w': warmup = strtoul(optarg, NULL, 10); break;
    case 'g': gap_us = (unsigned)strtoul(optarg, NULL, 10); break;
    default:
      fprintf(stderr, "usage: lookup-lat [-n N] [-w WARMUP] [-g GAP_US] SOCKET URL\n");
      return 2;
    }
  }
  if (argc - optind != 2 || !n) {
    fprintf(stderr, "usage: lookup-lat [-n N] [-w WARMUP] [-g GAP_US] SOCKET URL\n");
    return 2;
  }
  if (!(lat = malloc(n * sizeof(*lat))))
    die("malloc", NETSTASH_E_NOMEM);
  if ((e = netstash_options_new(&o)) != NETSTASH_OK ||
      (e = netstash_options_set_remote(o, argv[optind])) != NETSTASH_OK)
    die("options", e);
  if ((e = netstash_ctx_new(&ctx, o, detail, sizeof(detail))) != NETSTASH_OK) {
    fprintf(stderr, "lookup-lat: netstash_ctx_new: %s\n", detail);
    return 1;
  }
  netstash_options_del(o);
  if ((e = netstash_preload_hit_new(ctx, &h)) != NETSTASH_OK)
    die("netstash_preload_hit_new", e);
  for (size_t i = 0; i < warmup + n; i++) {
    uint64_t t0 = now_ns();
    if (!lookup_once(h, argv[optind + 1], buf, sizeof(buf)))
      die("an empty body", NETSTASH_E_INTERNAL);
    if (i >= warmup)
      lat[i - warmup] = now_ns() - t0;
    if (gap_us)
      usleep(gap_us);
  }
  qsort(lat, n, sizeof(*lat), cmp_u64);
  printf("RESULT n=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n", n,
         lat[n / 2] / 1e3, lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3, lat[n * 999 / 1000] / 1e3,
         lat[n - 1] / 1e3);
  free(lat);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  return 0;
}
