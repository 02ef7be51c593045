/*
 * preload_admin_test — the administration of the preload cache
 * (include/netstash/preload.h, "Administration") and the CLI over it:
 * describe, show, rollback, purge, verify, gc, stats; netstash ls, show,
 * rollback, gc, stats, verify, purge ID, get --offline.
 *
 * Fixture versions are installed directly with the internal install API
 * (lib/preload/install.h) from manifests generated here over bodies hashed
 * here, in a temporary profile per test: no server is needed.
 */
#include "ns_setup.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>

#include "core/ctx.h"
#include "harness.h"
#include "preload/install.h"
#include "preload/sign.h"
#include "store/store.h"

#define ID "news.example"
#define SITE "https://news.example.com/"

typedef struct res {
  const char *url;
  const char *body;
  const char *priority;
  int ignore_utm; /* "query": {"ignore": ["utm_source"]} */
} res;

/* v1: a, b, c; v2: b changed, d added; c shared with the "other" manifest */
static const res v1[] = {
    {SITE, "<html>front page v1</html>", "critical", 0},
    {SITE "app.css", "body { color: black }", "high", 0},
    {SITE "logo.svg", "<svg>shared logo</svg>", "low", 1},
};
static const res v2[] = {
    {SITE, "<html>front page v1</html>", "critical", 0},
    {SITE "app.css", "body { color: navy } /* v2 */", "high", 0},
    {SITE "logo.svg", "<svg>shared logo</svg>", "low", 1},
    {SITE "app.js", "console.log('v2')", "high", 0},
};
static const res other[] = {
    {"https://other.example.com/logo.svg", "<svg>shared logo</svg>", "high", 0},
    {"https://other.example.com/", "<html>other</html>", "critical", 0},
};

static const res old[] = {
    {"https://old.example.com/", "<html>old</html>", "critical", 0},
};

static char cli[1024];

static int64_t now_s(void) {
  return (int64_t)time(NULL);
}

static void sri(const char *body, char *out, size_t cap) {
  uint8_t d[32];
  unsigned dl = 0;
  char b64[64];
  assert_int_equal(EVP_Digest(body, strlen(body), d, &dl, EVP_sha256(), NULL), 1);
  EVP_EncodeBlock((unsigned char *)b64, d, 32);
  snprintf(out, cap, "sha256-%s", b64);
}

static void hex_sha256(const char *body, char out[65]) {
  static const char hx[] = "0123456789abcdef";
  uint8_t d[32];
  unsigned dl = 0;
  EVP_Digest(body, strlen(body), d, &dl, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hx[d[i] >> 4];
    out[2 * i + 1] = hx[d[i] & 15];
  }
  out[64] = 0;
}

/* A manifest (malloc'd JSON) for resources r[0..n). */
static char *manifest(const char *id, uint64_t version, const char *scope, const res *r, size_t n,
                      int kill) {
  json_t *o = json_object(), *arr = json_array();
  char *text;
  for (size_t i = 0; i < n; i++) {
    char integ[128];
    json_t *e;
    sri(r[i].body, integ, sizeof(integ));
    e = json_pack("{s:s, s:s, s:I, s:s, s:s, s:{s:s}}", "url", r[i].url, "integrity", integ, "size",
                  (json_int_t)strlen(r[i].body), "content_type", "text/plain", "priority",
                  r[i].priority, "headers", "x-fixture", "yes");
    if (r[i].ignore_utm)
      json_object_set_new(e, "query", json_pack("{s:[s]}", "ignore", "utm_source"));
    json_array_append_new(arr, e);
  }
  json_object_set_new(o, "id", json_string(id));
  json_object_set_new(o, "version", json_integer((json_int_t)version));
  json_object_set_new(o, "scope", json_pack("[s]", scope));
  json_object_set_new(o, "entry_pages", json_pack("[s]", scope));
  json_object_set_new(o, "expires", json_string("2099-12-31T23:59:59Z"));
  json_object_set_new(o, "resources", arr);
  if (kill)
    json_object_set_new(o, "rollout", json_pack("{s:b}", "kill_switch", 1));
  text = json_dumps(o, JSON_PRESERVE_ORDER);
  json_decref(o);
  assert_non_null(text);
  return text;
}

/* Installs a version: bodies of every resource whose bit is clear in skip.
 * sig/kid: a signature and its key id (NULL: unsigned). expires_s != 0
 * overrides the manifest's expiry after parsing. Returns publication's
 * result. */
