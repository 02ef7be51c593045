/*
 * killnine — crash consistency under kill -9 (issue 9, "Faults").
 *
 * Usage: killnine [--trials N] [--max-delay MS] [--seed S] [--keep]
 *
 * One shared profile, one caddy ("h2", HTTPS) and one nst-rawserver on
 * loopback. Each trial re-executes this program as a writer process on the
 * profile, doing one of three kinds of work, round robin:
 *   warm    builds preload manifest versions v, v+1, ... of id "ck" (32
 *           resources of 1-150 KB, a quarter of the bodies new in each
 *           version; files written into the site dir, manifest signed with
 *           the library's Ed25519 code) and warms each one: new versions
 *           are published back to back.
 *   cache   fetches distinct https URLs through the profile's HTTP cache:
 *           every other one a brand-new file (a new body), the others one
 *           of 64 pool files under a new query string (a new record on a
 *           shared body); files are heuristically fresh (mtime 30 days ago).
 *   cookie  Set-Cookie storm: nst-rawserver /cookie/set/cN/vSEQ/Max-Age=...
 *           for 40 names, each response persisted to the profile's jar.
 * The writer logs "s" before and "d" after every operation into a log file
 * (O_APPEND: survives the kill). After a random delay (uniform 0..MS, so
 * kills land during start-up, fetches, hashing and commits alike) it gets
 * SIGKILL; then this process checks, with the public API and the CLI:
 *   - the store opens (a context on the profile);
 *   - preload: the active version of "ck" is the one before the trial or
 *     one the writer started (never another), it is not older than the last
 *     version the writer saw published, and every resource of it is served
 *     (netstash_preload_lookup) with a body whose size and SHA-256 match
 *     the manifest's integrity — no partial body, no half-published version;
 *   - cache: every URL the writer started is either not cached or served
 *     offline (only-if-cached) with exactly the origin's bytes; every URL
 *     whose fetch completed is cached (the write was committed first);
 *   - cookies: the jar loads; each cookie's value lies between the last
 *     Set-Cookie that completed and the last one started for its name;
 *   - `netstash verify --profile` exits 0.
 * A summary follows: trials per kind, kill-time distribution, operations in
 * flight when killed, failures. Exit 0 when no check failed.
 *
 * make check runs 60 trials (tests/killnine.sh); the full run is 1000.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "harness.h"
#include "core/mem.h"
#include "preload/sign.h"

#define N_RES 32      /* resources per manifest version */
#define N_POOL 64     /* cache pool files */
#define N_COOKIES 40  /* cookie names */
#define MAX_OPS 20000 /* log lines read back per trial */
#define MANIFEST_ID "ck"

enum { K_WARM = 0, K_CACHE = 1, K_COOKIE = 2, K_N = 3 };
static const char *const kind_name[K_N] = {"warm", "cache", "cookie"};

/* ------------------------------------------------------------ shared */

typedef struct env {
  const char *profile, *site, *key, *pub, *ca, *logfile;
  int caddy_port, raw_port;
  char base[256], resolve[128];
} env;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mix(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* len bytes for seed: text (compressible) or noise, deterministic. */
static void fill(uint8_t *b, size_t len, uint64_t seed) {
  uint64_t s = mix(seed);
  int text = (s & 1) != 0;
  for (size_t i = 0; i < len; i++) {
    if (text) {
      b[i] = (uint8_t)("netstash crash consistency body; "[(i + s) % 33]);
      if (i % 61 == 60)
        b[i] = (uint8_t)('0' + (s + i / 61) % 10);
    } else {
      if (i % 8 == 0)
        s = mix(s);
      b[i] = (uint8_t)(s >> (8 * (i % 8)));
    }
  }
}

/* Writes path atomically (tmp + rename); mtime 30 days ago if old. */
static int put_file(const char *path, const void *data, size_t len, int old) {
  char tmp[1200];
  FILE *f;
  snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid());
  if (!(f = fopen(tmp, "wb")))
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
    utimensat(AT_FDCWD, tmp, ts, 0);
  }
  return rename(tmp, path);
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  uint8_t *b = NULL;
  long n;
  if (!f)
    return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      (b = malloc((size_t)n + 1)) && fread(b, 1, (size_t)n, f) == (size_t)n) {
    b[n] = 0;
    *len = (size_t)n;
  } else {
    free(b);
    b = NULL;
  }
  fclose(f);
  return b;
}

static void sha256_sri(const uint8_t *b, size_t len, char *out, size_t cap) {
  unsigned char d[32], enc[64];
  unsigned dl = 0;
  EVP_Digest(b, len, d, &dl, EVP_sha256(), NULL);
  EVP_EncodeBlock(enc, d, (int)dl);
  snprintf(out, cap, "sha256-%s", enc);
}

