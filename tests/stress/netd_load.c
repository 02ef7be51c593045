/*
 * netd_load — netd under load (issue 9, "Load").
 *
 * Usage: netd_load [--clients P] [--requests R] [--seconds S] [--restarts K]
 *                  [--max-rss-mb M] [--max-anon-mb M] [--fd-slack N] [--seed S]
 *                  [--kill9] [--keep]
 *
 * Starts caddy ("h2") and nst-rawserver on loopback, warms a profile with a
 * signed preload manifest (id "ld", 24 resources of 1-64 KB), starts netd on
 * it (--cacert, --trust, --resolve) and forks P client processes (default
 * 64), each making R requests (default 10,000) one after the other through
 * netd's unix socket with the library in remote mode
 * (netstash_options_set_remote). The mix, drawn per request:
 *   50 %  preload hits   https://example.test/pl/ld/rN.bin (the warmed set)
 *   30 %  cache hits     https://example.test/lc/cN.bin, 48 files with an
 *                        mtime 30 days ago (heuristically fresh; each is
 *                        fetched once through netd before the clients start)
 *   20 %  network        http://127.0.0.1:RAW/echo?c=CLIENT&i=N&s=S: a new
 *                        URL each time; half with Cache-Control: no-store
 *                        (S=0), half stored by netd (S=1: a store write per
 *                        request, so restarts and --kill9 hit netd mid-write);
 *                        the body is the request head, so an answer meant for
 *                        another request or client is caught
 * Clients with an odd number ask as a kernel does: the interceptor's fast
 * path first (a synchronous lookup on a connection of the client's own,
 * served by one of netd's lookup threads or its loop: clients 4k+3 with
 * netstash_intercept_lookup, preload store and HTTP cache in one lookup;
 * clients 4k+1 with netstash_intercept_preloaded or _cached by the URL's
 * kind), a job only when that says NOT_FOUND.
 * Every answer is checked: status 200 and the exact bytes (preload and cache
 * answers against the files; echo answers must carry their own request
 * line). A request that fails (netd restarting) is retried after 10 ms, up to
 * 1,000 times; a wrong answer is never retried and fails the run.
 *
 * K times during the run (evenly spread over the requests, or over the time
 * with --seconds), netd gets SIGTERM and, once it has exited, is started
 * again on the same profile (--kill9: SIGKILL instead, a crash). netd's
 * VmRSS / VmHWM / RssAnon and open fds (/proc/PID/fd) are sampled every
 * 50 ms.
 *
 * --seconds S: each client runs until S seconds have passed instead of R
 * requests (the soak, scripts/soak).
 *
 * Report: requests, requests/s, p50/p90/p99/max latency of answered
 * requests, per-class answers and sources, retries, wrong answers, failed
 * requests, netd's peak RSS (VmHWM), peak anonymous RSS, fds (idle before
 * the clients, peak, after the clients ended). Exit 1 when an answer was
 * wrong, a request failed for good, peak VmHWM exceeded --max-rss-mb or peak
 * RssAnon --max-anon-mb (0: no bound; VmRSS also counts the store's mapped
 * pages, which grow with what netd stores — RssAnon is netd's own heap), or the fds after the run
 * exceed the idle count before it by more than --fd-slack (default 16: netd's pooled origin
 * connections), or `netstash verify` fails on the profile afterwards.
 */
#define _GNU_SOURCE 1
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "core/mem.h"
#include "harness.h"
#include "netd_run.h"
#include "preload/sign.h"

#define N_PRELOAD 24
#define N_CACHE 48
#define MAX_CLIENTS 256
#define HIST_SUB 16 /* buckets per power of two */
#define HIST_N (40 * HIST_SUB)
#define MAX_TRIES 1000

enum { C_PRELOAD = 0, C_CACHE = 1, C_NET = 2, C_N = 3 };
static const char *const class_name[C_N] = {"preload", "cache", "network"};

typedef struct client_stats {
  uint64_t answered[C_N], sources[C_N][5], retries, wrong, failed;
  uint64_t fast[C_N];    /* of answered: by the interceptor's fast path */
  uint32_t hist[HIST_N]; /* latency of answered requests, log-scaled microseconds */
} client_stats;