static netstash_error install_full(netstash_ctx *ctx, const char *id, uint64_t version,
                                   const char *scope, const res *r, size_t n, unsigned skip,
                                   const char *keyfile, int64_t expires_s, int kill) {
  char *text = manifest(id, version, scope, r, n, kill), *sig = NULL, detail[256] = "";
  char kid[NS_KEY_ID_LEN + 1] = "";
  size_t sig_len = 0;
  ns_manifest_check ck = {now_s(), 0, 0};
  ns_manifest *m = NULL;
  ns_pl_install *in = NULL;
  ns_pl_device dev = {NULL, NULL, "test-device"};
  netstash_error rv;
  assert_int_equal(ns_manifest_parse(&ctx->mem, (const uint8_t *)text, strlen(text), &ck, &m, NULL),
                   NETSTASH_OK);
  if (expires_s)
    m->expires_s = expires_s;
  if (keyfile)
    assert_int_equal(ns_sign_create(&ctx->mem, keyfile, (const uint8_t *)text, strlen(text), &sig,
                                    &sig_len, kid, detail, sizeof(detail)),
                     NETSTASH_OK);
  rv =
      ns_pl_install_begin(ctx->store, &ctx->mem, (const uint8_t *)text, strlen(text),
                          (const uint8_t *)sig, sig_len, kid, m, &dev, &in, detail, sizeof(detail));
  if (rv == NETSTASH_OK) {
    for (size_t i = 0; i < n && ns_pl_install_plan(in) != NS_PL_PLAN_CONTROL; i++)
      if (!(skip & (1u << i)) && ns_pl_install_needed(in, i))
        assert_int_equal(ns_pl_install_body(in, i, (const uint8_t *)r[i].body, strlen(r[i].body)),
                         NETSTASH_OK);
    rv = ns_pl_install_publish(in);
  }
  ns_pl_install_free(in);
  ns_manifest_del(m);
  ns_free(&ctx->mem, sig);
  free(text);
  return rv;
}

static netstash_error install(netstash_ctx *ctx, uint64_t version, const res *r, size_t n) {
  return install_full(ctx, ID, version, SITE, r, n, 0, NULL, 0, 0);
}

static netstash_ctx *profile_ctx(const char *name, char *dir, size_t cap) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  snprintf(dir, cap, "%s", nst_path(name));
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_profile_dir(o, dir), NETSTASH_OK);
  assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(o);
  assert_non_null(ctx->store);
  return ctx;
}

static json_t *parse(netstash_ctx *ctx, char *text) {
  json_error_t e;
  json_t *j = json_loads(text, 0, &e);
  if (!j)
    fail_msg("not JSON: %s\n%s", e.text, text);
  netstash_free(ctx, text);
  return j;
}

static json_t *describe(netstash_ctx *ctx, const char *id, int resources) {
  char *text = NULL;
  assert_int_equal(netstash_preload_describe(ctx, id, resources, &text), NETSTASH_OK);
  return parse(ctx, text);
}

static json_t *show(netstash_ctx *ctx, const char *url) {
  char *text = NULL;
  assert_int_equal(netstash_preload_show(ctx, url, &text), NETSTASH_OK);
  return parse(ctx, text);
}

static json_t *stats(netstash_ctx *ctx) {
  char *text = NULL;
  assert_int_equal(netstash_preload_stats(ctx, &text), NETSTASH_OK);
  return parse(ctx, text);
}

static int64_t ival(const json_t *o, const char *k) {
  const json_t *v = json_object_get(o, k);
  if (!json_is_integer(v))
    fail_msg("\"%s\" is not an integer", k);
  return (int64_t)json_integer_value(v);
}

static const char *sval(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  if (!s)
    fail_msg("\"%s\" is not a string", k);
  return s;
}

static void assert_serves(netstash_ctx *ctx, const char *url, uint64_t version, const char *body) {
  char hex[65];
  json_t *j = show(ctx, url);
  hex_sha256(body, hex);
  assert_int_equal(ival(j, "version"), (int64_t)version);
  assert_string_equal(sval(j, "sha256"), hex);
  json_decref(j);
}

/* ------------------------------------------------------------ library */

