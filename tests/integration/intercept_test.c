/*
 * intercept_test — the resource-interceptor ABI, written as an embedder
 * would (public headers only): every route (preload, HTTP cache, network),
 * the fast path, push and pull bodies, redirects followed and manual,
 * ranges from a preloaded body, POST bodies, load flags (offline, disable),
 * credentials, and cancellation from other threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "harness.h"

static nst_server caddy, raw;
static char cli[1024], base[256], resolve[128], rawbase[128], prof[512];
static netstash_ctx *ctx;

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
  if (fread(b, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(b);
    return NULL;
  }
  b[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return b;
}

static const char *big_bin(void) {
  static char path[1024];
  snprintf(path, sizeof(path), "%s/big.bin", nst_site());
  return path;
}

/* A manifest over index.html, hello.txt and big.bin of the harness site,
 * unsigned (the context allows it), warmed through the library. */
static void warm_site_into(netstash_ctx *c) {
  const char *names[3] = {"index.html", "hello.txt", "big.bin"};
  char path[1024], mpath[1024];
  FILE *m;
  snprintf(mpath, sizeof(mpath), "%s/ic.json", nst_workdir());
  m = fopen(mpath, "w");
  assert_non_null(m);
  fprintf(m, "{\"id\": \"ic\", \"version\": 1, \"scope\": [\"%s\"], \"entry_pages\": [\"%sindex.html\"],"
             " \"expires\": \"2099-01-01T00:00:00Z\", \"resources\": [",
          base, base);
  for (int i = 0; i < 3; i++) {
    size_t len = 0;
    unsigned char d[32], enc[64];
    unsigned dl = 0;
    snprintf(path, sizeof(path), "%s/%s", nst_site(), names[i]);
    char *b = read_all(path, &len);
    assert_non_null(b);
    EVP_Digest(b, len, d, &dl, EVP_sha256(), NULL);
    EVP_EncodeBlock(enc, d, 32);
    fprintf(m,
            "%s{\"url\": \"%s%s\", \"integrity\": \"sha256-%s\", \"size\": %zu, \"content_type\": "
            "\"%s\", \"priority\": \"%s\"}",
            i ? "," : "", base, names[i], enc, len, i == 0 ? "text/html" : "application/octet-stream",
            i == 0 ? "critical" : "high");
    free(b);
  }
  fprintf(m, "]}\n");
  fclose(m);
  netstash_warm *w;
  assert_int_equal(netstash_warm_new(c, mpath, &w), NETSTASH_OK);
  netstash_warm_add_resolve(w, resolve);
  assert_int_equal(netstash_warm_start(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_wait(w, 60000), NETSTASH_OK);
  netstash_warm_del(w);
}

typedef struct rec {
  int responses, redirects, completes;
  int cb_status, cb_has_fetch; /* read inside on_complete */
  netstash_error err;
  size_t bytes;
  char last_redirect[256];
  uint8_t *body;
  size_t cap;
} rec;

static void r_redirect(netstash_job *j, int status, const char *loc, void *ud) {
  rec *r = ud;
  (void)j;
  (void)status;
  r->redirects++;
  snprintf(r->last_redirect, sizeof(r->last_redirect), "%s", loc);
}
static void r_response(netstash_job *j, void *ud) {
  (void)j;
  ((rec *)ud)->responses++;
}
static void r_data(netstash_job *j, const uint8_t *d, size_t n, void *ud) {
  rec *r = ud;
  (void)j;
  if (r->body && r->bytes + n <= r->cap)
    memcpy(r->body + r->bytes, d, n);
  r->bytes += n;
}
static void r_complete(netstash_job *j, netstash_error e, void *ud) {
  rec *r = ud;
  r->cb_status = netstash_job_status(j);
  r->cb_has_fetch = netstash_job_fetch(j) != NULL;
  r->completes++;
  r->err = e;
}

static const netstash_job_callbacks push_cbs = {r_redirect, r_response, r_data, NULL, r_complete};

static netstash_job *run(netstash_request *req, rec *r) {
  netstash_job *j;
  memset(r, 0, sizeof(*r));
  netstash_error e;
  assert_int_equal(netstash_job_start(ctx, req, &push_cbs, r, &j), NETSTASH_OK);
  e = netstash_job_wait(j, 30000); /* before r is read: the callbacks write it */
  assert_int_equal(e, r->err);
  assert_int_equal(r->completes, 1);
  return j;
}

static netstash_request *req_for(const char *url) {
  netstash_request *r;
  assert_int_equal(netstash_request_new(&r, url), NETSTASH_OK);
  netstash_request_add_resolve(r, resolve);
  return r;
}

static void test_routes(void **state) {
  char url[512];
  rec r;
  (void)state;
  /* preload */
  snprintf(url, sizeof(url), "%shello.txt", base);
  netstash_request *q = req_for(url);
  netstash_request_set_destination(q, NETSTASH_DEST_SCRIPT);
  netstash_job *j = run(q, &r);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(netstash_job_status(j), 200);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(r.bytes, 16);
  assert_non_null(strstr(netstash_fetch_cache_reason(netstash_job_fetch(j)), "preload"));
  assert_int_equal(netstash_job_destination(j), NETSTASH_DEST_SCRIPT);
  netstash_job_del(j);
  netstash_request_del(q);

  /* network, then the HTTP cache (max-age) */
  snprintf(url, sizeof(url), "%s/cache/max-age/600/ic", rawbase);
  for (int k = 0; k < 2; k++) {
    q = req_for(url);
    j = run(q, &r);
    assert_int_equal(r.err, NETSTASH_OK);
    assert_int_equal(netstash_job_source(j), k == 0 ? NETSTASH_SOURCE_NETWORK : NETSTASH_SOURCE_CACHE);
    netstash_job_del(j);
    netstash_request_del(q);
  }
  /* load flags: bypass goes to the network; disable skips the preload store */
  q = req_for(url);
  netstash_request_set_load_flags(q, NETSTASH_LOAD_BYPASS_CACHE);
  j = run(q, &r);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_NETWORK);
  netstash_job_del(j);
  netstash_request_del(q);
  snprintf(url, sizeof(url), "%shello.txt", base);
  q = req_for(url);
  netstash_request_set_load_flags(q, NETSTASH_LOAD_DISABLE_CACHE);
  j = run(q, &r);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_NETWORK);
  netstash_job_del(j);
  netstash_request_del(q);
  /* offline: nothing stored for it */
  snprintf(url, sizeof(url), "%s/ok?never", rawbase);
  q = req_for(url);
  netstash_request_set_load_flags(q, NETSTASH_LOAD_ONLY_FROM_CACHE);
  memset(&r, 0, sizeof(r));
  assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &j), NETSTASH_OK);
  assert_int_equal(netstash_job_wait(j, 30000), NETSTASH_E_NOT_CACHED);
  netstash_job_del(j);
  netstash_request_del(q);
  /* a service worker's navigation is not answered from the preload store */
  snprintf(url, sizeof(url), "%sindex.html", base);
  q = req_for(url);
  netstash_request_set_destination(q, NETSTASH_DEST_DOCUMENT);
  netstash_request_set_from_worker(q, 1);
  j = run(q, &r);
  assert_int_not_equal(netstash_job_source(j), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(netstash_job_from_worker(j), 1);
  netstash_job_del(j);
  netstash_request_del(q);
}

