/*
 * tools/bench/hit.c — preload hits through the interceptor ABI, in-process,
 * next to their physical floors measured in the same run.
 *
 *   tools/bench/hit [ENTRIES [LOOKUPS [SECONDS]]]     (5000 200000 2)
 *
 * Store: one manifest of ENTRIES resources, sizes skewed between 0.5 and
 * 200 KB (log-uniform), installed with the internal installer.
 * For a zipf(1.0) and a uniform key sequence:
 *   raw      mdb_txn_renew + mdb_get of the entry record + mdb_txn_reset
 *   head     netstash_intercept_preloaded(): URL → status + headers + body
 *            view (what a kernel needs to answer), no body bytes touched
 *   body     after the head: the body's zero-copy chunk views handed on (what
 *            the ABI delivers), next to memcpy of the same bytes from the map
 *            into a buffer (the floor of a copying delivery)
 * Every page is touched once before the timed rows (the floors too).
 * Scaling: SECONDS of head lookups in 1 process, then in 2 processes at once
 * (hits per second, ratio). Writer: the same in 1 process while another
 * process commits 1 MiB batches of new bodies into another manifest
 * (p50/p99 with and without; the writer paced at ~20 MB/s, a fast warm).
 * Allocations per lookup are counted by
 * interposing malloc. Peak RSS printed.
 */
#include "ns_setup.h"

#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "preload/install.h"
#include "preload/manifest.h"
#include "store/store.h"

#include "benchutil.h"

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/hit: %s\n", msg);
  exit(1);
}

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double urand(void) {
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (double)(rs >> 11) / 9007199254740992.0;
}

static size_t nent;
static size_t *sizes;
static char (*urls)[64];
static ns_buf *keys;
static char dir[] = "/tmp/netstash-bench-hit.XXXXXX";

static void fill(uint8_t *b, size_t len, size_t i, unsigned seed) {
  for (size_t k = 0; k < len; k++)
    b[k] = (uint8_t)(seed * 7 + i * 13 + k * 31 + (k >> 7));
}

/* Installs n resources under scope (sizes[] when sz, else 64 KB each). */
static void install(ns_store *s, const char *id, unsigned version, const char *scope, size_t n,
                    const size_t *sz, unsigned seed) {
  ns_buf j;
  size_t maxlen = 0;
  for (size_t i = 0; i < n; i++)
    maxlen = (sz ? sz[i] : 65536) > maxlen ? (sz ? sz[i] : 65536) : maxlen;
  uint8_t *body = malloc(maxlen);
  unsigned char d[32], enc[64];
  unsigned dl;
  ns_manifest *m = NULL;
  ns_manifest_check chk = {0, 0, 0};
  ns_pl_install *in = NULL;
  char det[256] = "";
  ns_pl_device dev = {NULL, NULL, "bench"};
  ns_buf_init(&j, ns_mem_default(), SIZE_MAX);
  ns_buf_printf(&j,
                "{\"id\": \"%s\", \"version\": %u, \"scope\": [\"%s\"], \"entry_pages\": "
                "[\"%s0\"], \"expires\": \"2099-01-01T00:00:00Z\", \"resources\": [",
                id, version, scope, scope);
  for (size_t i = 0; i < n; i++) {
    size_t len = sz ? sz[i] : 65536;
    fill(body, len, i, seed);
    EVP_Digest(body, len, d, &dl, EVP_sha256(), NULL);
    EVP_EncodeBlock(enc, d, 32);
    ns_buf_printf(&j,
                  "%s{\"url\": \"%s%zu\", \"integrity\": \"sha256-%s\", \"size\": %zu, "
                  "\"content_type\": \"application/octet-stream\", \"headers\": "
                  "{\"cache-control\": \"max-age=3600\"}, \"priority\": \"%s\"}",
                  i ? "," : "", scope, i, enc, len, i == 0 ? "critical" : "high");
  }
  ns_buf_append_str(&j, "]}");
  if (ns_manifest_parse(ns_mem_default(), j.data, j.len, &chk, &m, NULL) != NETSTASH_OK)
    die("manifest rejected");
  if (ns_pl_install_begin(s, ns_mem_default(), j.data, j.len, NULL, 0, "", m, &dev, &in, det,
                          sizeof(det)) != NETSTASH_OK)
    die(det);
  for (size_t i = 0; i < n; i++) {
    size_t len = sz ? sz[i] : 65536;
    fill(body, len, i, seed);
    if (ns_pl_install_body(in, i, body, len) != NETSTASH_OK)
      die("install_body");
  }
  if (ns_pl_install_publish(in) != NETSTASH_OK)
    die(det[0] ? det : "publish");
  ns_pl_install_free(in);
  ns_manifest_del(m);
  ns_buf_free(&j);
  free(body);
}