static void test_no_profile(void **state) {
  netstash_ctx *ctx = NULL;
  char *text = NULL;
  uint64_t n = 7;
  (void)state;
  assert_int_equal(netstash_ctx_new(&ctx, NULL, NULL, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_describe(ctx, NULL, 0, &text), NETSTASH_E_ILLEGAL_STATE);
  assert_null(text);
  assert_int_equal(netstash_preload_show(ctx, SITE, &text), NETSTASH_E_ILLEGAL_STATE);
  assert_int_equal(netstash_preload_rollback(ctx, ID), NETSTASH_E_ILLEGAL_STATE);
  assert_int_equal(netstash_preload_purge(ctx, ID), NETSTASH_E_ILLEGAL_STATE);
  assert_int_equal(netstash_preload_verify(ctx, &text), NETSTASH_E_ILLEGAL_STATE);
  assert_int_equal(netstash_preload_gc(ctx, &n), NETSTASH_E_ILLEGAL_STATE);
  assert_int_equal(n, 0);
  assert_int_equal(netstash_preload_stats(ctx, &text), NETSTASH_E_ILLEGAL_STATE);
  assert_null(text);
  assert_int_equal(netstash_preload_describe(NULL, NULL, 0, &text), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_preload_describe(ctx, NULL, 0, NULL), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_preload_show(ctx, NULL, &text), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_preload_rollback(ctx, NULL), NETSTASH_E_INVALID_ARGUMENT);
  netstash_ctx_del(ctx);
}

static void test_describe_show(void **state) {
  char dir[1024], key[1100], kid[NS_KEY_ID_LEN + 1], detail[256], *text = NULL;
  netstash_ctx *ctx = profile_ctx("describe", dir, sizeof(dir));
  json_t *j, *m, *e;
  (void)state;
  j = describe(ctx, NULL, 0);
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 0);
  json_decref(j);
  assert_int_equal(netstash_preload_describe(ctx, ID, 0, &text), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_show(ctx, SITE, &text), NETSTASH_E_NOT_FOUND);

  snprintf(key, sizeof(key), "%s/ops.key", dir);
  assert_int_equal(ns_sign_keygen(key, kid, detail, sizeof(detail)), NETSTASH_OK);
  assert_int_equal(install_full(ctx, ID, 1, SITE, v1, 3, 0, key, 0, 0), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);

  j = describe(ctx, NULL, 0);
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 1);
  m = json_array_get(json_object_get(j, "manifests"), 0);
  assert_string_equal(sval(m, "id"), ID);
  assert_string_equal(sval(m, "state"), "active");
  assert_int_equal(ival(m, "version"), 2);
  assert_int_equal(ival(m, "previous"), 1);
  assert_int_equal(ival(m, "max_version"), 2);
  assert_int_equal(ival(m, "staged"), 0);
  assert_string_equal(sval(m, "expires"), "2099-12-31T23:59:59Z");
  assert_int_equal(strlen(sval(m, "published")), 20);
  assert_string_equal(sval(m, "key_id"), ""); /* v2 is unsigned */
  assert_string_equal(json_string_value(json_array_get(json_object_get(m, "scope"), 0)), SITE);
  assert_int_equal(ival(m, "resources"), 4);
  assert_int_equal(ival(m, "resources_present"), 4);
  assert_int_equal(ival(m, "bytes"), (int64_t)(strlen(v2[0].body) + strlen(v2[1].body) +
                                               strlen(v2[2].body) + strlen(v2[3].body)));
  assert_null(json_object_get(m, "entries"));
  json_decref(j);

  m = describe(ctx, ID, 1);
  assert_string_equal(sval(m, "id"), ID);
  assert_int_equal(json_array_size(json_object_get(m, "entries")), 4);
  e = json_array_get(json_object_get(m, "entries"), 1);
  {
    char integ[128];
    sri(v2[1].body, integ, sizeof(integ));
    assert_string_equal(sval(e, "url"), v2[1].url);
    assert_string_equal(sval(e, "integrity"), integ);
    assert_string_equal(sval(e, "priority"), "high");
    assert_int_equal(ival(e, "size"), (int64_t)strlen(v2[1].body));
    assert_true(json_is_true(json_object_get(e, "present")));
  }
  json_decref(m);

  /* show: the active version answers, headers and hash of what it serves */
  j = show(ctx, SITE "app.css");
  assert_string_equal(sval(j, "url"), SITE "app.css");
  assert_string_equal(sval(j, "id"), ID);
  assert_int_equal(ival(j, "status"), 200);
  assert_int_equal(ival(j, "size"), (int64_t)strlen(v2[1].body));
  assert_string_equal(sval(j, "priority"), "high");
  assert_string_equal(sval(json_object_get(j, "headers"), "content-type"), "text/plain");
  assert_string_equal(sval(json_object_get(j, "headers"), "x-fixture"), "yes");
  json_decref(j);
  assert_serves(ctx, SITE "app.css", 2, v2[1].body);
  /* normalised like the manifests: host case, default port, fragment */
  assert_serves(ctx, "https://NEWS.example.com:443/app.css#top", 2, v2[1].body);
  /* an ignored query parameter */
  assert_serves(ctx, SITE "logo.svg?utm_source=mail", 2, v2[2].body);
  assert_int_equal(netstash_preload_show(ctx, SITE "missing.css", &text), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_show(ctx, "http://news.example.com/app.css", &text),
                   NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_show(ctx, "not a url", &text), NETSTASH_E_BAD_URL);
  assert_null(text);
  {
    char longid[600];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = 0;
    assert_int_equal(netstash_preload_describe(ctx, longid, 0, &text), NETSTASH_E_NOT_FOUND);
    assert_int_equal(netstash_preload_rollback(ctx, longid), NETSTASH_E_NOT_FOUND);
    assert_int_equal(netstash_preload_purge(ctx, longid), NETSTASH_E_NOT_FOUND);
    assert_int_equal(netstash_preload_purge(ctx, ""), NETSTASH_E_NOT_FOUND);
  }
  netstash_ctx_del(ctx);
}

