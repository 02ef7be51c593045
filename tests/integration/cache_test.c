/*
 * cache_test — the HTTP cache end to end, through the public API, against
 * nst-rawserver's /cache/ endpoints (every body carries the origin's request
 * count n=..., so a cached answer is told from a network one).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "harness.h"

static nst_server raw;
static int profile_seq;

static char *url(const char *path) {
  static char b[8][256];
  static int i;
  char *p = b[i++ % 8];
  snprintf(p, sizeof(b[0]), "http://127.0.0.1:%d%s", raw.port, path);
  return p;
}

static netstash_ctx *ctx_for(const char *profile, int partition) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  if (profile)
    assert_int_equal(netstash_options_set_profile_dir(o, profile), NETSTASH_OK);
  netstash_options_set_cache_partitioning(o, partition);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK)
    fail_msg("ctx: %s", detail);
  netstash_options_del(o);
  return ctx;
}

static const char *new_profile(void) {
  char name[32];
  snprintf(name, sizeof(name), "profile-%d", ++profile_seq);
  return nst_path(name);
}

/* A context on a new profile whose HTTP cache recompresses text (or not). */
static netstash_ctx *ctx_recompressing(int recompress) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_profile_dir(o, new_profile()), NETSTASH_OK);
  assert_int_equal(netstash_options_set_cache_recompress(o, recompress), NETSTASH_OK);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK)
    fail_msg("ctx: %s", detail);
  netstash_options_del(o);
  return ctx;
}

typedef struct result {
  netstash_error err;
  int status;
  netstash_source source;
  char body[256];
  char reason[256];
  char hdr[128];
} result;

static result fetch(netstash_ctx *ctx, const char *u, const char *method, netstash_cache_mode mode,
                    const char *lang, const char *top, const char *want_header) {
  netstash_request *req;
  netstash_fetch *f;
  result r;
  const uint8_t *b;
  size_t len;
  memset(&r, 0, sizeof(r));
  assert_int_equal(netstash_request_new(&req, u), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  netstash_request_set_cache_mode(req, mode);
  if (method)
    netstash_request_set_method(req, method);
  if (lang)
    netstash_request_add_header(req, "Accept-Language", lang);
  if (top)
    netstash_request_set_top_level_site(req, top);
  r.err = netstash_fetch_sync(ctx, req, &f);
  r.status = netstash_fetch_status(f);
  r.source = netstash_fetch_source(f);
  if (netstash_fetch_body(f, &b, &len) == NETSTASH_OK)
    snprintf(r.body, sizeof(r.body), "%.*s", (int)len, (const char *)b);
  snprintf(r.reason, sizeof(r.reason), "%s", netstash_fetch_cache_reason(f));
  if (want_header && netstash_fetch_header(f, want_header))
    snprintf(r.hdr, sizeof(r.hdr), "%s", netstash_fetch_header(f, want_header));
  netstash_fetch_del(f);
  netstash_request_del(req);
  return r;
}

#define GET(ctx, path) fetch(ctx, url(path), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL)

/* /cache/max-age/600/NAME-0 .. NAME-(n-1) are answered from the cache. */
static void assert_all_cached(netstash_ctx *ctx, const char *name, int n) {
  char path[64];
  for (int i = 0; i < n; i++) {
    result r;
    snprintf(path, sizeof(path), "/cache/max-age/600/%s-%d", name, i);
    r = GET(ctx, path);
    assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  }
}

static void test_fresh_hit_and_persistence(void **state) {
  const char *prof = new_profile();
  netstash_ctx *ctx = ctx_for(prof, 1);
  result a, b, c;
  (void)state;
  a = GET(ctx, "/cache/max-age/600/a");
  assert_int_equal(a.err, NETSTASH_OK);
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  assert_non_null(strstr(a.reason, "stored"));
  b = GET(ctx, "/cache/max-age/600/a");
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, a.body);
  assert_int_equal(strncmp(b.reason, "fresh", 5), 0);
  /* HEAD is answered from the stored GET */
  c = fetch(ctx, url("/cache/max-age/600/a"), "HEAD", NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL);
  assert_int_equal(c.source, NETSTASH_SOURCE_CACHE);
  assert_int_equal(c.body[0], 0);
  netstash_ctx_del(ctx);
  /* the store persists: a new context (a new process would do the same) */
  ctx = ctx_for(prof, 1);
  c = GET(ctx, "/cache/max-age/600/a");
  assert_int_equal(c.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(c.body, a.body);
  netstash_ctx_del(ctx);
}

/* The Age of an answer (its only one, RFC 9111 §4) and its source. */
static long answer_age(netstash_ctx *ctx, const char *path, netstash_source *src) {
  netstash_request *req;
  netstash_fetch *f;
  const char *name, *value;
  long age = -1;
  int count = 0;
  size_t i;
  assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  *src = netstash_fetch_source(f);
  for (i = 0; i < netstash_fetch_header_count(f); i++)
    if (netstash_fetch_header_at(f, i, &name, &value) == NETSTASH_OK &&
        strcasecmp(name, "age") == 0) {
      age = strtol(value, NULL, 10);
      count++;
    }
  assert_true(count <= 1);
  netstash_fetch_del(f);
  netstash_request_del(req);
  return age;
}

/* A stored answer goes out with its current age, replacing the one it was
 * stored with: an upstream's Age plus the time it has been resident. */
static void test_age_of_stored_answers(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  netstash_source src;
  long age;
  (void)state;
  assert_int_equal(answer_age(ctx, "/cache/aged/100", &src), 100); /* relayed as is */
  assert_int_equal(src, NETSTASH_SOURCE_NETWORK);
  sleep(1);
  age = answer_age(ctx, "/cache/aged/100", &src);
  assert_int_equal(src, NETSTASH_SOURCE_CACHE);
  assert_true(age >= 101 && age <= 110);
  /* no Age from the origin: the time since it was stored */
  assert_int_equal(answer_age(ctx, "/cache/max-age/600/age", &src), -1);
  age = answer_age(ctx, "/cache/max-age/600/age", &src);
  assert_int_equal(src, NETSTASH_SOURCE_CACHE);
  assert_true(age >= 0 && age <= 5);
  /* revalidated (304): counted from the validation */
  (void)answer_age(ctx, "/cache/etag", &src);
  age = answer_age(ctx, "/cache/etag", &src);
  assert_int_equal(src, NETSTASH_SOURCE_REVALIDATED);
  assert_true(age >= 0 && age <= 5);
  netstash_ctx_del(ctx);
}

/* netstash_intercept_cached on req: the result, and the answer's body (its
 * chunks) and Age when there is one. */
static netstash_error fast(netstash_preload_hit *h, netstash_request *req, char *body, size_t cap,
                           long *age) {
  netstash_error e = netstash_intercept_cached(req, h);
  size_t len = 0, i, nl, vl;
  const char *n, *v;
  body[0] = 0;
  *age = -1;
  if (e != NETSTASH_OK)
    return e;
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_CACHE);
  for (uint32_t c = 0; c < netstash_preload_hit_chunk_count(h); c++) {
    const uint8_t *d;
    size_t l;
    assert_int_equal(netstash_preload_hit_chunk(h, c, &d, &l), NETSTASH_OK);
    assert_true(len + l < cap);
    memcpy(body + len, d, l);
    len += l;
  }
  body[len] = 0;
  assert_int_equal(len, netstash_preload_hit_body_size(h));
  for (i = 0; i < netstash_preload_hit_header_count(h); i++) {
    assert_int_equal(netstash_preload_hit_header_at(h, i, &n, &nl, &v, &vl), NETSTASH_OK);
    if (nl == 3 && !strncasecmp(n, "age", 3)) {
      assert_int_equal(*age, -1); /* one Age */
      *age = strtol(v, NULL, 10);
    }
  }
  return e;
}