/* zipf(1.0) ranks over n keys (rank 0 most popular), mapped through a fixed
 * permutation so popularity does not follow size */
static void zipf_seq(uint32_t *out, size_t k, size_t n) {
  double *cdf = malloc(n * sizeof(double)), sum = 0;
  uint32_t *perm = malloc(n * sizeof(uint32_t));
  for (size_t i = 0; i < n; i++) {
    sum += 1.0 / (double)(i + 1);
    cdf[i] = sum;
    perm[i] = (uint32_t)i;
  }
  for (size_t i = n - 1; i > 0; i--) {
    size_t j = (size_t)(urand() * (double)(i + 1));
    uint32_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  for (size_t q = 0; q < k; q++) {
    double u = urand() * sum;
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (cdf[mid] < u)
        lo = mid + 1;
      else
        hi = mid;
    }
    out[q] = perm[lo];
  }
  free(cdf);
  free(perm);
}

typedef struct stats {
  uint64_t p50, p99;
  double allocs;
} stats;

static stats summarize(uint64_t *t, size_t n, unsigned long allocs) {
  stats s;
  qsort(t, n, sizeof(uint64_t), cmp_u64);
  s.p50 = t[n / 2];
  s.p99 = t[n * 99 / 100];
  s.allocs = (double)allocs / (double)n;
  return s;
}

static stats run_raw(const uint32_t *seq, size_t n, uint64_t *t) {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  char sdir[512];
  volatile unsigned sink = 0;
  snprintf(sdir, sizeof(sdir), "%s/store", dir);
  if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) ||
      mdb_env_open(env, sdir, MDB_RDONLY | MDB_NOTLS, 0600) ||
      mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) || mdb_dbi_open(txn, "preload", 0, &dbi) ||
      mdb_txn_commit(txn) || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
    die("raw LMDB open");
  mdb_txn_reset(txn);
  unsigned long a0 = n_alloc;
  for (size_t k = 0; k < n; k++) {
    MDB_val key = {keys[seq[k]].len, keys[seq[k]].data}, val;
    uint64_t t0 = now_ns();
    mdb_txn_renew(txn);
    if (mdb_get(txn, dbi, &key, &val) != 0)
      die("raw miss");
    sink += ((const uint8_t *)val.mv_data)[0];
    mdb_txn_reset(txn);
    t[k] = now_ns() - t0;
  }
  stats s = summarize(t, n, n_alloc - a0);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return s;
}

static netstash_ctx *ctx_open(void) {
  netstash_options *o;
  netstash_ctx *ctx;
  char det[256];
  if (netstash_options_new(&o) || netstash_options_set_profile_dir(o, dir) ||
      netstash_options_set_http_cache(o, 0) || netstash_ctx_new(&ctx, o, det, sizeof(det)))
    die("context");
  netstash_options_del(o);
  return ctx;
}

static netstash_request **reqs;

static stats run_head(netstash_preload_hit *h, const uint32_t *seq, size_t n, uint64_t *t) {
  volatile unsigned sink = 0;
  unsigned long a0 = n_alloc;
  for (size_t k = 0; k < n; k++) {
    const char *name, *value;
    size_t nl, vl;
    uint64_t t0 = now_ns();
    if (netstash_intercept_preloaded(reqs[seq[k]], h) != NETSTASH_OK)
      die("head miss");
    sink += (unsigned)netstash_preload_hit_status(h);
    netstash_preload_hit_header_at(h, 0, &name, &nl, &value, &vl);
    sink += (unsigned)vl;
    t[k] = now_ns() - t0;
  }
  return summarize(t, n, n_alloc - a0);
}

