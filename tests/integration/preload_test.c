/*
 * preload_test — the warmer and the preload route against caddy serving a
 * fixture site: warm, incremental update (requests counted), SRI mismatch,
 * forged / unsigned / downgraded / expired / out-of-scope manifests,
 * kill -9 during a warm then resume, rollback, budgets, pause/resume/cancel,
 * fallback base, rollout rules, offline get, bundle round trip.
 *
 * Public API only (like an embedder), plus the CLI for keys, signatures,
 * kill -9 and bundles.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <netstash/netstash.h>
#include <openssl/evp.h>

#include "harness.h"

static nst_server caddy;
static char cli[1024], base[256], resolve[128], key[512], pub[512], key2[512], pub2[512];
static int profiles;

/* ------------------------------------------------------------ fixtures */

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long n;
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  if (len)
    *len = (size_t)n;
  return buf;
}

/* site/pl/<dir>/<name> with len bytes derived from seed. */
static void site_file(const char *dir, const char *name, size_t len, unsigned seed) {
  char path[1024];
  char *b = malloc(len + 1);
  snprintf(path, sizeof(path), "%s/pl/%s", nst_site(), dir);
  mkdir(path, 0755);
  for (size_t i = 0; i < len; i++)
    b[i] = (char)('a' + (seed * 31 + i * 7 + i / 13) % 26);
  snprintf(path, sizeof(path), "%s/pl/%s/%s", nst_site(), dir, name);
  write_file(path, b, len);
  free(b);
}

static void sri(const char *alg, const char *path, char *out, size_t cap) {
  size_t len;
  char *b = read_all(path, &len);
  unsigned char d[64], enc[128];
  unsigned dl = 0;
  const EVP_MD *md = !strcmp(alg, "sha384") ? EVP_sha384() : !strcmp(alg, "sha512") ? EVP_sha512()
                                                                                     : EVP_sha256();
  assert_non_null(b);
  EVP_Digest(b, len, d, &dl, md, NULL);
  EVP_EncodeBlock(enc, d, (int)dl);
  snprintf(out, cap, "%s-%s", alg, enc);
  free(b);
}

typedef struct res_spec {
  const char *name;
  const char *prio;
  const char *alg; /* NULL: sha256 */
  const char *integrity_of; /* hash this file instead (tamper tests) */
} res_spec;

/* Writes site/pl/<dir>/<mname> for the files of dir; extra: JSON merged in
 * at the top level (may be NULL). Returns the manifest URL. */
static const char *make_manifest(const char *dir, const char *mname, const char *id,
                                 int version, const res_spec *rs, size_t n, const char *extra) {
  static char url[512];
  json_t *m = json_object(), *res = json_array(), *scope = json_array();
  char path[1024], integ[256], sbase[512];
  snprintf(sbase, sizeof(sbase), "%spl/%s/", base, dir);
  json_array_append_new(scope, json_string(sbase));
  json_object_set_new(m, "id", json_string(id));
  json_object_set_new(m, "version", json_integer(version));
  json_object_set_new(m, "scope", scope);
  {
    json_t *ep = json_array();
    char u[512];
    snprintf(u, sizeof(u), "%s%s", sbase, rs[0].name);
    json_array_append_new(ep, json_string(u));
    json_object_set_new(m, "entry_pages", ep);
  }
  json_object_set_new(m, "expires", json_string("2099-01-01T00:00:00Z"));
  for (size_t i = 0; i < n; i++) {
    json_t *r = json_object();
    char u[512];
    size_t len;
    snprintf(path, sizeof(path), "%s/pl/%s/%s", nst_site(), dir,
             rs[i].integrity_of ? rs[i].integrity_of : rs[i].name);
    sri(rs[i].alg ? rs[i].alg : "sha256", path, integ, sizeof(integ));
    snprintf(path, sizeof(path), "%s/pl/%s/%s", nst_site(), dir, rs[i].name);
    free(read_all(path, &len));
    snprintf(u, sizeof(u), "%s%s", sbase, rs[i].name);
    json_object_set_new(r, "url", json_string(u));
    json_object_set_new(r, "integrity", json_string(integ));
    json_object_set_new(r, "size", json_integer((json_int_t)len));
    json_object_set_new(r, "content_type", json_string("text/plain"));
    json_object_set_new(r, "priority", json_string(rs[i].prio ? rs[i].prio : "high"));
    json_array_append_new(res, r);
  }
  json_object_set_new(m, "resources", res);
  if (extra) {
    json_error_t je;
    json_t *x = json_loads(extra, 0, &je);
    assert_non_null(x);
    json_object_update(m, x);
    json_decref(x);
  }
  snprintf(path, sizeof(path), "%s/pl/%s/%s", nst_site(), dir, mname);
  assert_int_equal(json_dump_file(m, path, JSON_INDENT(1)), 0);
  json_decref(m);
  snprintf(url, sizeof(url), "%spl/%s/%s", base, dir, mname);
  return url;
}