/* The store's live bytes (netstash_preload_stats' store.used_bytes). */
static long long used_bytes(netstash_ctx *ctx) {
  char *js = NULL, *p;
  long long v;
  assert_int_equal(netstash_preload_stats(ctx, &js), NETSTASH_OK);
  p = strstr(js, "\"used_bytes\":");
  assert_non_null(p);
  v = strtoll(p + 13, NULL, 10);
  netstash_free(ctx, js);
  return v;
}

/* A text body that came uncompressed (40000 bytes of HTML that Brotli
 * shrinks to almost nothing) is stored as it came by default — the store
 * grows by the body's size, and a hit hands out the stored bytes — and
 * Brotli-compressed with netstash_options_set_cache_recompress(): the store
 * grows by a page or so, a hit decodes. The same bytes either way. */
static void test_text_bodies_as_they_came(void **state) {
  const size_t size = 40000;
  unsigned char *want = malloc(size);
  char *body = malloc(size + 1);
  (void)state;
  assert_non_null(want);
  assert_non_null(body);
  nst_text(want, 0, size);
  for (int recompress = 0; recompress < 2; recompress++) {
    netstash_ctx *ctx = ctx_recompressing(recompress);
    netstash_preload_hit *h;
    netstash_request *req;
    long long before, grew;
    long age;
    netstash_error e = NETSTASH_E_NOT_FOUND;
    result r;
    before = used_bytes(ctx);
    r = GET(ctx, "/cache/text/40000");
    assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
    assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
    assert_int_equal(netstash_request_new(&req, url("/cache/text/40000")), NETSTASH_OK);
    for (int i = 0; i < 500 && e == NETSTASH_E_NOT_FOUND; i++) { /* committed */
      e = fast(h, req, body, size + 1, &age);
      if (e == NETSTASH_E_NOT_FOUND)
        usleep(10000);
    }
    assert_int_equal(e, NETSTASH_OK);
    assert_memory_equal(body, want, size);
    grew = used_bytes(ctx) - before;
    if (recompress)
      assert_true(grew < 20000);
    else
      assert_true(grew >= 40000);
    netstash_request_del(req);
    netstash_preload_hit_del(h);
    netstash_ctx_del(ctx);
  }
  free(want);
  free(body);
}

/* A raw answer (a relay: netd's gateway) from the cache, Accept-Encoding
 * as given: its body, its Content-Encoding ("" without) and Content-Length
 * (-1 without). */
typedef struct raw_answer {
  netstash_source source;
  char body[256];
  size_t len;
  char ce[32];
  long clen;
} raw_answer;

static raw_answer raw_get(netstash_ctx *ctx, const char *path, const char *ae) {
  netstash_request *req;
  netstash_fetch *f;
  raw_answer a;
  const uint8_t *b;
  const char *v;
  memset(&a, 0, sizeof(a));
  assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_request_set_raw_body(req, 1), NETSTASH_OK);
  assert_int_equal(netstash_request_add_header(req, "Accept-Encoding", ae), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  a.source = netstash_fetch_source(f);
  if (netstash_fetch_body(f, &b, &a.len) == NETSTASH_OK && a.len < sizeof(a.body))
    memcpy(a.body, b, a.len);
  v = netstash_fetch_header(f, "content-encoding");
  snprintf(a.ce, sizeof(a.ce), "%s", v ? v : "");
  v = netstash_fetch_header(f, "content-length");
  a.clen = v ? strtol(v, NULL, 10) : -1;
  netstash_fetch_del(f);
  netstash_request_del(req);
  return a;
}

/* The fast path's raw answer for the variant asked with ae: NETSTASH_OK
 * with the content and no Content-Encoding field (checked here), or what
 * netstash_intercept_cached returned. */
static netstash_error raw_fast(netstash_preload_hit *h, const char *ae, const char *plain,
                               size_t plen) {
  netstash_request *req;
  netstash_error e;
  assert_int_equal(netstash_request_new(&req, url("/cache/negotiated")), NETSTASH_OK);
  assert_int_equal(netstash_request_set_raw_body(req, 1), NETSTASH_OK);
  assert_int_equal(netstash_request_add_header(req, "Accept-Encoding", ae), NETSTASH_OK);
  e = netstash_intercept_cached(req, h);
  if (e == NETSTASH_OK) {
    const uint8_t *d;
    size_t l, nl, vl;
    const char *n, *v;
    assert_int_equal(netstash_preload_hit_body_size(h), plen);
    assert_int_equal(netstash_preload_hit_chunk(h, 0, &d, &l), NETSTASH_OK);
    assert_int_equal(l, plen);
    assert_memory_equal(d, plain, plen);
    for (size_t k = 0; k < netstash_preload_hit_header_count(h); k++) {
      assert_int_equal(netstash_preload_hit_header_at(h, k, &n, &nl, &v, &vl), NETSTASH_OK);
      assert_false(nl == 16 && !strncasecmp(n, "content-encoding", 16));
      if (nl == 14 && !strncasecmp(n, "content-length", 14))
        assert_int_equal(strtol(v, NULL, 10), (long)plen);
    }
  }
  netstash_request_del(req);
  return e;
}

/* /cache/negotiated has two variants (Vary: Accept-Encoding) with one
 * decoded content, identity and gzip: the store keeps that content once —
 * as the gzip it came in while only the gzip variant is stored, as identity
 * once the identity variant is (ns_store_txn_body_put rewrites a coded body
 * given identity). A relayed (raw) answer from the cache must still say what
 * its bytes are: the kept bytes when they are in the coding the variant's
 * head names, else the decoded content without the head's Content-Encoding,
 * its Content-Length the decoded size — through a job and through the fast
 * path (netstash_intercept_cached), in either order. Before: the gzip
 * variant's answer was the identity bytes labelled gzip (a browser fails to
 * decode it), or the other way round. */
static void test_raw_variants_share_a_body(void **state) {
  static const char plain[] = "netstash negotiated body\nnetstash negotiated body\n"
                              "netstash negotiated body\nnetstash negotiated body\n";
  const size_t plen = sizeof(plain) - 1;
  (void)state;
  for (int gzip_first = 0; gzip_first < 2; gzip_first++) {
    netstash_ctx *ctx = ctx_for(new_profile(), 1);
    netstash_preload_hit *h;
    raw_answer a;
    const char *order[2] = {gzip_first ? "gzip" : "identity", gzip_first ? "identity" : "gzip"};
    assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
    a = raw_get(ctx, "/cache/negotiated", order[0]);
    assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
    if (gzip_first) { /* only the gzip variant: its bytes as they came, labelled so */
      for (int i = 0; i < 500 && (a = raw_get(ctx, "/cache/negotiated", "gzip")).source !=
                                     NETSTASH_SOURCE_CACHE;
           i++)
        usleep(10000);
      assert_int_equal(a.source, NETSTASH_SOURCE_CACHE);
      assert_string_equal(a.ce, "gzip");
      assert_int_equal(a.len, 48);
      assert_memory_equal(a.body, "\x1f\x8b", 2);
      /* a relayed coding is a job's, not the fast path's */
      assert_int_equal(raw_fast(h, "gzip", plain, plen), NETSTASH_E_NOT_FOUND);
    }
    a = raw_get(ctx, "/cache/negotiated", order[1]);
    assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
    for (int i = 0; i < 2; i++) { /* both stored: the content, no coding named */
      netstash_error e = NETSTASH_E_NOT_FOUND;
      a = raw_get(ctx, "/cache/negotiated", order[i]);
      assert_int_equal(a.source, NETSTASH_SOURCE_CACHE);
      assert_string_equal(a.ce, "");
      assert_int_equal(a.len, plen);
      assert_memory_equal(a.body, plain, plen);
      assert_true(a.clen == -1 || a.clen == (long)plen);
      if (!strcmp(order[i], "gzip"))
        assert_int_equal(a.clen, (long)plen);
      for (int k = 0; k < 500 && e == NETSTASH_E_NOT_FOUND; k++) {
        e = raw_fast(h, order[i], plain, plen);
        if (e == NETSTASH_E_NOT_FOUND)
          usleep(10000);
      }
      assert_int_equal(e, NETSTASH_OK);
    }
    netstash_preload_hit_del(h);
    netstash_ctx_del(ctx);
  }
}