typedef struct shared {
  _Atomic uint64_t done; /* requests finished (answered, wrong or failed) */
  _Atomic int stop;      /* --seconds: the deadline passed */
  client_stats c[MAX_CLIENTS];
} shared;

typedef struct file {
  uint8_t *data;
  size_t len;
  char url[300];
} file;

static file preload_files[N_PRELOAD], cache_files[N_CACHE];
static char g_sock[700], g_raw_base[128];

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static void fill(uint8_t *b, size_t len, uint64_t seed) {
  uint64_t s = mix(seed);
  for (size_t i = 0; i < len; i++) {
    if (i % 8 == 0)
      s = mix(s);
    b[i] = (uint8_t)(s >> (8 * (i % 8)));
  }
}

static int put_file(const char *path, const void *data, size_t len, int old) {
  FILE *f = fopen(path, "wb");
  if (!f)
    return -1;
  if (len && fwrite(data, 1, len, f) != len) {
    fclose(f);
    return -1;
  }
  if (fclose(f) != 0)
    return -1;
  if (old) {
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= 30 * 86400;
    ts[1] = ts[0];
    utimensat(AT_FDCWD, path, ts, 0);
  }
  return 0;
}

static int hist_bucket(uint64_t us) {
  int b;
  if (us < 1)
    us = 1;
  b = (int)floor(log2((double)us) * HIST_SUB);
  return b < 0 ? 0 : b >= HIST_N ? HIST_N - 1 : b;
}

static double hist_value(int b) { return pow(2.0, (b + 0.5) / HIST_SUB); }

/* ------------------------------------------------------------ client */

static netstash_ctx *remote_ctx(void) {
  netstash_options *o = NULL;
  netstash_ctx *ctx = NULL;
  if (netstash_options_new(&o) != NETSTASH_OK || netstash_options_set_remote(o, g_sock) != 0 ||
      netstash_ctx_new(&ctx, o, NULL, 0) != NETSTASH_OK)
    ctx = NULL;
  netstash_options_del(o);
  return ctx;
}

/* One request; 1 answered right, 0 failed (retry), -1 answered wrongly. */
static int one(netstash_ctx *ctx, int nostore, const char *url, const file *want,
               const char *line, netstash_source *src) {
  netstash_request *r = NULL;
  netstash_fetch *f = NULL;
  const uint8_t *body = NULL;
  size_t len = 0;
  int rv = 0;
  if (netstash_request_new(&r, url) != NETSTASH_OK)
    return 0;
  netstash_request_set_collect_body(r, 1u << 20);
  netstash_request_set_timeout_ms(r, 30000);
  if (nostore)
    netstash_request_add_header(r, "Cache-Control", "no-store");
  if (netstash_fetch_sync(ctx, r, &f) == NETSTASH_OK) {
    netstash_fetch_body(f, &body, &len);
    *src = netstash_fetch_source(f);
    if (netstash_fetch_status(f) != 200)
      rv = -1;
    else if (want)
      rv = len == want->len && memcmp(body, want->data, len) == 0 ? 1 : -1;
    else
      rv = len > strlen(line) && memcmp(body, line, strlen(line)) == 0 ? 1 : -1;
    if (rv < 0)
      fprintf(stderr, "netd_load: WRONG answer for %s: status %d, %zu bytes, source %d\n", url,
              netstash_fetch_status(f), len, (int)*src);
  }
  netstash_fetch_del(f);
  netstash_request_del(r);
  return rv;
}

/* The interceptor's fast path for a preload (cls C_PRELOAD) or cache URL, as
 * a kernel tries it before a job: 1 answered right, 0 failed (retry), -1
 * answered wrongly, 2 not answered there (a job's). */