static void test_rollback(void **state) {
  char dir[1024], key[1100], kid[NS_KEY_ID_LEN + 1], detail[256];
  netstash_ctx *ctx = profile_ctx("rollback", dir, sizeof(dir));
  json_t *m;
  (void)state;
  snprintf(key, sizeof(key), "%s/ops.key", dir);
  assert_int_equal(ns_sign_keygen(key, kid, detail, sizeof(detail)), NETSTASH_OK);
  assert_int_equal(install_full(ctx, ID, 1, SITE, v1, 3, 0, key, 0, 0), NETSTASH_OK);
  assert_int_equal(netstash_preload_rollback(ctx, ID), NETSTASH_E_NOT_FOUND); /* no previous */
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_serves(ctx, SITE "app.css", 2, v2[1].body);

  assert_int_equal(netstash_preload_rollback(ctx, ID), NETSTASH_OK);
  m = describe(ctx, ID, 0);
  assert_string_equal(sval(m, "state"), "active");
  assert_int_equal(ival(m, "version"), 1);
  assert_int_equal(ival(m, "previous"), 2);
  assert_int_equal(ival(m, "max_version"), 2);
  assert_string_equal(sval(m, "key_id"), kid); /* v1's signer again */
  assert_int_equal(ival(m, "resources"), 3);
  json_decref(m);
  assert_serves(ctx, SITE "app.css", 1, v1[1].body);
  assert_int_equal(netstash_preload_show(ctx, SITE "app.js", &(char *){NULL}),
                   NETSTASH_E_NOT_FOUND); /* only in v2 */

  /* the second rollback undoes the first */
  assert_int_equal(netstash_preload_rollback(ctx, ID), NETSTASH_OK);
  m = describe(ctx, ID, 0);
  assert_int_equal(ival(m, "version"), 2);
  assert_int_equal(ival(m, "previous"), 1);
  assert_string_equal(sval(m, "key_id"), "");
  json_decref(m);
  assert_serves(ctx, SITE "app.js", 2, v2[3].body);

  /* rolled back to v1, a warm of v2 again does not re-activate it... */
  assert_int_equal(netstash_preload_rollback(ctx, ID), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_serves(ctx, SITE "app.css", 1, v1[1].body);
  /* ...a newer version does, and the one rolled back away is dropped */
  assert_int_equal(install(ctx, 3, v2, 4), NETSTASH_OK);
  m = describe(ctx, ID, 0);
  assert_int_equal(ival(m, "version"), 3);
  assert_int_equal(ival(m, "previous"), 1);
  json_decref(m);

  assert_int_equal(netstash_preload_rollback(ctx, "nope.example"), NETSTASH_E_NOT_FOUND);
  netstash_ctx_del(ctx);
}

/* Points the entry of resource r of version v at a stored body of bytes
 * `with` (a raw store write: what a bug or a damaged disk could leave). */
typedef struct damage {
  const char *url;
  const char *with;
  uint64_t version;
} damage;

static netstash_error damage_fn(ns_store_txn *t, void *ud) {
  const damage *d = ud;
  ns_buf k;
  ns_store_record rec;
  uint8_t h[32], *copy;
  size_t len;
  netstash_error rv;
  ns_buf_init(&k, ns_mem_default(), NS_STORE_KEY_MAX + 1);
  assert_int_equal(ns_pl_key_entry(&k, ID, d->version, d->url, strlen(d->url)), NETSTASH_OK);
  rv = ns_store_txn_body_put(t, (const uint8_t *)d->with, strlen(d->with), NS_CODING_IDENTITY, NULL,
                             NS_STORE_BODY_NO_RECOMPRESS, h);
  assert_int_equal(rv, NETSTASH_OK);
  assert_int_equal(ns_store_txn_get(t, NS_STORE_PRELOAD, k.data, k.len, &rec), NETSTASH_OK);
  len = rec.value_len;
  copy = malloc(len);
  memcpy(copy, rec.value, len);
  rv = ns_store_txn_put(t, NS_STORE_PRELOAD, k.data, k.len, copy, len, h, NS_STORE_REC_PINNED);
  free(copy);
  ns_buf_free(&k);
  return rv;
}

static void corrupt(netstash_ctx *ctx, uint64_t version, const char *url, const char *with) {
  damage d = {url, with, version};
  assert_int_equal(ns_store_write(ctx->store, damage_fn, &d), NETSTASH_OK);
}

static void test_verify(void **state) {
  char dir[1024], *text = NULL, detail[256];
  /* same size as v2[0].body, other bytes */
  static const char same_size[] = "<html>front page v9</html>";
  netstash_ctx *ctx = profile_ctx("verify", dir, sizeof(dir));
  json_t *j, *c, *m;
  (void)state;
  assert_int_equal(strlen(same_size), strlen(v2[0].body));
  assert_int_equal(netstash_preload_verify(ctx, NULL), NETSTASH_OK); /* empty */
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_int_equal(netstash_preload_verify(ctx, &text), NETSTASH_OK);
  j = parse(ctx, text);
  assert_int_equal(ival(j, "checked"), 7); /* 3 of v1, 4 of v2 */
  assert_true(ival(j, "bytes") > 0);
  assert_int_equal(json_array_size(json_object_get(j, "corrupt")), 0);
  json_decref(j);

  corrupt(ctx, 2, v2[0].url, same_size);
  corrupt(ctx, 2, v2[1].url, "short");
  corrupt(ctx, 1, v1[1].url, "a wrong body of v1 (previous)");
  /* the store itself is consistent: bodies match their keys */
  assert_int_equal(ns_store_verify(ctx->store, detail, sizeof(detail)), NETSTASH_OK);
  assert_serves(ctx, SITE, 2, same_size); /* served until verified */

  text = NULL;
  assert_int_equal(netstash_preload_verify(ctx, &text), NETSTASH_E_INTEGRITY);
  j = parse(ctx, text);
  assert_int_equal(ival(j, "checked"), 7);
  c = json_object_get(j, "corrupt");
  assert_int_equal(json_array_size(c), 3);
  /* active first, then previous; resources in manifest order */
  assert_string_equal(sval(json_array_get(c, 0), "id"), ID);
  assert_int_equal(ival(json_array_get(c, 0), "version"), 2);
  assert_string_equal(sval(json_array_get(c, 0), "url"), v2[0].url);
  assert_non_null(strstr(sval(json_array_get(c, 0), "reason"), "integrity"));
  assert_string_equal(sval(json_array_get(c, 1), "url"), v2[1].url);
  assert_non_null(strstr(sval(json_array_get(c, 1), "reason"), "bytes"));
  assert_int_equal(ival(json_array_get(c, 2), "version"), 1);
  json_decref(j);

  /* unlinked: never served, no longer counted as held */
  assert_int_equal(netstash_preload_show(ctx, SITE, &text), NETSTASH_E_NOT_FOUND);
  assert_serves(ctx, SITE "app.js", 2, v2[3].body);
  m = describe(ctx, ID, 1);
  assert_int_equal(ival(m, "resources_present"), 2);
  assert_false(
      json_is_true(json_object_get(json_array_get(json_object_get(m, "entries"), 0), "present")));
  json_decref(m);
  text = NULL;
  assert_int_equal(netstash_preload_verify(ctx, &text), NETSTASH_OK);
  j = parse(ctx, text);
  assert_int_equal(ival(j, "checked"), 4);
  json_decref(j);

  /* a warm of the same version fills the holes again */
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_serves(ctx, SITE, 2, v2[0].body);
  netstash_ctx_del(ctx);
}

static void test_purge_gc_stats(void **state) {
  char dir[1024], *text = NULL, detail[256];
  netstash_ctx *ctx = profile_ctx("purge", dir, sizeof(dir));
  json_t *j, *st;
  uint64_t n = 99;
  int64_t bodies;
  (void)state;
  j = stats(ctx);
  assert_int_equal(ival(j, "manifests"), 0);
  json_decref(j);
  assert_int_equal(netstash_preload_purge(ctx, ID), NETSTASH_E_NOT_FOUND);
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_int_equal(
      install_full(ctx, "other", 1, "https://other.example.com/", other, 2, 0, NULL, 0, 0),
      NETSTASH_OK);

  j = stats(ctx);
  assert_int_equal(ival(j, "manifests"), 2);
  assert_int_equal(ival(j, "active"), 2);
  assert_int_equal(ival(j, "resources"), 6);
  assert_int_equal(ival(j, "bytes"),
                   (int64_t)(strlen(v2[0].body) + strlen(v2[1].body) + strlen(v2[2].body) +
                             strlen(v2[3].body) + strlen(other[0].body) + strlen(other[1].body)));
  st = json_object_get(j, "store");
  /* distinct bodies: a, b1, b2, c (shared), d, other's page */
  assert_int_equal(ival(st, "bodies"), 6);
  assert_int_equal(ival(json_object_get(st, "records"), "preload"), 3 + 4 + 2);
  assert_true(ival(st, "used_bytes") > 0);
  assert_true(ival(st, "map_size") >= ival(st, "used_bytes"));
  assert_non_null(json_object_get(st, "gc_queued"));
  assert_non_null(json_object_get(json_object_get(st, "records"), "http"));
  assert_non_null(json_object_get(json_object_get(st, "records"), "manifests"));
  assert_non_null(json_object_get(json_object_get(st, "records"), "cookies"));
  json_decref(j);

  assert_int_equal(netstash_preload_gc(ctx, &n), NETSTASH_OK);
  assert_int_equal(n, 0); /* everything referenced */

  assert_int_equal(netstash_preload_purge(ctx, ID), NETSTASH_OK);
  j = describe(ctx, NULL, 0);
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 1);
  assert_string_equal(sval(json_array_get(json_object_get(j, "manifests"), 0), "id"), "other");
  json_decref(j);
  assert_int_equal(netstash_preload_describe(ctx, ID, 0, &text), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_show(ctx, SITE "app.css", &text), NETSTASH_E_NOT_FOUND);
  /* the shared body stays for the manifest still referencing it */
  {
    char hex[65];
    hex_sha256(other[0].body, hex);
    j = show(ctx, other[0].url);
    assert_string_equal(sval(j, "sha256"), hex);
    json_decref(j);
  }
  j = stats(ctx);
  st = json_object_get(j, "store");
  bodies = ival(st, "bodies");
  assert_int_equal(bodies, 2); /* collected by the purge */
  assert_int_equal(ival(json_object_get(st, "records"), "preload"), 2);
  json_decref(j);
  assert_int_equal(ns_store_verify(ctx->store, detail, sizeof(detail)), NETSTASH_OK);
  assert_int_equal(netstash_preload_purge(ctx, ID), NETSTASH_E_NOT_FOUND);
  /* downgrade protection forgotten with the manifest: v1 installs again */
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);

  assert_int_equal(netstash_preload_purge(ctx, NULL), NETSTASH_OK);
  j = describe(ctx, NULL, 0);
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 0);
  json_decref(j);
  j = stats(ctx);
  assert_int_equal(ival(j, "manifests"), 0);
  assert_int_equal(ival(j, "resources"), 0);
  assert_int_equal(ival(json_object_get(j, "store"), "bodies"), 0);
  assert_int_equal(ival(json_object_get(json_object_get(j, "store"), "records"), "preload"), 0);
  json_decref(j);
  assert_int_equal(netstash_preload_purge(ctx, NULL), NETSTASH_OK); /* nothing: fine */
  assert_int_equal(ns_store_verify(ctx->store, detail, sizeof(detail)), NETSTASH_OK);
  netstash_ctx_del(ctx);
}