/* One answer for /cache/opaque/N: its source, Content-Encoding and
 * Content-Length fields, and whether its body is nst_text()'s bytes from
 * first (the whole body, or a range of it). */
typedef struct opaque_answer {
  netstash_error err;
  int status;
  netstash_source source;
  char ce[32];
  long clen;
  int bytes_ok;
} opaque_answer;

static opaque_answer opaque_get(netstash_ctx *ctx, const char *path, int as_sent, const char *range,
                                size_t first, size_t want) {
  netstash_request *req;
  netstash_fetch *f;
  opaque_answer a;
  const uint8_t *b;
  size_t len;
  const char *v;
  unsigned char *t = malloc(want ? want : 1);
  assert_non_null(t);
  memset(&a, 0, sizeof(a));
  assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_request_set_raw_body(req, as_sent), NETSTASH_OK);
  if (range)
    assert_int_equal(netstash_request_add_header(req, "Range", range), NETSTASH_OK);
  a.err = netstash_fetch_sync(ctx, req, &f);
  a.status = netstash_fetch_status(f);
  a.source = netstash_fetch_source(f);
  v = netstash_fetch_header(f, "content-encoding");
  snprintf(a.ce, sizeof(a.ce), "%s", v ? v : "");
  v = netstash_fetch_header(f, "content-length");
  a.clen = v ? strtol(v, NULL, 10) : -1;
  nst_text(t, first, want);
  a.bytes_ok =
      netstash_fetch_body(f, &b, &len) == NETSTASH_OK && len == want && memcmp(b, t, want) == 0;
  free(t);
  netstash_fetch_del(f);
  netstash_request_del(req);
  return a;
}

/* A content coding nobody here decodes (Content-Encoding: x-nst-opaque):
 * the fetch hands the body over as sent (as Chromium does), and the cache
 * now keeps it so — stored, answered with its head as it came (coding and
 * length), decoded and raw, by a job and by the fast path, ranges taken
 * from those bytes; never recompressed, even when the embedder asked for
 * recompression (a relayed answer hands out the kept bytes). Before, such a
 * response was not stored at all (http-cache-tests'
 * headers-store-Content-Encoding, which nginx, Squid and the browsers pass). */
static void test_unknown_coding_kept_as_sent(void **state) {
  (void)state;
  for (int recompress = 0; recompress < 2; recompress++) {
    netstash_ctx *ctx = ctx_recompressing(recompress);
    netstash_preload_hit *h;
    netstash_request *req;
    opaque_answer a;
    const uint8_t *d;
    size_t l, nl, vl;
    const char *n, *v;
    int ce_seen = 0;
    unsigned char t[4000];
    a = opaque_get(ctx, "/cache/opaque/4000", 0, NULL, 0, 4000);
    assert_int_equal(a.err, NETSTASH_OK);
    assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
    assert_string_equal(a.ce, "x-nst-opaque");
    assert_true(a.bytes_ok);
    for (int i = 0;
         i < 500 && (a = opaque_get(ctx, "/cache/opaque/4000", 0, NULL, 0, 4000)).source !=
                        NETSTASH_SOURCE_CACHE;
         i++)
      usleep(10000);
    for (int as_sent = 0; as_sent < 2; as_sent++) {
      a = opaque_get(ctx, "/cache/opaque/4000", as_sent, NULL, 0, 4000);
      assert_int_equal(a.source, NETSTASH_SOURCE_CACHE);
      assert_string_equal(a.ce, "x-nst-opaque");
      assert_int_equal(a.clen, 4000);
      assert_true(a.bytes_ok);
    }
    /* a range of those bytes, still in their coding */
    a = opaque_get(ctx, "/cache/opaque/4000", 0, "bytes=100-199", 100, 100);
    assert_int_equal(a.status, 206);
    assert_int_equal(a.source, NETSTASH_SOURCE_CACHE);
    assert_string_equal(a.ce, "x-nst-opaque");
    assert_int_equal(a.clen, 100);
    assert_true(a.bytes_ok);
    /* the fast path, relayed */
    assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
    assert_int_equal(netstash_request_new(&req, url("/cache/opaque/4000")), NETSTASH_OK);
    assert_int_equal(netstash_request_set_raw_body(req, 1), NETSTASH_OK);
    assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_OK);
    assert_int_equal(netstash_preload_hit_body_size(h), 4000);
    assert_int_equal(netstash_preload_hit_chunk(h, 0, &d, &l), NETSTASH_OK);
    nst_text(t, 0, sizeof(t));
    assert_int_equal(l, 4000);
    assert_memory_equal(d, t, l);
    for (size_t k = 0; k < netstash_preload_hit_header_count(h); k++) {
      assert_int_equal(netstash_preload_hit_header_at(h, k, &n, &nl, &v, &vl), NETSTASH_OK);
      if (nl == 16 && !strncasecmp(n, "content-encoding", 16)) {
        assert_int_equal(vl, 12);
        assert_memory_equal(v, "x-nst-opaque", 12);
        ce_seen = 1;
      }
    }
    assert_true(ce_seen);
    netstash_request_del(req);
    netstash_preload_hit_del(h);
    netstash_ctx_del(ctx);
  }
}

/* The synchronous HTTP-cache fast path: fresh stored answers only, for
 * requests a job would answer from the cache without a request of its own. */