static int one_fast(netstash_preload_hit *h, int cls, int combined, const char *url,
                    const file *want, netstash_source *src) {
  netstash_request *r = NULL;
  netstash_error e;
  size_t off = 0;
  int rv = 1;
  if (netstash_request_new(&r, url) != NETSTASH_OK)
    return 0;
  e = combined           ? netstash_intercept_lookup(r, h)
      : cls == C_PRELOAD ? netstash_intercept_preloaded(r, h)
                         : netstash_intercept_cached(r, h);
  netstash_request_del(r);
  if (e == NETSTASH_E_NOT_FOUND)
    return 2;
  if (e != NETSTASH_OK)
    return 0; /* netd restarting */
  *src = netstash_preload_hit_source(h);
  if (netstash_preload_hit_status(h) != 200 || netstash_preload_hit_body_size(h) != want->len)
    rv = -1;
  for (uint32_t i = 0; rv > 0 && i < netstash_preload_hit_chunk_count(h); i++) {
    const uint8_t *d;
    size_t n;
    if (netstash_preload_hit_chunk(h, i, &d, &n) != NETSTASH_OK || n > want->len - off ||
        memcmp(d, want->data + off, n) != 0)
      rv = -1;
    off += n;
  }
  if (rv > 0 && off != want->len)
    rv = -1;
  if (rv < 0)
    fprintf(stderr, "netd_load: WRONG fast-path answer for %s: status %d, %llu bytes, source %d\n",
            url, netstash_preload_hit_status(h),
            (unsigned long long)netstash_preload_hit_body_size(h), (int)*src);
  netstash_preload_hit_release(h);
  return rv;
}

static int client_main(int id, uint64_t requests, shared *sh, uint64_t seed) {
  client_stats *cs = &sh->c[id];
  netstash_ctx *ctx = remote_ctx();
  netstash_preload_hit *h = NULL;
  uint64_t rng = mix(seed * 1000 + (uint64_t)id);
  if (!ctx || ((id & 1) && netstash_preload_hit_new(ctx, &h) != NETSTASH_OK))
    return 2;
  for (uint64_t i = 0; requests ? i < requests : !atomic_load(&sh->stop); i++) {
    char url[320], line[200];
    const file *want = NULL;
    unsigned pick;
    int cls, rv = 0, nostore = 0;
    netstash_source src = NETSTASH_SOURCE_NONE;
    rng = mix(rng);
    pick = (unsigned)(rng % 100);
    if (pick < 50) {
      cls = C_PRELOAD;
      want = &preload_files[(rng >> 8) % N_PRELOAD];
      snprintf(url, sizeof(url), "%s", want->url);
    } else if (pick < 80) {
      cls = C_CACHE;
      want = &cache_files[(rng >> 8) % N_CACHE];
      snprintf(url, sizeof(url), "%s", want->url);
    } else {
      cls = C_NET;
      nostore = (rng >> 20) & 1;
      snprintf(url, sizeof(url), "%s/echo?c=%d&i=%llu&s=%d", g_raw_base, id,
               (unsigned long long)i, !nostore);
      snprintf(line, sizeof(line), "GET /echo?c=%d&i=%llu&s=%d HTTP/1.1\r\n", id,
               (unsigned long long)i, !nostore);
    }
    for (int tries = 0; tries < MAX_TRIES; tries++) {
      uint64_t t0 = now_us();
      int fast = h && cls != C_NET;
      rv = fast ? one_fast(h, cls, (id & 3) == 3, url, want, &src) : 2;
      if (rv == 2) {
        fast = 0;
        rv = one(ctx, nostore, url, want, line, &src);
      }
      if (rv != 0) {
        if (rv > 0) {
          cs->hist[hist_bucket(now_us() - t0)]++;
          cs->answered[cls]++;
          cs->fast[cls] += (uint64_t)fast;
          cs->sources[cls][src <= 4 ? src : 0]++;
        } else {
          cs->wrong++;
        }
        break;
      }
      cs->retries++;
      usleep(10000);
    }
    if (rv == 0)
      cs->failed++;
    atomic_fetch_add(&sh->done, 1);
  }
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  return 0;
}

/* ------------------------------------------------------------ netd */

typedef struct proc_sample {
  long rss_kb, hwm_kb, anon_kb;
  int fds;
} proc_sample;

static int sample(pid_t pid, proc_sample *s) {
  char path[64], line[256];
  FILE *f;
  DIR *d;
  struct dirent *de;
  memset(s, 0, sizeof(*s));
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  if (!(f = fopen(path, "r")))
    return -1;
  while (fgets(line, sizeof(line), f)) {
    sscanf(line, "VmRSS: %ld", &s->rss_kb);
    sscanf(line, "VmHWM: %ld", &s->hwm_kb);
    sscanf(line, "RssAnon: %ld", &s->anon_kb);
  }
  fclose(f);
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
  if (!(d = opendir(path)))
    return -1;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.')
      s->fds++;
  closedir(d);
  return 0;
}