static netstash_ctx *open_ctx(const env *e, char *detail, size_t cap, netstash_error *err) {
  netstash_options *o = NULL;
  netstash_ctx *ctx = NULL;
  *err = netstash_options_new(&o);
  if (*err == NETSTASH_OK && (*err = netstash_options_set_profile_dir(o, e->profile)) == 0 &&
      (*err = netstash_options_set_ca_file(o, e->ca)) == 0 &&
      (*err = netstash_options_add_trusted_key(o, e->pub)) == 0 &&
      (*err = netstash_options_set_cache_max_bytes(o, 64u << 20)) == 0)
    *err = netstash_ctx_new(&ctx, o, detail, cap);
  netstash_options_del(o);
  return *err == NETSTASH_OK ? ctx : NULL;
}

/* The same request in the writer and in the checker (same cache key). */
static netstash_request *cache_request(const env *e, const char *path, int offline) {
  netstash_request *r = NULL;
  char url[512];
  snprintf(url, sizeof(url), "%s%s", e->base, path);
  if (netstash_request_new(&r, url) != NETSTASH_OK)
    return NULL;
  netstash_request_add_resolve(r, e->resolve);
  netstash_request_set_http_version(r, NETSTASH_HTTP_2);
  netstash_request_set_collect_body(r, 1u << 20);
  if (offline)
    netstash_request_set_cache_mode(r, NETSTASH_CACHE_ONLY_IF_CACHED);
  return r;
}

/* Resource i of manifest version v: generation and size. */
static uint64_t res_gen(uint64_t v, int i) { return (v + (uint64_t)i) / 4; }
static size_t res_len(uint64_t gen, int i) {
  return 1000 + (size_t)(mix(gen * 131 + (uint64_t)i) % 150000);
}

/* ------------------------------------------------------------ writer */

static int logfd = -1;

static void wlog(const char *fmt, ...) {
  char line[256];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n > 0 && write(logfd, line, (size_t)n) < 0)
    _exit(90);
}

typedef struct wstate {
  uint64_t version;
} wstate;

static void w_event(netstash_warm *w, netstash_warm_event ev, const char *url, netstash_error err,
                    void *ud) {
  wstate *s = ud;
  (void)w;
  (void)url;
  (void)err;
  if (ev == NETSTASH_WARM_EV_PUBLISHED)
    wlog("p %llu\n", (unsigned long long)s->version);
}

/* Files, manifest and signature of version v. */
static int make_version(const env *e, uint64_t v, int all) {
  char path[1200], integ[128], url[512], detail[256];
  json_t *m = json_object(), *res = json_array(), *scope = json_array(), *ep = json_array();
  uint8_t *buf = malloc(160000);
  char *text = NULL, *sig = NULL;
  size_t sig_len;
  int rc = -1;
  snprintf(url, sizeof(url), "%spl/ck/", e->base);
  json_array_append_new(scope, json_string(url));
  snprintf(url, sizeof(url), "%spl/ck/r0.bin", e->base);
  json_array_append_new(ep, json_string(url));
  json_object_set_new(m, "id", json_string(MANIFEST_ID));
  json_object_set_new(m, "version", json_integer((json_int_t)v));
  json_object_set_new(m, "scope", scope);
  json_object_set_new(m, "entry_pages", ep);
  json_object_set_new(m, "expires", json_string("2099-01-01T00:00:00Z"));
  for (int i = 0; i < N_RES; i++) {
    uint64_t g = res_gen(v, i);
    size_t len = res_len(g, i);
    json_t *r = json_object();
    fill(buf, len, g * 1000 + (uint64_t)i);
    sha256_sri(buf, len, integ, sizeof(integ));
    if (all || g != res_gen(v - 1, i)) {
      snprintf(path, sizeof(path), "%s/pl/ck/r%d.bin", e->site, i);
      if (put_file(path, buf, len, 0) != 0)
        goto done;
    }
    snprintf(url, sizeof(url), "%spl/ck/r%d.bin", e->base, i);
    json_object_set_new(r, "url", json_string(url));
    json_object_set_new(r, "integrity", json_string(integ));
    json_object_set_new(r, "size", json_integer((json_int_t)len));
    json_object_set_new(r, "content_type", json_string("application/octet-stream"));
    json_object_set_new(r, "priority", json_string(i < 4 ? "critical" : "high"));
    json_array_append_new(res, r);
  }
  json_object_set_new(m, "resources", res);
  text = json_dumps(m, JSON_COMPACT);
  if (!text || ns_sign_create(ns_mem_default(), e->key, (const uint8_t *)text, strlen(text), &sig,
                              &sig_len, NULL, detail, sizeof(detail)) != NETSTASH_OK)
    goto done;
  snprintf(path, sizeof(path), "%s/pl/ck/m%llu.json.sig", e->site, (unsigned long long)v);
  if (put_file(path, sig, sig_len, 0) != 0)
    goto done;
  snprintf(path, sizeof(path), "%s/pl/ck/m%llu.json", e->site, (unsigned long long)v);
  if (put_file(path, text, strlen(text), 0) != 0)
    goto done;
  rc = 0;
done:
  if (sig)
    ns_free(ns_mem_default(), sig);
  free(text);
  free(buf);
  json_decref(m);
  return rc;
}