/* The job is whole inside its own callbacks, however fast the answer: a hit
 * can complete on the loop thread before netstash_job_start has returned
 * (found when the loop's wake-up got faster: the page loader saw status 0 on
 * a revalidated font). */
static void test_callbacks_see_the_job(void **state) {
  char urls[2][512];
  (void)state;
  snprintf(urls[0], sizeof(urls[0]), "%shello.txt", base);            /* preload */
  snprintf(urls[1], sizeof(urls[1]), "%s/cache/max-age/600/ic", rawbase); /* HTTP cache */
  for (int i = 0; i < 400; i++) {
    rec r;
    netstash_request *q = req_for(urls[i % 2]);
    netstash_job *j = run(q, &r);
    if (!r.cb_has_fetch || r.cb_status != 200)
      fail_msg("round %d (%s): on_complete saw fetch %d, status %d", i, urls[i % 2],
               r.cb_has_fetch, r.cb_status);
    netstash_job_del(j);
    netstash_request_del(q);
  }
}

static void test_fast_path(void **state) {
  char url[512];
  netstash_preload_hit *h;
  (void)state;
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
  snprintf(url, sizeof(url), "%sbig.bin", base);
  netstash_request *q = req_for(url);
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_body_size(h), 4u << 20);
  assert_true(netstash_preload_hit_chunk_count(h) > 1);
  /* the whole fast path in one call: preloaded first */
  assert_int_equal(netstash_intercept_lookup(q, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(netstash_preload_hit_body_size(h), 4u << 20);
  netstash_request_del(q);
  /* POST, Range, and disabled cache go the long way */
  q = req_for(url);
  netstash_request_set_method(q, "POST");
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_intercept_lookup(q, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(q);
  q = req_for(url);
  netstash_request_add_header(q, "Range", "bytes=0-9");
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(q);
  q = req_for(url);
  netstash_request_set_load_flags(q, NETSTASH_LOAD_DISABLE_CACHE);
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_intercept_lookup(q, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(q);
  /* conditional: a job's (it answers 304 when the validator matches) */
  q = req_for(url);
  netstash_request_add_header(q, "If-None-Match", "\"x\"");
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(q);
  q = req_for(url);
  netstash_request_add_header(q, "If-Modified-Since", "Sat, 05 Dec 2026 00:00:00 GMT");
  assert_int_equal(netstash_intercept_preloaded(q, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(q);
  netstash_preload_hit_del(h);
}

static void test_redirects_ranges_post(void **state) {
  char url[512];
  rec r;
  (void)state;
  snprintf(url, sizeof(url), "%s/redirect/3", rawbase);
  netstash_request *q = req_for(url);
  netstash_job *j = run(q, &r);
  assert_int_equal(netstash_job_status(j), 200);
  assert_int_equal(r.redirects, 3);
  assert_non_null(strstr(r.last_redirect, "/redirect/0"));
  netstash_job_del(j);
  netstash_request_del(q);
  /* manual: the 302 is the answer */
  q = req_for(url);
  netstash_request_set_redirect_mode(q, NETSTASH_REDIRECT_MANUAL);
  j = run(q, &r);
  assert_int_equal(netstash_job_status(j), 302);
  assert_int_equal(r.redirects, 0);
  assert_non_null(netstash_job_redirect_url(j));
  assert_non_null(strstr(netstash_job_redirect_url(j), "/redirect/2"));
  netstash_job_del(j);
  netstash_request_del(q);
  /* ranges from the preloaded 4 MiB body: 206, and 416 past the end */
  snprintf(url, sizeof(url), "%sbig.bin", base);
  q = req_for(url);
  netstash_request_set_destination(q, NETSTASH_DEST_MEDIA);
  netstash_request_add_header(q, "Range", "bytes=1000000-1000099");
  j = run(q, &r);
  assert_int_equal(netstash_job_status(j), 206);
  assert_int_equal(r.bytes, 100);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_PRELOAD);
  netstash_job_del(j);
  netstash_request_del(q);
  q = req_for(url);
  netstash_request_add_header(q, "Range", "bytes=9000000-");
  j = run(q, &r);
  assert_int_equal(netstash_job_status(j), 416);
  assert_int_equal(r.bytes, 0);
  netstash_job_del(j);
  netstash_request_del(q);
  /* POST with a body, echoed */
  snprintf(url, sizeof(url), "%s/echo", rawbase);
  q = req_for(url);
  netstash_request_set_method(q, "POST");
  netstash_request_set_body(q, (const uint8_t *)"form=1&x=2", 10);
  uint8_t buf[4096];
  memset(&r, 0, sizeof(r));
  r.body = buf;
  r.cap = sizeof(buf) - 1;
  netstash_job *j2;
  assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &j2), NETSTASH_OK);
  assert_int_equal(netstash_job_wait(j2, 30000), NETSTASH_OK);
  buf[r.bytes < sizeof(buf) ? r.bytes : sizeof(buf) - 1] = 0;
  assert_non_null(strstr((char *)buf, "POST /echo"));
  assert_non_null(strstr((char *)buf, "form=1&x=2"));
  assert_non_null(strstr((char *)buf, "Accept: */*"));
  netstash_job_del(j2);
  netstash_request_del(q);
}

/* 4 MiB from the network, pulled through a 64 KiB buffer by a slow reader;
 * the bytes must arrive intact and in order */
/* mode 0: netstash_job_read; 1: netstash_job_peek + consume, partly and
 * holding the view while more arrives (kept apart: the view must not move
 * or change); 2: both, alternating. */
static void pull_4mib(const char *url, const char *resolve_pin, netstash_http_version v, int mode) {
  netstash_request *q;
  assert_int_equal(netstash_request_new(&q, url), NETSTASH_OK);
  netstash_request_add_resolve(q, resolve_pin);
  netstash_request_set_http_version(q, v);
  netstash_request_set_load_flags(q, NETSTASH_LOAD_BYPASS_CACHE);
  netstash_request_set_pull_buffer(q, 64 << 10);
  netstash_job *j;
  assert_int_equal(netstash_job_start(ctx, q, NULL, NULL, &j), NETSTASH_OK);
  uint8_t *buf = malloc(32768), *want;
  size_t total = 0, n, want_len;
  want = (uint8_t *)read_all(big_bin(), &want_len);
  assert_non_null(want);
  assert_int_equal(want_len, 4u << 20);
  netstash_error e;
  for (int spins = 0; spins < 200000; spins++) {
    if (mode == 1 || (mode == 2 && spins % 2)) {
      const uint8_t *d = NULL;
      size_t take;
      e = netstash_job_peek(j, &d, &n);
      if (e == NETSTASH_E_AGAIN) {
        assert_int_equal(netstash_job_consume(j, 0), NETSTASH_E_INVALID_ARGUMENT); /* no view */
        usleep(200);
        continue;
      }
      assert_int_equal(e, NETSTASH_OK);
      if (n == 0)
        break;
      assert_true(total + n <= want_len);
      take = spins % 3 == 0 || n < 8 ? n : n / 3 + 1;
      assert_memory_equal(d, want + total, take);
      if (total < (1u << 20)) {
        usleep(100); /* data arrives while the view is held */
        assert_memory_equal(d, want + total, take);
      }
      if (spins == 1)
        assert_int_equal(netstash_job_consume(j, n + 1), NETSTASH_E_INVALID_ARGUMENT);
      assert_int_equal(netstash_job_consume(j, take), NETSTASH_OK);
      total += take;
      continue;
    }
    e = netstash_job_read(j, buf, 32768, &n);
    if (e == NETSTASH_E_AGAIN) {
      usleep(200);
      continue;
    }
    assert_int_equal(e, NETSTASH_OK);
    if (n == 0)
      break;
    if (total + n <= want_len)
      assert_memory_equal(buf, want + total, n);
    total += n;
    if (total < (1u << 20))
      usleep(100); /* a slow reader: the transfer must wait for it */
  }
  assert_int_equal(total, 4u << 20);
  assert_int_equal(netstash_job_status(j), 200);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_NETWORK);
  free(buf);
  free(want);
  netstash_job_del(j);
  netstash_request_del(q);
}

static void test_pull(void **state) {
  char url[512];
  (void)state;
  snprintf(url, sizeof(url), "%sbig.bin?pull", base);
  pull_4mib(url, resolve, NETSTASH_HTTP_ANY, 0);
}

/* Pull without a copy (netstash_job_peek / netstash_job_consume), alone and
 * mixed with netstash_job_read. */
static void test_pull_peek(void **state) {
  char url[512];
  (void)state;
  snprintf(url, sizeof(url), "%sbig.bin?peek", base);
  pull_4mib(url, resolve, NETSTASH_HTTP_ANY, 1);
  snprintf(url, sizeof(url), "%sbig.bin?peek-mixed", base);
  pull_4mib(url, resolve, NETSTASH_HTTP_ANY, 2);
}

/* The same over HTTP/3: pausing holds received data and stops extending
 * the stream's flow-control window. */
static void test_pull_h3(void **state) {
  nst_server h3;
  char url[512], pin[128];
  (void)state;
  assert_int_equal(nst_caddy_start("h3", &h3), 0);
  snprintf(url, sizeof(url), "https://example.test:%d/big.bin?pull", h3.port);
  snprintf(pin, sizeof(pin), "example.test:%d:127.0.0.1", h3.port);
  pull_4mib(url, pin, NETSTASH_HTTP_3, 0);
  nst_stop(&h3);
}

typedef struct racer {
  netstash_job *j;
  unsigned delay_us;
} racer;

static void *cancel_later(void *p) {
  racer *r = p;
  usleep(r->delay_us);
  netstash_job_cancel(r->j);
  return NULL;
}

static void test_cancel_races(void **state) {
  char url[512];
  (void)state;
  for (int round = 0; round < 40; round++) {
    rec r;
    racer rc;
    pthread_t t;
    snprintf(url, sizeof(url), round % 2 ? "%sbig.bin?c%d" : "%sr/%d.bin", base, round);
    netstash_request *q = req_for(url);
    if (round % 2)
      netstash_request_set_load_flags(q, NETSTASH_LOAD_BYPASS_CACHE);
    memset(&r, 0, sizeof(r));
    assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &rc.j), NETSTASH_OK);
    rc.delay_us = (unsigned)(round * 137) % 3000;
    pthread_create(&t, NULL, cancel_later, &rc);
    netstash_error e = netstash_job_wait(rc.j, 30000);
    pthread_join(t, NULL);
    assert_true(e == NETSTASH_OK || e == NETSTASH_E_CANCELED);
    assert_int_equal(r.completes, 1);
    if (round % 3 == 0) /* delete without waiting for anything */
      netstash_job_cancel(rc.j);
    netstash_job_del(rc.j);
    netstash_request_del(q);
  }
  /* deleting a running job from the caller's side: no callback afterwards */
  rec r;
  netstash_job *j;
  snprintf(url, sizeof(url), "%s/slow", rawbase);
  netstash_request *q = req_for(url);
  memset(&r, 0, sizeof(r));
  assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &j), NETSTASH_OK);
  usleep(50000);
  netstash_job_del(j);
  netstash_request_del(q);
  assert_int_equal(netstash_ctx_drain(ctx, 5000), NETSTASH_OK);
  assert_int_equal(r.completes, 0);
}