static void test_intercept_cached(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  netstash_preload_hit *h;
  netstash_request *req;
  result a, b;
  char body[512];
  long age;
  (void)state;
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
  /* nothing stored yet */
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_NONE);
  a = GET(ctx, "/cache/max-age/600/fast");
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_status(h), 200);
  assert_string_equal(body, a.body);
  assert_true(age >= 0 && age <= 5);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "");
  /* the whole fast path in one call: not preloaded, then the HTTP cache */
  assert_int_equal(netstash_intercept_lookup(req, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_CACHE);
  assert_int_equal(netstash_preload_hit_body_size(h), strlen(a.body));
  /* again: the entry the last lookup decoded is kept (same snapshot, same
   * key); once a new answer replaced it (a new snapshot), it is read again */
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
  assert_string_equal(body, a.body);
  b = fetch(ctx, url("/cache/max-age/600/fast"), NULL, NETSTASH_CACHE_VALIDATE, NULL, NULL, NULL);
  assert_int_equal(b.err, NETSTASH_OK);
  assert_string_not_equal(b.body, a.body);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
  assert_string_equal(body, b.body);
  netstash_request_del(req);
  /* an upstream cache's Age counts (RFC 9111 §4.2.3) */
  (void)GET(ctx, "/cache/aged/100");
  assert_int_equal(netstash_request_new(&req, url("/cache/aged/100")), NETSTASH_OK);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
  assert_true(age >= 100 && age <= 105);
  netstash_request_del(req);
  /* what a job would not answer from the cache alone: a range, a conditional,
   * another cache mode, another partition */
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  netstash_request_add_header(req, "Range", "bytes=0-1");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  netstash_request_add_header(req, "If-None-Match", "\"v1\"");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  netstash_request_set_cache_mode(req, NETSTASH_CACHE_VALIDATE);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  netstash_request_set_top_level_site(req, "https://elsewhere.test/");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  /* a request directive the decision honours */
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/fast")), NETSTASH_OK);
  netstash_request_add_header(req, "Cache-Control", "max-age=0");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  /* Vary: the variant of the request's own fields */
  (void)fetch(ctx, url("/cache/vary"), NULL, 0, "en", NULL, NULL);
  assert_int_equal(netstash_request_new(&req, url("/cache/vary")), NETSTASH_OK);
  netstash_request_add_header(req, "Accept-Language", "en");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
  assert_non_null(strstr(body, "lang=en"));
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, url("/cache/vary")), NETSTASH_OK);
  netstash_request_add_header(req, "Accept-Language", "fr");
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  /* a second variant, the newest: each request gets its own, whichever
   * one the previous lookup kept */
  (void)fetch(ctx, url("/cache/vary"), NULL, 0, "fr", NULL, NULL);
  for (int i = 0; i < 6; i++) {
    const char *lang = (i % 3) ? "en" : "fr"; /* fr en en fr en en */
    char want[16];
    assert_int_equal(netstash_request_new(&req, url("/cache/vary")), NETSTASH_OK);
    netstash_request_add_header(req, "Accept-Language", lang);
    assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
    snprintf(want, sizeof(want), "lang=%s", lang);
    assert_non_null(strstr(body, want));
    netstash_request_del(req);
  }
  /* variants varying on different fields (en: Accept-Language, others:
   * Accept-Encoding): a request both match gets the newest, even right
   * after a lookup kept the older one */
  (void)fetch(ctx, url("/cache/vary2"), NULL, 0, "en", NULL, NULL);
  (void)fetch(ctx, url("/cache/vary2"), NULL, 0, "fr", NULL, NULL);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(netstash_request_new(&req, url("/cache/vary2")), NETSTASH_OK);
    netstash_request_add_header(req, "Accept-Language", "en");
    if (i == 0) /* only the older variant's */
      netstash_request_add_header(req, "Accept-Encoding", "identity");
    assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_OK);
    assert_non_null(strstr(body, i == 0 ? "lang=en" : "lang=fr"));
    netstash_request_del(req);
  }
  /* stale: a job revalidates */
  (void)GET(ctx, "/cache/max-age/1/stale");
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/1/stale")), NETSTASH_OK);
  sleep(2);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  /* a stored redirect is a job's (it follows it, or hands it over) */
  (void)GET(ctx, "/cache/perm");
  assert_int_equal(netstash_request_new(&req, url("/cache/perm")), NETSTASH_OK);
  assert_int_equal(fast(h, req, body, sizeof(body), &age), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
}

static void test_revalidation_304(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b;
  (void)state;
  a = GET(ctx, "/cache/etag");
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  b = fetch(ctx, url("/cache/etag"), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-revalidated");
  assert_int_equal(b.err, NETSTASH_OK);
  assert_int_equal(b.status, 200);
  assert_int_equal(b.source, NETSTASH_SOURCE_REVALIDATED);
  assert_string_equal(b.body, a.body);       /* the stored body */
  assert_string_equal(b.hdr, "yes");          /* 304's fields merged */
  assert_non_null(strstr(b.reason, "revalidated"));
  netstash_ctx_del(ctx);
}

/* The caller's own conditional request (a browser revalidating its cache
 * through netstash) gets a 304 from a fresh stored response whose
 * validators match, and after a revalidation (RFC 9111 §4.3.2). */
static result cond(netstash_ctx *ctx, const char *path, const char *name, const char *value) {
  netstash_request *req;
  netstash_fetch *f;
  result r;
  const uint8_t *b;
  size_t len;
  memset(&r, 0, sizeof(r));
  assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_request_add_header(req, name, value), NETSTASH_OK);
  r.err = netstash_fetch_sync(ctx, req, &f);
  r.status = netstash_fetch_status(f);
  r.source = netstash_fetch_source(f);
  if (netstash_fetch_body(f, &b, &len) == NETSTASH_OK)
    snprintf(r.body, sizeof(r.body), "%.*s", (int)len, (const char *)b);
  snprintf(r.reason, sizeof(r.reason), "%s", netstash_fetch_cache_reason(f));
  if (netstash_fetch_header(f, "etag"))
    snprintf(r.hdr, sizeof(r.hdr), "%s", netstash_fetch_header(f, "etag"));
  netstash_fetch_del(f);
  netstash_request_del(req);
  return r;
}

static void test_caller_conditionals(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, r;
  (void)state;
  a = GET(ctx, "/cache/max-age/600/cond");
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  r = cond(ctx, "/cache/max-age/600/cond", "If-None-Match", "\"v1\"");
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(r.body, "");
  assert_string_equal(r.hdr, "\"v1\"");
  assert_non_null(strstr(r.reason, "304"));
  r = cond(ctx, "/cache/max-age/600/cond", "If-None-Match", "\"x\", W/\"v1\"");
  assert_int_equal(r.status, 304); /* weak comparison, any of the list */
  r = cond(ctx, "/cache/max-age/600/cond", "If-None-Match", "\"other\"");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(r.body, a.body);
  /* no-cache: the origin revalidates, the caller still gets its 304 */
  a = GET(ctx, "/cache/etag");
  r = cond(ctx, "/cache/etag", "If-None-Match", "\"e1\"");
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(r.status, 304);
  assert_int_equal(r.source, NETSTASH_SOURCE_REVALIDATED);
  netstash_ctx_del(ctx);
}

static void test_no_store_and_bypass(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b;
  (void)state;
  a = GET(ctx, "/cache/no-store");
  b = GET(ctx, "/cache/no-store");
  assert_int_equal(b.source, NETSTASH_SOURCE_NETWORK);
  assert_string_not_equal(a.body, b.body);
  assert_non_null(strstr(a.reason, "not stored"));
  a = fetch(ctx, url("/cache/max-age/600/bypass"), NULL, NETSTASH_CACHE_BYPASS, NULL, NULL, NULL);
  b = GET(ctx, "/cache/max-age/600/bypass");
  assert_int_equal(b.source, NETSTASH_SOURCE_NETWORK); /* bypass stored nothing */
  assert_string_not_equal(a.body, b.body);
  a = fetch(ctx, url("/cache/max-age/600/bypass"), NULL, NETSTASH_CACHE_BYPASS, NULL, NULL, NULL);
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK); /* and reads nothing */
  netstash_ctx_del(ctx);
}

static void test_vary_variants(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result en, fr, en2, fr2;
  (void)state;
  en = fetch(ctx, url("/cache/vary"), NULL, 0, "en", NULL, NULL);
  fr = fetch(ctx, url("/cache/vary"), NULL, 0, "fr", NULL, NULL);
  assert_int_equal(fr.source, NETSTASH_SOURCE_NETWORK); /* another variant */
  en2 = fetch(ctx, url("/cache/vary"), NULL, 0, "en", NULL, NULL);
  fr2 = fetch(ctx, url("/cache/vary"), NULL, 0, "fr", NULL, NULL);
  assert_int_equal(en2.source, NETSTASH_SOURCE_CACHE);
  assert_int_equal(fr2.source, NETSTASH_SOURCE_CACHE); /* both variants kept */
  assert_string_equal(en2.body, en.body);
  assert_string_equal(fr2.body, fr.body);
  assert_non_null(strstr(en2.body, "lang=en"));
  netstash_ctx_del(ctx);
}

static void test_stale_while_revalidate(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b, c;
  (void)state;
  a = GET(ctx, "/cache/swr");
  usleep(2100000); /* max-age=1: stale, within stale-while-revalidate */
  b = GET(ctx, "/cache/swr");
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, a.body); /* stale answer, at once */
  assert_non_null(strstr(b.reason, "stale-while-revalidate"));
  assert_int_equal(netstash_ctx_drain(ctx, 10000), NETSTASH_OK);
  c = GET(ctx, "/cache/swr");
  assert_int_equal(c.source, NETSTASH_SOURCE_CACHE);
  assert_string_not_equal(c.body, a.body); /* the background refresh was stored */
  netstash_ctx_del(ctx);
}