static int sh(const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void sign(const char *dir, const char *mname, const char *k) {
  int rc = sh("%s manifest sign %s/pl/%s/%s --key %s >/dev/null 2>%s", cli, nst_site(), dir, mname,
              k, nst_path("sign.err"));
  if (rc != 0) {
    char *e = read_all(nst_path("sign.err"), NULL);
    fail_msg("manifest sign %s/%s: exit %d: %s", dir, mname, rc, e ? e : "");
  }
}

/* A new profile directory name (kept for the whole run). */
static const char *new_profile(void) {
  static char p[32][512];
  int k = profiles++ % 32;
  snprintf(p[k], sizeof(p[k]), "%s/prof%d", nst_workdir(), profiles);
  return p[k];
}

typedef struct opts {
  const char *trust; /* NULL: pub */
  int allow_unsigned;
  const char *app_version;
  const char *device_id;
} opts;

static netstash_ctx *ctx_for(const char *profile, const opts *o) {
  netstash_options *op;
  netstash_ctx *ctx;
  char detail[256];
  assert_int_equal(netstash_options_new(&op), NETSTASH_OK);
  assert_int_equal(netstash_options_set_profile_dir(op, profile), NETSTASH_OK);
  assert_int_equal(netstash_options_set_ca_file(op, nst_cert("ca.pem")), NETSTASH_OK);
  assert_int_equal(netstash_options_add_trusted_key(op, o && o->trust ? o->trust : pub),
                   NETSTASH_OK);
  if (o && o->allow_unsigned)
    netstash_options_set_allow_unsigned(op, 1);
  if (o && o->app_version)
    netstash_options_set_app_version(op, o->app_version);
  if (o && o->device_id)
    netstash_options_set_device_id(op, o->device_id);
  assert_int_equal(netstash_ctx_new(&ctx, op, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(op);
  return ctx;
}

typedef struct evlog {
  int manifest, done, present, failed, retry, progress, published, dones;
  netstash_error last_fail;
  char failed_url[512];
  netstash_warm *pause_on_first; /* pause at the first progress event */
} evlog;

static void on_ev(netstash_warm *w, netstash_warm_event ev, const char *url, netstash_error err,
                  void *ud) {
  evlog *l = ud;
  (void)w;
  switch (ev) {
  case NETSTASH_WARM_EV_MANIFEST:
    l->manifest++;
    break;
  case NETSTASH_WARM_EV_RESOURCE_DONE:
    l->done++;
    break;
  case NETSTASH_WARM_EV_RESOURCE_PRESENT:
    l->present++;
    break;
  case NETSTASH_WARM_EV_RESOURCE_FAILED:
    l->failed++;
    l->last_fail = err;
    snprintf(l->failed_url, sizeof(l->failed_url), "%s", url ? url : "");
    break;
  case NETSTASH_WARM_EV_RETRY:
    l->retry++;
    break;
  case NETSTASH_WARM_EV_PROGRESS:
    l->progress++;
    if (l->pause_on_first) {
      netstash_warm_pause(l->pause_on_first);
      l->pause_on_first = NULL;
    }
    break;
  case NETSTASH_WARM_EV_PUBLISHED:
    l->published++;
    break;
  case NETSTASH_WARM_EV_DONE:
    l->dones++;
    break;
  }
}

/* One warm; returns its result, fills *log and *requests. */
static netstash_error warm(netstash_ctx *ctx, const char *src, evlog *log, uint64_t *requests,
                           uint64_t max_bytes) {
  netstash_warm *w;
  netstash_error e;
  memset(log, 0, sizeof(*log));
  assert_int_equal(netstash_warm_new(ctx, src, &w), NETSTASH_OK);
  assert_int_equal(netstash_warm_add_resolve(w, resolve), NETSTASH_OK);
  assert_int_equal(netstash_warm_set_event_cb(w, on_ev, log), NETSTASH_OK);
  assert_int_equal(netstash_warm_set_retries(w, 1), NETSTASH_OK);
  if (max_bytes)
    assert_int_equal(netstash_warm_set_max_bytes(w, max_bytes), NETSTASH_OK);
  assert_int_equal(netstash_warm_start(w), NETSTASH_OK);
  e = netstash_warm_wait(w, 60000);
  if (requests)
    *requests = netstash_warm_counter(w, NETSTASH_WARM_REQUESTS);
  if (e != NETSTASH_OK)
    print_message("warm %s: %s: %s\n", src, netstash_error_name(e), netstash_warm_error_detail(w));
  assert_int_equal(log->dones, 1);
  netstash_warm_del(w);
  return e;
}

/* Looks url up; returns the body (malloc'd) or NULL on a miss. */
static char *lookup(netstash_ctx *ctx, const char *url, size_t *len) {
  netstash_preload_hit *h;
  char *out = NULL;
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
  netstash_error e = netstash_preload_lookup(h, url);
  if (e == NETSTASH_OK) {
    uint64_t n = netstash_preload_hit_body_size(h);
    size_t at = 0;
    out = malloc((size_t)n + 1);
    for (uint32_t i = 0; i < netstash_preload_hit_chunk_count(h); i++) {
      const uint8_t *d;
      size_t l;
      assert_int_equal(netstash_preload_hit_chunk(h, i, &d, &l), NETSTASH_OK);
      assert_true(at + l <= n);
      memcpy(out + at, d, l);
      at += l;
    }
    assert_int_equal(at, n);
    out[n] = 0;
    if (len)
      *len = (size_t)n;
    assert_int_equal(netstash_preload_hit_status(h), 200);
  } else {
    assert_int_equal(e, NETSTASH_E_NOT_FOUND);
  }
  netstash_preload_hit_del(h);
  return out;
}

static int body_is(netstash_ctx *ctx, const char *url, const char *dir, const char *name) {
  char path[1024];
  size_t a, b;
  char *want, *got = lookup(ctx, url, &a);
  int ok;
  snprintf(path, sizeof(path), "%s/pl/%s/%s", nst_site(), dir, name);
  want = read_all(path, &b);
  ok = got && want && a == b && !memcmp(got, want, a);
  free(got);
  free(want);
  return ok;
}

static const char *rurl(const char *dir, const char *name) {
  static char u[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(u[k], sizeof(u[k]), "%spl/%s/%s", base, dir, name);
  return u[k];
}

/* ------------------------------------------------------------ tests */

static const res_spec five[] = {{"index.html", "critical", NULL, NULL},
                                {"a.css", "critical", "sha384", NULL},
                                {"b.js", "high", "sha512", NULL},
                                {"c.js", "high", NULL, NULL},
                                {"d.png", "low", NULL, NULL}};

static void five_files(const char *dir, unsigned seed) {
  site_file(dir, "index.html", 3000, seed + 1);
  site_file(dir, "a.css", 20000, seed + 2);
  site_file(dir, "b.js", 150000, seed + 3);
  site_file(dir, "c.js", 70000, seed + 4);
  site_file(dir, "d.png", 9000, seed + 5);
}

static void test_warm_update_rollback(void **state) {
  const char *prof = new_profile(), *src;
  netstash_ctx *ctx = ctx_for(prof, NULL);
  evlog log;
  uint64_t req;
  (void)state;
  five_files("inc", 0);
  src = make_manifest("inc", "m1.json", "inc", 1, five, 5, NULL);
  sign("inc", "m1.json", key);
  assert_int_equal(warm(ctx, src, &log, &req, 0), NETSTASH_OK);
  assert_int_equal(log.done, 5);
  assert_int_equal(log.published, 1);
  assert_int_equal(req, 2 + 5); /* manifest + sig + bodies */
  /* caddy advertises h3 (Alt-Svc) on the manifest's response: the bodies came
   * over QUIC */
  if (netstash_ctx_stat(ctx, NETSTASH_STAT_H3_REQUESTS) < 5)
    fail_msg("%llu of the warm's requests over h3; the 5 bodies expected",
             (unsigned long long)netstash_ctx_stat(ctx, NETSTASH_STAT_H3_REQUESTS));
  for (size_t i = 0; i < 5; i++)
    assert_true(body_is(ctx, rurl("inc", five[i].name), "inc", five[i].name));
  assert_null(lookup(ctx, rurl("inc", "nope.js"), NULL));

  /* the same manifest again: nothing to fetch */
  assert_int_equal(warm(ctx, src, &log, &req, 0), NETSTASH_OK);
  assert_int_equal(log.present, 5);
  assert_int_equal(log.done, 0);
  assert_int_equal(req, 2);

  /* version 2 changes two bodies: two body requests */
  char v1_b[1024];
  snprintf(v1_b, sizeof(v1_b), "%s/pl/inc/b.js", nst_site());
  size_t v1len;
  char *old_b = read_all(v1_b, &v1len);
  site_file("inc", "b.js", 150000, 99);
  site_file("inc", "d.png", 9100, 98);
  src = make_manifest("inc", "m2.json", "inc", 2, five, 5, NULL);
  sign("inc", "m2.json", key);
  assert_int_equal(warm(ctx, src, &log, &req, 0), NETSTASH_OK);
  assert_int_equal(log.present, 3);
  assert_int_equal(log.done, 2);
  assert_int_equal(req, 2 + 2);
  assert_true(body_is(ctx, rurl("inc", "b.js"), "inc", "b.js"));

  /* rollback: version 1's b.js again; a second rollback undoes it */
  assert_int_equal(netstash_preload_rollback(ctx, "inc"), NETSTASH_OK);
  size_t l;
  char *got = lookup(ctx, rurl("inc", "b.js"), &l);
  assert_non_null(got);
  assert_int_equal(l, v1len);
  assert_memory_equal(got, old_b, l);
  free(got);
  assert_int_equal(netstash_preload_rollback(ctx, "inc"), NETSTASH_OK);
  assert_true(body_is(ctx, rurl("inc", "b.js"), "inc", "b.js"));
  free(old_b);

  /* downgrade: version 1 after version 2 */
  src = make_manifest("inc", "m1b.json", "inc", 1, five, 5, NULL);
  sign("inc", "m1b.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_DOWNGRADE);

  /* served through a fetch, offline: source preload */
  netstash_request *r;
  netstash_fetch *f;
  assert_int_equal(netstash_request_new(&r, rurl("inc", "c.js")), NETSTASH_OK);
  netstash_request_set_cache_mode(r, NETSTASH_CACHE_ONLY_IF_CACHED);
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(netstash_fetch_body_bytes(f), 70000);
  netstash_fetch_del(f);
  netstash_request_del(r);
  /* a range of a preloaded body */
  assert_int_equal(netstash_request_new(&r, rurl("inc", "c.js")), NETSTASH_OK);
  netstash_request_add_header(r, "Range", "bytes=100-199");
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 206);
  assert_int_equal(netstash_fetch_body_bytes(f), 100);
  assert_string_equal(netstash_fetch_header(f, "content-range"), "bytes 100-199/70000");
  netstash_fetch_del(f);
  netstash_request_del(r);

  /* every preloaded answer carries a strong validator derived from its
   * integrity; the caller's If-None-Match with it gets a 304 without body */
  char etag[128];
  assert_int_equal(netstash_request_new(&r, rurl("inc", "c.js")), NETSTASH_OK);
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_non_null(netstash_fetch_header(f, "etag"));
  snprintf(etag, sizeof(etag), "%s", netstash_fetch_header(f, "etag"));
  assert_int_equal(strlen(etag), 1 + 7 + 44 + 1);
  assert_memory_equal(etag, "\"sha256-", 8);
  netstash_fetch_del(f);
  netstash_request_del(r);
  {
    char weak[160], list[200];
    const char *inm[] = {etag, weak, list, "*"};
    snprintf(weak, sizeof(weak), "W/%s", etag);
    snprintf(list, sizeof(list), "\"other\", %s", etag);
    for (size_t i = 0; i < 4; i++) {
      assert_int_equal(netstash_request_new(&r, rurl("inc", "c.js")), NETSTASH_OK);
      netstash_request_add_header(r, "If-None-Match", inm[i]);
      netstash_request_set_collect_body(r, 1 << 20);
      assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
      assert_int_equal(netstash_fetch_status(f), 304);
      assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_PRELOAD);
      assert_int_equal(netstash_fetch_body_bytes(f), 0);
      assert_string_equal(netstash_fetch_header(f, "etag"), etag);
      assert_null(netstash_fetch_header(f, "content-length"));
      assert_null(netstash_fetch_header(f, "content-type"));
      netstash_fetch_del(f);
      netstash_request_del(r);
    }
  }
  /* another version's validator: the whole body */
  assert_int_equal(netstash_request_new(&r, rurl("inc", "c.js")), NETSTASH_OK);
  netstash_request_add_header(r, "If-None-Match", "\"sha256-AAAA\"");
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_body_bytes(f), 70000);
  netstash_fetch_del(f);
  netstash_request_del(r);
  /* b.js changed between versions: so did its validator */
  {
    char e1[128];
    assert_int_equal(netstash_request_new(&r, rurl("inc", "b.js")), NETSTASH_OK);
    assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
    snprintf(e1, sizeof(e1), "%s", netstash_fetch_header(f, "etag"));
    netstash_fetch_del(f);
    netstash_request_del(r);
    assert_int_equal(netstash_preload_rollback(ctx, "inc"), NETSTASH_OK);
    assert_int_equal(netstash_request_new(&r, rurl("inc", "b.js")), NETSTASH_OK);
    netstash_request_add_header(r, "If-None-Match", e1);
    assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_status(f), 200);
    assert_string_not_equal(netstash_fetch_header(f, "etag"), e1);
    netstash_fetch_del(f);
    netstash_request_del(r);
  }
  netstash_ctx_del(ctx);
}

static void test_tampered(void **state) {
  const char *prof = new_profile(), *src;
  netstash_ctx *ctx = ctx_for(prof, NULL);
  evlog log;
  (void)state;
  five_files("tam", 10);
  site_file("tam", "evil.js", 70000, 666);
  /* c.js (high) announced with evil.js's hash: mismatch, published without it */
  res_spec rs[5];
  memcpy(rs, five, sizeof(rs));
  rs[3].integrity_of = "evil.js";
  src = make_manifest("tam", "m.json", "tam", 1, rs, 5, NULL);
  sign("tam", "m.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(log.failed, 1);
  assert_int_equal(log.last_fail, NETSTASH_E_INTEGRITY);
  assert_int_equal(log.retry, 0); /* a mismatch is not retried */
  assert_null(lookup(ctx, rurl("tam", "c.js"), NULL));
  assert_true(body_is(ctx, rurl("tam", "b.js"), "tam", "b.js"));

  /* a critical resource that fails: nothing published */
  rs[3].integrity_of = NULL;
  rs[0].integrity_of = "evil.js";
  src = make_manifest("tam", "m2.json", "tam2", 1, rs, 5, NULL);
  sign("tam", "m2.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_INCOMPLETE);
  assert_int_equal(log.published, 0);
  netstash_ctx_del(ctx);
  /* the tam2 entries are not served (tam's are: same URLs, other manifest) */
  char *d = NULL;
  ctx = ctx_for(prof, NULL);
  assert_int_equal(netstash_preload_describe(ctx, "tam2", 0, &d), NETSTASH_OK);
  assert_non_null(strstr(d, "\"version\": 0") ? strstr(d, "\"version\": 0") : strstr(d, "\"version\":0"));
  netstash_free(ctx, d);
  netstash_ctx_del(ctx);
}

static void test_refused_manifests(void **state) {
  const char *prof = new_profile(), *src;
  netstash_ctx *ctx = ctx_for(prof, NULL);
  evlog log;
  (void)state;
  five_files("ref", 20);
  /* forged: signed by a key we do not trust */
  src = make_manifest("ref", "forged.json", "ref", 1, five, 5, NULL);
  sign("ref", "forged.json", key2);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_SIGNATURE);
  /* tampered after signing */
  src = make_manifest("ref", "t.json", "ref", 1, five, 5, NULL);
  sign("ref", "t.json", key);
  {
    char p[1024];
    snprintf(p, sizeof(p), "%s/pl/ref/t.json", nst_site());
    size_t n;
    char *b = read_all(p, &n);
    char *v = strstr(b, "\"version\": 1");
    assert_non_null(v);
    v[11] = '7';
    write_file(p, b, n);
    free(b);
  }
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_SIGNATURE);
  /* unsigned: refused, unless allowed */
  src = make_manifest("ref", "unsigned.json", "ref", 1, five, 5, NULL);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_SIGNATURE);
  /* expired */
  {
    /* signing refuses an expired manifest: sign one that expires in 2 s */
    char ex[128], t[32];
    time_t soon = time(NULL) + 2;
    struct tm tm;
    gmtime_r(&soon, &tm);
    strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(ex, sizeof(ex), "{\"expires\": \"%s\"}", t);
    src = make_manifest("ref", "exp.json", "ref", 1, five, 5, ex);
    sign("ref", "exp.json", key);
    sleep(3);
  }
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_MANIFEST_EXPIRED);
  netstash_ctx_del(ctx);
  /* `manifest sign` refuses invalid manifests, so these go unsigned to a
   * context that allows that: the rules still apply */
  opts o = {NULL, 1, NULL, NULL};
  ctx = ctx_for(prof, &o);
  /* out of scope */
  src = make_manifest("ref", "scope.json", "ref", 1, five, 5,
                      "{\"scope\": [\"https://elsewhere.example.test/\"]}");
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_MANIFEST_INVALID);
  /* over the manifest's own budget */
  src = make_manifest("ref", "budget.json", "ref", 1, five, 5, "{\"budgets\": {\"max_bytes\": 1000}}");
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_TOO_LARGE);
  src = make_manifest("ref", "unsigned.json", "ref", 1, five, 5, NULL);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  netstash_ctx_del(ctx);
}