static void test_credentials_mode(void **state) {
  char url[512];
  rec r;
  uint8_t buf[4096];
  (void)state;
  /* a cookie for the raw server, then requests with each credentials mode */
  snprintf(url, sizeof(url), "%s/cookie/set/sid/42", rawbase);
  netstash_request *q = req_for(url);
  netstash_job *j = run(q, &r);
  netstash_job_del(j);
  netstash_request_del(q);
  for (int mode = 0; mode < 3; mode++) {
    snprintf(url, sizeof(url), "%s/echo", rawbase);
    q = req_for(url);
    netstash_request_set_credentials(q, (netstash_credentials)mode);
    netstash_request_set_initiator(q, mode == 1 ? "https://other.example" : NULL);
    memset(&r, 0, sizeof(r));
    r.body = buf;
    r.cap = sizeof(buf) - 1;
    assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &j), NETSTASH_OK);
    assert_int_equal(netstash_job_wait(j, 30000), NETSTASH_OK);
    buf[r.bytes < sizeof(buf) ? r.bytes : sizeof(buf) - 1] = 0;
    if (mode == NETSTASH_CREDENTIALS_INCLUDE)
      assert_non_null(strstr((char *)buf, "sid=42"));
    else
      assert_null(strstr((char *)buf, "sid=42"));
    netstash_job_del(j);
    netstash_request_del(q);
  }
  /* same-origin mode with another origin's initiator: refused up front */
  q = req_for(url);
  netstash_request_set_mode(q, NETSTASH_MODE_SAME_ORIGIN);
  netstash_request_set_initiator(q, "https://other.example");
  assert_int_equal(netstash_job_start(ctx, q, &push_cbs, &r, &j), NETSTASH_E_INVALID_ARGUMENT);
  netstash_request_del(q);
}