static void test_stale_if_error(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b;
  (void)state;
  a = GET(ctx, "/cache/sie");
  usleep(2100000);
  b = GET(ctx, "/cache/sie"); /* the origin now answers 503 */
  assert_int_equal(b.err, NETSTASH_OK);
  assert_int_equal(b.status, 200);
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, a.body);
  assert_non_null(strstr(b.reason, "stale-if-error"));
  netstash_ctx_del(ctx);
}

static void test_unsafe_method_invalidates(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b, c;
  (void)state;
  a = GET(ctx, "/cache/max-age/600/inv");
  b = fetch(ctx, url("/cache/max-age/600/inv"), "POST", 0, NULL, NULL, NULL);
  assert_int_equal(b.source, NETSTASH_SOURCE_NETWORK);
  c = GET(ctx, "/cache/max-age/600/inv");
  assert_int_equal(c.source, NETSTASH_SOURCE_NETWORK);
  assert_string_not_equal(c.body, a.body);
  netstash_ctx_del(ctx);
}

static void test_only_if_cached(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b;
  (void)state;
  a = fetch(ctx, url("/cache/max-age/600/oic"), NULL, NETSTASH_CACHE_ONLY_IF_CACHED, NULL, NULL,
            NULL);
  assert_int_equal(a.err, NETSTASH_E_NOT_CACHED);
  GET(ctx, "/cache/max-age/600/oic");
  b = fetch(ctx, url("/cache/max-age/600/oic"), NULL, NETSTASH_CACHE_ONLY_IF_CACHED, NULL, NULL,
            NULL);
  assert_int_equal(b.err, NETSTASH_OK);
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  netstash_ctx_del(ctx);
  /* no profile: no cache at all */
  ctx = ctx_for(NULL, 1);
  a = fetch(ctx, url("/cache/max-age/600/oic"), NULL, NETSTASH_CACHE_ONLY_IF_CACHED, NULL, NULL,
            NULL);
  assert_int_equal(a.err, NETSTASH_E_NOT_CACHED);
  a = GET(ctx, "/cache/max-age/600/oic");
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  netstash_ctx_del(ctx);
}

static void test_partitioned_keys(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b, c;
  (void)state;
  a = fetch(ctx, url("/cache/max-age/600/p"), NULL, 0, NULL, "https://a.example/", NULL);
  b = fetch(ctx, url("/cache/max-age/600/p"), NULL, 0, NULL, "https://b.example/", NULL);
  assert_int_equal(b.source, NETSTASH_SOURCE_NETWORK); /* other top-level site */
  c = fetch(ctx, url("/cache/max-age/600/p"), NULL, 0, NULL, "https://www.a.example/", NULL);
  assert_int_equal(c.source, NETSTASH_SOURCE_CACHE); /* same site */
  assert_string_equal(c.body, a.body);
  netstash_ctx_del(ctx);
  ctx = ctx_for(new_profile(), 0); /* partitioning off: one entry for all */
  a = fetch(ctx, url("/cache/max-age/600/q"), NULL, 0, NULL, "https://a.example/", NULL);
  b = fetch(ctx, url("/cache/max-age/600/q"), NULL, 0, NULL, "https://b.example/", NULL);
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  netstash_ctx_del(ctx);
}

static void test_corrupt_store_refused(void **state) {
  const char *prof = new_profile();
  char path[1024], detail[256];
  netstash_ctx *ctx = ctx_for(prof, 1);
  netstash_options *o;
  FILE *fp;
  (void)state;
  GET(ctx, "/cache/max-age/600/c");
  netstash_ctx_del(ctx);
  snprintf(path, sizeof(path), "%s/store/data.mdb", prof);
  fp = fopen(path, "r+b");
  assert_non_null(fp);
  for (int i = 0; i < 8192; i++)
    fputc(0x5a, fp); /* both meta pages */
  fclose(fp);
  netstash_options_new(&o);
  netstash_options_set_profile_dir(o, prof);
  ctx = NULL;
  assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_E_STORE_CORRUPT);
  assert_null(ctx);
  assert_true(strlen(detail) > 0);
  netstash_options_del(o);
}

static result get_range(netstash_ctx *ctx, const char *u, const char *range) {
  netstash_request *req;
  netstash_fetch *f;
  result r;
  const uint8_t *b;
  size_t len;
  memset(&r, 0, sizeof(r));
  assert_int_equal(netstash_request_new(&req, u), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  netstash_request_add_header(req, "Range", range);
  r.err = netstash_fetch_sync(ctx, req, &f);
  r.status = netstash_fetch_status(f);
  r.source = netstash_fetch_source(f);
  if (netstash_fetch_body(f, &b, &len) == NETSTASH_OK)
    snprintf(r.body, sizeof(r.body), "%.*s", (int)len, (const char *)b);
  if (netstash_fetch_header(f, "content-range"))
    snprintf(r.hdr, sizeof(r.hdr), "%s", netstash_fetch_header(f, "content-range"));
  snprintf(r.reason, sizeof(r.reason), "%s", netstash_fetch_cache_reason(f));
  netstash_fetch_del(f);
  netstash_request_del(req);
  return r;
}

/* Range requests answered from a complete stored body: 206 and 416. */
static void test_ranges_from_stored_body(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b, c;
  char want[64];
  (void)state;
  a = GET(ctx, "/cache/max-age/600/range");
  b = get_range(ctx, url("/cache/max-age/600/range"), "bytes=0-6");
  assert_int_equal(b.status, 206);
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, "max-age");
  snprintf(want, sizeof(want), "bytes 0-6/%zu", strlen(a.body));
  assert_string_equal(b.hdr, want);
  b = get_range(ctx, url("/cache/max-age/600/range"), "bytes=-3");
  assert_int_equal(b.status, 206);
  assert_string_equal(b.body, a.body + strlen(a.body) - 3);
  c = get_range(ctx, url("/cache/max-age/600/range"), "bytes=1000-2000");
  assert_int_equal(c.status, 416);
  assert_int_equal(c.body[0], 0);
  netstash_ctx_del(ctx);
}

/* r is a 206 from `source` holding bytes first..last of the 1000 bytes of
 * nst_text() that /cache/ranged/1000 serves. */
static void assert_piece(const result *r, netstash_source source, unsigned first, unsigned last) {
  unsigned char want[256];
  char cr[64];
  assert_true(last - first + 1 < sizeof(want));
  nst_text(want, first, last - first + 1);
  if (r->status != 206 || r->source != source)
    fail_msg("%u-%u: status %d, source %d (want 206 from %d)", first, last, r->status,
             (int)r->source, (int)source);
  assert_int_equal(strlen(r->body), last - first + 1);
  assert_memory_equal(r->body, want, last - first + 1);
  snprintf(cr, sizeof(cr), "bytes %u-%u/1000", first, last);
  assert_string_equal(r->hdr, cr);
}

/* RFC 9111 §3.3: a 206 is stored as a piece of the representation and
 * answers the ranges wholly within it; nothing else. */