static int writer_warm(const env *e, netstash_ctx *ctx, uint64_t v) {
  wstate s;
  for (int first = 1;; first = 0, v++) {
    netstash_warm *w = NULL;
    netstash_error err;
    char src[512];
    if (make_version(e, v, first) != 0)
      return 20;
    snprintf(src, sizeof(src), "%spl/ck/m%llu.json", e->base, (unsigned long long)v);
    s.version = v;
    wlog("s %llu\n", (unsigned long long)v);
    if (netstash_warm_new(ctx, src, &w) != NETSTASH_OK)
      return 21;
    netstash_warm_add_resolve(w, e->resolve);
    netstash_warm_set_concurrency(w, 4);
    netstash_warm_set_event_cb(w, w_event, &s);
    if (netstash_warm_start(w) != NETSTASH_OK)
      return 22;
    err = netstash_warm_wait(w, 60000);
    if (err != NETSTASH_OK) {
      fprintf(stderr, "killnine writer: warm v%llu: %s: %s\n", (unsigned long long)v,
              netstash_error_name(err), netstash_warm_error_detail(w));
      return 23;
    }
    wlog("d %llu\n", (unsigned long long)v);
    netstash_warm_del(w);
  }
}

static int writer_cache(const env *e, netstash_ctx *ctx, unsigned trial) {
  uint8_t *buf = malloc(200000);
  for (unsigned j = 0;; j++) {
    char path[256], file[1200];
    netstash_request *r;
    netstash_fetch *f = NULL;
    netstash_error err;
    if (j % 2) {
      uint64_t seed = mix(((uint64_t)trial << 20) + j);
      size_t len = 500 + (size_t)(seed % 199000);
      snprintf(path, sizeof(path), "kc/t%u_%u.bin", trial, j);
      snprintf(file, sizeof(file), "%s/%s", e->site, path);
      fill(buf, len, seed);
      if (put_file(file, buf, len, 1) != 0)
        return 30;
    } else {
      snprintf(path, sizeof(path), "kc/p%u.bin?t%u_%u", (unsigned)(mix(j + trial) % N_POOL), trial,
               j);
    }
    wlog("s %s\n", path);
    if (!(r = cache_request(e, path, 0)))
      return 31;
    err = netstash_fetch_sync(ctx, r, &f);
    if (err != NETSTASH_OK || netstash_fetch_status(f) != 200) {
      fprintf(stderr, "killnine writer: %s: %s %d\n", path, netstash_error_name(err),
              f ? netstash_fetch_status(f) : 0);
      return 32;
    }
    wlog("d %s %s\n", path, netstash_fetch_cache_reason(f) ? netstash_fetch_cache_reason(f) : "-");
    netstash_fetch_del(f);
    netstash_request_del(r);
  }
}

static int writer_cookie(const env *e, netstash_ctx *ctx, unsigned trial) {
  for (unsigned j = 0;; j++) {
    char url[512];
    unsigned name = (unsigned)(mix(((uint64_t)trial << 24) + j) % N_COOKIES);
    unsigned long long seq = (unsigned long long)trial * 1000000ull + j;
    netstash_request *r;
    netstash_fetch *f = NULL;
    netstash_error err;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/cookie/set/c%u/v%llu/Max-Age=864000",
             e->raw_port, name, seq);
    wlog("s %u %llu\n", name, seq);
    if (netstash_request_new(&r, url) != NETSTASH_OK)
      return 40;
    err = netstash_fetch_sync(ctx, r, &f);
    if (err != NETSTASH_OK || netstash_fetch_status(f) != 200) {
      fprintf(stderr, "killnine writer: %s: %s\n", url, netstash_error_name(err));
      return 41;
    }
    wlog("d %u %llu\n", name, seq);
    netstash_fetch_del(f);
    netstash_request_del(r);
  }
}