static void test_states(void **state) {
  char dir[1024], *text = NULL;
  netstash_ctx *ctx = profile_ctx("states", dir, sizeof(dir));
  json_t *j, *m;
  (void)state;
  /* incomplete: a critical body missing, nothing published */
  assert_int_equal(install_full(ctx, ID, 1, SITE, v1, 3, 1u << 0, NULL, 0, 0),
                   NETSTASH_E_INCOMPLETE);
  m = describe(ctx, ID, 1);
  assert_string_equal(sval(m, "state"), "incomplete");
  assert_int_equal(ival(m, "version"), 0);
  assert_int_equal(ival(m, "staged"), 1);
  assert_int_equal(ival(m, "resources"), 3);
  assert_int_equal(ival(m, "resources_present"), 2);
  assert_true(json_is_null(json_object_get(m, "published")));
  assert_false(
      json_is_true(json_object_get(json_array_get(json_object_get(m, "entries"), 0), "present")));
  json_decref(m);
  assert_int_equal(netstash_preload_show(ctx, SITE "app.css", &text), NETSTASH_E_NOT_FOUND);
  j = stats(ctx);
  assert_int_equal(ival(j, "manifests"), 1);
  assert_int_equal(ival(j, "active"), 0);
  json_decref(j);
  /* verify checks staged bodies too */
  assert_int_equal(netstash_preload_verify(ctx, &text), NETSTASH_OK);
  j = parse(ctx, text);
  assert_int_equal(ival(j, "checked"), 2);
  json_decref(j);
  /* completed */
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  m = describe(ctx, ID, 0);
  assert_string_equal(sval(m, "state"), "active");
  json_decref(m);

  /* expired: published, serves nothing */
  assert_int_equal(
      install_full(ctx, "old", 1, "https://old.example.com/", old, 1, 0, NULL, now_s() - 60, 0),
      NETSTASH_OK);
  m = describe(ctx, "old", 0);
  assert_string_equal(sval(m, "state"), "expired");
  json_decref(m);

  /* killed by a newer manifest's kill switch */
  assert_int_equal(install_full(ctx, ID, 2, SITE, v2, 4, 0, NULL, 0, 1), NETSTASH_OK);
  m = describe(ctx, ID, 0);
  assert_string_equal(sval(m, "state"), "killed");
  assert_int_equal(ival(m, "max_version"), 2);
  json_decref(m);
  assert_int_equal(netstash_preload_show(ctx, SITE "app.css", &text), NETSTASH_E_NOT_FOUND);
  j = stats(ctx);
  assert_int_equal(ival(j, "manifests"), 2);
  assert_int_equal(ival(j, "active"), 0);
  assert_int_equal(ival(j, "resources"), 0);
  json_decref(j);
  netstash_ctx_del(ctx);
}