static void test_partial_content_stored(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  const char *u = url("/cache/ranged/1000");
  result r;
  (void)state;
  r = get_range(ctx, u, "bytes=100-199");
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 100, 199);
  r = get_range(ctx, u, "bytes=100-199");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 100, 199);
  r = get_range(ctx, u, "bytes=150-180"); /* within the piece */
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 150, 180);
  r = get_range(ctx, u, "bytes=5000-"); /* past the end it knows of */
  assert_int_equal(r.status, 416);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(r.hdr, "bytes */1000");
  r = get_range(ctx, u, "bytes=150-250"); /* beyond the piece: the network's */
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 150, 250);
  r = get_range(ctx, u, "bytes=200-250"); /* kept with the first: 100-250 */
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 200, 250);
  r = get_range(ctx, u, "bytes=100-120");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 100, 120);
  r = get_range(ctx, u, "bytes=90-120");
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 90, 120);
  /* a request for the whole never gets a piece, nor a HEAD */
  r = fetch(ctx, u, "HEAD", NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  r = fetch(ctx, u, NULL, NETSTASH_CACHE_ONLY_IF_CACHED, NULL, NULL, NULL);
  assert_int_equal(r.err, NETSTASH_E_NOT_CACHED);
  r = GET(ctx, "/cache/ranged/1000");
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  /* the complete response now answers every range */
  r = get_range(ctx, u, "bytes=0-99");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 0, 99);
  r = get_range(ctx, u, "bytes=-10");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 990, 999);
  /* a 206 whose body is not its Content-Range's length is delivered, never
   * stored */
  for (int i = 0; i < 2; i++) {
    r = get_range(ctx, url("/cache/rangedlie/20"), "bytes=0-9");
    assert_int_equal(r.status, 206);
    assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
    assert_non_null(strstr(r.reason, "not its Content-Range's length"));
  }
  netstash_ctx_del(ctx);
}

/* A stale piece is revalidated with the request's Range; the 304 answers the
 * range from it (and, for a complete stored response, the range too). */
static void test_partial_content_revalidated(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  const char *u = url("/cache/ranged0/1000");
  result r;
  (void)state;
  r = get_range(ctx, u, "bytes=0-99");
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 0, 99);
  r = get_range(ctx, u, "bytes=10-19");
  assert_piece(&r, NETSTASH_SOURCE_REVALIDATED, 10, 19);
  r = fetch(ctx, u, NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  r = get_range(ctx, u, "bytes=500-699");
  assert_int_equal(r.source, NETSTASH_SOURCE_REVALIDATED);
  assert_int_equal(r.status, 206);
  assert_string_equal(r.hdr, "bytes 500-699/1000");
  netstash_ctx_del(ctx);
}

/* GET of the whole: status, source, cache reason, and whether the body is
 * all of nst_text()'s len bytes. */
static result get_whole(netstash_ctx *ctx, const char *u, size_t len, int *whole) {
  netstash_request *req;
  netstash_fetch *f;
  result r;
  const uint8_t *b;
  size_t n;
  unsigned char *want = malloc(len);
  memset(&r, 0, sizeof(r));
  assert_non_null(want);
  nst_text(want, 0, len);
  assert_int_equal(netstash_request_new(&req, u), NETSTASH_OK);
  netstash_request_set_collect_body(req, 1 << 20);
  r.err = netstash_fetch_sync(ctx, req, &f);
  r.status = netstash_fetch_status(f);
  r.source = netstash_fetch_source(f);
  snprintf(r.reason, sizeof(r.reason), "%s", netstash_fetch_cache_reason(f));
  *whole = netstash_fetch_body(f, &b, &n) == NETSTASH_OK && n == len && !memcmp(b, want, len) &&
           netstash_fetch_header(f, "content-range") == NULL;
  netstash_fetch_del(f);
  netstash_request_del(req);
  free(want);
  return r;
}

/* RFC 9111 §3.4: pieces under one strong validator that overlap or adjoin
 * are kept as one; a request for the whole of a representation whose first
 * bytes are stored asks for the rest only (If-Range) and answers the whole. */
static void test_partial_content_combined(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  const char *u = url("/cache/ranged/1000");
  result r;
  int whole = 0;
  (void)state;
  r = get_range(ctx, u, "bytes=0-99");
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 0, 99);
  r = get_range(ctx, u, "bytes=100-199"); /* adjoins: kept with the first */
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 100, 199);
  r = get_range(ctx, u, "bytes=50-150");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 50, 150);
  r = get_range(ctx, u, "bytes=150-249"); /* overlaps: 0-249 */
  assert_piece(&r, NETSTASH_SOURCE_NETWORK, 150, 249);
  r = get_range(ctx, u, "bytes=0-249");
  assert_piece(&r, NETSTASH_SOURCE_CACHE, 0, 249);
  /* the whole: the rest asked for, the piece first, all of it stored */
  r = get_whole(ctx, u, 1000, &whole);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  assert_true(whole);
  assert_non_null(strstr(r.reason, "asked for the rest (bytes=250-)"));
  r = get_whole(ctx, u, 1000, &whole);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_true(whole);
  /* a gap: the new piece is kept alone */
  u = url("/cache/ranged/2000");
  r = get_range(ctx, u, "bytes=0-99");
  r = get_range(ctx, u, "bytes=300-399");
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  r = get_range(ctx, u, "bytes=0-9");
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  /* the last piece and another that reaches the end make the whole */
  r = get_range(ctx, u, "bytes=10-");
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  r = get_whole(ctx, u, 2000, &whole);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_true(whole);
  netstash_ctx_del(ctx);
}

/* A server that caps ranges answers the completion with less than the rest:
 * the whole is fetched again, without a range, and answered right. */
static void test_partial_completion_capped(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  const char *u = url("/cache/rangedcap/1000");
  result r;
  int whole = 0;
  (void)state;
  r = get_range(ctx, u, "bytes=0-99");
  assert_int_equal(r.status, 206);
  r = get_whole(ctx, u, 1000, &whole);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  assert_true(whole);
  r = get_whole(ctx, u, 1000, &whole);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_true(whole);
  netstash_ctx_del(ctx);
}

/* RFC 9111 §4.3.5: a HEAD's 200 freshens the stored GET response when it
 * names the same representation — and the HEAD is answered from it, its
 * fields updated, the ones the HEAD's 200 lacks kept (http-cache-tests'
 * head-200-retain) —, and drops it when it names another. */
