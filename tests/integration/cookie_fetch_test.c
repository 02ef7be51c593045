/*
 * cookie_fetch_test — cookies through fetches (public API): the jar attaches
 * Cookie headers and stores Set-Cookie lines, redirect hops included; named
 * jars, no-cookies, SameSite context, persistence in the profile.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netstash/netstash.h>

#include "harness.h"

static nst_server raw;

static char *url(const char *path) {
  static char b[8][256];
  static int i;
  char *p = b[i++ % 8];
  snprintf(p, sizeof(b[0]), "http://127.0.0.1:%d%s", raw.port, path);
  return p;
}

static netstash_ctx *ctx_for(const char *profile) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  if (profile)
    netstash_options_set_profile_dir(o, profile);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK)
    fail_msg("ctx: %s", detail);
  netstash_options_del(o);
  return ctx;
}

typedef struct opts {
  const char *jar;
  int no_cookies;
  const char *sfc;
  int sfc_null, tln;
  const char *cookie_header;
  uint32_t follow;
} opts;

/* Fetches path; returns the body (static buffer). */
static const char *get(netstash_ctx *ctx, const char *path, const opts *o) {
  static char body[8192];
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *b;
  size_t len;
  assert_int_equal(netstash_request_new(&req, url(path)), NETSTASH_OK);
  netstash_request_set_collect_body(req, sizeof(body) - 1);
  if (o && o->jar)
    netstash_request_set_cookie_jar(req, o->jar);
  if (o && o->no_cookies)
    netstash_request_set_cookies(req, 0);
  if (o && (o->sfc || o->sfc_null))
    netstash_request_set_site_for_cookies(req, o->sfc, o->tln);
  if (o && o->cookie_header)
    netstash_request_add_header(req, "Cookie", o->cookie_header);
  if (o && o->follow)
    netstash_request_set_follow_redirects(req, o->follow);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_body(f, &b, &len), NETSTASH_OK);
  snprintf(body, sizeof(body), "%.*s", (int)len, (const char *)b);
  netstash_fetch_del(f);
  netstash_request_del(req);
  return body;
}

static int sends(const char *echo, const char *cookie) {
  const char *l = strcasestr(echo, "\ncookie:");
  return l && strstr(l, cookie) && strstr(l, cookie) < strchr(l + 1, '\n');
}

static void test_set_then_send(void **state) {
  netstash_ctx *ctx = ctx_for(NULL);
  (void)state;
  assert_false(sends(get(ctx, "/echo", NULL), "a=1"));
  get(ctx, "/cookie/set/a/1", NULL);
  get(ctx, "/cookie/set/b/2", NULL);
  assert_true(sends(get(ctx, "/echo", NULL), "a=1"));
  assert_true(sends(get(ctx, "/echo", NULL), "b=2"));
  /* the caller's own Cookie header wins: no jar cookies added */
  {
    opts o = {0};
    o.cookie_header = "mine=1";
    const char *e = get(ctx, "/echo", &o);
    assert_true(sends(e, "mine=1"));
    assert_false(sends(e, "a=1"));
  }
  netstash_ctx_del(ctx);
}

static void test_redirect_hop_cookies(void **state) {
  netstash_ctx *ctx = ctx_for(NULL);
  opts o = {0};
  (void)state;
  o.follow = 3;
  /* the 302 sets hop=1; the next hop (/echo) already sends it */
  assert_true(sends(get(ctx, "/cookie/redirect", &o), "hop=1"));
  netstash_ctx_del(ctx);
}

static void test_jars_and_no_cookies(void **state) {
  netstash_ctx *ctx = ctx_for(NULL);
  opts jb = {0}, none = {0};
  (void)state;
  jb.jar = "b";
  none.no_cookies = 1;
  get(ctx, "/cookie/set/inb/1", &jb);
  assert_true(sends(get(ctx, "/echo", &jb), "inb=1"));
  assert_false(sends(get(ctx, "/echo", NULL), "inb=1")); /* default jar: separate */
  get(ctx, "/cookie/set/d/1", NULL);
  assert_false(sends(get(ctx, "/echo", &none), "d=1"));   /* nothing sent */
  get(ctx, "/cookie/set/e/1", &none);                     /* nothing stored */
  assert_false(sends(get(ctx, "/echo", NULL), "e=1"));
  netstash_ctx_del(ctx);
}