/* ------------------------------------------------------------ failmalloc */

/* Allocations of the test's own thread fail at number fail_at while armed
 * (the loop thread's are never counted: results stay deterministic). */
static long fail_at, fail_n;
static int armed;
static pthread_t armed_thread;

static int fails(void) {
  return armed && pthread_equal(pthread_self(), armed_thread) && ++fail_n == fail_at;
}
static void *f_malloc(size_t n, void *ud) {
  (void)ud;
  return fails() ? NULL : malloc(n);
}
static void *f_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  return fails() ? NULL : calloc(a, b);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return fails() ? NULL : realloc(p, n);
}
static void f_free(void *p, void *ud) {
  (void)ud;
  free(p);
}

enum { OP_LIST, OP_DESCRIBE, OP_SHOW, OP_STATS, OP_VERIFY, OP_ROLLBACK, OP_PURGE, OP_N };

static netstash_error run_op(netstash_ctx *ctx, int op, char **text) {
  switch (op) {
  case OP_LIST:
    return netstash_preload_describe(ctx, NULL, 1, text);
  case OP_DESCRIBE:
    return netstash_preload_describe(ctx, ID, 1, text);
  case OP_SHOW:
    return netstash_preload_show(ctx, "https://NEWS.example.com/logo.svg?utm_source=x", text);
  case OP_STATS:
    return netstash_preload_stats(ctx, text);
  case OP_VERIFY:
    return netstash_preload_verify(ctx, text);
  case OP_ROLLBACK:
    return netstash_preload_rollback(ctx, ID);
  default:
    return netstash_preload_purge(ctx, "other");
  }
}

/* Every allocation of every call fails in turn: NETSTASH_E_NOMEM, no
 * output, nothing changed, nothing leaked (valgrind); then it succeeds. */
static void test_failmalloc(void **state) {
  netstash_allocator al = {NULL, f_malloc, f_free, f_calloc, f_realloc};
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  (void)state;
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_profile_dir(o, nst_path("failmalloc")), NETSTASH_OK);
  assert_int_equal(netstash_options_set_allocator(o, &al), NETSTASH_OK);
  assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(o);
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);
  assert_int_equal(
      install_full(ctx, "other", 1, "https://other.example.com/", other, 2, 0, NULL, 0, 0),
      NETSTASH_OK);
  armed_thread = pthread_self();
  for (int op = 0; op < OP_N; op++) {
    for (fail_at = 1;; fail_at++) {
      char *text = NULL;
      netstash_error rv;
      fail_n = 0;
      armed = 1;
      rv = run_op(ctx, op, &text);
      armed = 0;
      if (fail_n < fail_at) { /* nothing failed: the real result */
        assert_int_equal(rv, NETSTASH_OK);
        netstash_free(ctx, text);
        print_message("  op %d: %ld allocations\n", op, fail_at - 1);
        break;
      }
      if (op == OP_PURGE && rv == NETSTASH_OK) {
        /* purged; an allocation of the GC after it failed: collected later */
        char *t = NULL;
        assert_int_equal(netstash_preload_describe(ctx, "other", 0, &t), NETSTASH_E_NOT_FOUND);
        print_message("  op %d: done, GC allocation %ld failed\n", op, fail_at);
        break;
      }
      if (rv != NETSTASH_E_NOMEM)
        fail_msg("op %d, allocation %ld failing: %s", op, fail_at, netstash_error_name(rv));
      assert_null(text);
      if (op == OP_ROLLBACK) {
        json_t *m = describe(ctx, ID, 0);
        assert_int_equal(ival(m, "version"), 2); /* not half done */
        json_decref(m);
      }
    }
  }
  {
    json_t *m = describe(ctx, ID, 0);
    assert_int_equal(ival(m, "version"), 1);
    json_decref(m);
    m = describe(ctx, NULL, 0);
    assert_int_equal(json_array_size(json_object_get(m, "manifests")), 1);
    json_decref(m);
  }
  netstash_ctx_del(ctx);
}