static void test_head_freshens(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result r;
  (void)state;
  r = fetch(ctx, url("/cache/headfresh"), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-gen");
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  assert_string_equal(r.hdr, "1");
  r = fetch(ctx, url("/cache/headfresh"), "HEAD", NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-stored");
  assert_int_equal(r.source, NETSTASH_SOURCE_REVALIDATED); /* stale: the origin confirmed it */
  assert_int_equal(r.status, 200);
  assert_string_equal(r.hdr, "kept"); /* not in the HEAD's 200: the stored field */
  assert_string_equal(r.body, "");
  assert_non_null(strstr(r.reason, "freshened by the HEAD"));
  r = fetch(ctx, url("/cache/headfresh"), "HEAD", NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-gen");
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE); /* fresh now: no request */
  assert_string_equal(r.hdr, "2");
  r = fetch(ctx, url("/cache/headfresh"), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-gen");
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(r.hdr, "2");
  assert_string_equal(r.body, "0123456789abcdef");

  r = fetch(ctx, url("/cache/headchanged"), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL);
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  r = fetch(ctx, url("/cache/headchanged"), NULL, NETSTASH_CACHE_SKIP_VALIDATION, NULL, NULL, NULL);
  assert_int_equal(r.source, NETSTASH_SOURCE_CACHE); /* stored, stale */
  r = fetch(ctx, url("/cache/headchanged"), "HEAD", NETSTASH_CACHE_DEFAULT, NULL, NULL, "x-stored");
  assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK); /* another representation: as sent */
  assert_string_equal(r.hdr, "");
  assert_non_null(strstr(r.reason, "dropped"));
  r = fetch(ctx, url("/cache/headchanged"), NULL, NETSTASH_CACHE_ONLY_IF_CACHED, NULL, NULL, NULL);
  assert_int_equal(r.err, NETSTASH_E_NOT_CACHED);
  netstash_ctx_del(ctx);
}

/* A zstd-coded response (RFC 9659) is stored as it came and answered
 * decoded — or, to a raw request, in its coding — from the cache. */
static void test_zstd_stored(void **state) {
  static const char plain[] = "netstash zstd body\nnetstash zstd body\n"
                              "netstash zstd body\nnetstash zstd body\n";
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *b;
  size_t len;
  result r;
  (void)state;
  for (int round = 0; round < 2; round++) {
    r = fetch(ctx, url("/cache/zstd"), NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL,
              "content-encoding");
    assert_int_equal(r.err, NETSTASH_OK);
    assert_int_equal(r.source, round ? NETSTASH_SOURCE_CACHE : NETSTASH_SOURCE_NETWORK);
    assert_string_equal(r.body, plain);
    assert_string_equal(r.hdr, "zstd"); /* the head as the origin sent it */
  }
  assert_int_equal(netstash_request_new(&req, url("/cache/zstd")), NETSTASH_OK);
  netstash_request_set_raw_body(req, 1);
  netstash_request_set_collect_body(req, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_CACHE);
  assert_int_equal(netstash_fetch_body(f, &b, &len), NETSTASH_OK);
  assert_int_equal(len, 39);
  assert_int_equal(b[0], 0x28); /* zstd's magic number, little-endian 0xFD2FB528 */
  assert_int_equal(b[3], 0xfd);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

/* netstash_cache_list and netstash_cache_remove from another thread while
 * the loop thread stores responses (the "any thread" contract; cache_test
 * also runs under TSan): every listing parses, its count never goes down
 * while only stores happen, and the end state is what was stored and
 * removed. */
typedef struct lister {
  netstash_ctx *ctx;
  atomic_int stop;
  int lists, last;
  netstash_error err;
} lister;

static void *list_loop(void *ud) {
  lister *l = ud;
  while (!atomic_load(&l->stop) && l->err == NETSTASH_OK) {
    char *j = NULL;
    int n = -1;
    l->err = netstash_cache_list(l->ctx, NULL, &j);
    if (l->err == NETSTASH_OK && (sscanf(j, "{\"count\":%d", &n) != 1 || n < l->last))
      l->err = NETSTASH_E_INTERNAL; /* unreadable, or entries went missing */
    if (n >= 0)
      l->last = n;
    netstash_free(l->ctx, j);
    l->lists++;
  }
  return NULL;
}

static void test_cache_admin_concurrent(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  lister l;
  pthread_t th;
  char path[64], *j = NULL;
  unsigned removed = 0;
  int n = -1;
  (void)state;
  memset(&l, 0, sizeof(l));
  atomic_init(&l.stop, 0);
  l.ctx = ctx;
  assert_int_equal(pthread_create(&th, NULL, list_loop, &l), 0);
  for (int i = 0; i < 40; i++) {
    result r;
    snprintf(path, sizeof(path), "/cache/max-age/600/admin-%d", i);
    r = GET(ctx, path);
    assert_int_equal(r.source, NETSTASH_SOURCE_NETWORK);
  }
  atomic_store(&l.stop, 1);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(l.err, NETSTASH_OK);
  assert_true(l.lists > 0);
  assert_int_equal(netstash_cache_remove(ctx, url("/cache/max-age/600/admin-7"), &removed),
                   NETSTASH_OK);
  assert_int_equal(removed, 1);
  assert_int_equal(netstash_cache_remove(ctx, url("/cache/max-age/600/admin-7"), NULL),
                   NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_cache_list(ctx, url("/cache/max-age/600/admin-"), &j), NETSTASH_OK);
  assert_int_equal(sscanf(j, "{\"count\":%d", &n), 1);
  assert_int_equal(n, 39);
  assert_null(strstr(j, "admin-7\""));
  netstash_free(ctx, j);
  assert_int_equal(GET(ctx, "/cache/max-age/600/admin-7").source, NETSTASH_SOURCE_NETWORK);
  assert_int_equal(GET(ctx, "/cache/max-age/600/admin-8").source, NETSTASH_SOURCE_CACHE);
  {
    /* a URL longer than the store's keys: kept under a shortened key, named
     * by its URL all the same */
    char lp[800], lu[900];
    size_t n0 = (size_t)snprintf(lp, sizeof(lp), "/cache/max-age/600/long-");
    memset(lp + n0, 'x', 700);
    lp[n0 + 700] = 0;
    snprintf(lu, sizeof(lu), "http://127.0.0.1:%d%s", raw.port, lp);
    assert_true(strlen(lu) > 700);
    for (int round = 0; round < 3; round++) {
      result r = fetch(ctx, lu, NULL, NETSTASH_CACHE_DEFAULT, NULL, NULL, NULL);
      assert_int_equal(r.source, round == 1 ? NETSTASH_SOURCE_CACHE : NETSTASH_SOURCE_NETWORK);
      if (round == 1) {
        assert_int_equal(netstash_cache_remove(ctx, lu, &removed), NETSTASH_OK);
        assert_int_equal(removed, 1);
      }
    }
  }
  netstash_ctx_del(ctx);
}

/* No-Vary-Search: the response says "utm" does not matter. */
static void test_no_vary_search(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  result a, b, c;
  (void)state;
  a = GET(ctx, "/cache/nvs?a=1&utm=mail");
  assert_int_equal(a.source, NETSTASH_SOURCE_NETWORK);
  b = GET(ctx, "/cache/nvs?a=1&utm=ads");
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, a.body);
  c = GET(ctx, "/cache/nvs?a=2&utm=mail");
  assert_int_equal(c.source, NETSTASH_SOURCE_NETWORK); /* "a" matters */
  netstash_ctx_del(ctx);
}

/* A permanent redirect is cached (RFC 9111 §4.2.2: 301 is heuristically
 * cacheable) and, with its target, answers a followed chain offline. */
static void test_permanent_redirect_cached(void **state) {
  netstash_ctx *ctx = ctx_for(new_profile(), 1);
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *b;
  size_t len;
  char first[128];
  (void)state;
  for (int round = 0; round < 2; round++) {
    assert_int_equal(netstash_request_new(&req, url("/cache/perm")), NETSTASH_OK);
    netstash_request_set_follow_redirects(req, 5);
    netstash_request_set_collect_body(req, 1 << 20);
    if (round == 1)
      netstash_request_set_cache_mode(req, NETSTASH_CACHE_ONLY_IF_CACHED); /* no network */
    assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_status(f), 200);
    assert_non_null(strstr(netstash_fetch_effective_url(f), "/cache/max-age/600/target"));
    assert_int_equal(netstash_fetch_body(f, &b, &len), NETSTASH_OK);
    if (round == 0) {
      snprintf(first, sizeof(first), "%.*s", (int)len, (const char *)b);
    } else {
      assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_CACHE);
      assert_memory_equal(b, first, len);
    }
    netstash_fetch_del(f);
    netstash_request_del(req);
  }
  /* not following: the stored 301 itself is the answer */
  assert_int_equal(netstash_request_new(&req, url("/cache/perm")), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 301);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_CACHE);
  netstash_fetch_del(f);
  netstash_request_del(req);
  netstash_ctx_del(ctx);
}

typedef struct done_flag {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int done;
  netstash_error err;
} done_flag;

static void on_done(netstash_fetch *f, netstash_error err, void *ud) {
  done_flag *d = ud;
  (void)f;
  pthread_mutex_lock(&d->lock);
  d->done = 1;
  d->err = err;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
}

/* Responses are committed to the store off the loop thread: while one
 * waits for the store's write lock (taken here, as another process's writer
 * would hold it), the context answers a stored response — before, its loop
 * stood still until the lock came or the wait (1 s) gave up. The waiting
 * fetch completes once its entry is committed ("stored"); a second fetch of
 * the same URL meanwhile waits for that commit and is answered from the
 * cache, without holding up the loop either. */