/* killnine --writer KIND PROFILE SITE KEY PUB CA LOG CADDY_PORT RAW_PORT N */
static int writer_main(int argc, char **argv) {
  env e;
  netstash_ctx *ctx;
  netstash_error err;
  char detail[256];
  int kind;
  if (argc != 12)
    return 2;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  kind = atoi(argv[2]);
  memset(&e, 0, sizeof(e));
  e.profile = argv[3];
  e.site = argv[4];
  e.key = argv[5];
  e.pub = argv[6];
  e.ca = argv[7];
  e.logfile = argv[8];
  e.caddy_port = atoi(argv[9]);
  e.raw_port = atoi(argv[10]);
  snprintf(e.base, sizeof(e.base), "https://example.test:%d/", e.caddy_port);
  snprintf(e.resolve, sizeof(e.resolve), "example.test:%d:127.0.0.1", e.caddy_port);
  if ((logfd = open(e.logfile, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
    return 3;
  wlog("start\n");
  if (!(ctx = open_ctx(&e, detail, sizeof(detail), &err))) {
    fprintf(stderr, "killnine writer: context: %s: %s\n", netstash_error_name(err), detail);
    return 4;
  }
  wlog("open\n");
  switch (kind) {
  case K_WARM:
    return writer_warm(&e, ctx, strtoull(argv[11], NULL, 10));
  case K_CACHE:
    return writer_cache(&e, ctx, (unsigned)atoi(argv[11]));
  default:
    return writer_cookie(&e, ctx, (unsigned)atoi(argv[11]));
  }
}

/* ------------------------------------------------------------ checker */

typedef struct stats {
  unsigned trials[K_N], failures, writer_exits, in_flight, opened;
  unsigned delay_hist[10]; /* tenths of --max-delay */
  unsigned ops_hist[6];    /* completed ops at the kill: 0, 1, 2-4, 5-16, 17-64, more */
  uint64_t ops[K_N], checked_bodies, checked_cache, checked_cookies;
  uint64_t published, active_new, active_old;
} stats;

static unsigned trial_failures;

static void failf(unsigned trial, const char *kind, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "killnine: trial %u (%s): FAIL: ", trial, kind);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  trial_failures++;
}

/* The active version of "ck" (0: none) from describe. */
static netstash_error active_version(netstash_ctx *ctx, uint64_t *v) {
  char *js = NULL;
  json_t *j;
  json_error_t je;
  netstash_error err = netstash_preload_describe(ctx, MANIFEST_ID, 0, &js);
  *v = 0;
  if (err == NETSTASH_E_NOT_FOUND)
    return NETSTASH_OK;
  if (err != NETSTASH_OK)
    return err;
  if ((j = json_loads(js, 0, &je))) {
    json_t *m = json_object_get(j, "manifests");
    if (json_is_array(m))
      m = json_array_get(m, 0);
    else
      m = j;
    *v = (uint64_t)json_integer_value(json_object_get(m, "version"));
    json_decref(j);
  } else {
    err = NETSTASH_E_INTERNAL;
  }
  netstash_free(ctx, js);
  return err;
}

/* Every resource of version v is served, complete and matching. */
static void check_version(const env *e, netstash_ctx *ctx, uint64_t v, unsigned trial, stats *st) {
  char path[1200];
  size_t len;
  uint8_t *text;
  json_t *m, *res;
  json_error_t je;
  netstash_preload_hit *h = NULL;
  snprintf(path, sizeof(path), "%s/pl/ck/m%llu.json", e->site, (unsigned long long)v);
  if (!(text = read_file(path, &len))) {
    failf(trial, "warm", "active version %llu has no manifest file", (unsigned long long)v);
    return;
  }
  m = json_loads((const char *)text, 0, &je);
  free(text);
  res = json_object_get(m, "resources");
  if (!json_is_array(res) || json_array_size(res) != N_RES) {
    failf(trial, "warm", "manifest %llu unreadable", (unsigned long long)v);
    json_decref(m);
    return;
  }
  netstash_preload_hit_new(ctx, &h);
  for (size_t i = 0; i < N_RES; i++) {
    json_t *r = json_array_get(res, i);
    const char *url = json_string_value(json_object_get(r, "url"));
    const char *integ = json_string_value(json_object_get(r, "integrity"));
    uint64_t size = (uint64_t)json_integer_value(json_object_get(r, "size"));
    netstash_error err = netstash_preload_lookup(h, url);
    char got[128];
    uint8_t *body;
    size_t at = 0;
    int bad = 0;
    if (err != NETSTASH_OK) {
      failf(trial, "warm", "v%llu %s not served: %s (half-published version)",
            (unsigned long long)v, url, netstash_error_name(err));
      continue;
    }
    if (netstash_preload_hit_manifest_version(h) != v || netstash_preload_hit_status(h) != 200 ||
        netstash_preload_hit_body_size(h) != size) {
      failf(trial, "warm", "%s: version %llu status %d size %llu, expected v%llu 200 %llu", url,
            (unsigned long long)netstash_preload_hit_manifest_version(h),
            netstash_preload_hit_status(h),
            (unsigned long long)netstash_preload_hit_body_size(h), (unsigned long long)v,
            (unsigned long long)size);
      continue;
    }
    body = malloc((size_t)size + 1);
    for (uint32_t c = 0; c < netstash_preload_hit_chunk_count(h); c++) {
      const uint8_t *d;
      size_t l;
      if (netstash_preload_hit_chunk(h, c, &d, &l) != NETSTASH_OK || at + l > size) {
        bad = 1;
        break;
      }
      memcpy(body + at, d, l);
      at += l;
    }
    if (!bad && at == size) {
      sha256_sri(body, at, got, sizeof(got));
      bad = strcmp(got, integ) != 0;
    } else {
      bad = 1;
    }
    if (bad)
      failf(trial, "warm", "%s (v%llu): partial or wrong body (%zu of %llu bytes)", url,
            (unsigned long long)v, at, (unsigned long long)size);
    st->checked_bodies++;
    free(body);
  }
  netstash_preload_hit_del(h);
  json_decref(m);
}

typedef struct cookie_model {
  unsigned long long done[N_COOKIES], started[N_COOKIES]; /* seq + 1; 0 = never */
} cookie_model;

typedef struct cookie_check {
  const cookie_model *cm;
  unsigned trial, seen, bad;
  unsigned char present[N_COOKIES];
} cookie_check;

static void cookie_visit(const netstash_cookie *c, void *ud) {
  cookie_check *k = ud;
  const char *n = netstash_cookie_name(c), *v = netstash_cookie_value(c);
  char *end;
  unsigned long idx;
  unsigned long long seq;
  k->seen++;
  if (n[0] != 'c' || (idx = strtoul(n + 1, &end, 10)) >= N_COOKIES || *end || v[0] != 'v') {
    failf(k->trial, "cookie", "unexpected cookie %s=%s", n, v);
    return;
  }
  seq = strtoull(v + 1, &end, 10);
  k->present[idx] = 1;
  if (*end || seq + 1 < k->cm->done[idx] || seq + 1 > k->cm->started[idx])
    failf(k->trial, "cookie", "%s=%s outside [v%llu, v%llu] (lost or invented write)", n, v,
          k->cm->done[idx] - 1, k->cm->started[idx] - 1);
}

typedef struct trial_log {
  unsigned started, done;
  int open, in_flight;
  uint64_t first_v, last_v, published_v;
  unsigned n_cache;
  /* not reset between trials (memset up to here) */
  char (*cache_started)[64];
  unsigned char *cache_done;
} trial_log;

static void read_log(const char *path, int kind, trial_log *tl, cookie_model *cm) {
  FILE *f = fopen(path, "r");
  char line[256];
  if (!f)
    return;
  while (fgets(line, sizeof(line), f)) {
    char what = line[0], arg[200] = "";
    unsigned long long a = 0, b = 0;
    if (!strchr(line, '\n'))
      break; /* the last line was cut by the kill */
    if (!strcmp(line, "open\n"))
      tl->open = 1;
    if (what != 's' && what != 'd' && what != 'p')
      continue;
    if (kind == K_WARM && sscanf(line + 2, "%llu", &a) == 1) {
      if (what == 's') {
        tl->started++;
        if (!tl->first_v)
          tl->first_v = a;
        tl->last_v = a;
      } else if (what == 'd') {
        tl->done++;
      } else {
        tl->published_v = a;
      }
    } else if (kind == K_CACHE && sscanf(line + 2, "%199s", arg) == 1 && tl->n_cache < MAX_OPS) {
      if (what == 's') {
        snprintf(tl->cache_started[tl->n_cache], 64, "%s", arg);
        tl->cache_done[tl->n_cache++] = 0;
        tl->started++;
      } else if (what == 'd' && tl->n_cache &&
                 !strcmp(tl->cache_started[tl->n_cache - 1], arg)) {
        tl->cache_done[tl->n_cache - 1] = 1;
        tl->done++;
      }
    } else if (kind == K_COOKIE && sscanf(line + 2, "%llu %llu", &a, &b) == 2 && a < N_COOKIES) {
      if (what == 's') {
        cm->started[a] = b + 1;
        tl->started++;
      } else {
        cm->done[a] = b + 1;
        tl->done++;
      }
    }
  }
  tl->in_flight = tl->started > tl->done;
  fclose(f);
}

static int run_verify(const char *cli, const char *profile, char *out, size_t cap) {
  char cmd[4096];
  FILE *p;
  size_t n;
  int st;
  snprintf(cmd, sizeof(cmd), "%s verify --profile %s 2>&1", cli, profile);
  if (!(p = popen(cmd, "r")))
    return -1;
  n = fread(out, 1, cap - 1, p);
  out[n] = 0;
  st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void usage(void) {
  fprintf(stderr, "usage: killnine [--trials N] [--max-delay MS] [--seed S] [--keep]\n"
                  "Kill -9 trials on a shared profile (see tests/stress/killnine.c).\n");
}

int main(int argc, char **argv) {
  static const struct option lo[] = {{"trials", 1, NULL, 't'},
                                     {"max-delay", 1, NULL, 'm'},
                                     {"seed", 1, NULL, 's'},
                                     {"keep", 0, NULL, 'k'},
                                     {"help", 0, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  unsigned trials = 1000, max_delay = 400, seed = (unsigned)time(NULL);
  nst_server caddy = {-1, 0, ""}, raw = {-1, 0, ""};
  char self[1024], cli[1024], key[1024], pub[1024], dir[1200], kid[NS_KEY_ID_LEN + 1],
      detail[256], profile[1024], logfile[1024];
  const char *b;
  env e;
  stats st;
  cookie_model cm;
  trial_log tl;
  uint64_t next_version = 1, t0;
  int c;
  ssize_t sl;

  if (argc > 1 && !strcmp(argv[1], "--writer"))
    return writer_main(argc, argv);
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 't':
      trials = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'm':
      max_delay = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 's':
      seed = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'k':
      setenv("NST_KEEP_WORKDIR", "1", 1);
      break;
    default:
      usage();
      return c == 'h' ? 0 : 2;
    }
  }
  if (!trials || max_delay < 10) {
    usage();
    return 2;
  }
  memset(&st, 0, sizeof(st));
  memset(&cm, 0, sizeof(cm));
  if ((sl = readlink("/proc/self/exe", self, sizeof(self) - 1)) <= 0)
    return 1;
  self[sl] = 0;
  b = getenv("NST_BUILDDIR");
  snprintf(cli, sizeof(cli), "%s/tools/netstash", b ? b : ".");
  if (access(cli, X_OK) != 0) {
    fprintf(stderr, "killnine: %s not found (set NST_BUILDDIR to the build directory)\n", cli);
    return 1;
  }
  if (!nst_site() || nst_caddy_start("h2", &caddy) != 0 || nst_rawserver_start(&raw) != 0) {
    fprintf(stderr, "killnine: cannot start caddy / nst-rawserver\n");
    return 1;
  }
  snprintf(key, sizeof(key), "%s/sign.key", nst_workdir());
  snprintf(pub, sizeof(pub), "%s/sign.key.pub", nst_workdir());
  snprintf(profile, sizeof(profile), "%s/profile", nst_workdir());
  snprintf(logfile, sizeof(logfile), "%s/writer.log", nst_workdir());
  if (ns_sign_keygen(key, kid, detail, sizeof(detail)) != NETSTASH_OK) {
    fprintf(stderr, "killnine: keygen: %s\n", detail);
    return 1;
  }
  memset(&e, 0, sizeof(e));
  e.profile = profile;
  e.site = nst_site();
  e.key = key;
  e.pub = pub;
  e.ca = nst_cert("ca.pem");
  e.caddy_port = caddy.port;
  e.raw_port = raw.port;
  snprintf(e.base, sizeof(e.base), "https://example.test:%d/", caddy.port);
  snprintf(e.resolve, sizeof(e.resolve), "example.test:%d:127.0.0.1", caddy.port);
  snprintf(dir, sizeof(dir), "%s/pl", e.site);
  mkdir(dir, 0755);
  snprintf(dir, sizeof(dir), "%s/pl/ck", e.site);
  mkdir(dir, 0755);
  snprintf(dir, sizeof(dir), "%s/kc", e.site);
  mkdir(dir, 0755);
  {
    uint8_t *buf = malloc(200000);
    for (unsigned i = 0; i < N_POOL; i++) {
      size_t len = 300 + (size_t)(mix(i + 777) % 190000);
      fill(buf, len, i + 777);
      snprintf(dir, sizeof(dir), "%s/kc/p%u.bin", e.site, i);
      put_file(dir, buf, len, 1);
    }
    free(buf);
  }
  srand(seed);
  tl.cache_started = malloc(sizeof(*tl.cache_started) * MAX_OPS);
  tl.cache_done = malloc(MAX_OPS);
  printf("killnine: %u trials, kill after 0..%u ms, seed %u, profile %s\n", trials, max_delay, seed,
         profile);
  fflush(stdout);
  t0 = now_ms();

  for (unsigned t = 0; t < trials; t++) {
    int kind = (int)(t % K_N), wst;
    unsigned delay = (unsigned)rand() % (max_delay + 1);
    char arg_kind[8], arg_cp[16], arg_rp[16], arg_n[32], vout[4096];
    pid_t pid;
    netstash_ctx *ctx;
    netstash_error err;
    uint64_t before = 0, after = 0;
    unsigned fails_before = st.failures, ops;

    trial_failures = 0;
    st.trials[kind]++;
    /* the active version before the trial */
    if (!(ctx = open_ctx(&e, detail, sizeof(detail), &err)) ||
        active_version(ctx, &before) != NETSTASH_OK) {
      failf(t, kind_name[kind], "store does not open before the trial: %s: %s",
            netstash_error_name(err), detail);
      st.failures++;
      break;
    }
    netstash_ctx_del(ctx);
    unlink(logfile);
    snprintf(arg_kind, sizeof(arg_kind), "%d", kind);
    snprintf(arg_cp, sizeof(arg_cp), "%d", caddy.port);
    snprintf(arg_rp, sizeof(arg_rp), "%d", raw.port);
    if (kind == K_WARM)
      snprintf(arg_n, sizeof(arg_n), "%llu", (unsigned long long)next_version);
    else
      snprintf(arg_n, sizeof(arg_n), "%u", t);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
      return 1;
    if (pid == 0) {
      static char writer_flag[] = "--writer";
      char *av[] = {self,    writer_flag, arg_kind, (char *)profile, (char *)e.site, key, pub,
                    (char *)e.ca, logfile, arg_cp, arg_rp, arg_n, NULL};
      execv(self, av);
      _exit(127);
    }
    {
      struct timespec ts = {(time_t)(delay / 1000), (long)(delay % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &wst, 0);
    if (!WIFSIGNALED(wst)) {
      /* the writer ended before the kill: its own failure */
      failf(t, kind_name[kind], "writer exited with %d before the kill (see its stderr)",
            WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
      st.writer_exits++;
    }
    st.delay_hist[delay * 10 / (max_delay + 1)]++;

    memset(&tl, 0, offsetof(trial_log, cache_started));
    read_log(logfile, kind, &tl, &cm);
    ops = tl.done;
    st.ops[kind] += ops;
    st.ops_hist[ops == 0 ? 0 : ops == 1 ? 1 : ops <= 4 ? 2 : ops <= 16 ? 3 : ops <= 64 ? 4 : 5]++;
    st.in_flight += (unsigned)tl.in_flight;
    st.opened += (unsigned)tl.open;
    if (kind == K_WARM && tl.last_v >= next_version)
      next_version = tl.last_v + 1;

    /* the checks */
    if (!(ctx = open_ctx(&e, detail, sizeof(detail), &err))) {
      failf(t, kind_name[kind], "store does not open after the kill: %s: %s",
            netstash_error_name(err), detail);
    } else {
      if ((err = active_version(ctx, &after)) != NETSTASH_OK) {
        failf(t, kind_name[kind], "describe: %s", netstash_error_name(err));
      } else {
        int ok_version = after == before || (kind == K_WARM && tl.first_v && after >= tl.first_v &&
                                             after <= tl.last_v);
        if (!ok_version)
          failf(t, kind_name[kind], "active version %llu: neither the old %llu nor one started",
                (unsigned long long)after, (unsigned long long)before);
        if (kind == K_WARM && tl.published_v && after < tl.published_v)
          failf(t, "warm", "version %llu was published, the active one is %llu (lost publish)",
                (unsigned long long)tl.published_v, (unsigned long long)after);
        if (kind == K_WARM) {
          if (after != before)
            st.active_new++;
          else
            st.active_old++;
          st.published += tl.published_v ? 1 : 0;
        }
        if (after)
          check_version(&e, ctx, after, t, &st);
      }
      if (kind == K_CACHE) {
        for (unsigned i = 0; i < tl.n_cache; i++) {
          netstash_request *r = cache_request(&e, tl.cache_started[i], 1);
          netstash_fetch *f = NULL;
          err = netstash_fetch_sync(ctx, r, &f);
          if (err == NETSTASH_OK) {
            char file[1200], *q;
            size_t want_len = 0, got_len = 0;
            const uint8_t *got = NULL;
            uint8_t *want;
            snprintf(file, sizeof(file), "%s/%s", e.site, tl.cache_started[i]);
            if ((q = strchr(file, '?')))
              *q = 0;
            want = read_file(file, &want_len);
            netstash_fetch_body(f, &got, &got_len);
            if (netstash_fetch_status(f) != 200 || !want || got_len != want_len ||
                memcmp(got, want, want_len) != 0)
              failf(t, "cache", "%s: cached body wrong (status %d, %zu of %zu bytes)",
                    tl.cache_started[i], netstash_fetch_status(f), got_len, want_len);
            st.checked_cache++;
            free(want);
          } else if (err != NETSTASH_E_NOT_CACHED) {
            failf(t, "cache", "%s: offline lookup: %s", tl.cache_started[i],
                  netstash_error_name(err));
          } else if (tl.cache_done[i]) {
            failf(t, "cache", "%s: fetch completed but nothing cached (lost write)",
                  tl.cache_started[i]);
          }
          netstash_fetch_del(f);
          netstash_request_del(r);
          if (tl.cache_started[i][3] == 't') {
            char file[1200];
            snprintf(file, sizeof(file), "%s/%s", e.site, tl.cache_started[i]);
            unlink(file);
          }
        }
      }
      {
        cookie_check k;
        memset(&k, 0, sizeof(k));
        k.cm = &cm;
        k.trial = t;
        if ((err = netstash_cookie_jar_open(ctx, "default", 0)) != NETSTASH_OK ||
            (err = netstash_cookie_list(ctx, "default", cookie_visit, &k)) != NETSTASH_OK)
          failf(t, kind_name[kind], "cookie jar does not load: %s", netstash_error_name(err));
        for (unsigned i = 0; i < N_COOKIES; i++)
          if (cm.done[i] && !k.present[i])
            failf(t, "cookie", "c%u=v%llu was stored (Set-Cookie completed) but is gone", i,
                  cm.done[i] - 1);
        st.checked_cookies += k.seen;
      }
      netstash_ctx_del(ctx);
    }
    {
      int rc = run_verify(cli, profile, vout, sizeof(vout));
      if (rc != 0)
        failf(t, kind_name[kind], "netstash verify exit %d: %s", rc, vout);
    }
    st.failures += trial_failures;
    if (st.failures != fails_before && getenv("KILLNINE_STOP"))
      break;
    if ((t + 1) % 50 == 0 || t + 1 == trials) {
      printf("killnine: %u/%u trials, %u failures, %.1f s\n", t + 1, trials, st.failures,
             (double)(now_ms() - t0) / 1000.0);
      fflush(stdout);
    }
  }

  printf("\nkillnine summary (%.1f s, seed %u)\n", (double)(now_ms() - t0) / 1000.0, seed);
  printf("  trials: warm %u, cache %u, cookie %u\n", st.trials[K_WARM], st.trials[K_CACHE],
         st.trials[K_COOKIE]);
  printf("  operations completed before the kills: warm versions %llu, cache fetches %llu, "
         "cookie writes %llu\n",
         (unsigned long long)st.ops[K_WARM], (unsigned long long)st.ops[K_CACHE],
         (unsigned long long)st.ops[K_COOKIE]);
  printf("  kill delay (ms):");
  for (int i = 0; i < 10; i++)
    printf(" %u-%u:%u", (unsigned)i * (max_delay + 1) / 10, (unsigned)(i + 1) * (max_delay + 1) / 10,
           st.delay_hist[i]);
  printf("\n  killed before the store was open: %u; with an operation in flight: %u\n",
         st.trials[0] + st.trials[1] + st.trials[2] - st.opened, st.in_flight);
  printf("  operations completed per trial: 0:%u 1:%u 2-4:%u 5-16:%u 17-64:%u >64:%u\n",
         st.ops_hist[0], st.ops_hist[1], st.ops_hist[2], st.ops_hist[3], st.ops_hist[4],
         st.ops_hist[5]);
  printf("  warm trials: active version moved %llu, stayed %llu; %llu saw a publish\n",
         (unsigned long long)st.active_new, (unsigned long long)st.active_old,
         (unsigned long long)st.published);
  printf("  checked: %llu preload bodies, %llu cached bodies, %llu cookies; verify after every "
         "trial\n",
         (unsigned long long)st.checked_bodies, (unsigned long long)st.checked_cache,
         (unsigned long long)st.checked_cookies);
  printf("  writers that failed on their own: %u\n", st.writer_exits);
  printf("  failures: %u\n", st.failures);
  free(tl.cache_started);
  free(tl.cache_done);
  nst_cleanup();
  return st.failures ? 1 : 0;
}
