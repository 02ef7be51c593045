/*
 * alloc_fail_test — allocation failure sweeps through the public API
 * (netstash issue 9, "Faults").
 *
 * A counting allocator (netstash_options_set_allocator) fails the Nth
 * allocation of a context — once ("once" mode) or that one and every later
 * one ("after" mode) — and tracks live blocks with a header of its own (a
 * block freed through it that it did not hand out aborts the test). Each
 * scenario is run once to count its allocations K, then for N in 1..K with
 * allocation N failing, in both modes. Every run must end in one of two
 * ways: NETSTASH_OK with the right answer (a failed cache write or cache
 * read may degrade to "not stored" / "from the network", never to a wrong
 * body), or NETSTASH_E_NOMEM from the call that met the failure. Anything
 * else (another error, a hang, a wrong body, an on_complete count other than
 * one) fails the test, and after everything is destroyed the allocator's
 * live block count must be 0. What a call reported as committed is checked
 * afterwards from a second context with the process allocator ("nothing
 * committed is lost, nothing reported as stored is missing").
 *
 * Scenarios: context with a profile; an HTTP fetch stored in the HTTP
 * cache (nst-rawserver); a cache hit from an existing profile; cookies set,
 * read, exported and persisted through the jar API; an offline bundle
 * installed (warm from a bundle file) and served by the interceptor's
 * synchronous fast path and by a job; an interceptor job against the
 * network, in push and in pull mode.
 *
 * Out of scope: libcurl, c-ares, libuv, LMDB, OpenSSL, libarchive and
 * jansson allocate through their own global allocators, not the context's
 * (include/netstash/common.h), so their failures are not injected here.
 *
 * Cost: small scenarios are swept at every N; when K is above
 * NST_ALLOC_STRIDE_FROM (default 400) the sweep takes every N up to 64,
 * then a stride so that about 400 points are run, and the last 64 N.
 * NST_ALLOC_SWEEP=full sweeps every N of every scenario; NST_ALLOC_ONLY=name
 * runs one scenario. Each scenario prints K, the points run and the outcome
 * counts. Debugging: NST_ALLOC_N=N (or Na for "after" mode) makes one run,
 * NST_ALLOC_TRACE=K prints the stacks of the first K injected failures.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <execinfo.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "harness.h"

/* ------------------------------------------------------------ allocator */

#define FA_MAGIC 0x6e73666175ull /* "nsfau" */
typedef struct fa_hdr {
  uint64_t magic;
  uint64_t size;
} fa_hdr; /* 16 bytes: keeps malloc's alignment */

typedef struct fa_state {
  pthread_mutex_t lock;
  uint64_t count;   /* allocation attempts (malloc, calloc, realloc) */
  uint64_t fail_at; /* 0: never */
  int after;        /* fail fail_at and every later attempt */
  uint64_t failed;  /* failures injected */
  int64_t live;     /* blocks handed out and not freed */
} fa_state;

static fa_state fa = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0};
static int fa_trace; /* NST_ALLOC_TRACE=K: backtraces of the first K failures */

static int fa_should_fail(void) {
  int f;
  uint64_t failed;
  pthread_mutex_lock(&fa.lock);
  fa.count++;
  f = fa.fail_at && (fa.count == fa.fail_at || (fa.after && fa.count > fa.fail_at));
  if (f)
    fa.failed++;
  failed = fa.failed;
  pthread_mutex_unlock(&fa.lock);
  if (f && (uint64_t)fa_trace >= failed) {
    void *bt[16];
    fprintf(stderr, "alloc_fail_test: failure %llu (from allocation %llu):\n", (unsigned long long)failed,
            (unsigned long long)fa.fail_at);
    backtrace_symbols_fd(bt, backtrace(bt, 16), 2);
  }
  return f;
}

static void fa_live(int64_t d) {
  pthread_mutex_lock(&fa.lock);
  fa.live += d;
  pthread_mutex_unlock(&fa.lock);
}

static fa_hdr *fa_check(void *p) {
  fa_hdr *h = (fa_hdr *)p - 1;
  if (h->magic != FA_MAGIC) {
    fprintf(stderr, "alloc_fail_test: block %p was not allocated by the context's allocator\n", p);
    abort();
  }
  return h;
}

static void *fa_malloc(size_t n, void *ud) {
  fa_hdr *h;
  (void)ud;
  if (fa_should_fail() || n > SIZE_MAX - sizeof(fa_hdr))
    return NULL;
  h = malloc(sizeof(*h) + n);
  if (!h)
    return NULL;
  h->magic = FA_MAGIC;
  h->size = n;
  fa_live(1);
  return h + 1;
}

static void fa_free(void *p, void *ud) {
  fa_hdr *h;
  (void)ud;
  if (!p)
    return;
  h = fa_check(p);
  h->magic = 0;
  fa_live(-1);
  free(h);
}

static void *fa_calloc(size_t a, size_t b, void *ud) {
  size_t n;
  void *p;
  if (__builtin_mul_overflow(a, b, &n))
    return NULL;
  p = fa_malloc(n, ud);
  if (p)
    memset(p, 0, n);
  return p;
}