static void test_budget_pause_cancel(void **state) {
  const char *prof = new_profile(), *src;
  netstash_ctx *ctx = ctx_for(prof, NULL);
  evlog log;
  netstash_warm *w;
  (void)state;
  five_files("bud", 30);
  src = make_manifest("bud", "m.json", "bud", 1, five, 5, NULL);
  sign("bud", "m.json", key);
  /* a warm budget of 110 KB: critical first, then what fits (c.js, d.png) */
  assert_int_equal(warm(ctx, src, &log, NULL, 110000), NETSTASH_OK);
  assert_int_equal(log.failed, 1); /* b.js (150 KB) */
  assert_int_equal(log.last_fail, NETSTASH_E_TOO_LARGE);
  assert_null(lookup(ctx, rurl("bud", "b.js"), NULL));
  assert_non_null(strstr(log.failed_url, "b.js"));

  /* cancel: nothing published for a new id */
  src = make_manifest("bud", "m2.json", "bud2", 1, five, 5, NULL);
  sign("bud", "m2.json", key);
  memset(&log, 0, sizeof(log));
  assert_int_equal(netstash_warm_new(ctx, src, &w), NETSTASH_OK);
  netstash_warm_add_resolve(w, resolve);
  netstash_warm_set_event_cb(w, on_ev, &log);
  assert_int_equal(netstash_warm_start(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_cancel(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_wait(w, 30000), NETSTASH_E_CANCELED);
  netstash_warm_del(w);
  char *d = NULL;
  assert_int_equal(netstash_preload_describe(ctx, "bud2", 0, &d) == NETSTASH_OK ||
                       netstash_preload_describe(ctx, "bud2", 0, &d) == NETSTASH_E_NOT_FOUND,
                   1);
  if (d)
    assert_null(strstr(d, "\"state\": \"active\""));
  netstash_free(ctx, d);

  /* paused at the first bytes: nothing moves; resume completes it (files
   * of their own: nothing already held) */
  five_files("bud3", 36);
  src = make_manifest("bud3", "m.json", "bud3", 1, five, 5, NULL);
  sign("bud3", "m.json", key);
  memset(&log, 0, sizeof(log));
  assert_int_equal(netstash_warm_new(ctx, src, &w), NETSTASH_OK);
  netstash_warm_add_resolve(w, resolve);
  netstash_warm_set_concurrency(w, 1);
  netstash_warm_set_event_cb(w, on_ev, &log);
  log.pause_on_first = w;
  assert_int_equal(netstash_warm_start(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_wait(w, 1500), NETSTASH_E_WAIT_TIMEOUT);
  uint64_t during = netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE);
  usleep(300000);
  assert_int_equal(netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE), during);
  assert_true(netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE) < 5);
  assert_int_equal(netstash_warm_resume(w), NETSTASH_OK);
  assert_int_equal(netstash_warm_wait(w, 30000), NETSTASH_OK);
  assert_int_equal(log.published, 1);
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
}