static void test_samesite_context(void **state) {
  netstash_ctx *ctx = ctx_for(NULL);
  opts cross = {0}, nav = {0};
  (void)state;
  get(ctx, "/cookie/set/strict/1/SameSite=Strict", NULL);
  get(ctx, "/cookie/set/lax/1/SameSite=Lax", NULL);
  cross.sfc = "https://other.example/";
  cross.tln = 0;
  nav.sfc = "https://other.example/";
  nav.tln = 1;
  /* a cross-site subresource request: neither */
  assert_false(sends(get(ctx, "/echo", &cross), "strict=1"));
  assert_false(sends(get(ctx, "/echo", &cross), "lax=1"));
  /* a cross-site top-level GET navigation: Lax yes, Strict no */
  assert_true(sends(get(ctx, "/echo", &nav), "lax=1"));
  assert_false(sends(get(ctx, "/echo", &nav), "strict=1"));
  /* same-site (default context): both */
  assert_true(sends(get(ctx, "/echo", NULL), "strict=1"));
  netstash_ctx_del(ctx);
}

static void test_persisted_in_profile(void **state) {
  const char *prof = nst_path("cookie-profile");
  char *p = strdup(prof);
  netstash_ctx *ctx = ctx_for(p);
  (void)state;
  get(ctx, "/cookie/set/keep/1/Max-Age=3600", NULL);
  get(ctx, "/cookie/set/session/1", NULL);
  netstash_ctx_del(ctx);
  ctx = ctx_for(p);
  assert_true(sends(get(ctx, "/echo", NULL), "keep=1"));
  assert_false(sends(get(ctx, "/echo", NULL), "session=1")); /* session cookies end */
  netstash_ctx_del(ctx);
  free(p);
}

static int changes;
static void on_change(const char *jar, const netstash_cookie *c, netstash_cookie_change ch,
                      void *ud) {
  (void)jar;
  (void)c;
  (void)ch;
  (void)ud;
  changes++;
}

/* Block every cookie set from a cross-site (third-party) context. */
static int block_third_party(const char *jar, netstash_cookie_op op, netstash_cookie *c,
                             const char *u, int cross_site, void *ud) {
  (void)jar;
  (void)u;
  (void)ud;
  if (op == NETSTASH_COOKIE_OP_SET && !strcmp(netstash_cookie_name(c), "ttl")) {
    /* modify: make it a session cookie, HttpOnly */
    assert_int_equal(netstash_cookie_modify_expiry(c, -1), NETSTASH_OK);
    assert_int_equal(netstash_cookie_modify_flags(c, NETSTASH_COOKIE_HTTP_ONLY, 0), NETSTASH_OK);
  }
  if (op == NETSTASH_COOKIE_OP_SEND) /* not modifiable when sending */
    assert_int_equal(netstash_cookie_modify_expiry(c, -1), NETSTASH_E_ILLEGAL_STATE);
  return op == NETSTASH_COOKIE_OP_SET && cross_site;
}

static uint32_t ttl_flags;
static int64_t ttl_expiry = 7;
static void find_ttl(const netstash_cookie *c, void *ud) {
  (void)ud;
  if (!strcmp(netstash_cookie_name(c), "ttl")) {
    ttl_flags = netstash_cookie_flags(c);
    ttl_expiry = netstash_cookie_expires_ms(c);
  }
}