/* ------------------------------------------------------------ CLI */

/* Runs the CLI with args; returns the exit code and stdout (malloc'd). */
static int run(const char *args, char **out) {
  char cmd[4096];
  FILE *p;
  size_t cap = 1 << 16, len = 0, r;
  char *buf = malloc(cap);
  int status;
  snprintf(cmd, sizeof(cmd), "%s %s 2>>%s", cli, args, nst_path("cli-stderr.txt"));
  p = popen(cmd, "r");
  assert_non_null(p);
  while ((r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += r;
    if (len + 1 == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
  }
  buf[len] = 0;
  status = pclose(p);
  *out = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static json_t *run_json(const char *args, int want_rc) {
  char *out;
  json_error_t e;
  json_t *j;
  int rc = run(args, &out);
  if (rc != want_rc)
    fail_msg("netstash %s: exit %d, expected %d\n%s", args, rc, want_rc, out);
  j = json_loads(out, 0, &e); /* exactly one object */
  if (!j)
    fail_msg("netstash %s: not one JSON object: %s\n%s", args, e.text, out);
  free(out);
  return j;
}

static void test_cli(void **state) {
  char dir[1024], args[2048], *out;
  netstash_ctx *ctx = profile_ctx("cli", dir, sizeof(dir));
  json_t *j, *m;
  static const char *const cmds[] = {"ls", "show", "rollback", "gc", "stats", "verify", "purge"};
  (void)state;
  for (size_t i = 0; i < NS_ARRAY_LEN(cmds); i++) {
    snprintf(args, sizeof(args), "%s --help", cmds[i]);
    assert_int_equal(run(args, &out), 0);
    assert_non_null(strstr(out, "usage: netstash"));
    assert_non_null(strstr(out, cmds[i]));
    free(out);
  }
  assert_int_equal(run("rollback", &out), 2); /* ID missing */
  free(out);
  assert_int_equal(run("gc extra", &out), 2);
  free(out);

  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  assert_int_equal(install(ctx, 2, v2, 4), NETSTASH_OK);

  snprintf(args, sizeof(args), "ls --json --profile %s", dir);
  j = run_json(args, 0);
  m = json_array_get(json_object_get(j, "manifests"), 0);
  assert_string_equal(sval(m, "id"), ID);
  assert_int_equal(ival(m, "version"), 2);
  json_decref(j);
  snprintf(args, sizeof(args), "ls --profile %s", dir);
  assert_int_equal(run(args, &out), 0);
  assert_non_null(strstr(out, "ID"));
  assert_non_null(strstr(out, ID));
  assert_non_null(strstr(out, "active"));
  assert_non_null(strstr(out, "4/4"));
  free(out);
  snprintf(args, sizeof(args), "ls %s --resources --json --profile %s", ID, dir);
  j = run_json(args, 0);
  assert_int_equal(json_array_size(json_object_get(j, "entries")), 4);
  json_decref(j);
  snprintf(args, sizeof(args), "ls %s --resources --profile %s", ID, dir);
  assert_int_equal(run(args, &out), 0);
  assert_non_null(strstr(out, SITE "app.js"));
  free(out);
  snprintf(args, sizeof(args), "ls nope.example --json --profile %s", dir);
  j = run_json(args, 9);
  assert_string_equal(sval(j, "error"), "NETSTASH_E_NOT_FOUND");
  json_decref(j);

  snprintf(args, sizeof(args), "show '%sapp.css' --json --profile %s", SITE, dir);
  j = run_json(args, 0);
  assert_string_equal(sval(j, "id"), ID);
  assert_int_equal(ival(j, "version"), 2);
  assert_non_null(json_object_get(j, "sha256"));
  json_decref(j);
  snprintf(args, sizeof(args), "show '%sapp.css' --profile %s", SITE, dir);
  assert_int_equal(run(args, &out), 0);
  assert_non_null(strstr(out, "version 2"));
  assert_non_null(strstr(out, "content-type: text/plain"));
  free(out);
  snprintf(args, sizeof(args), "show '%snone' --json --profile %s", SITE, dir);
  json_decref(run_json(args, 9));

  snprintf(args, sizeof(args), "rollback %s --json --profile %s", ID, dir);
  j = run_json(args, 0);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_int_equal(ival(j, "version"), 1);
  assert_int_equal(ival(j, "previous"), 2);
  json_decref(j);
  assert_serves(ctx, SITE "app.css", 1, v1[1].body); /* seen by this process too */
  snprintf(args, sizeof(args), "rollback %s --profile %s", ID, dir);
  assert_int_equal(run(args, &out), 0);
  assert_non_null(strstr(out, "version 2 active"));
  free(out);
  snprintf(args, sizeof(args), "rollback nope.example --json --profile %s", dir);
  json_decref(run_json(args, 9));

  snprintf(args, sizeof(args), "stats --json --profile %s", dir);
  j = run_json(args, 0);
  assert_int_equal(ival(j, "manifests"), 1);
  assert_int_equal(ival(j, "active"), 1);
  assert_int_equal(ival(j, "resources"), 4);
  assert_int_equal(ival(json_object_get(j, "store"), "bodies"), 5);
  json_decref(j);
  snprintf(args, sizeof(args), "stats --profile %s", dir);
  assert_int_equal(run(args, &out), 0);
  assert_non_null(strstr(out, "1 manifest (1 active)"));
  free(out);

  snprintf(args, sizeof(args), "verify --json --profile %s", dir);
  j = run_json(args, 0);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_int_equal(ival(json_object_get(j, "preload"), "checked"), 7);
  json_decref(j);
  corrupt(ctx, 2, v2[3].url, "tampered with");
  snprintf(args, sizeof(args), "verify --json --profile %s", dir);
  j = run_json(args, 15);
  assert_string_equal(sval(j, "error"), "NETSTASH_E_INTEGRITY");
  m = json_array_get(json_object_get(json_object_get(j, "preload"), "corrupt"), 0);
  assert_string_equal(sval(m, "url"), v2[3].url);
  json_decref(j);
  snprintf(args, sizeof(args), "verify --profile %s", dir);
  assert_int_equal(run(args, &out), 0); /* unlinked by the run before */
  assert_non_null(strstr(out, "store intact"));
  free(out);

  snprintf(args, sizeof(args), "gc --json --profile %s", dir);
  j = run_json(args, 0);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_non_null(json_object_get(j, "collected"));
  json_decref(j);

  snprintf(args, sizeof(args), "purge nope.example --json --profile %s", dir);
  json_decref(run_json(args, 9));
  snprintf(args, sizeof(args), "purge %s --json --profile %s", ID, dir);
  j = run_json(args, 0);
  assert_string_equal(sval(j, "id"), ID);
  json_decref(j);
  snprintf(args, sizeof(args), "ls --json --profile %s", dir);
  j = run_json(args, 0);
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 0);
  json_decref(j);
  snprintf(args, sizeof(args), "stats --json --profile %s", dir);
  j = run_json(args, 0);
  assert_int_equal(ival(json_object_get(j, "store"), "bodies"), 0);
  json_decref(j);
  netstash_ctx_del(ctx);

  /* the whole store still goes without an ID */
  snprintf(args, sizeof(args), "purge --profile %s", dir);
  assert_int_equal(run(args, &out), 0);
  free(out);
  snprintf(args, sizeof(args), "stats --json --profile %s", dir);
  json_decref(run_json(args, 9));
  snprintf(args, sizeof(args), "ls --json --profile %s", dir);
  j = run_json(args, 0); /* nothing there: an empty list, no store created */
  assert_int_equal(json_array_size(json_object_get(j, "manifests")), 0);
  json_decref(j);
  assert_int_equal(access(nst_path("cli/store/data.mdb"), F_OK), -1);
}

/* get --offline: never the network; answered from the preload cache. */
static void test_cli_get_offline(void **state) {
  char dir[1024], args[2048], *out;
  netstash_ctx *ctx = profile_ctx("offline", dir, sizeof(dir));
  json_t *j;
  (void)state;
  assert_int_equal(install(ctx, 1, v1, 3), NETSTASH_OK);
  netstash_ctx_del(ctx);
  snprintf(args, sizeof(args), "get --offline --no-cache --profile %s %sapp.css", dir, SITE);
  assert_int_equal(run(args, &out), 2);
  free(out);
  /* a closed port: any attempt at the network would fail differently */
  snprintf(args, sizeof(args), "get --offline --json --profile %s http://127.0.0.1:%d/x", dir,
           nst_closed_port());
  j = run_json(args, 12);
  assert_string_equal(sval(j, "error"), "NETSTASH_E_NOT_CACHED");
  json_decref(j);
  snprintf(
      args, sizeof(args),
      "get --offline --json --profile %s --resolve news.example.com:443:127.0.0.1:%d %sapp.css",
      dir, nst_closed_port(), SITE);
  j = run_json(args, 0);
  assert_string_equal(sval(j, "source"), "preload");
  assert_int_equal(ival(j, "status"), 200);
  assert_int_equal(ival(j, "bytes"), (int64_t)strlen(v1[1].body));
  json_decref(j);
  snprintf(args, sizeof(args), "get --offline --profile %s %sapp.css", dir, SITE);
  assert_int_equal(run(args, &out), 0);
  assert_string_equal(out, v1[1].body);
  free(out);
}

static int setup(void **state) {
  const char *b = getenv("NST_BUILDDIR");
  (void)state;
  setenv("XDG_DATA_HOME", nst_workdir(), 1);
  snprintf(cli, sizeof(cli), "%s/tools/netstash", b ? b : ".");
  if (access(cli, X_OK) != 0) {
    fprintf(stderr, "preload_admin_test: %s not found (set NST_BUILDDIR)\n", cli);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_profile),      cmocka_unit_test(test_describe_show),
      cmocka_unit_test(test_rollback),        cmocka_unit_test(test_verify),
      cmocka_unit_test(test_purge_gc_stats),  cmocka_unit_test(test_states),
      cmocka_unit_test(test_failmalloc),      cmocka_unit_test(test_cli),
      cmocka_unit_test(test_cli_get_offline),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