static void test_kill9_resume(void **state) {
  const char *prof = new_profile(), *src;
  char cmd[4096], line[4096];
  (void)state;
  /* 12 bodies of 400 KB, one at a time */
  res_spec rs[12];
  char names[12][16];
  for (int i = 0; i < 12; i++) {
    snprintf(names[i], sizeof(names[i]), "k%02d.bin", i);
    site_file("k9", names[i], 400000, 40 + (unsigned)i);
    rs[i].name = names[i];
    rs[i].prio = i == 0 ? "critical" : "high";
    rs[i].alg = NULL;
    rs[i].integrity_of = NULL;
  }
  src = make_manifest("k9", "m.json", "k9", 1, rs, 12, NULL);
  sign("k9", "m.json", key);
  snprintf(cmd, sizeof(cmd),
           "exec %s warm %s --profile %s --trust %s --cacert %s --resolve %s --json "
           "--concurrency 1",
           cli, src, prof, pub, nst_cert("ca.pem"), resolve);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  FILE *p = fdopen(fds[0], "r");
  assert_non_null(p);
  int dones = 0;
  while (fgets(line, sizeof(line), p))
    if (strstr(line, "\"status\":\"done\"") && ++dones == 4)
      break;
  assert_int_equal(dones, 4);
  kill(pid, SIGKILL); /* sh exec'd netstash: this is the warm itself */
  int st;
  waitpid(pid, &st, 0);
  assert_true(WIFSIGNALED(st));
  fclose(p);

  netstash_ctx *ctx = ctx_for(prof, NULL);
  /* no partial version is visible */
  assert_null(lookup(ctx, rurl("k9", "k00.bin"), NULL));
  assert_int_equal(sh("%s verify --profile %s >/dev/null 2>&1", cli, prof), 0);
  /* resume: the verified bodies are not fetched again */
  evlog log;
  uint64_t req;
  assert_int_equal(warm(ctx, src, &log, &req, 0), NETSTASH_OK);
  assert_true(log.present >= 4);
  assert_int_equal(log.present + log.done, 12);
  assert_int_equal(req, 2 + (uint64_t)log.done);
  for (int i = 0; i < 12; i++)
    assert_true(body_is(ctx, rurl("k9", names[i]), "k9", names[i]));
  netstash_ctx_del(ctx);
}