/* The embedder's API: document.cookie, listener, policy hook. */
static void test_public_api(void **state) {
  netstash_ctx *ctx = ctx_for(NULL);
  char *s = NULL;
  int stored = 0;
  opts cross = {0};
  (void)state;
  assert_int_equal(netstash_cookie_set_listener(ctx, "default", on_change, NULL), NETSTASH_OK);
  get(ctx, "/cookie/set/http/1/HttpOnly", NULL);
  assert_int_equal(netstash_cookie_script_set(ctx, "default", url("/"), NULL, "js=2", &stored),
                   NETSTASH_OK);
  assert_int_equal(stored, 1);
  assert_int_equal(netstash_cookie_script_get(ctx, "default", url("/"), NULL, &s), NETSTASH_OK);
  assert_non_null(strstr(s, "js=2"));
  assert_null(strstr(s, "http=1")); /* HttpOnly is not for scripts */
  netstash_free(ctx, s);
  assert_true(sends(get(ctx, "/echo", NULL), "js=2"));
  assert_int_equal(changes, 2);
  /* policy: third-party cookies blocked, first-party ones still stored */
  assert_int_equal(netstash_cookie_set_policy(ctx, "default", block_third_party, NULL),
                   NETSTASH_OK);
  cross.sfc = "https://tracker.example/";
  get(ctx, "/cookie/set/third/1/SameSite=None,Secure", &cross);
  get(ctx, "/cookie/set/first/1", NULL);
  assert_false(sends(get(ctx, "/echo", NULL), "third=1"));
  assert_true(sends(get(ctx, "/echo", NULL), "first=1"));
  get(ctx, "/cookie/set/ttl/1/Max-Age=3600", NULL);
  assert_int_equal(netstash_cookie_list(ctx, "default", find_ttl, NULL), NETSTASH_OK);
  assert_int_equal(ttl_expiry, -1);                          /* made a session cookie */
  assert_true(ttl_flags & NETSTASH_COOKIE_HTTP_ONLY);        /* and HttpOnly */
  {
    size_t n = 0;
    assert_int_equal(netstash_cookie_delete(ctx, "default", NULL, "first", &n), NETSTASH_OK);
    assert_int_equal(n, 1);
  }
  assert_false(sends(get(ctx, "/echo", NULL), "first=1"));
  netstash_ctx_del(ctx);
}

/* A private jar in a context with a profile is never written to the store;
 * a newer public suffix list can be loaded. */
static void test_private_jar_and_psl(void **state) {
  char *p = strdup(nst_path("private-profile")), *psl = strdup(nst_path("psl.dat"));
  netstash_ctx *ctx = ctx_for(p);
  opts priv = {0};
  FILE *fp;
  char *s = NULL;
  int stored = 1;
  (void)state;
  priv.jar = "incognito";
  assert_int_equal(netstash_cookie_jar_open(ctx, "incognito", 1), NETSTASH_OK);
  get(ctx, "/cookie/set/secret/1/Max-Age=3600", &priv);
  assert_true(sends(get(ctx, "/echo", &priv), "secret=1"));
  netstash_ctx_del(ctx);
  ctx = ctx_for(p);
  assert_false(sends(get(ctx, "/echo", &priv), "secret=1"));
  /* a list where "example.test" is a public suffix: Domain=example.test is
   * then refused for a.example.test (script set, no network needed) */
  assert_int_equal(netstash_cookie_script_set(ctx, "default", "http://a.example.test/", NULL,
                                              "y=1; Domain=example.test", &stored),
                   NETSTASH_OK);
  assert_int_equal(stored, 1); /* accepted under the default list */
  fp = fopen(psl, "w");
  assert_non_null(fp);
  fputs("// test list\ntest\nexample.test\n", fp);
  fclose(fp);
  assert_int_equal(netstash_cookie_load_public_suffixes(ctx, psl), NETSTASH_OK);
  assert_int_equal(netstash_cookie_script_set(ctx, "default", "http://a.example.test/", NULL,
                                              "x=1; Domain=example.test", &stored),
                   NETSTASH_OK);
  assert_int_equal(stored, 0);
  assert_int_equal(netstash_cookie_script_get(ctx, "default", "http://a.example.test/", NULL, &s),
                   NETSTASH_OK);
  assert_null(strstr(s, "x=1"));
  netstash_free(ctx, s);
  {
    size_t n = 99;
    assert_int_equal(netstash_cookie_sweep(ctx, "default", &n), NETSTASH_OK);
    assert_int_equal(n, 0);
  }
  netstash_ctx_del(ctx);
  free(p);
  free(psl);
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
      cmocka_unit_test(test_set_then_send),       cmocka_unit_test(test_redirect_hop_cookies),
      cmocka_unit_test(test_jars_and_no_cookies), cmocka_unit_test(test_samesite_context),
      cmocka_unit_test(test_persisted_in_profile), cmocka_unit_test(test_public_api),
      cmocka_unit_test(test_private_jar_and_psl),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