static int setup(void **state) {
  (void)state;
  const char *b = getenv("NST_BUILDDIR");
  snprintf(cli, sizeof(cli), "%s/tools/netstash", b ? b : ".");
  if (!nst_certs() || !nst_site() || nst_caddy_start("h2", &caddy) || nst_rawserver_start(&raw))
    return -1;
  snprintf(base, sizeof(base), "https://example.test:%d/", caddy.port);
  snprintf(resolve, sizeof(resolve), "example.test:%d:127.0.0.1", caddy.port);
  snprintf(rawbase, sizeof(rawbase), "http://127.0.0.1:%d", raw.port);
  snprintf(prof, sizeof(prof), "%s/icprof", nst_workdir());
  netstash_options *o;
  char detail[256];
  netstash_options_new(&o);
  netstash_options_set_profile_dir(o, prof);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  netstash_options_set_allow_unsigned(o, 1);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK)
    return -1;
  netstash_options_del(o);
  warm_site_into(ctx);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  netstash_ctx_del(ctx);
  nst_cleanup();
  return 0;
}

/* Allocations of at least 1 MiB made by a context (its allocator). */
static atomic_int big_allocs;
static void *big_malloc(size_t n, void *ud) {
  (void)ud;
  if (n >= (1u << 20))
    atomic_fetch_add(&big_allocs, 1);
  return malloc(n);
}
static void big_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static void *big_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  if (a * b >= (1u << 20))
    atomic_fetch_add(&big_allocs, 1);
  return calloc(a, b);
}
static void *big_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (n >= (1u << 20))
    atomic_fetch_add(&big_allocs, 1);
  return realloc(p, n);
}