static void *fa_realloc(void *p, size_t n, void *ud) {
  fa_hdr *h, *nh;
  if (!p)
    return fa_malloc(n, ud);
  h = fa_check(p);
  if (fa_should_fail() || n > SIZE_MAX - sizeof(fa_hdr))
    return NULL; /* p stays valid, as realloc's contract says */
  nh = realloc(h, sizeof(*nh) + n);
  if (!nh)
    return NULL;
  nh->size = n;
  return nh + 1;
}

static const netstash_allocator fa_alloc = {NULL, fa_malloc, fa_free, fa_calloc, fa_realloc};

static void fa_arm(uint64_t fail_at, int after) {
  pthread_mutex_lock(&fa.lock);
  fa.count = 0;
  fa.fail_at = fail_at;
  fa.after = after;
  fa.failed = 0;
  pthread_mutex_unlock(&fa.lock);
}

static void fa_read(uint64_t *count, uint64_t *failed, int64_t *live) {
  pthread_mutex_lock(&fa.lock);
  *count = fa.count;
  *failed = fa.failed;
  *live = fa.live;
  pthread_mutex_unlock(&fa.lock);
}

/* ------------------------------------------------------------ fixtures */

static nst_server caddy, raw;
static char base[256], resolve[128], rawbase[128];
static char tmpl_hc[512], bundle[512], hit_body[256];
static char *hello_body, *index_body;
static size_t hello_len, index_len;
static int run_seq;

/* The run being made, for failure messages. */
static const char *cur_name;
static uint64_t cur_n;
static int cur_after;

#define CHECK(cond, ...)                                                                          \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      fprintf(stderr, "[%s N=%llu %s] ", cur_name, (unsigned long long)cur_n,                    \
              cur_after ? "after" : "once");                                                     \
      fail_msg(__VA_ARGS__);                                                                     \
    }                                                                                            \
  } while (0)

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *b;
  long n;
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  b = malloc((size_t)n + 1);
  if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(b);
    return NULL;
  }
  b[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return b;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(p);
}
static void rm_rf(const char *dir) { nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

static int copy_file(const char *from, const char *to) {
  size_t len;
  char *b = read_all(from, &len);
  FILE *f;
  int ok;
  if (!b)
    return -1;
  f = fopen(to, "wb");
  ok = f && fwrite(b, 1, len, f) == len;
  if (f)
    ok = (fclose(f) == 0) && ok;
  free(b);
  return ok ? 0 : -1;
}

/* A fresh profile directory for one run (the previous run's is removed). */
static const char *fresh_profile(void) {
  static char p[512];
  if (p[0])
    rm_rf(p);
  snprintf(p, sizeof(p), "%s/af-%d", nst_workdir(), ++run_seq);
  return p;
}

/* A context over prof: with the failing allocator (fail != 0) or the
 * process's. */
static netstash_error ctx_new(netstash_ctx **ctx, const char *prof, int fail, char *detail,
                              size_t dlen) {
  netstash_options *o;
  netstash_error rv;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  if (fail)
    assert_int_equal(netstash_options_set_allocator(o, &fa_alloc), NETSTASH_OK);
  if (prof)
    assert_int_equal(netstash_options_set_profile_dir(o, prof), NETSTASH_OK);
  assert_int_equal(netstash_options_set_ca_file(o, nst_cert("ca.pem")), NETSTASH_OK);
  assert_int_equal(netstash_options_set_allow_unsigned(o, 1), NETSTASH_OK);
  assert_int_equal(netstash_options_set_http3(o, 0), NETSTASH_OK);
  rv = netstash_ctx_new(ctx, o, detail, dlen);
  netstash_options_del(o);
  return rv;
}

static netstash_request *req_for(const char *url) {
  netstash_request *r;
  assert_int_equal(netstash_request_new(&r, url), NETSTASH_OK);
  assert_int_equal(netstash_request_add_resolve(r, resolve), NETSTASH_OK);
  assert_int_equal(netstash_request_set_collect_body(r, 1 << 20), NETSTASH_OK);
  return r;
}

/* netstash_fetch_sync with a bound: a fetch that never ends is a bug. */
static netstash_error fetch_bounded(netstash_ctx *ctx, netstash_request *r, netstash_fetch **f) {
  netstash_error rv = netstash_fetch_start(ctx, r, NULL, NULL, f);
  if (rv != NETSTASH_OK) {
    CHECK(*f == NULL, "fetch_start failed but set *out");
    return rv;
  }
  rv = netstash_fetch_wait(*f, 30000);
  CHECK(rv != NETSTASH_E_WAIT_TIMEOUT, "fetch hangs");
  return rv;
}

/* Plain (process allocator) fetch, for fixtures and after-the-fact checks. */
static netstash_error plain_fetch(netstash_ctx *ctx, const char *url, netstash_cache_mode mode,
                                  char *body, size_t cap, netstash_source *src) {
  netstash_request *r = req_for(url);
  netstash_fetch *f = NULL;
  netstash_error rv;
  const uint8_t *d;
  size_t n;
  netstash_request_set_cache_mode(r, mode);
  rv = fetch_bounded(ctx, r, &f);
  if (rv == NETSTASH_OK && netstash_fetch_body(f, &d, &n) == NETSTASH_OK) {
    snprintf(body, cap, "%.*s", (int)n, (const char *)d);
    if (src)
      *src = netstash_fetch_source(f);
  }
  netstash_fetch_del(f);
  netstash_request_del(r);
  return rv;
}

/* ------------------------------------------------------------ scenarios
 * Each returns NETSTASH_OK (after checking the answer) or the first error a
 * call returned; it destroys everything it created, in any case. */

static netstash_error sc_ctx(void) {
  netstash_ctx *ctx = NULL;
  char detail[256];
  netstash_error rv = ctx_new(&ctx, fresh_profile(), 1, detail, sizeof(detail));
  if (rv == NETSTASH_OK) {
    CHECK(ctx != NULL, "ctx_new OK without a context");
    rv = netstash_ctx_drain(ctx, 1000);
  } else {
    CHECK(ctx == NULL, "ctx_new failed but set *out");
    CHECK(rv == NETSTASH_E_NOMEM || detail[0], "ctx_new: %s without a detail",
          netstash_error_name(rv));
  }
  netstash_ctx_del(ctx);
  return rv;
}

/* The cache reason lists its parts separated by "; "; "stored" is one of
 * them when the response went into the cache ("miss: nothing stored" and
 * "not stored: ..." are not). */
static int reason_stored(const char *reason) {
  for (const char *p = reason; p;) {
    const char *e = strstr(p, "; ");
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n == 6 && strncmp(p, "stored", 6) == 0)
      return 1;
    p = e ? e + 2 : NULL;
  }
  return 0;
}