static void test_commit_off_the_loop(void **state) {
  const char *prof = new_profile();
  netstash_ctx *ctx = ctx_for(prof, 1);
  static const netstash_fetch_callbacks cbs = {NULL, NULL, on_done};
  done_flag d = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NETSTASH_OK};
  done_flag d2 = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NETSTASH_OK};
  netstash_request *req, *req2;
  netstash_fetch *f, *f2;
  struct timespec t0, t1;
  char lock[600];
  result a, b;
  int lfd, done;
  (void)state;
  a = GET(ctx, "/cache/max-age/600/loop-a");
  assert_non_null(strstr(a.reason, "stored"));
  snprintf(lock, sizeof(lock), "%s/store/write.lock", prof);
  lfd = open(lock, O_RDWR | O_CLOEXEC);
  assert_true(lfd >= 0);
  assert_int_equal(flock(lfd, LOCK_EX), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(netstash_request_new(&req, url("/cache/max-age/600/loop-b")), NETSTASH_OK);
  assert_int_equal(netstash_fetch_start(ctx, req, &cbs, &d, &f), NETSTASH_OK);
  usleep(100 * 1000); /* its response is in, its commit waits for the lock */
  assert_int_equal(netstash_request_new(&req2, url("/cache/max-age/600/loop-b")), NETSTASH_OK);
  assert_int_equal(netstash_fetch_start(ctx, req2, &cbs, &d2, &f2), NETSTASH_OK);
  b = GET(ctx, "/cache/max-age/600/loop-a");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  pthread_mutex_lock(&d.lock);
  done = d.done;
  pthread_mutex_unlock(&d.lock);
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  assert_string_equal(b.body, a.body);
  assert_false(done); /* still waiting for its commit */
  pthread_mutex_lock(&d2.lock);
  done = d2.done;
  pthread_mutex_unlock(&d2.lock);
  assert_false(done); /* its lookup waits for that commit */
  assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 600);
  assert_int_equal(flock(lfd, LOCK_UN), 0);
  close(lfd);
  pthread_mutex_lock(&d.lock);
  while (!d.done)
    pthread_cond_wait(&d.cond, &d.lock);
  pthread_mutex_unlock(&d.lock);
  assert_int_equal(d.err, NETSTASH_OK);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
  assert_non_null(strstr(netstash_fetch_cache_reason(f), "; stored"));
  netstash_fetch_del(f);
  netstash_request_del(req);
  pthread_mutex_lock(&d2.lock);
  while (!d2.done)
    pthread_cond_wait(&d2.cond, &d2.lock);
  pthread_mutex_unlock(&d2.lock);
  assert_int_equal(d2.err, NETSTASH_OK);
  assert_int_equal(netstash_fetch_source(f2), NETSTASH_SOURCE_CACHE);
  netstash_fetch_del(f2);
  netstash_request_del(req2);
  b = GET(ctx, "/cache/max-age/600/loop-b");
  assert_int_equal(b.source, NETSTASH_SOURCE_CACHE);
  netstash_ctx_del(ctx);
}

/* More responses than one writer batch takes (64) queue while the store's
 * write lock is held: once it is free they are committed batch after batch,
 * every fetch completes "stored", and each is a hit afterwards. */
static void test_commit_batches(void **state) {
  enum { N = 150 };
  const char *prof = new_profile();
  netstash_ctx *ctx = ctx_for(prof, 1);
  static const netstash_fetch_callbacks cbs = {NULL, NULL, on_done};
  static done_flag d[N];
  netstash_request *req[N];
  netstash_fetch *f[N];
  char lock[600], path[64];
  int lfd;
  (void)state;
  (void)GET(ctx, "/cache/max-age/600/batch-first"); /* the store exists */
  snprintf(lock, sizeof(lock), "%s/store/write.lock", prof);
  lfd = open(lock, O_RDWR | O_CLOEXEC);
  assert_true(lfd >= 0);
  assert_int_equal(flock(lfd, LOCK_EX), 0);
  for (int i = 0; i < N; i++) {
    pthread_mutex_init(&d[i].lock, NULL);
    pthread_cond_init(&d[i].cond, NULL);
    d[i].done = 0;
    snprintf(path, sizeof(path), "/cache/max-age/600/batch-%d", i);
    assert_int_equal(netstash_request_new(&req[i], url(path)), NETSTASH_OK);
    assert_int_equal(netstash_fetch_start(ctx, req[i], &cbs, &d[i], &f[i]), NETSTASH_OK);
  }
  usleep(300 * 1000); /* responses in, the first batch waiting for the lock */
  assert_int_equal(flock(lfd, LOCK_UN), 0);
  close(lfd);
  for (int i = 0; i < N; i++) {
    pthread_mutex_lock(&d[i].lock);
    while (!d[i].done)
      pthread_cond_wait(&d[i].cond, &d[i].lock);
    pthread_mutex_unlock(&d[i].lock);
    assert_int_equal(d[i].err, NETSTASH_OK);
    if (!strstr(netstash_fetch_cache_reason(f[i]), "; stored"))
      fail_msg("fetch %d: %s", i, netstash_fetch_cache_reason(f[i]));
    netstash_fetch_del(f[i]);
    netstash_request_del(req[i]);
  }
  assert_all_cached(ctx, "batch", N);
  netstash_ctx_del(ctx);
}

/* Misses back to back: the writer gets at most one batch per 5 ms unless a
 * batch is full, so the entries of the later ones are held back and handed
 * over by the transport's timer, with nothing else happening in the
 * context. Each fetch still completes, "stored", and is a hit after the
 * context is opened again. */
static void test_commit_gap_timer(void **state) {
  const char *prof = new_profile();
  netstash_ctx *ctx = ctx_for(prof, 1);
  char path[64];
  (void)state;
  for (int i = 0; i < 8; i++) {
    netstash_request *req;
    netstash_fetch *f;
    snprintf(path, sizeof(path), "/cache/max-age/600/gap-%d", i);
    assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
    assert_int_equal(netstash_fetch_start(ctx, req, NULL, NULL, &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_wait(f, 3000), NETSTASH_OK); /* not E_TIMEOUT */
    assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
    if (!strstr(netstash_fetch_cache_reason(f), "; stored"))
      fail_msg("fetch %d: %s", i, netstash_fetch_cache_reason(f));
    netstash_fetch_del(f);
    netstash_request_del(req);
  }
  netstash_ctx_del(ctx);
  ctx = ctx_for(prof, 1);
  assert_all_cached(ctx, "gap", 8);
  netstash_ctx_del(ctx);
}

static int setup(void **state) {
  (void)state;
  return nst_rawserver_start(&raw) ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fresh_hit_and_persistence),
      cmocka_unit_test(test_age_of_stored_answers),
      cmocka_unit_test(test_intercept_cached),
      cmocka_unit_test(test_text_bodies_as_they_came),
      cmocka_unit_test(test_raw_variants_share_a_body),
      cmocka_unit_test(test_unknown_coding_kept_as_sent),
      cmocka_unit_test(test_revalidation_304),
      cmocka_unit_test(test_caller_conditionals),
      cmocka_unit_test(test_no_store_and_bypass),
      cmocka_unit_test(test_vary_variants),
      cmocka_unit_test(test_stale_while_revalidate),
      cmocka_unit_test(test_stale_if_error),
      cmocka_unit_test(test_unsafe_method_invalidates),
      cmocka_unit_test(test_only_if_cached),
      cmocka_unit_test(test_partitioned_keys),
      cmocka_unit_test(test_corrupt_store_refused),
      cmocka_unit_test(test_ranges_from_stored_body),
      cmocka_unit_test(test_partial_content_stored),
      cmocka_unit_test(test_partial_content_revalidated),
      cmocka_unit_test(test_partial_content_combined),
      cmocka_unit_test(test_partial_completion_capped),
      cmocka_unit_test(test_head_freshens),
      cmocka_unit_test(test_zstd_stored),
      cmocka_unit_test(test_cache_admin_concurrent),
      cmocka_unit_test(test_no_vary_search),
      cmocka_unit_test(test_permanent_redirect_cached),
      cmocka_unit_test(test_commit_off_the_loop),
      cmocka_unit_test(test_commit_batches),
      cmocka_unit_test(test_commit_gap_timer),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