/* Delivering the body after the head: deliver = the zero-copy chunk views
 * a kernel hands on (what the ABI does); copy = memcpy of the same bytes
 * into a buffer (the floor of any copying delivery). */
static stats run_body(netstash_preload_hit *h, const uint32_t *seq, size_t n, uint64_t *t,
                      int copy, uint8_t *buf, uint64_t *bytes) {
  volatile uint64_t sink = 0;
  unsigned long a0 = n_alloc;
  *bytes = 0;
  for (size_t k = 0; k < n; k++) {
    if (netstash_intercept_preloaded(reqs[seq[k]], h) != NETSTASH_OK)
      die("body miss");
    uint64_t t0 = now_ns();
    uint32_t nc = netstash_preload_hit_chunk_count(h); /* fetches the body view */
    size_t at = 0;
    for (uint32_t c = 0; c < nc; c++) {
      const uint8_t *d;
      size_t len;
      netstash_preload_hit_chunk(h, c, &d, &len);
      if (copy)
        memcpy(buf + at, d, len);
      else
        sink += (uintptr_t)d; /* the view is handed on as it is */
      at += len;
    }
    t[k] = now_ns() - t0;
    sink += copy ? buf[at ? at - 1 : 0] : at;
    *bytes += netstash_preload_hit_body_size(h);
  }
  return summarize(t, n, n_alloc - a0);
}

/* Touches every page of every body once (page tables warm, as after a
 * process has served for a while; the floors get the same). */
static void warm_pages(netstash_preload_hit *h) {
  volatile uint64_t sink = 0;
  for (size_t i = 0; i < nent; i++) {
    if (netstash_intercept_preloaded(reqs[i], h) != NETSTASH_OK)
      die("warm miss");
    for (uint32_t c = 0; c < netstash_preload_hit_chunk_count(h); c++) {
      const uint8_t *d;
      size_t len;
      netstash_preload_hit_chunk(h, c, &d, &len);
      for (size_t x = 0; x < len; x += 4096)
        sink += d[x];
    }
  }
}

/* Head lookups for secs seconds; returns the count (child processes). */
static uint64_t spin(double secs, uint64_t *lat, size_t lat_cap, size_t *nlat) {
  netstash_ctx *ctx = ctx_open();
  netstash_preload_hit *h;
  uint64_t count = 0, end = now_ns() + (uint64_t)(secs * 1e9);
  if (netstash_preload_hit_new(ctx, &h))
    die("hit");
  warm_pages(h);
  *nlat = 0;
  while (now_ns() < end) {
    for (int b = 0; b < 256; b++) {
      uint32_t i = (uint32_t)(urand() * (double)nent);
      uint64_t t0 = now_ns();
      if (netstash_intercept_preloaded(reqs[i], h) != NETSTASH_OK)
        die("spin miss");
      if (*nlat < lat_cap)
        lat[(*nlat)++] = now_ns() - t0;
      count++;
    }
  }
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  return count;
}

/* The floors of scaling: raw LMDB lookups (renew + get + reset, the same
 * keys), and pure arithmetic that touches no shared memory at all (what the
 * machine gives two processes: on a VM, two vCPUs are not always two
 * whole cores). Both count operations done in secs. */
static uint64_t spin_raw(double secs) {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  char sdir[512];
  volatile unsigned sink = 0;
  uint64_t count = 0, end = now_ns() + (uint64_t)(secs * 1e9);
  snprintf(sdir, sizeof(sdir), "%s/store", dir);
  if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) ||
      mdb_env_open(env, sdir, MDB_RDONLY | MDB_NOTLS, 0600) ||
      mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) || mdb_dbi_open(txn, "preload", 0, &dbi) ||
      mdb_txn_commit(txn) || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
    die("raw LMDB open");
  mdb_txn_reset(txn);
  while (now_ns() < end) {
    for (int b = 0; b < 256; b++) {
      uint32_t i = (uint32_t)(urand() * (double)nent);
      MDB_val key = {keys[i].len, keys[i].data}, val;
      mdb_txn_renew(txn);
      if (mdb_get(txn, dbi, &key, &val) != 0)
        die("raw miss");
      sink += ((const uint8_t *)val.mv_data)[0];
      mdb_txn_reset(txn);
      count++;
    }
  }
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return count;
}