static const char *netd_args[16];

static int netd_up(netd_proc *dp) {
  if (netd_run_start(dp, netd_args, 10000) != 0) {
    fprintf(stderr, "netd_load: netd did not come up (log %s)\n", dp->log);
    return -1;
  }
  return 0;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ setup */

static int warm_profile(const char *profile, const char *pub, const char *src,
                        const char *resolve) {
  netstash_options *o = NULL;
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  netstash_error err;
  char detail[256] = "";
  netstash_options_new(&o);
  netstash_options_set_profile_dir(o, profile);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  netstash_options_add_trusted_key(o, pub);
  err = netstash_ctx_new(&ctx, o, detail, sizeof(detail));
  netstash_options_del(o);
  if (err != NETSTASH_OK) {
    fprintf(stderr, "netd_load: context: %s: %s\n", netstash_error_name(err), detail);
    return -1;
  }
  err = netstash_warm_new(ctx, src, &w);
  if (err == NETSTASH_OK) {
    netstash_warm_add_resolve(w, resolve);
    err = netstash_warm_start(w);
  }
  if (err == NETSTASH_OK)
    err = netstash_warm_wait(w, 60000);
  if (err != NETSTASH_OK)
    fprintf(stderr, "netd_load: warm: %s: %s\n", netstash_error_name(err),
            w ? netstash_warm_error_detail(w) : "");
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  return err == NETSTASH_OK ? 0 : -1;
}

static int make_site(const char *base, const char *key, char *src, size_t cap) {
  char path[1200], integ[128], detail[256];
  json_t *m = json_object(), *res = json_array(), *scope = json_array(), *ep = json_array();
  char *text, *sig = NULL;
  size_t sig_len;
  int rc = -1;
  snprintf(path, sizeof(path), "%s/pl", nst_site());
  mkdir(path, 0755);
  snprintf(path, sizeof(path), "%s/pl/ld", nst_site());
  mkdir(path, 0755);
  snprintf(path, sizeof(path), "%s/lc", nst_site());
  mkdir(path, 0755);
  for (int i = 0; i < N_PRELOAD; i++) {
    file *f = &preload_files[i];
    unsigned char d[32], enc[64];
    unsigned dl = 0;
    json_t *r = json_object();
    f->len = 1000 + (size_t)(mix((uint64_t)i + 5000) % 64000);
    f->data = malloc(f->len);
    fill(f->data, f->len, (uint64_t)i + 5000);
    snprintf(path, sizeof(path), "%s/pl/ld/r%d.bin", nst_site(), i);
    if (put_file(path, f->data, f->len, 0) != 0)
      goto done;
    snprintf(f->url, sizeof(f->url), "%spl/ld/r%d.bin", base, i);
    EVP_Digest(f->data, f->len, d, &dl, EVP_sha256(), NULL);
    EVP_EncodeBlock(enc, d, (int)dl);
    snprintf(integ, sizeof(integ), "sha256-%s", enc);
    json_object_set_new(r, "url", json_string(f->url));
    json_object_set_new(r, "integrity", json_string(integ));
    json_object_set_new(r, "size", json_integer((json_int_t)f->len));
    json_object_set_new(r, "content_type", json_string("application/octet-stream"));
    json_object_set_new(r, "priority", json_string("high"));
    json_array_append_new(res, r);
  }
  for (int i = 0; i < N_CACHE; i++) {
    file *f = &cache_files[i];
    f->len = 500 + (size_t)(mix((uint64_t)i + 9000) % 40000);
    f->data = malloc(f->len);
    fill(f->data, f->len, (uint64_t)i + 9000);
    snprintf(path, sizeof(path), "%s/lc/c%d.bin", nst_site(), i);
    if (put_file(path, f->data, f->len, 1) != 0)
      goto done;
    snprintf(f->url, sizeof(f->url), "%slc/c%d.bin", base, i);
  }
  snprintf(path, sizeof(path), "%spl/ld/", base);
  json_array_append_new(scope, json_string(path));
  json_array_append_new(ep, json_string(preload_files[0].url));
  json_object_set_new(m, "id", json_string("ld"));
  json_object_set_new(m, "version", json_integer(1));
  json_object_set_new(m, "scope", scope);
  json_object_set_new(m, "entry_pages", ep);
  json_object_set_new(m, "expires", json_string("2099-01-01T00:00:00Z"));
  json_object_set_new(m, "resources", res);
  text = json_dumps(m, JSON_COMPACT);
  if (text && ns_sign_create(ns_mem_default(), key, (const uint8_t *)text, strlen(text), &sig,
                             &sig_len, NULL, detail, sizeof(detail)) == NETSTASH_OK) {
    snprintf(path, sizeof(path), "%s/pl/ld/m.json.sig", nst_site());
    if (put_file(path, sig, sig_len, 0) == 0) {
      snprintf(path, sizeof(path), "%s/pl/ld/m.json", nst_site());
      if (put_file(path, text, strlen(text), 0) == 0)
        rc = 0;
    }
  }
  if (sig)
    ns_free(ns_mem_default(), sig);
  free(text);
  snprintf(src, cap, "%spl/ld/m.json", base);
done:
  json_decref(m);
  return rc;
}

/* ------------------------------------------------------------ main */

static void usage(void) {
  fprintf(stderr,
          "usage: netd_load [--clients P] [--requests R] [--seconds S] [--restarts K]\n"
          "                 [--max-rss-mb M] [--max-anon-mb M] [--fd-slack N] [--seed S]\n"
          "                 [--kill9] [--keep]\n"
          "netd under P client processes in remote mode (see tests/stress/netd_load.c).\n");
}

int main(int argc, char **argv) {
  static const struct option lo[] = {
      {"clients", 1, NULL, 'c'},    {"requests", 1, NULL, 'r'}, {"seconds", 1, NULL, 's'},
      {"restarts", 1, NULL, 'k'},   {"max-rss-mb", 1, NULL, 'm'}, {"fd-slack", 1, NULL, 'f'},
      {"seed", 1, NULL, 'S'},       {"keep", 0, NULL, 'K'},     {"kill9", 0, NULL, '9'},
      {"max-anon-mb", 1, NULL, 'A'}, {"help", 0, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  unsigned clients = 64, restarts = 2, seconds = 0, fd_slack = 16, max_rss_mb = 0, max_anon_mb = 0;
  uint64_t requests = 10000, seed = 1, total, t_start, t_end, next_restart;
  char key[1024], pub[1024], kid[NS_KEY_ID_LEN + 1], detail[256], base[256], resolve[128],
      src[512];
  nst_server caddy = {-1, 0, ""}, raw = {-1, 0, ""};
  netd_proc dp;
  shared *sh;
  pid_t kids[MAX_CLIENTS];
  proc_sample s, peak, idle, end, timeline[10];
  unsigned restarts_done = 0;
  int c, bad = 0, alive, kill9 = 0;
  uint64_t restart_ms_max = 0;

  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'c':
      clients = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'r':
      requests = strtoull(optarg, NULL, 10);
      break;
    case 's':
      seconds = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'k':
      restarts = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'm':
      max_rss_mb = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'f':
      fd_slack = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'S':
      seed = strtoull(optarg, NULL, 10);
      break;
    case 'K':
      setenv("NST_KEEP_WORKDIR", "1", 1);
      break;
    case '9':
      kill9 = 1;
      break;
    case 'A':
      max_anon_mb = (unsigned)strtoul(optarg, NULL, 10);
      break;
    default:
      usage();
      return c == 'h' ? 0 : 2;
    }
  }
  if (!clients || clients > MAX_CLIENTS || (!requests && !seconds)) {
    usage();
    return 2;
  }
  if (seconds)
    requests = 0;
#if defined(__SANITIZE_ADDRESS__)
  /* netd is built like this program: ASan's shadow memory and its 256 MiB
   * quarantine of freed blocks come on top (measured: 153 MiB peak for the
   * make check run, against 17 MiB without sanitizers) */
  if (max_rss_mb || max_anon_mb) {
    max_rss_mb += max_rss_mb ? 256 : 0;
    max_anon_mb += max_anon_mb ? 256 : 0;
    printf("netd_load: ASan build: RSS bounds raised by 256 MiB\n");
  }
#endif
  if (netd_run_setup("netd_load") != 0)
    return 1;
  if (!nst_site() || nst_caddy_start("h2", &caddy) != 0 || nst_rawserver_start(&raw) != 0) {
    fprintf(stderr, "netd_load: cannot start caddy / nst-rawserver\n");
    return 1;
  }
  snprintf(base, sizeof(base), "https://example.test:%d/", caddy.port);
  snprintf(resolve, sizeof(resolve), "example.test:%d:127.0.0.1", caddy.port);
  snprintf(g_raw_base, sizeof(g_raw_base), "http://127.0.0.1:%d", raw.port);
  snprintf(key, sizeof(key), "%s/sign.key", nst_workdir());
  snprintf(pub, sizeof(pub), "%s/sign.key.pub", nst_workdir());
  if (ns_sign_keygen(key, kid, detail, sizeof(detail)) != NETSTASH_OK ||
      make_site(base, key, src, sizeof(src)) != 0) {
    fprintf(stderr, "netd_load: cannot write the site or sign its manifest: %s\n", detail);
    return 1;
  }
  memset(&dp, 0, sizeof(dp));
  snprintf(dp.profile, sizeof(dp.profile), "%s/profile", nst_workdir());
  snprintf(dp.sock, sizeof(dp.sock), "%s/netd.sock", dp.profile);
  snprintf(dp.log, sizeof(dp.log), "%s/netd.log", nst_workdir());
  snprintf(g_sock, sizeof(g_sock), "%s", dp.sock);
  if (warm_profile(dp.profile, pub, src, resolve) != 0)
    return 1;
  {
    size_t n = 0;
    netd_args[n++] = "--profile";
    netd_args[n++] = dp.profile;
    netd_args[n++] = "--cacert";
    netd_args[n++] = nst_cert("ca.pem");
    netd_args[n++] = "--trust";
    netd_args[n++] = pub;
    netd_args[n++] = "--resolve";
    netd_args[n++] = resolve;
    netd_args[n] = NULL;
  }
  if (netd_up(&dp) != 0)
    return 1;
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED)
    return 1;
  memset(sh, 0, sizeof(*sh));
  /* prime the HTTP cache with the cache-class files (one client, in a child:
   * no library thread in this process when the clients fork) */
  {
    pid_t p = fork();
    int st;
    if (p == 0) {
      netstash_ctx *ctx = remote_ctx();
      int ok = ctx != NULL;
      for (int i = 0; ok && i < N_CACHE; i++) {
        netstash_source so;
        ok = one(ctx, 0, cache_files[i].url, &cache_files[i], NULL, &so) == 1;
      }
      netstash_ctx_del(ctx);
      _exit(ok ? 0 : 1);
    }
    if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "netd_load: priming the cache through netd failed (log %s)\n", dp.log);
      netd_run_stop(&dp);
      return 1;
    }
  }
  sleep_ms(300);
  sample(dp.pid, &idle);
  peak = idle;
  printf("netd_load: %u clients x %s%llu%s, %u restarts, mix 50%% preload / 30%% cache / "
         "20%% network (half stored); netd idle: %ld KiB RSS, %d fds\n",
         clients, seconds ? "" : "", seconds ? (unsigned long long)seconds
                                             : (unsigned long long)requests,
         seconds ? " s" : " requests", restarts, idle.rss_kb, idle.fds);
  fflush(stdout);

  memset(timeline, 0, sizeof(timeline));
  total = (uint64_t)clients * requests;
  t_start = now_us();
  for (unsigned i = 0; i < clients; i++) {
    fflush(NULL);
    kids[i] = fork();
    if (kids[i] == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      _exit(client_main((int)i, requests, sh, seed));
    }
  }
  next_restart = 1;
  alive = (int)clients;
  while (alive > 0) {
    uint64_t el = now_us() - t_start;
    int st;
    pid_t p;
    /* each client by its pid: netd and the servers are children too */
    for (unsigned i = 0; i < clients; i++) {
      if (kids[i] <= 0 || (p = waitpid(kids[i], &st, WNOHANG)) != kids[i])
        continue;
      kids[i] = -1;
      alive--;
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "netd_load: client %u ended abnormally (status 0x%x)\n", i, st);
        bad = 1;
      }
    }
    if (seconds && el >= (uint64_t)seconds * 1000000u)
      atomic_store(&sh->stop, 1);
    if (sample(dp.pid, &s) == 0) {
      unsigned tenth = (unsigned)(seconds ? el / ((uint64_t)seconds * 100000u)
                                          : atomic_load(&sh->done) * 10 / (total ? total : 1));
      if (tenth < 10 && !timeline[tenth].fds)
        timeline[tenth] = s;
      if (s.hwm_kb > peak.hwm_kb)
        peak.hwm_kb = s.hwm_kb;
      if (s.rss_kb > peak.rss_kb)
        peak.rss_kb = s.rss_kb;
      if (s.anon_kb > peak.anon_kb)
        peak.anon_kb = s.anon_kb;
      if (s.fds > peak.fds)
        peak.fds = s.fds;
    }
    if (restarts_done < restarts && next_restart &&
        (seconds ? el * (restarts + 1) >= (uint64_t)seconds * 1000000u * (restarts_done + 1)
                 : atomic_load(&sh->done) * (restarts + 1) >= total * (restarts_done + 1))) {
      uint64_t t0 = now_us(), ms;
      int rc = 0;
      if (kill9) { /* a crash: no GOAWAY, a stale socket file, the store mid-write */
        kill(dp.pid, SIGKILL);
        waitpid(dp.pid, &st, 0);
        dp.pid = -1;
      } else {
        rc = netd_run_stop(&dp);
      }
      if (rc != 0) {
        fprintf(stderr, "netd_load: netd did not stop cleanly (%d)\n", rc);
        bad = 1;
      }
      if (netd_up(&dp) != 0) {
        bad = 1;
        next_restart = 0;
        break;
      }
      ms = (now_us() - t0) / 1000;
      restart_ms_max = ms > restart_ms_max ? ms : restart_ms_max;
      restarts_done++;
      printf("netd_load: restart %u at %llu requests (%.1f s): down for %llu ms\n", restarts_done,
             (unsigned long long)atomic_load(&sh->done), (double)el / 1e6,
             (unsigned long long)ms);
      fflush(stdout);
    }
    sleep_ms(50);
  }
  t_end = now_us();
  sleep_ms(500);
  sample(dp.pid, &end);

  {
    client_stats sum;
    uint64_t answered = 0, n = 0, p50 = 0, p90 = 0, p99 = 0, pmax = 0;
    double secs = (double)(t_end - t_start) / 1e6;
    memset(&sum, 0, sizeof(sum));
    for (unsigned i = 0; i < clients; i++) {
      for (int k = 0; k < C_N; k++) {
        sum.answered[k] += sh->c[i].answered[k];
        sum.fast[k] += sh->c[i].fast[k];
        for (int so = 0; so < 5; so++)
          sum.sources[k][so] += sh->c[i].sources[k][so];
      }
      sum.retries += sh->c[i].retries;
      sum.wrong += sh->c[i].wrong;
      sum.failed += sh->c[i].failed;
      for (int b = 0; b < HIST_N; b++)
        sum.hist[b] += sh->c[i].hist[b];
    }
    for (int k = 0; k < C_N; k++)
      answered += sum.answered[k];
    for (int b = 0; b < HIST_N; b++) {
      uint64_t before = n;
      n += sum.hist[b];
      if (!sum.hist[b])
        continue;
      if (before < answered * 50 / 100 && n >= answered * 50 / 100)
        p50 = (uint64_t)hist_value(b);
      if (before < answered * 90 / 100 && n >= answered * 90 / 100)
        p90 = (uint64_t)hist_value(b);
      if (before < answered * 99 / 100 && n >= answered * 99 / 100)
        p99 = (uint64_t)hist_value(b);
      pmax = (uint64_t)hist_value(b);
    }
    printf("\nnetd_load summary: %u clients, %.1f s, %u restarts (longest %llu ms down)\n", clients,
           secs, restarts_done, (unsigned long long)restart_ms_max);
    printf("  requests answered %llu (%.0f/s), wrong %llu, failed for good %llu, retries %llu\n",
           (unsigned long long)answered, (double)answered / secs, (unsigned long long)sum.wrong,
           (unsigned long long)sum.failed, (unsigned long long)sum.retries);
    printf("  latency (answered, per attempt): p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.1f ms "
           "(log buckets, +-2%%)\n",
           (double)p50 / 1000, (double)p90 / 1000, (double)p99 / 1000, (double)pmax / 1000);
    for (int k = 0; k < C_N; k++)
      printf("  %-8s %9llu answered (%llu by the fast path); sources: network %llu, cache %llu, "
             "revalidated %llu, preload %llu\n",
             class_name[k], (unsigned long long)sum.answered[k], (unsigned long long)sum.fast[k],
             (unsigned long long)sum.sources[k][NETSTASH_SOURCE_NETWORK],
             (unsigned long long)sum.sources[k][NETSTASH_SOURCE_CACHE],
             (unsigned long long)sum.sources[k][NETSTASH_SOURCE_REVALIDATED],
             (unsigned long long)sum.sources[k][NETSTASH_SOURCE_PRELOAD]);
    printf("  netd: peak VmHWM %.1f MiB, peak VmRSS %.1f MiB, peak RssAnon %.1f MiB; fds idle %d, "
           "peak %d, after the clients %d; RSS after %.1f MiB\n",
           (double)peak.hwm_kb / 1024, (double)peak.rss_kb / 1024, (double)peak.anon_kb / 1024,
           idle.fds, peak.fds, end.fds, (double)end.rss_kb / 1024);
    printf("  netd through the run (each tenth): fds");
    for (int k = 0; k < 10; k++)
      timeline[k].fds ? printf(" %d", timeline[k].fds) : printf(" -");
    printf("; VmRSS MiB");
    for (int k = 0; k < 10; k++)
      timeline[k].fds ? printf(" %.0f", (double)timeline[k].rss_kb / 1024) : printf(" -");
    printf("\n");
    if (sum.wrong || sum.failed)
      bad = 1;
    if (clients > 1 && (!sum.fast[C_PRELOAD] || !sum.fast[C_CACHE])) {
      fprintf(stderr, "netd_load: the fast path answered no %s request\n",
              sum.fast[C_PRELOAD] ? "cache" : "preload");
      bad = 1;
    }
    if (!seconds && answered + sum.wrong + sum.failed != total) {
      fprintf(stderr, "netd_load: %llu requests accounted for, %llu expected\n",
              (unsigned long long)(answered + sum.wrong + sum.failed), (unsigned long long)total);
      bad = 1;
    }
    if (max_rss_mb && peak.hwm_kb > (long)max_rss_mb * 1024) {
      fprintf(stderr, "netd_load: netd's peak RSS %.1f MiB is over the bound %u MiB\n",
              (double)peak.hwm_kb / 1024, max_rss_mb);
      bad = 1;
    }
    if (max_anon_mb && peak.anon_kb > (long)max_anon_mb * 1024) {
      fprintf(stderr, "netd_load: netd's peak anonymous RSS %.1f MiB is over the bound %u MiB\n",
              (double)peak.anon_kb / 1024, max_anon_mb);
      bad = 1;
    }
    if (end.fds > idle.fds + (int)fd_slack) {
      fprintf(stderr, "netd_load: netd holds %d fds after the clients ended, %d before them "
                      "(slack %u): fds leak\n",
              end.fds, idle.fds, fd_slack);
      bad = 1;
    }
  }
  if (netd_run_stop(&dp) != 0) {
    fprintf(stderr, "netd_load: netd did not stop cleanly at the end (log %s)\n", dp.log);
    bad = 1;
  }
  { /* the store netd wrote through restarts (and kills) is intact */
    char cmd[2048], *out;
    int st = -1;
    const char *b = getenv("NST_BUILDDIR");
    snprintf(cmd, sizeof(cmd), "%s/tools/netstash verify --profile %s 2>&1", b ? b : ".",
             dp.profile);
    out = netd_run_capture(cmd, &st);
    printf("  netstash verify after the run: exit %d%s%s", st, st ? ": " : "\n", st ? out : "");
    if (st != 0)
      bad = 1;
    free(out);
  }
  printf("  result: %s\n", bad ? "FAIL" : "ok");
  munmap(sh, sizeof(*sh));
  nst_cleanup();
  return bad;
}