/* A preloaded 4 MiB body pulled by the job API: the pull queue is sized
 * once from the answer's Content-Length (one large allocation), not doubled
 * into chunk by chunk (1, 2, 4, 8 MiB: four), and the bytes are the file's. */
static void test_pull_stored_sized_once(void **state) {
  netstash_allocator a = {NULL, big_malloc, big_free, big_calloc, big_realloc};
  netstash_options *o;
  netstash_ctx *c2;
  netstash_request *q;
  netstash_job *j;
  char p2[600], url[512], detail[256];
  const uint8_t *d;
  size_t n, total = 0, want_len;
  netstash_error e;
  uint8_t *want;
  (void)state;
  snprintf(p2, sizeof(p2), "%s/icprof-sized", nst_workdir());
  netstash_options_new(&o);
  netstash_options_set_profile_dir(o, p2);
  netstash_options_set_ca_file(o, nst_cert("ca.pem"));
  netstash_options_set_allow_unsigned(o, 1);
  assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
  assert_int_equal(netstash_ctx_new(&c2, o, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(o);
  warm_site_into(c2);
  want = (uint8_t *)read_all(big_bin(), &want_len);
  assert_non_null(want);
  assert_int_equal(want_len, 4u << 20);

  snprintf(url, sizeof(url), "%sbig.bin", base);
  assert_int_equal(netstash_request_new(&q, url), NETSTASH_OK);
  atomic_store(&big_allocs, 0);
  assert_int_equal(netstash_job_start(c2, q, NULL, NULL, &j), NETSTASH_OK);
  /* a store's answer comes whole, not paused at the pull bound: the job ends
   * before the reader starts (a reader holding a view meanwhile would send
   * the rest to the second buffer, as it must) */
  assert_int_equal(netstash_job_wait(j, 30000), NETSTASH_OK);
  for (int spins = 0; spins < 100000; spins++) {
    e = netstash_job_peek(j, &d, &n);
    if (e == NETSTASH_E_AGAIN) {
      usleep(100);
      continue;
    }
    assert_int_equal(e, NETSTASH_OK);
    if (n == 0)
      break;
    assert_true(total + n <= want_len);
    assert_memory_equal(d, want + total, n);
    assert_int_equal(netstash_job_consume(j, n), NETSTASH_OK);
    total += n;
  }
  assert_int_equal(total, want_len);
  assert_int_equal(netstash_job_source(j), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(atomic_load(&big_allocs), 1);
  netstash_job_del(j);
  netstash_request_del(q);
  free(want);
  netstash_ctx_del(c2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_routes),       cmocka_unit_test(test_callbacks_see_the_job),
      cmocka_unit_test(test_fast_path),    cmocka_unit_test(test_redirects_ranges_post),
      cmocka_unit_test(test_pull),         cmocka_unit_test(test_pull_peek),
      cmocka_unit_test(test_pull_h3),      cmocka_unit_test(test_pull_stored_sized_once),
      cmocka_unit_test(test_cancel_races), cmocka_unit_test(test_credentials_mode),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