static uint64_t spin_compute(double secs) {
  uint64_t count = 0, x = 88172645463325252ull, end = now_ns() + (uint64_t)(secs * 1e9);
  volatile uint64_t sink;
  while (now_ns() < end) {
    for (int b = 0; b < 4096; b++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      x *= 0x2545F4914F6CDD1Dull;
    }
    count += 4096;
  }
  sink = x;
  (void)sink;
  return count;
}

enum { RATE_ABI, RATE_RAW, RATE_COMPUTE };

static uint64_t parallel_rate(int procs, double secs, int kind) {
  int fds[2];
  uint64_t total = 0;
  if (pipe(fds))
    die("pipe");
  for (int p = 0; p < procs; p++) {
    pid_t pid = fork();
    if (pid == 0) {
      size_t nl;
      uint64_t *lat = malloc(sizeof(uint64_t));
      rs ^= (uint64_t)getpid() * 0x2545F4914F6CDD1Dull;
      uint64_t c = kind == RATE_ABI   ? spin(secs, lat, 0, &nl)
                   : kind == RATE_RAW ? spin_raw(secs)
                                      : spin_compute(secs);
      if (write(fds[1], &c, sizeof(c)) != sizeof(c))
        _exit(1);
      _exit(0);
    }
  }
  close(fds[1]);
  for (int p = 0; p < procs; p++) {
    uint64_t c = 0;
    if (read(fds[0], &c, sizeof(c)) == sizeof(c))
      total += c;
  }
  close(fds[0]);
  while (wait(NULL) > 0) {
  }
  return (uint64_t)((double)total / secs);
}

/* A writer process: publishes a new version of one manifest with 16 new
 * 64 KB bodies (1 MiB) every 50 ms, until killed. */
static pid_t start_writer(void) {
  pid_t pid = fork();
  if (pid == 0) {
    ns_store_params sp;
    ns_store *s;
    char det[256];
    ns_store_params_init(&sp);
    sp.dir = dir;
    sp.map_size = sp.size_limit = (uint64_t)4 << 30;
    if (ns_store_open(&sp, &s, det, sizeof(det)))
      _exit(1);
    for (unsigned v = 1;; v++) {
      /* one manifest, a new version with new bodies each time, as a warmer
       * publishing updates does */
      install(s, "writer", v, "https://writer.test/", 16, NULL, 1000 + v);
      usleep(50000); /* ~20 MB/s: a fast warm over a good network */
    }
  }
  return pid;
}