/* Fetch a cacheable response; if it says "stored", a later context (process
 * allocator, cache only) must find it with the same body. */
static netstash_error sc_fetch_store(void) {
  const char *prof = fresh_profile();
  netstash_ctx *ctx = NULL;
  netstash_request *r = NULL;
  netstash_fetch *f = NULL;
  char detail[256], url[256], body[256] = "", reason[256] = "", again[256] = "";
  netstash_error rv;
  int stored = 0;
  snprintf(url, sizeof(url), "%s/cache/max-age/600/fs", rawbase);
  rv = ctx_new(&ctx, prof, 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  r = req_for(url);
  rv = fetch_bounded(ctx, r, &f);
  if (rv == NETSTASH_OK) {
    const uint8_t *d;
    size_t n;
    CHECK(netstash_fetch_status(f) == 200, "status %d", netstash_fetch_status(f));
    CHECK(netstash_fetch_body(f, &d, &n) == NETSTASH_OK, "no body");
    snprintf(body, sizeof(body), "%.*s", (int)n, (const char *)d);
    CHECK(strncmp(body, "max-age n=", 10) == 0, "wrong body \"%s\"", body);
    snprintf(reason, sizeof(reason), "%s", netstash_fetch_cache_reason(f));
    stored = reason_stored(reason);
  }
done:
  netstash_fetch_del(f);
  netstash_request_del(r);
  netstash_ctx_del(ctx);
  if (stored) {
    netstash_ctx *c2 = NULL;
    netstash_source src = NETSTASH_SOURCE_NONE;
    assert_int_equal(ctx_new(&c2, prof, 0, detail, sizeof(detail)), NETSTASH_OK);
    CHECK(plain_fetch(c2, url, NETSTASH_CACHE_ONLY_IF_CACHED, again, sizeof(again), &src) ==
              NETSTASH_OK,
          "reported \"%s\" but not in the cache afterwards", reason);
    CHECK(strcmp(again, body) == 0 && src == NETSTASH_SOURCE_CACHE, "stored \"%s\", read \"%s\"",
          body, again);
    netstash_ctx_del(c2);
  }
  return rv;
}

/* A hit from a profile that already holds the response: the stored body, or
 * (the lookup failed) a correct network answer. */
static int hit_equals(netstash_preload_hit *h, const char *want, size_t len);

static netstash_error sc_cache_hit(void) {
  const char *prof = fresh_profile();
  char from[600], to[600], detail[256], url[256];
  netstash_ctx *ctx = NULL;
  netstash_request *r = NULL;
  netstash_fetch *f = NULL;
  netstash_preload_hit *h = NULL;
  netstash_error rv;
  assert_int_equal(mkdir(prof, 0700), 0);
  snprintf(to, sizeof(to), "%s/store", prof);
  assert_int_equal(mkdir(to, 0700), 0);
  snprintf(from, sizeof(from), "%s/store/data.mdb", tmpl_hc);
  snprintf(to, sizeof(to), "%s/store/data.mdb", prof);
  assert_int_equal(copy_file(from, to), 0);
  snprintf(url, sizeof(url), "%s/cache/max-age/600/hit", rawbase);
  rv = ctx_new(&ctx, prof, 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  r = req_for(url);
  /* the synchronous fast path first (the stored answer, or an allocation
   * failure) */
  if ((rv = netstash_preload_hit_new(ctx, &h)) != NETSTASH_OK)
    goto done;
  rv = netstash_intercept_cached(r, h);
  CHECK(rv == NETSTASH_OK || rv == NETSTASH_E_NOMEM, "fast path: %s", netstash_error_name(rv));
  if (rv != NETSTASH_OK)
    goto done;
  CHECK(netstash_preload_hit_status(h) == 200 && hit_equals(h, hit_body, strlen(hit_body)),
        "fast path: wrong answer");
  rv = fetch_bounded(ctx, r, &f);
  if (rv == NETSTASH_OK) {
    const uint8_t *d;
    size_t n;
    char body[256];
    CHECK(netstash_fetch_status(f) == 200, "status %d", netstash_fetch_status(f));
    CHECK(netstash_fetch_body(f, &d, &n) == NETSTASH_OK, "no body");
    snprintf(body, sizeof(body), "%.*s", (int)n, (const char *)d);
    if (netstash_fetch_source(f) == NETSTASH_SOURCE_CACHE)
      CHECK(strcmp(body, hit_body) == 0, "cache hit \"%s\", stored \"%s\"", body, hit_body);
    else
      CHECK(netstash_fetch_source(f) == NETSTASH_SOURCE_NETWORK &&
                strncmp(body, "max-age n=", 10) == 0,
            "source %d body \"%s\"", (int)netstash_fetch_source(f), body);
  }
done:
  netstash_fetch_del(f);
  netstash_request_del(r);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  return rv;
}

typedef struct ck_count {
  int n, sid;
} ck_count;
static void ck_visit(const netstash_cookie *c, void *ud) {
  ck_count *k = ud;
  k->n++;
  if (strcmp(netstash_cookie_name(c), "sid") == 0 && strcmp(netstash_cookie_value(c), "42") == 0)
    k->sid++;
}

/* Cookies: a jar opened, a cookie set by script, read back, listed and
 * exported; if the set said "stored", the cookie is in the profile for the
 * next context. */
static netstash_error sc_cookies(void) {
  const char *prof = fresh_profile();
  netstash_ctx *ctx = NULL;
  char detail[256], *s = NULL, *text = NULL;
  netstash_error rv;
  int stored = 0;
  size_t tlen = 0;
  ck_count k = {0, 0};
  rv = ctx_new(&ctx, prof, 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  if ((rv = netstash_cookie_jar_open(ctx, "af", 0)) != NETSTASH_OK)
    goto done;
  rv = netstash_cookie_script_set(ctx, "af", "https://example.test/", NULL,
                                  "sid=42; Max-Age=3600; Path=/", &stored);
  if (rv != NETSTASH_OK)
    goto done;
  CHECK(stored == 1, "script_set OK but not stored");
  if ((rv = netstash_cookie_script_get(ctx, "af", "https://example.test/a", NULL, &s)) !=
      NETSTASH_OK)
    goto done;
  CHECK(s && strcmp(s, "sid=42") == 0, "document.cookie \"%s\"", s ? s : "(null)");
  if ((rv = netstash_cookie_list(ctx, "af", ck_visit, &k)) != NETSTASH_OK)
    goto done;
  CHECK(k.n == 1 && k.sid == 1, "list: %d cookies, sid %d", k.n, k.sid);
  if ((rv = netstash_cookie_export(ctx, "af", &text, &tlen)) != NETSTASH_OK)
    goto done;
  CHECK(text && strstr(text, "\tsid\t42"), "export: %s", text ? text : "(null)");
done:
  if (ctx) {
    netstash_free(ctx, s);
    netstash_free(ctx, text);
  }
  netstash_ctx_del(ctx);
  if (stored) {
    netstash_ctx *c2 = NULL;
    ck_count k2 = {0, 0};
    assert_int_equal(ctx_new(&c2, prof, 0, detail, sizeof(detail)), NETSTASH_OK);
    assert_int_equal(netstash_cookie_jar_open(c2, "af", 0), NETSTASH_OK);
    assert_int_equal(netstash_cookie_list(c2, "af", ck_visit, &k2), NETSTASH_OK);
    CHECK(k2.sid == 1, "script_set said stored, the profile has %d sid cookies", k2.sid);
    netstash_ctx_del(c2);
  }
  return rv;
}

typedef struct jrec {
  int responses, completes;
  netstash_error err;
  size_t bytes;
  char body[256];
} jrec;
static void j_response(netstash_job *j, void *ud) {
  (void)j;
  ((jrec *)ud)->responses++;
}
static void j_data(netstash_job *j, const uint8_t *d, size_t n, void *ud) {
  jrec *r = ud;
  (void)j;
  if (r->bytes + n < sizeof(r->body))
    memcpy(r->body + r->bytes, d, n);
  r->bytes += n;
}
static void j_complete(netstash_job *j, netstash_error e, void *ud) {
  jrec *r = ud;
  (void)j;
  r->completes++;
  r->err = e;
}
static const netstash_job_callbacks push_cbs = {NULL, j_response, j_data, NULL, j_complete};
static const netstash_job_callbacks pull_cbs = {NULL, j_response, NULL, NULL, j_complete};

/* Runs one job; *status / *src / the body in r on success. pull: read the
 * body with netstash_job_read after the end. */
static netstash_error run_job(netstash_ctx *ctx, const char *url, int pull, jrec *r, int *status,
                              netstash_source *src) {
  netstash_request *q = req_for(url);
  netstash_job *j = NULL;
  netstash_error rv;
  memset(r, 0, sizeof(*r));
  rv = netstash_job_start(ctx, q, pull ? &pull_cbs : &push_cbs, r, &j);
  netstash_request_del(q);
  if (rv != NETSTASH_OK) {
    CHECK(j == NULL, "job_start failed but set *out");
    return rv;
  }
  rv = netstash_job_wait(j, 30000);
  CHECK(rv != NETSTASH_E_WAIT_TIMEOUT, "job hangs");
  CHECK(r->completes == 1, "%d terminal callbacks", r->completes);
  CHECK(r->err == rv, "on_complete %s, wait %s", netstash_error_name(r->err),
        netstash_error_name(rv));
  if (rv == NETSTASH_OK && pull) {
    for (;;) {
      size_t n = 0;
      uint8_t buf[4096];
      rv = netstash_job_read(j, buf, sizeof(buf), &n);
      if (rv != NETSTASH_OK || n == 0)
        break;
      if (r->bytes + n < sizeof(r->body))
        memcpy(r->body + r->bytes, buf, n);
      r->bytes += n;
    }
    CHECK(rv != NETSTASH_E_AGAIN, "pull: E_AGAIN after the end");
  }
  if (rv == NETSTASH_OK) {
    *status = netstash_job_status(j);
    *src = netstash_job_source(j);
  }
  netstash_job_del(j);
  return rv;
}

/* An interceptor job against the network (push), then the same URL again
 * (pull; from the cache when the first was stored, else the network). */
static netstash_error sc_job(void) {
  netstash_ctx *ctx = NULL;
  char detail[256], url[256];
  netstash_error rv;
  jrec r;
  int status = 0;
  netstash_source src;
  snprintf(url, sizeof(url), "%s/cache/max-age/600/job", rawbase);
  rv = ctx_new(&ctx, fresh_profile(), 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  for (int pull = 0; pull < 2; pull++) {
    rv = run_job(ctx, url, pull, &r, &status, &src);
    if (rv != NETSTASH_OK)
      break;
    CHECK(status == 200 && r.responses == 1, "status %d, %d responses", status, r.responses);
    CHECK(r.bytes < sizeof(r.body) && strncmp(r.body, "max-age n=", 10) == 0, "body \"%.*s\"",
          (int)(r.bytes < sizeof(r.body) ? r.bytes : 0), r.body);
    CHECK(src == NETSTASH_SOURCE_NETWORK || src == NETSTASH_SOURCE_CACHE, "source %d", (int)src);
  }
done:
  netstash_ctx_del(ctx);
  return rv;
}

static int hit_equals(netstash_preload_hit *h, const char *want, size_t len) {
  size_t off = 0;
  if (netstash_preload_hit_body_size(h) != len)
    return 0;
  for (uint32_t i = 0; i < netstash_preload_hit_chunk_count(h); i++) {
    const uint8_t *d;
    size_t n;
    if (netstash_preload_hit_chunk(h, i, &d, &n) != NETSTASH_OK || off + n > len ||
        memcmp(d, want + off, n) != 0)
      return 0;
    off += n;
  }
  return off == len;
}

/* An offline bundle installed through netstash_warm_*, then hello.txt served
 * by the synchronous fast path and index.html by a job (from the preload
 * store, or the network if the store lookup failed). If the warm said OK,
 * a later context serves the preload from the profile. */
static netstash_error sc_preload(void) {
  const char *prof = fresh_profile();
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  netstash_preload_hit *h = NULL;
  netstash_request *q = NULL;
  char detail[256], url[512];
  netstash_error rv;
  int published = 0, status = 0;
  netstash_source src;
  jrec r;
  rv = ctx_new(&ctx, prof, 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  if ((rv = netstash_warm_new(ctx, bundle, &w)) != NETSTASH_OK)
    goto done;
  if ((rv = netstash_warm_start(w)) != NETSTASH_OK)
    goto done;
  rv = netstash_warm_wait(w, 30000);
  CHECK(rv != NETSTASH_E_WAIT_TIMEOUT, "warm hangs");
  if (rv != NETSTASH_OK)
    goto done;
  published = 1;
  if ((rv = netstash_preload_hit_new(ctx, &h)) != NETSTASH_OK)
    goto done;
  snprintf(url, sizeof(url), "%shello.txt", base);
  q = req_for(url);
  rv = netstash_intercept_preloaded(q, h);
  CHECK(rv == NETSTASH_OK || rv == NETSTASH_E_NOMEM, "fast path: %s", netstash_error_name(rv));
  if (rv != NETSTASH_OK)
    goto done;
  CHECK(netstash_preload_hit_status(h) == 200 && hit_equals(h, hello_body, hello_len),
        "fast path: wrong answer");
  snprintf(url, sizeof(url), "%sindex.html", base);
  rv = run_job(ctx, url, 0, &r, &status, &src);
  if (rv != NETSTASH_OK)
    goto done;
  CHECK(status == 200 && r.bytes == index_len && memcmp(r.body, index_body, index_len) == 0,
        "job: status %d, %zu bytes", status, r.bytes);
  CHECK(src == NETSTASH_SOURCE_PRELOAD || src == NETSTASH_SOURCE_NETWORK, "job: source %d",
        (int)src);
done:
  netstash_request_del(q);
  netstash_preload_hit_del(h);
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  if (published) {
    netstash_ctx *c2 = NULL;
    assert_int_equal(ctx_new(&c2, prof, 0, detail, sizeof(detail)), NETSTASH_OK);
    assert_int_equal(netstash_preload_hit_new(c2, &h), NETSTASH_OK);
    snprintf(url, sizeof(url), "%shello.txt", base);
    CHECK(netstash_preload_lookup(h, url) == NETSTASH_OK && hit_equals(h, hello_body, hello_len),
          "warm said OK, the profile does not serve hello.txt");
    netstash_preload_hit_del(h);
    netstash_ctx_del(c2);
  }
  return rv;
}

/* One fetch of a sequence: OK with the expected status and (if want is not
 * NULL) a body containing want, or an error returned to the caller. */
static netstash_error seq_fetch(netstash_ctx *ctx, const char *url, int want_status,
                                const char *want, netstash_source *src) {
  netstash_request *r = req_for(url);
  netstash_fetch *f = NULL;
  netstash_error rv;
  assert_int_equal(netstash_request_set_follow_redirects(r, 10), NETSTASH_OK);
  rv = fetch_bounded(ctx, r, &f);
  if (rv == NETSTASH_OK) {
    const uint8_t *d = NULL;
    size_t n = 0;
    char body[2048];
    CHECK(netstash_fetch_status(f) == want_status, "%s: status %d", url,
          netstash_fetch_status(f));
    netstash_fetch_body(f, &d, &n);
    snprintf(body, sizeof(body), "%.*s", (int)n, d ? (const char *)d : "");
    CHECK(!want || strstr(body, want), "%s: body \"%s\" lacks \"%s\"", url, body, want);
    if (src)
      *src = netstash_fetch_source(f);
  }
  netstash_fetch_del(f);
  netstash_request_del(r);
  return rv;
}

/* A browsing sequence on one context: a Set-Cookie stored from a response
 * and sent on the next request (unless the jar write failed: then the
 * cookie may be missing, never wrong), a redirect chain, an ETag response
 * revalidated with a 304, an https fetch over h2 (caddy). */
static netstash_error sc_browse(void) {
  netstash_ctx *ctx = NULL;
  char detail[256], url[600];
  netstash_error rv;
  netstash_source src = NETSTASH_SOURCE_NONE;
  rv = ctx_new(&ctx, fresh_profile(), 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  snprintf(url, sizeof(url), "%s/cookie/set/a/1", rawbase);
  if ((rv = seq_fetch(ctx, url, 200, "set", NULL)) != NETSTASH_OK)
    goto done;
  snprintf(url, sizeof(url), "%s/echo", rawbase);
  if ((rv = seq_fetch(ctx, url, 200, "GET /echo", NULL)) != NETSTASH_OK)
    goto done;
  snprintf(url, sizeof(url), "%s/redirect/3", rawbase);
  if ((rv = seq_fetch(ctx, url, 200, NULL, NULL)) != NETSTASH_OK)
    goto done;
  snprintf(url, sizeof(url), "%s/cache/etag", rawbase);
  for (int i = 0; i < 2; i++) {
    if ((rv = seq_fetch(ctx, url, 200, "etag n=", &src)) != NETSTASH_OK)
      goto done;
    CHECK(i == 0 ? src == NETSTASH_SOURCE_NETWORK
                 : (src == NETSTASH_SOURCE_REVALIDATED || src == NETSTASH_SOURCE_NETWORK),
          "etag fetch %d: source %d", i, (int)src);
  }
  snprintf(url, sizeof(url), "%shello.txt", base);
  rv = seq_fetch(ctx, url, 200, "hello, netstash", NULL);
done:
  netstash_ctx_del(ctx);
  return rv;
}

/* A warm over the network (manifest file, bodies from caddy), then the
 * administration calls a CLI makes: describe, stats, verify, rollback (none:
 * NOT_FOUND is the right answer), pack. */
static char manifest_path[1024];
static netstash_error sc_warm(void) {
  const char *prof = fresh_profile();
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  char detail[256], *json = NULL, packed[600];
  netstash_error rv;
  rv = ctx_new(&ctx, prof, 1, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    goto done;
  if ((rv = netstash_warm_new(ctx, manifest_path, &w)) != NETSTASH_OK)
    goto done;
  if ((rv = netstash_warm_add_resolve(w, resolve)) != NETSTASH_OK)
    goto done;
  if ((rv = netstash_warm_start(w)) != NETSTASH_OK)
    goto done;
  rv = netstash_warm_wait(w, 30000);
  CHECK(rv != NETSTASH_E_WAIT_TIMEOUT, "warm hangs");
  if (rv != NETSTASH_OK)
    goto done;
  CHECK(netstash_warm_manifest_version(w) == 1, "version %llu",
        (unsigned long long)netstash_warm_manifest_version(w));
  if ((rv = netstash_preload_describe(ctx, "af", 1, &json)) != NETSTASH_OK)
    goto done;
  CHECK(json && strstr(json, "\"active\""), "describe: %s", json ? json : "(null)");
  netstash_free(ctx, json);
  json = NULL;
  if ((rv = netstash_preload_stats(ctx, &json)) != NETSTASH_OK)
    goto done;
  netstash_free(ctx, json);
  json = NULL;
  if ((rv = netstash_preload_verify(ctx, &json)) != NETSTASH_OK)
    goto done;
  CHECK(json && strstr(json, "\"corrupt\"") && !strstr(json, "\"reason\""), "verify: %s", json ? json : "(null)");
  netstash_free(ctx, json);
  json = NULL;
  rv = netstash_preload_rollback(ctx, "af");
  CHECK(rv == NETSTASH_E_NOT_FOUND || rv == NETSTASH_E_NOMEM, "rollback: %s",
        netstash_error_name(rv));
  if (rv == NETSTASH_E_NOMEM)
    goto done;
  snprintf(packed, sizeof(packed), "%s.tar", prof);
  rv = netstash_preload_pack(ctx, "af", packed);
  unlink(packed);
done:
  if (ctx)
    netstash_free(ctx, json);
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  return rv;
}

/* ------------------------------------------------------------ the sweep */

typedef struct outcome {
  uint64_t runs, ok, nomem, injected_ok;
} outcome;

static void one_run(const char *name, netstash_error (*fn)(void), uint64_t n, int after,
                    outcome *o) {
  uint64_t count, failed;
  int64_t live;
  netstash_error rv;
  cur_name = name;
  cur_n = n;
  cur_after = after;
  fa_arm(n, after);
  rv = fn();
  fa_read(&count, &failed, &live);
  fa_arm(0, 0);
  o->runs++;
  CHECK(live == 0, "%lld blocks leaked (result %s)", (long long)live, netstash_error_name(rv));
  if (rv == NETSTASH_OK) {
    o->ok++;
    if (failed)
      o->injected_ok++;
  } else {
    CHECK(rv == NETSTASH_E_NOMEM, "result %s (%s), %llu failures injected",
          netstash_error_name(rv), netstash_strerror(rv), (unsigned long long)failed);
    CHECK(failed > 0, "NOMEM without an injected failure");
    o->nomem++;
  }
}

static void sweep(const char *name, netstash_error (*fn)(void)) {
  const char *only = getenv("NST_ALLOC_ONLY");
  const char *mode = getenv("NST_ALLOC_SWEEP");
  const char *sf = getenv("NST_ALLOC_STRIDE_FROM");
  int full = mode && strcmp(mode, "full") == 0;
  uint64_t stride_from = sf ? strtoull(sf, NULL, 10) : 400, k, kmax = 0, failed, stride = 1;
  int64_t live;
  outcome o[2];
  struct timespec t0, t1;
  if (only && strcmp(only, name) != 0)
    return;
  memset(o, 0, sizeof(o));
  fa_trace = getenv("NST_ALLOC_TRACE") ? atoi(getenv("NST_ALLOC_TRACE")) : 0;
  if (getenv("NST_ALLOC_N")) { /* one run, for debugging: NST_ALLOC_N=N[a] */
    const char *e = getenv("NST_ALLOC_N");
    one_run(name, fn, strtoull(e, NULL, 10), strchr(e, 'a') != NULL, &o[0]);
    return;
  }
  clock_gettime(CLOCK_MONOTONIC, &t0);
  memset(o, 0, sizeof(o));
  /* K: the count of a clean run (the largest of three: loop-thread work
   * varies a little with timing). */
  for (int i = 0; i < 3; i++) {
    cur_name = name;
    cur_n = 0;
    fa_arm(0, 0);
    CHECK(fn() == NETSTASH_OK, "clean run fails");
    fa_read(&k, &failed, &live);
    CHECK(live == 0, "clean run leaks %lld blocks", (long long)live);
    if (k > kmax)
      kmax = k;
  }
  k = kmax + 2; /* a little past the end: the run must then succeed */
  if (!full && k > stride_from)
    stride = (k + 399) / 400;
  for (uint64_t n = 1; n <= k; n++) {
    if (stride > 1 && n > 64 && n + 64 < k && n % stride != 0)
      continue;
    one_run(name, fn, n, 0, &o[0]);
    one_run(name, fn, n, 1, &o[1]);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("[ alloc ] %-12s K=%llu stride=%llu once: %llu runs (%llu ok, %llu of them with a failure "
         "absorbed, %llu NOMEM) after: %llu runs (%llu ok, %llu NOMEM) %.1f s\n",
         name, (unsigned long long)kmax, (unsigned long long)stride,
         (unsigned long long)o[0].runs, (unsigned long long)o[0].ok,
         (unsigned long long)o[0].injected_ok, (unsigned long long)o[0].nomem,
         (unsigned long long)o[1].runs, (unsigned long long)o[1].ok,
         (unsigned long long)o[1].nomem,
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  fflush(stdout);
}

static void test_ctx(void **state) {
  (void)state;
  sweep("ctx", sc_ctx);
}
static void test_fetch_store(void **state) {
  (void)state;
  sweep("fetch_store", sc_fetch_store);
}
static void test_cache_hit(void **state) {
  (void)state;
  sweep("cache_hit", sc_cache_hit);
}
static void test_cookies(void **state) {
  (void)state;
  sweep("cookies", sc_cookies);
}
static void test_job(void **state) {
  (void)state;
  sweep("job", sc_job);
}
static void test_preload(void **state) {
  (void)state;
  sweep("preload", sc_preload);
}
static void test_browse(void **state) {
  (void)state;
  sweep("browse", sc_browse);
}
static void test_warm(void **state) {
  (void)state;
  sweep("warm", sc_warm);
}

/* ------------------------------------------------------------ setup */

/* Unsigned manifest over hello.txt and index.html of the harness site,
 * warmed from caddy into a template profile, packed into a bundle. */
static int make_bundle(void) {
  const char *names[2] = {"index.html", "hello.txt"};
  char path[1024], mpath[1024], detail[256];
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  FILE *m;
  int rc = -1;
  snprintf(mpath, sizeof(mpath), "%s/af.json", nst_workdir());
  snprintf(manifest_path, sizeof(manifest_path), "%s", mpath);
  m = fopen(mpath, "w");
  if (!m)
    return -1;
  fprintf(m,
          "{\"id\": \"af\", \"version\": 1, \"scope\": [\"%s\"], \"entry_pages\": "
          "[\"%sindex.html\"], \"expires\": \"2099-01-01T00:00:00Z\", \"resources\": [",
          base, base);
  for (int i = 0; i < 2; i++) {
    unsigned char d[32], enc[64];
    unsigned dl = 0;
    const char *b = i == 0 ? index_body : hello_body;
    size_t len = i == 0 ? index_len : hello_len;
    EVP_Digest(b, len, d, &dl, EVP_sha256(), NULL);
    EVP_EncodeBlock(enc, d, 32);
    fprintf(m,
            "%s{\"url\": \"%s%s\", \"integrity\": \"sha256-%s\", \"size\": %zu, "
            "\"content_type\": \"%s\", \"priority\": \"critical\"}",
            i ? "," : "", base, names[i], enc, len, i == 0 ? "text/html" : "text/plain");
  }
  fprintf(m, "]}\n");
  fclose(m);
  snprintf(path, sizeof(path), "%s/tmpl-pl", nst_workdir());
  if (ctx_new(&ctx, path, 0, detail, sizeof(detail)) != NETSTASH_OK)
    goto done;
  if (netstash_warm_new(ctx, mpath, &w) != NETSTASH_OK)
    goto done;
  netstash_warm_add_resolve(w, resolve);
  if (netstash_warm_start(w) != NETSTASH_OK || netstash_warm_wait(w, 60000) != NETSTASH_OK) {
    fprintf(stderr, "warm: %s\n", netstash_warm_error_detail(w));
    goto done;
  }
  snprintf(bundle, sizeof(bundle), "%s/af.tar", nst_workdir());
  if (netstash_preload_pack(ctx, "af", bundle) != NETSTASH_OK)
    goto done;
  rc = 0;
done:
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  return rc;
}

static int setup(void **state) {
  char path[1024], detail[256], url[256];
  netstash_ctx *ctx = NULL;
  (void)state;
  if (!nst_certs() || !nst_site() || nst_caddy_start("h2", &caddy) || nst_rawserver_start(&raw))
    return -1;
  snprintf(base, sizeof(base), "https://example.test:%d/", caddy.port);
  snprintf(resolve, sizeof(resolve), "example.test:%d:127.0.0.1", caddy.port);
  snprintf(rawbase, sizeof(rawbase), "http://127.0.0.1:%d", raw.port);
  snprintf(path, sizeof(path), "%s/hello.txt", nst_site());
  hello_body = read_all(path, &hello_len);
  snprintf(path, sizeof(path), "%s/index.html", nst_site());
  index_body = read_all(path, &index_len);
  if (!hello_body || !index_body || index_len >= sizeof(((jrec *)0)->body))
    return -1;
  if (make_bundle() != 0)
    return -1;
  /* The cache-hit template: one stored response. */
  snprintf(tmpl_hc, sizeof(tmpl_hc), "%s/tmpl-hc", nst_workdir());
  snprintf(url, sizeof(url), "%s/cache/max-age/600/hit", rawbase);
  if (ctx_new(&ctx, tmpl_hc, 0, detail, sizeof(detail)) != NETSTASH_OK ||
      plain_fetch(ctx, url, NETSTASH_CACHE_DEFAULT, hit_body, sizeof(hit_body), NULL) !=
          NETSTASH_OK) {
    netstash_ctx_del(ctx);
    return -1;
  }
  netstash_ctx_del(ctx);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  free(hello_body);
  free(index_body);
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ctx),         cmocka_unit_test(test_fetch_store),
      cmocka_unit_test(test_cache_hit),   cmocka_unit_test(test_cookies),
      cmocka_unit_test(test_job),         cmocka_unit_test(test_preload),
      cmocka_unit_test(test_browse),      cmocka_unit_test(test_warm),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