static void test_fallback_and_rollout(void **state) {
  const char *prof = new_profile(), *src;
  evlog log;
  (void)state;
  /* fb/: the manifest lists pl/fb/x.js, which only the mirror has (under
   * its base, same path) */
  {
    char d[1024];
    snprintf(d, sizeof(d), "%s/pl/fbmirror", nst_site());
    mkdir(d, 0755);
    snprintf(d, sizeof(d), "%s/pl/fbmirror/pl", nst_site());
    mkdir(d, 0755);
  }
  site_file("fbmirror/pl/fb", "x.js", 5000, 70);
  site_file("fb", "x.js", 5000, 70);
  res_spec rs[1] = {{"x.js", "critical", NULL, NULL}};
  char extra[512];
  snprintf(extra, sizeof(extra), "{\"fallback\": \"%spl/fbmirror/\"}", base);
  src = make_manifest("fb", "m.json", "fb", 1, rs, 1, extra);
  sign("fb", "m.json", key);
  char p[1024];
  snprintf(p, sizeof(p), "%s/pl/fb/x.js", nst_site());
  unlink(p);
  netstash_ctx *ctx = ctx_for(prof, NULL);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(log.done, 1);
  assert_true(log.retry >= 1);
  assert_true(body_is(ctx, rurl("fb", "x.js"), "fbmirror/pl/fb", "x.js"));

  /* rollout: 0 percent excludes everyone */
  site_file("ro", "y.js", 4000, 71);
  res_spec ry[1] = {{"y.js", "critical", NULL, NULL}};
  src = make_manifest("ro", "m1.json", "ro", 1, ry, 1, "{\"rollout\": {\"percent\": 0}}");
  sign("ro", "m1.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_NOT_TARGETED);
  assert_null(lookup(ctx, rurl("ro", "y.js"), NULL));
  /* app version range */
  src = make_manifest("ro", "m2.json", "ro", 2, ry, 1,
                      "{\"rollout\": {\"app_version\": \">=4.2 <5\"}}");
  sign("ro", "m2.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_E_NOT_TARGETED);
  netstash_ctx_del(ctx);
  opts o = {NULL, 0, "4.10.1", NULL};
  ctx = ctx_for(prof, &o);
  src = make_manifest("ro", "m3.json", "ro", 3, ry, 1,
                      "{\"rollout\": {\"app_version\": \">=4.2 <5\"}}");
  sign("ro", "m3.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_true(body_is(ctx, rurl("ro", "y.js"), "ro", "y.js"));
  /* kill switch: version 4 stops serving */
  src = make_manifest("ro", "m4.json", "ro", 4, ry, 1, "{\"rollout\": {\"kill_switch\": true}}");
  sign("ro", "m4.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_null(lookup(ctx, rurl("ro", "y.js"), NULL));
  netstash_ctx_del(ctx);
}


/* Two manifests over one URL: the longer scope answers; then expiry. */
static void test_overlap_expiry_pin(void **state) {
  const char *prof = new_profile(), *src;
  netstash_ctx *ctx = ctx_for(prof, NULL);
  evlog log;
  char extra[512], t[32];
  (void)state;
  site_file("ov", "z.js", 3000, 80);
  res_spec rz[1] = {{"z.js", "critical", NULL, NULL}};
  /* "wide" covers pl/ (scope of the parent dir), "narrow" pl/ov/ */
  snprintf(extra, sizeof(extra), "{\"scope\": [\"%spl/\"]}", base);
  src = make_manifest("ov", "wide.json", "wide", 1, rz, 1, extra);
  sign("ov", "wide.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  netstash_preload_hit *h;
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_OK);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "wide");
  /* the narrow one expires in 2 s */
  time_t soon = time(NULL) + 2;
  struct tm tm;
  gmtime_r(&soon, &tm);
  strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(extra, sizeof(extra), "{\"expires\": \"%s\"}", t);
  src = make_manifest("ov", "narrow.json", "narrow", 1, rz, 1, extra);
  sign("ov", "narrow.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_OK);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "narrow");
  /* the same URL in another spelling: upper-case host, explicit default port is
   * not ours (port), so only the host case */
  char upper[512];
  snprintf(upper, sizeof(upper), "%s", rurl("ov", "z.js"));
  memcpy(upper + 8, "EXAMPLE", 7);
  assert_int_equal(netstash_preload_lookup(h, upper), NETSTASH_OK);
  sleep(3);
  /* expired: the wide manifest answers again */
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_OK);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "wide");
  assert_int_equal(netstash_preload_hit_manifest_version(h), 1);

  /* pinned version: wide v2, then v3 pins v1 (the previous): v1 serves */
  site_file("ov", "z.js", 3000, 81);
  snprintf(extra, sizeof(extra), "{\"scope\": [\"%spl/\"]}", base);
  src = make_manifest("ov", "wide2.json", "wide", 2, rz, 1, extra);
  sign("ov", "wide2.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_manifest_version(h), 2);
  snprintf(extra, sizeof(extra), "{\"scope\": [\"%spl/\"], \"rollout\": {\"pinned_version\": 1}}",
           base);
  src = make_manifest("ov", "wide3.json", "wide", 3, rz, 1, extra);
  sign("ov", "wide3.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_manifest_version(h), 1);
  /* pinned to a version no longer held: the id stops serving */
  {
    char e2[512];
    snprintf(e2, sizeof(e2),
             "{\"scope\": [\"%spl/\"], \"rollout\": {\"pinned_version\": 3}}", base);
    src = make_manifest("ov", "wide4.json", "wide", 4, rz, 1, e2);
  }
  sign("ov", "wide4.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_lookup(h, rurl("ov", "z.js")), NETSTASH_E_NOT_FOUND);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
}

static void test_cli_offline_and_bundle(void **state) {
  const char *prof = new_profile(), *prof2, *src;
  char out[1024];
  (void)state;
  five_files("cli", 50);
  src = make_manifest("cli", "m.json", "cli", 1, five, 5, NULL);
  sign("cli", "m.json", key);
  assert_int_equal(sh("%s warm %s --profile %s --trust %s --cacert %s --resolve %s --json >%s",
                      cli, src, prof, pub, nst_cert("ca.pem"), resolve, nst_path("warm.json")),
                   0);
  char *j = read_all(nst_path("warm.json"), NULL);
  assert_non_null(strstr(j, "\"event\":\"published\""));
  assert_non_null(strstr(j, "\"event\":\"done\""));
  free(j);
  /* get --offline: from the preload store, no network */
  assert_int_equal(sh("%s get %s --profile %s --offline --json >%s", cli, rurl("cli", "c.js"),
                      prof, nst_path("get.json")),
                   0);
  j = read_all(nst_path("get.json"), NULL);
  assert_non_null(strstr(j, "\"source\":\"preload\""));
  free(j);
  /* bundle: pack, install into a fresh profile with no network at all */
  prof2 = new_profile();
  snprintf(out, sizeof(out), "%s/cli.bundle.tar", nst_workdir());
  assert_int_equal(sh("%s pack cli --profile %s -o %s >/dev/null", cli, prof, out), 0);
  assert_int_equal(sh("%s install %s --profile %s --trust %s --json >%s", cli, out, prof2, pub,
                      nst_path("install.json")),
                   0);
  j = read_all(nst_path("install.json"), NULL);
  assert_non_null(strstr(j, "\"published\":true"));
  free(j);
  netstash_ctx *ctx = ctx_for(prof2, NULL);
  for (size_t i = 0; i < 5; i++)
    assert_true(body_is(ctx, rurl("cli", five[i].name), "cli", five[i].name));
  netstash_ctx_del(ctx);
  /* a bundle checked against a key that did not sign it is refused */
  assert_int_equal(sh("%s install %s --profile %s --trust %s >/dev/null 2>&1", cli, out, prof2,
                      pub2),
                   14);
}

/* The HTTP cache stored a resource as the origin sent it, gzip-encoded
 * (caddy's precompressed sidecar); a manifest then preloads the same file.
 * Bodies are kept once per decoded content, so the preload entry finds the
 * cache's gzip body: its hits must still be the file's bytes (decoded), not
 * a damaged-store error — and offline through a fetch too. */
static void test_preload_shares_a_cached_body(void **state) {
  static const res_spec one[] = {{"s.js", "critical", NULL, NULL}};
  const char *prof = new_profile(), *src;
  char path[1024], hdr[64];
  netstash_ctx *ctx;
  netstash_request *r;
  netstash_fetch *f;
  evlog log;
  (void)state;
  site_file("shared", "s.js", 30000, 77);
  snprintf(path, sizeof(path), "%s/pl/shared/s.js", nst_site());
  assert_int_equal(sh("gzip -9 -n -c -- %s > %s.gz", path, path), 0);
  ctx = ctx_for(prof, NULL);
  /* through the HTTP cache first: stored gzip-encoded */
  assert_int_equal(netstash_request_new(&r, rurl("shared", "s.js")), NETSTASH_OK);
  assert_int_equal(netstash_request_add_resolve(r, resolve), NETSTASH_OK);
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
  snprintf(hdr, sizeof(hdr), "%s",
           netstash_fetch_header(f, "content-encoding")
               ? netstash_fetch_header(f, "content-encoding")
               : "");
  assert_string_equal(hdr, "gzip");
  assert_int_equal(netstash_fetch_body_bytes(f), 30000);
  netstash_fetch_del(f);
  netstash_request_del(r);
  for (int i = 0; i < 500; i++) { /* committed: a cache hit */
    netstash_source s;
    assert_int_equal(netstash_request_new(&r, rurl("shared", "s.js")), NETSTASH_OK);
    netstash_request_set_cache_mode(r, NETSTASH_CACHE_ONLY_IF_CACHED);
    assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
    s = netstash_fetch_source(f);
    netstash_fetch_del(f);
    netstash_request_del(r);
    if (s == NETSTASH_SOURCE_CACHE)
      break;
    assert_true(i < 499);
    usleep(10000);
  }
  /* then preloaded: the same content */
  src = make_manifest("shared", "m.json", "shared", 1, one, 1, NULL);
  sign("shared", "m.json", key);
  assert_int_equal(warm(ctx, src, &log, NULL, 0), NETSTASH_OK);
  assert_true(body_is(ctx, rurl("shared", "s.js"), "shared", "s.js"));
  assert_int_equal(netstash_request_new(&r, rurl("shared", "s.js")), NETSTASH_OK);
  netstash_request_set_cache_mode(r, NETSTASH_CACHE_ONLY_IF_CACHED);
  netstash_request_set_collect_body(r, 1 << 20);
  assert_int_equal(netstash_fetch_sync(ctx, r, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_PRELOAD);
  assert_int_equal(netstash_fetch_body_bytes(f), 30000);
  netstash_fetch_del(f);
  netstash_request_del(r);
  netstash_ctx_del(ctx);
}

static int setup(void **state) {
  (void)state;
  const char *b = getenv("NST_BUILDDIR");
  snprintf(cli, sizeof(cli), "%s/tools/netstash", b ? b : ".");
  if (!nst_certs() || !nst_site())
    return -1;
  char d[1024];
  snprintf(d, sizeof(d), "%s/pl", nst_site());
  mkdir(d, 0755);
  /* h1/h2/h3 with Alt-Svc: warms learn h3 from the manifest's response */
  if (nst_caddy_start("h3", &caddy))
    return -1;
  snprintf(base, sizeof(base), "https://example.test:%d/", caddy.port);
  snprintf(resolve, sizeof(resolve), "example.test:%d:127.0.0.1", caddy.port);
  snprintf(key, sizeof(key), "%s/k1", nst_workdir());
  snprintf(pub, sizeof(pub), "%s/k1.pub", nst_workdir());
  snprintf(key2, sizeof(key2), "%s/k2", nst_workdir());
  snprintf(pub2, sizeof(pub2), "%s/k2.pub", nst_workdir());
  if (sh("%s manifest keygen %s >/dev/null", cli, key) ||
      sh("%s manifest keygen %s >/dev/null", cli, key2))
    return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_warm_update_rollback),
      cmocka_unit_test(test_tampered),
      cmocka_unit_test(test_refused_manifests),
      cmocka_unit_test(test_budget_pause_cancel),
      cmocka_unit_test(test_kill9_resume),
      cmocka_unit_test(test_fallback_and_rollout),
      cmocka_unit_test(test_overlap_expiry_pin),
      cmocka_unit_test(test_cli_offline_and_bundle),
      cmocka_unit_test(test_preload_shares_a_cached_body),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