int main(int argc, char **argv) {
  nent = argc > 1 ? strtoul(argv[1], NULL, 10) : 5000;
  size_t lookups = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
  double secs = argc > 3 ? atof(argv[3]) : 2.0;
  char det[256];
  ns_store_params sp;
  ns_store *s;
  uint64_t total = 0;
  if (!nent || !lookups || secs <= 0 || !mkdtemp(dir))
    die("usage: hit [ENTRIES [LOOKUPS [SECONDS]]]");
  sizes = calloc(nent, sizeof(size_t));
  urls = calloc(nent, 64);
  keys = calloc(nent, sizeof(ns_buf));
  reqs = calloc(nent, sizeof(*reqs));
  for (size_t i = 0; i < nent; i++) {
    sizes[i] = (size_t)(512.0 * pow(400.0, urand())); /* 0.5 .. 200 KB, log-uniform */
    total += sizes[i];
    snprintf(urls[i], 64, "https://hit.test/r/%zu", i);
    ns_buf_init(&keys[i], ns_mem_default(), NS_STORE_KEY_MAX);
    ns_pl_key_entry(&keys[i], "hit", 1, urls[i], strlen(urls[i]));
    if (netstash_request_new(&reqs[i], urls[i]))
      die("request");
  }
  ns_store_params_init(&sp);
  sp.dir = dir;
  sp.map_size = sp.size_limit = (uint64_t)4 << 30;
  if (ns_store_open(&sp, &s, det, sizeof(det)))
    die(det);
  install(s, "hit", 1, "https://hit.test/r/", nent, sizes, 1);
  ns_store_close(s);
  printf("hit: %zu entries, %.1f MB (0.5-200 KB, log-uniform), %zu lookups per row\n", nent,
         (double)total / 1e6, lookups);

  uint32_t *seq = malloc(lookups * sizeof(uint32_t));
  uint64_t *t = malloc(lookups * sizeof(uint64_t));
  uint8_t *buf = malloc(256 << 10);
  for (int pattern = 0; pattern < 2; pattern++) {
    if (pattern == 0)
      zipf_seq(seq, lookups, nent);
    else
      for (size_t k = 0; k < lookups; k++)
        seq[k] = (uint32_t)(urand() * (double)nent);
    stats raw = run_raw(seq, lookups, t);
    netstash_ctx *ctx = ctx_open();
    netstash_preload_hit *h;
    if (netstash_preload_hit_new(ctx, &h))
      die("hit");
    warm_pages(h);
    stats head = run_head(h, seq, lookups, t);
    uint64_t b1, b2;
    stats body = run_body(h, seq, lookups, t, 0, buf, &b1);
    stats copy = run_body(h, seq, lookups, t, 1, buf, &b2);
    netstash_preload_hit_del(h);
    netstash_ctx_del(ctx);
    const char *pn = pattern == 0 ? "zipf" : "uniform";
    printf("%-8s raw mdb_get       p50 %6llu ns  p99 %6llu ns\n", pn,
           (unsigned long long)raw.p50, (unsigned long long)raw.p99);
    printf("%-8s head (ABI)        p50 %6llu ns  p99 %6llu ns  %.2fx raw  allocs/lookup %.3f\n",
           pn, (unsigned long long)head.p50, (unsigned long long)head.p99,
           (double)head.p50 / (double)raw.p50, head.allocs);
    printf("%-8s body views (0-copy) p50 %6llu ns  p99 %6llu ns  %.2fx memcpy  (%.1f MB, allocs "
           "%.3f)\n",
           pn, (unsigned long long)body.p50, (unsigned long long)body.p99,
           (double)body.p50 / (double)copy.p50, (double)b1 / 1e6, body.allocs);
    printf("%-8s memcpy same bytes p50 %6llu ns  p99 %6llu ns\n", pn,
           (unsigned long long)copy.p50, (unsigned long long)copy.p99);
  }

  uint64_t r1 = parallel_rate(1, secs, RATE_ABI), r2 = parallel_rate(2, secs, RATE_ABI);
  uint64_t q1 = parallel_rate(1, secs, RATE_RAW), q2 = parallel_rate(2, secs, RATE_RAW);
  uint64_t c1 = parallel_rate(1, secs, RATE_COMPUTE), c2 = parallel_rate(2, secs, RATE_COMPUTE);
  double sa = (double)r2 / (double)r1, sr = (double)q2 / (double)q1, sc = (double)c2 / (double)c1;
  printf("scaling  1 process %.2f M hits/s, 2 processes %.2f M hits/s: %.2fx (2 cores)\n",
         (double)r1 / 1e6, (double)r2 / 1e6, sa);
  printf("scaling  floors: raw mdb_get %.2fx (%.2f -> %.2f M/s), arithmetic only %.2fx; "
         "ABI / raw %.2f, ABI / arithmetic %.2f\n",
         sr, (double)q1 / 1e6, (double)q2 / 1e6, sc, sa / sr, sa / sc);

  size_t nl;
  uint64_t *lat = malloc(2000000 * sizeof(uint64_t));
  spin(secs, lat, 2000000, &nl);
  stats idle = summarize(lat, nl, 0);
  pid_t wpid = start_writer();
  usleep(200000);
  spin(secs, lat, 2000000, &nl);
  stats busy = summarize(lat, nl, 0);
  kill(wpid, SIGKILL);
  waitpid(wpid, NULL, 0);
  printf("writer   head p50/p99 idle %llu/%llu ns, while another process commits 1 MiB batches "
         "%llu/%llu ns\n",
         (unsigned long long)idle.p50, (unsigned long long)idle.p99,
         (unsigned long long)busy.p50, (unsigned long long)busy.p99);
  printf("peak RSS %ld MB (the store is mapped)\n", peak_rss_kb() / 1024);

  for (size_t i = 0; i < nent; i++) {
    ns_buf_free(&keys[i]);
    netstash_request_del(reqs[i]);
  }
  bench_rmtree(dir);
  return 0;
}
