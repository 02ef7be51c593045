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
      cmocka_unit_test(test_persisted_in_profile),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
