/*
 * cookie_test.c — lib/cookie: Set-Cookie parsing, the storage model, the
 * Cookie header, SameSite / prefix / partition matrices, public suffixes,
 * dates, limits and eviction, script view, listener and policy, cookies.txt,
 * persistence (reopen, private jars, kill -9), failing allocations.
 *
 * Most cases are data: Set-Cookie lines received for a request context,
 * then the Cookie header expected for another request context. A context
 * is written as "URL [sfc=URL|none] [init=ORIGIN] [tls=URL] [nav] [m=METHOD]";
 * without sfc= the request is same-site (site for cookies = its own URL).
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cookie/jar.h"
#include "cookie/jar_int.h"
#include "core/headers.h"
#include "store/store.h"

#define NOW INT64_C(1700000000000) /* 2023-11-14T22:13:20Z */

/* ------------------------------------------------------------ contexts */

typedef struct rctx {
  ns_url u[4];
  int have[4];
  char method[16];
  ns_cookie_request req;
} rctx;

static void url_or_die(const char *s, ns_url *u) {
  if (ns_url_parse(ns_mem_default(), s, u, NULL, 0) != NETSTASH_OK)
    fail_msg("bad test URL %s", s);
}

/* Parses "URL [sfc=URL|none] [init=URL] [tls=URL] [nav] [m=METHOD]". */
static void ctx_make(rctx *c, const char *spec) {
  char buf[2048], *save = NULL, *tok;
  int sfc_given = 0;
  memset(c, 0, sizeof(*c));
  snprintf(buf, sizeof(buf), "%s", spec);
  for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    if (!strncmp(tok, "sfc=", 4)) {
      sfc_given = 1;
      if (strcmp(tok + 4, "none") != 0) {
        url_or_die(tok + 4, &c->u[1]);
        c->have[1] = 1;
      }
    } else if (!strncmp(tok, "init=", 5)) {
      url_or_die(tok + 5, &c->u[2]);
      c->have[2] = 1;
    } else if (!strncmp(tok, "tls=", 4)) {
      url_or_die(tok + 4, &c->u[3]);
      c->have[3] = 1;
    } else if (!strcmp(tok, "nav")) {
      c->req.top_level_navigation = 1;
    } else if (!strncmp(tok, "m=", 2)) {
      snprintf(c->method, sizeof(c->method), "%s", tok + 2);
      c->req.method = c->method;
    } else {
      url_or_die(tok, &c->u[0]);
      c->have[0] = 1;
    }
  }
  assert_true(c->have[0]);
  c->req.url = &c->u[0];
  if (!sfc_given)
    c->req.site_for_cookies = &c->u[0];
  else if (c->have[1])
    c->req.site_for_cookies = &c->u[1];
  c->req.initiator = c->have[2] ? &c->u[2] : NULL;
  c->req.top_level_site = c->have[3] ? &c->u[3] : NULL;
}

static void ctx_free(rctx *c) {
  for (int i = 0; i < 4; i++)
    if (c->have[i])
      ns_url_free(ns_mem_default(), &c->u[i]);
}

static ns_cookie_status set_in(ns_cookie_jar *jar, const char *ctx, const char *line, int64_t now) {
  rctx c;
  ns_cookie_status st = NS_COOKIE_STATUS_COUNT_;
  ctx_make(&c, ctx);
  assert_int_equal(ns_cookie_jar_set(jar, &c.req, line, strlen(line), now, &st), NETSTASH_OK);
  ctx_free(&c);
  return st;
}

static char hdr[65536];
static const char *get_in(ns_cookie_jar *jar, const char *ctx, int64_t now, int script) {
  rctx c;
  ns_buf b;
  ctx_make(&c, ctx);
  ns_buf_init(&b, ns_mem_default(), 1 << 20);
  if (script)
    assert_int_equal(ns_cookie_jar_script_get(jar, &c.req, now, &b), NETSTASH_OK);
  else
    assert_int_equal(ns_cookie_jar_header(jar, &c.req, now, &b), NETSTASH_OK);
  snprintf(hdr, sizeof(hdr), "%s", ns_buf_str(&b));
  ns_buf_free(&b);
  ctx_free(&c);
  return hdr;
}

static ns_cookie_jars *g_jars;

static int jars_setup(void **state) {
  (void)state;
  return ns_cookie_jars_new(NULL, NULL, &g_jars) == NETSTASH_OK ? 0 : -1;
}
static int jars_teardown(void **state) {
  (void)state;
  ns_cookie_jars_del(g_jars);
  g_jars = NULL;
  return 0;
}

static ns_cookie_jar *fresh_jar(const char *name) {
  ns_cookie_jar *j;
  ns_cookie_jars_remove(g_jars, name, 0);
  assert_int_equal(ns_cookie_jars_open(g_jars, name, NS_COOKIE_JAR_MEMORY, NOW, &j), NETSTASH_OK);
  return j;
}

/* ------------------------------------------------------------ data-driven */

typedef struct step {
  char op;         /* 's' Set-Cookie, 'S' script set, 'g' Cookie header, 'G' script get */
  const char *ctx; /* request context */
  const char *arg; /* the line, or the expected header */
  int64_t dt_ms;   /* time after NOW */
  int status;      /* for sets: expected status, -1 any */
} step;

typedef struct ccase {
  const char *name;
  step steps[16];
} ccase;

#define SET(ctx, line) {'s', ctx, line, 0, NS_COOKIE_STORED}
#define SETX(ctx, line, st) {'s', ctx, line, 0, st}
#define SETT(ctx, line, dt, st) {'s', ctx, line, dt, st}
#define GET(ctx, exp) {'g', ctx, exp, 0, 0}
#define GETT(ctx, exp, dt) {'g', ctx, exp, dt, 0}
#define SSET(ctx, line, st) {'S', ctx, line, 0, st}
#define SGET(ctx, exp) {'G', ctx, exp, 0, 0}

static const ccase k_cases[] = {
    /* ---- RFC 6265bis §3.1 examples */
    {"rfc 3.1 host-only SID",
     {SET("https://example.com/", "SID=31d4d96e407aad42"),
      GET("https://example.com/", "SID=31d4d96e407aad42"),
      GET("https://www.example.com/", "")}},
    {"rfc 3.1 Path=/; Domain=example.com",
     {SET("https://example.com/", "SID=31d4d96e407aad42; Path=/; Domain=example.com"),
      GET("https://www.example.com/x", "SID=31d4d96e407aad42"),
      GET("https://example.com/", "SID=31d4d96e407aad42")}},
    {"rfc 3.1 Secure HttpOnly + lang",
     {SET("https://example.com/", "SID=31d4d96e407aad42; Path=/; Secure; HttpOnly"),
      SET("https://example.com/", "lang=en-US; Path=/; Domain=example.com"),
      GET("https://example.com/", "SID=31d4d96e407aad42; lang=en-US"),
      GET("http://example.com/", "lang=en-US"),
      SGET("https://example.com/", "lang=en-US")}},
    {"rfc 3.1 Expires then deletion by a past Expires",
     {SETT("https://example.com/", "lang=en-US; Expires=Wed, 09 Jun 2021 10:18:14 GMT",
           -INT64_C(1000) * 86400 * 900, NS_COOKIE_STORED),
      GETT("https://example.com/", "lang=en-US", -INT64_C(1000) * 86400 * 900),
      SETT("https://example.com/", "lang=; Expires=Sun, 06 Nov 1994 08:49:37 GMT",
           -INT64_C(1000) * 86400 * 900, NS_COOKIE_DELETED),
      GETT("https://example.com/", "", -INT64_C(1000) * 86400 * 900)}},
    /* ---- §5.6 name/value */
    {"nameless cookies (=value and value)",
     {SET("https://example.com/", "=abc"), SET("https://example.com/", "def; Path=/x"),
      GET("https://example.com/x", "def; abc"),
      SETX("https://example.com/", "=", NS_COOKIE_REJ_SYNTAX),
      SETX("https://example.com/", "  ", NS_COOKIE_REJ_SYNTAX)}},
    {"whitespace trimmed, empty value kept",
     {SET("https://example.com/", "  a  =  1 2  ; path=/"), SET("https://example.com/", "e="),
      GET("https://example.com/", "a=1 2; e=")}},
    {"control characters rejected, HTAB allowed",
     {SETX("https://example.com/", "a=1\x01", NS_COOKIE_REJ_SYNTAX),
      SETX("https://example.com/", "a=\x7f", NS_COOKIE_REJ_SYNTAX),
      SETX("https://example.com/", "a=1; Path=/\x1f", NS_COOKIE_REJ_SYNTAX),
      SET("https://example.com/", "t=x\ty"), GET("https://example.com/", "t=x\ty")}},
    {"value with '=' and quotes kept as is",
     {SET("https://example.com/", "q=\"a=b\""), GET("https://example.com/", "q=\"a=b\"")}},
    /* ---- Domain (§5.6.3, §5.7 steps 7-9) */
    {"Domain leading dot and case",
     {SET("https://www.example.com/", "a=1; Domain=.EXAMPLE.com"),
      GET("https://example.com/", "a=1"), GET("https://a.b.example.com/", "a=1"),
      GET("https://notexample.com/", "")}},
    {"Domain mismatch",
     {SETX("https://example.com/", "a=1; Domain=other.com", NS_COOKIE_REJ_DOMAIN),
      SETX("https://example.com/", "a=1; Domain=www.example.com", NS_COOKIE_REJ_DOMAIN),
      SETX("https://example.com/", "a=1; Domain=ample.com", NS_COOKIE_REJ_DOMAIN),
      GET("https://example.com/", "")}},
    {"last Domain wins; empty Domain ignored; Domain=. host-only",
     {SET("https://www.example.com/", "a=1; Domain=other.com; Domain=example.com; Domain="),
      GET("https://x.example.com/", "a=1"), SET("https://www.example.com/", "b=2; Domain=."),
      GET("https://www.example.com/", "a=1; b=2"), GET("https://x.www.example.com/", "a=1")}},
    {"public suffixes: co.uk, github.io, com",
     {SETX("https://www.example.co.uk/", "a=1; Domain=co.uk", NS_COOKIE_REJ_PUBLIC_SUFFIX),
      SETX("https://foo.github.io/", "a=1; Domain=github.io", NS_COOKIE_REJ_PUBLIC_SUFFIX),
      SETX("https://example.com/", "a=1; Domain=com", NS_COOKIE_REJ_PUBLIC_SUFFIX),
      SET("https://www.example.co.uk/", "b=1; Domain=example.co.uk"),
      SET("https://foo.github.io/", "c=1; Domain=foo.github.io"),
      GET("https://bar.github.io/", ""), GET("https://x.foo.github.io/", "c=1"),
      GET("https://example.co.uk/", "b=1")}},
    {"Domain equal to a public-suffix host: host-only",
     {SET("https://github.io/", "a=1; Domain=github.io"), GET("https://github.io/", "a=1"),
      GET("https://foo.github.io/", "")}},
    {"IP hosts: only the address itself",
     {SET("http://127.0.0.1/", "a=1; Domain=127.0.0.1"),
      SETX("http://127.0.0.1/", "b=1; Domain=0.0.1", NS_COOKIE_REJ_DOMAIN),
      GET("http://127.0.0.1/", "a=1"), GET("http://127.0.0.2/", "")}},
    /* ---- Path (§5.1.4, §5.6.4) */
    {"default-path",
     {SET("https://example.com/docs/Web/index.html", "a=1"),
      GET("https://example.com/docs/Web", "a=1"), GET("https://example.com/docs/Web/x", "a=1"),
      GET("https://example.com/docs/WebX", ""), GET("https://example.com/docs", ""),
      SET("https://example.com/one", "b=1"), GET("https://example.com/", "b=1")}},
    {"Path attribute and path-match",
     {SET("https://example.com/", "a=1; Path=/docs"), GET("https://example.com/docs", "a=1"),
      GET("https://example.com/docs/", "a=1"), GET("https://example.com/docs/Web/", "a=1"),
      GET("https://example.com/docsets", ""), GET("https://example.com/Docs", ""),
      SET("https://example.com/", "b=1; Path=/x/"), GET("https://example.com/x", ""),
      GET("https://example.com/x/y", "b=1")}},
    {"invalid Path falls back to default-path; query not part of the path",
     {SET("https://example.com/a/b?x=/c/d", "a=1; Path=rel"),
      GET("https://example.com/a/z", "a=1"), GET("https://example.com/b", "")}},
    {"ordering: longer path first, then creation time",
     {SETT("https://example.com/", "a=1; Path=/", 1, NS_COOKIE_STORED),
      SETT("https://example.com/", "b=2; Path=/foo", 2, NS_COOKIE_STORED),
      SETT("https://example.com/", "c=3; Path=/", 3, NS_COOKIE_STORED),
      SETT("https://example.com/", "d=4; Path=/foo/bar", 3, NS_COOKIE_STORED),
      GET("https://example.com/foo/bar", "d=4; b=2; a=1; c=3")}},
    {"replacing keeps the creation time (§5.7 step 22)",
     {SETT("https://example.com/", "a=1", 1, NS_COOKIE_STORED),
      SETT("https://example.com/", "b=2", 2, NS_COOKIE_STORED),
      SETT("https://example.com/", "a=3", 3, NS_COOKIE_STORED),
      GET("https://example.com/", "a=3; b=2")}},
    {"same name, different path / host-only flag are different cookies",
     {SET("https://www.example.com/", "a=1; Path=/"), SET("https://www.example.com/", "a=2; Path=/p"),
      SET("https://www.example.com/", "a=3; Domain=www.example.com"),
      GET("https://www.example.com/p", "a=2; a=1; a=3")}},
    /* ---- Expires / Max-Age (§5.6.1, §5.6.2) */
    {"Max-Age wins over Expires, whatever the order",
     {SETX("https://example.com/", "a=1; Max-Age=-1; Expires=Wed, 01 Jan 2031 00:00:00 GMT",
           NS_COOKIE_DELETED),
      SET("https://example.com/", "b=1; Expires=Sun, 06 Nov 1994 08:49:37 GMT; Max-Age=60"),
      GET("https://example.com/", "b=1"), GETT("https://example.com/", "b=1", 59999),
      GETT("https://example.com/", "", 60000)}},
    {"Max-Age=0 deletes; bad Max-Age ignored",
     {SET("https://example.com/", "a=1"), SETX("https://example.com/", "a=1; Max-Age=0", NS_COOKIE_DELETED),
      GET("https://example.com/", ""), SET("https://example.com/", "b=1; Max-Age=+5"),
      SET("https://example.com/", "c=1; Max-Age=1x"), SET("https://example.com/", "d=1; Max-Age="),
      GETT("https://example.com/", "b=1; c=1; d=1", INT64_C(1000) * 86400 * 1000)}},
    {"cookie-age-limit: 400 days",
     {SET("https://example.com/", "a=1; Max-Age=999999999"),
      SET("https://example.com/", "b=1; Expires=Fri, 31 Dec 9999 23:59:59 GMT"),
      GETT("https://example.com/", "a=1; b=1", INT64_C(1000) * 86400 * 400 - 1),
      GETT("https://example.com/", "", INT64_C(1000) * 86400 * 400)}},
    {"invalid Expires: session cookie",
     {SET("https://example.com/", "a=1; Expires=tomorrow"),
      GETT("https://example.com/", "a=1", INT64_C(1000) * 86400 * 1000)}},
    /* ---- Secure (§5.7 steps 12, 15) */
    {"Secure: set and sent over https and localhost only",
     {SET("https://example.com/", "s=1; Secure"), GET("http://example.com/", ""),
      GET("https://example.com/", "s=1"),
      SETX("http://example.com/", "t=1; Secure", NS_COOKIE_REJ_SECURE_ORIGIN),
      SET("http://localhost:8080/", "l=1; Secure"), GET("http://localhost/", "l=1"),
      SET("http://127.0.0.1/", "i=1; Secure"), GET("http://127.0.0.1/", "i=1"),
      SET("http://a.localhost/", "k=1; Secure"), GET("http://a.localhost/", "k=1")}},
    {"leave secure cookies alone",
     {SET("https://www.example.com/", "a=1; Secure"),
      SETX("http://www.example.com/", "a=2", NS_COOKIE_REJ_OVERWRITE_SECURE),
      SETX("http://www.example.com/", "a=2; Path=/foo", NS_COOKIE_REJ_OVERWRITE_SECURE),
      SETX("http://www.example.com/", "a=2; Domain=example.com", NS_COOKIE_REJ_OVERWRITE_SECURE),
      SET("http://www.example.com/", "b=2"), SET("https://www.example.com/", "a=3"),
      GET("https://www.example.com/foo", "a=3; b=2")}},
    {"leave secure alone: a different path is not shadowed",
     {SET("https://example.com/", "a=1; Secure; Path=/foo"), SET("http://example.com/", "a=2; Path=/"),
      GET("http://example.com/foo", "a=2")}},
    /* ---- HttpOnly and the script API */
    {"HttpOnly vs document.cookie",
     {SET("https://example.com/", "h=1; HttpOnly"), SSET("https://example.com/", "h=2", NS_COOKIE_REJ_OVERWRITE_HTTP_ONLY),
      SSET("https://example.com/", "x=1; HttpOnly", NS_COOKIE_REJ_HTTP_ONLY),
      SSET("https://example.com/", "s=1", NS_COOKIE_STORED), SGET("https://example.com/", "s=1"),
      GET("https://example.com/", "h=1; s=1"),
      SSET("https://example.com/", "s=1; SameSite=Lax", NS_COOKIE_STORED),
      SSET("https://example.com/ sfc=https://other.example/", "t=1", NS_COOKIE_REJ_SAMESITE_CONTEXT)}},
    /* ---- SameSite (§5.6.7, §5.7 steps 17-18, §5.8.3) */
    {"SameSite retrieval matrix",
     {SET("https://site.example/", "s=1; SameSite=Strict"), SET("https://site.example/", "l=1; SameSite=Lax"),
      SET("https://site.example/", "d=1"), SET("https://site.example/", "n=1; SameSite=None; Secure"),
      SET("https://site.example/", "u=1; SameSite=Bogus"),
      GET("https://site.example/", "s=1; l=1; d=1; n=1; u=1"),
      GET("https://site.example/ sfc=https://www.site.example/", "s=1; l=1; d=1; n=1; u=1"),
      GET("https://site.example/ sfc=https://other.example/", "n=1"),
      GET("https://site.example/ sfc=none", "n=1"),
      GET("https://site.example/ init=https://other.example nav", "l=1; d=1; n=1; u=1"),
      GET("https://site.example/ sfc=none nav m=HEAD", "l=1; d=1; n=1; u=1"),
      GET("https://site.example/ init=https://other.example nav m=POST", "n=1"),
      GET("https://site.example/ init=https://other.example", "n=1"),
      GET("https://site.example/ init=https://a.site.example nav m=POST", "s=1; l=1; d=1; n=1; u=1"),
      GET("https://site.example/ sfc=http://site.example/", "n=1")}},
    {"SameSite set context and None without Secure",
     {SETX("https://site.example/", "n=1; SameSite=None", NS_COOKIE_REJ_SAMESITE_NONE_INSECURE),
      SETX("https://site.example/ sfc=https://other.example/", "l=1; SameSite=Lax", NS_COOKIE_REJ_SAMESITE_CONTEXT),
      SETX("https://site.example/ sfc=https://other.example/", "d=1", NS_COOKIE_REJ_SAMESITE_CONTEXT),
      SET("https://site.example/ sfc=https://other.example/", "n=1; SameSite=None; Secure"),
      SET("https://site.example/ sfc=none init=https://other.example nav", "s=1; SameSite=Strict"),
      SET("https://site.example/ init=https://other.example nav m=POST", "l=1; SameSite=Lax"),
      GET("https://site.example/", "n=1; s=1; l=1")}},
    /* ---- prefixes (§4.1.3, §5.7 steps 19-21) */
    {"__Secure- prefix",
     {SETX("https://example.com/", "__Secure-a=1", NS_COOKIE_REJ_PREFIX_SECURE),
      SETX("http://example.com/", "__Secure-a=1; Secure", NS_COOKIE_REJ_SECURE_ORIGIN),
      SET("https://example.com/", "__Secure-a=1; Secure; Domain=example.com; Path=/x"),
      SETX("https://example.com/", "__SECURE-b=1", NS_COOKIE_REJ_PREFIX_SECURE),
      SETX("https://example.com/", "=__secure-c", NS_COOKIE_REJ_PREFIX_SECURE),
      SET("https://example.com/", "_Secure-d=1"), GET("https://example.com/x", "__Secure-a=1; _Secure-d=1")}},
    {"__Host- prefix",
     {SET("https://example.com/", "__Host-a=1; Secure; Path=/"),
      SETX("https://example.com/", "__Host-b=1; Secure", NS_COOKIE_REJ_PREFIX_HOST),
      SETX("https://example.com/", "__Host-c=1; Secure; Path=/; Domain=example.com", NS_COOKIE_REJ_PREFIX_HOST),
      SETX("https://example.com/", "__Host-d=1; Secure; Path=/foo", NS_COOKIE_REJ_PREFIX_HOST),
      SETX("https://example.com/", "__Host-e=1; Path=/", NS_COOKIE_REJ_PREFIX_HOST),
      SETX("https://example.com/", "__HOST-f=1; Secure", NS_COOKIE_REJ_PREFIX_HOST),
      SETX("https://example.com/", "=__Host-g", NS_COOKIE_REJ_PREFIX_HOST),
      SET("https://example.com/", "__host-h=1; Secure; Path=/"),
      GET("https://example.com/", "__Host-a=1; __host-h=1"), GET("https://www.example.com/", "")}},
    /* ---- CHIPS */
    {"Partitioned cookies keyed by top-level site",
     {SET("https://embed.example/ sfc=none tls=https://top1.example/", "p=1; Secure; Partitioned; SameSite=None"),
      SET("https://embed.example/ sfc=none tls=https://top1.example/", "u=1; Secure; SameSite=None"),
      SETX("https://embed.example/ sfc=none tls=https://top1.example/", "q=1; Partitioned; SameSite=None", NS_COOKIE_REJ_SAMESITE_NONE_INSECURE),
      SETX("https://embed.example/ tls=https://top1.example/", "q=1; Partitioned", NS_COOKIE_REJ_PARTITIONED_INSECURE),
      GET("https://embed.example/ sfc=none tls=https://www.top1.example/", "p=1; u=1"),
      GET("https://embed.example/ sfc=none tls=https://top2.example/", "u=1"),
      GET("https://embed.example/", "u=1"),
      SET("https://embed.example/ sfc=none tls=https://top2.example/", "p=2; Secure; Partitioned; SameSite=None"),
      GET("https://embed.example/ sfc=none tls=https://top2.example/", "u=1; p=2"),
      GET("https://embed.example/ sfc=none tls=https://top1.example/", "p=1; u=1")}},
    {"Partitioned top-level (no tls: the request's own site)",
     {SET("https://a.example/", "p=1; Secure; Partitioned"), GET("https://a.example/", "p=1"),
      GET("https://a.example/ tls=https://a.example/", "p=1"),
      GET("https://a.example/ tls=https://b.example/", "")}},
};

static void run_case(const ccase *cc) {
  ns_cookie_jar *jar = fresh_jar("case");
  for (size_t i = 0; i < NS_ARRAY_LEN(cc->steps) && cc->steps[i].op; i++) {
    const step *s = &cc->steps[i];
    int64_t now = NOW + s->dt_ms;
    if (s->op == 's' || s->op == 'S') {
      rctx c;
      ns_cookie_status st;
      ctx_make(&c, s->ctx);
      if (s->op == 's')
        assert_int_equal(ns_cookie_jar_set(jar, &c.req, s->arg, strlen(s->arg), now, &st), NETSTASH_OK);
      else
        assert_int_equal(ns_cookie_jar_script_set(jar, &c.req, s->arg, strlen(s->arg), now, &st), NETSTASH_OK);
      ctx_free(&c);
      if (s->status >= 0 && (int)st != s->status)
        fail_msg("case \"%s\" step %zu: %s -> status %s, expected %s", cc->name, i, s->arg,
                 ns_cookie_status_text(st), ns_cookie_status_text((ns_cookie_status)s->status));
    } else {
      const char *got = get_in(jar, s->ctx, now, s->op == 'G');
      if (strcmp(got, s->arg) != 0)
        fail_msg("case \"%s\" step %zu: %s -> \"%s\", expected \"%s\"", cc->name, i, s->ctx, got,
                 s->arg);
    }
  }
}

static void test_cases(void **state) {
  (void)state;
  for (size_t i = 0; i < NS_ARRAY_LEN(k_cases); i++)
    run_case(&k_cases[i]);
  print_message("  %zu data-driven cases\n", NS_ARRAY_LEN(k_cases));
}

/* ------------------------------------------------------------ dates */

static int64_t tm_of(int y, int mo, int d, int h, int mi, int s) {
  struct tm t;
  memset(&t, 0, sizeof(t));
  t.tm_year = y - 1900;
  t.tm_mon = mo - 1;
  t.tm_mday = d;
  t.tm_hour = h;
  t.tm_min = mi;
  t.tm_sec = s;
  return (int64_t)timegm(&t);
}

static void test_dates(void **state) {
  (void)state;
  static const struct {
    const char *s;
    int ok, y, mo, d, h, mi, sec;
  } k[] = {
      {"Wed, 09 Jun 2021 10:18:14 GMT", 1, 2021, 6, 9, 10, 18, 14},
      {"Sun, 06 Nov 1994 08:49:37 GMT", 1, 1994, 11, 6, 8, 49, 37},
      {"Sunday, 06-Nov-94 08:49:37 GMT", 1, 1994, 11, 6, 8, 49, 37},
      {"Sun Nov  6 08:49:37 1994", 1, 1994, 11, 6, 8, 49, 37},
      {"06 nov 94 8:49:37", 1, 1994, 11, 6, 8, 49, 37},
      {"1 JAN 70 00:00:00", 1, 1970, 1, 1, 0, 0, 0},
      {"1 Jan 69 00:00:00", 1, 2069, 1, 1, 0, 0, 0},
      {"1 Jan 00 0:0:0", 1, 2000, 1, 1, 0, 0, 0},
      {"31 Dec 99 23:59:59", 1, 1999, 12, 31, 23, 59, 59},
      {"foo 06 bar Nov baz 1994 08:49:37 qux", 1, 1994, 11, 6, 8, 49, 37},
      {"1st January 2022 1:2:3am", 1, 2022, 1, 1, 1, 2, 3},
      {"2022-Jan-15 12:00:00", 1, 2022, 1, 15, 12, 0, 0}, /* '-' is a delimiter */
      {"15-Jan-2022 12:00:00", 1, 2022, 1, 15, 12, 0, 0},
      {"Jan 2022 00:00:00 12", 1, 2022, 1, 12, 0, 0, 0},
      {"Jan 1 2022garbage 00:00:00", 1, 2022, 1, 1, 0, 0, 0},
      {"Mon, 01 Jan 1601 00:00:00 GMT", 1, 1601, 1, 1, 0, 0, 0},
      {"Fri, 31 Dec 9999 23:59:59 GMT", 1, 9999, 12, 31, 23, 59, 59},
      {"Tue, 29 Feb 2000 00:00:00", 1, 2000, 2, 29, 0, 0, 0},
      {"Thu, 29 Feb 2001 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Thu, 31 Feb 2022 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 32 Jan 2022 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 00 Jan 2022 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 01 Jan 1600 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 01 Jan 2022 24:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 01 Jan 2022 23:60:00", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 01 Jan 2022 23:59:60", 0, 0, 0, 0, 0, 0, 0},
      {"Mon, 01 Jan 2022", 0, 0, 0, 0, 0, 0, 0},
      {"123 Jan 2022 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"01 Jan 12345 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"01 Foo 2022 00:00:00", 0, 0, 0, 0, 0, 0, 0},
      {"001:02:03 1 Jan 2022", 0, 0, 0, 0, 0, 0, 0},
      {"", 0, 0, 0, 0, 0, 0, 0},
      {"0", 0, 0, 0, 0, 0, 0, 0},
  };
  for (size_t i = 0; i < NS_ARRAY_LEN(k); i++) {
    int64_t t = -1;
    int ok = ns_cookie_date_parse(k[i].s, strlen(k[i].s), &t);
    if (ok != k[i].ok)
      fail_msg("date \"%s\": ok=%d, expected %d", k[i].s, ok, k[i].ok);
    if (ok && t != tm_of(k[i].y, k[i].mo, k[i].d, k[i].h, k[i].mi, k[i].sec))
      fail_msg("date \"%s\": %lld", k[i].s, (long long)t);
  }
  /* a NUL inside the value is a token character, not the end */
  assert_int_equal(ns_cookie_date_parse("1 Jan 2022 0:0:0\0x", 18, &(int64_t){0}), 1);
}

/* ------------------------------------------------------------ parser limits */

static void test_sizes(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("sizes");
  static char line[8192], big[2048];
  /* name + value = 4096: accepted; 4097: rejected */
  memset(line, 0, sizeof(line));
  line[0] = 'n';
  line[1] = '=';
  memset(line + 2, 'v', 4095);
  assert_int_equal(set_in(jar, "https://example.com/", line, NOW), NS_COOKIE_STORED);
  line[2 + 4095] = 'v';
  assert_int_equal(set_in(jar, "https://example.com/", line, NOW), NS_COOKIE_REJ_SYNTAX);
  /* nameless 4096 */
  memset(line, 'w', 4096);
  line[4096] = 0;
  assert_int_equal(set_in(jar, "https://example.com/", line, NOW), NS_COOKIE_STORED);
  /* an attribute value of 1024 is used, 1025 ignored */
  jar = fresh_jar("sizes2");
  memset(big, 0, sizeof(big));
  big[0] = '/';
  memset(big + 1, 'p', 1023);
  snprintf(line, sizeof(line), "a=1; Path=%s", big);
  assert_int_equal(set_in(jar, "https://example.com/x/y", line, NOW), NS_COOKIE_STORED);
  assert_string_equal(get_in(jar, "https://example.com/x/y", NOW, 0), "");
  big[1024] = 'p';
  snprintf(line, sizeof(line), "b=1; Path=%s", big);
  assert_int_equal(set_in(jar, "https://example.com/x/y", line, NOW), NS_COOKIE_STORED);
  assert_string_equal(get_in(jar, "https://example.com/x/y", NOW, 0), "b=1");
  /* the long-path cookie is the one sent to its own path, first */
  snprintf(line, sizeof(line), "https://example.com%.1024s/z", big);
  assert_string_equal(get_in(jar, line, NOW, 0), "a=1");
}

/* ------------------------------------------------------------ eviction */

static int ev_count[5];
static void count_listener(ns_cookie_jar *jar, const ns_cookie *c, ns_cookie_change ch, void *ud) {
  (void)jar;
  (void)c;
  (void)ud;
  ev_count[ch]++;
}

static void test_eviction_per_domain(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("evict");
  char line[64], url[64];
  memset(ev_count, 0, sizeof(ev_count));
  ns_cookie_jar_set_listener(jar, count_listener, NULL);
  /* 10 secure cookies first (the least recently used), then non-secure */
  for (int i = 0; i < 10; i++) {
    snprintf(line, sizeof(line), "s%d=1; Secure; Domain=example.com", i);
    assert_int_equal(set_in(jar, "https://example.com/", line, NOW + i), NS_COOKIE_STORED);
  }
  for (int i = 0; i < 170; i++) {
    snprintf(line, sizeof(line), "n%d=1", i);
    snprintf(url, sizeof(url), "https://h%d.example.com/", i % 7);
    assert_int_equal(set_in(jar, url, line, NOW + 100 + i), NS_COOKIE_STORED);
  }
  assert_int_equal(ns_cookie_jar_count(jar), 180);
  assert_int_equal(ev_count[NS_COOKIE_EVICTED], 0);
  /* every h5 cookie is accessed, so they are no longer among the least
   * recently used (the secure domain cookies are sent there too) */
  assert_non_null(strstr(get_in(jar, "https://h5.example.com/", NOW + 1000, 0), "n5=1"));
  /* the 181st: purge to 150, non-secure least recently accessed first:
   * n0..n35 but the five h5 ones */
  assert_int_equal(set_in(jar, "https://example.com/", "last=1", NOW + 2000), NS_COOKIE_STORED);
  assert_int_equal(ns_cookie_jar_count(jar), 150);
  assert_int_equal(ev_count[NS_COOKIE_EVICTED], 31);
  {
    const char *h = get_in(jar, "https://example.com/", NOW + 3000, 0);
    for (int i = 0; i < 10; i++) {
      snprintf(line, sizeof(line), "s%d=1", i);
      assert_non_null(strstr(h, line)); /* secure ones all kept */
    }
    assert_non_null(strstr(h, "last=1"));
  }
  assert_null(strstr(get_in(jar, "https://h0.example.com/", NOW + 3000, 0), "n0=1"));
  assert_null(strstr(get_in(jar, "https://h0.example.com/", NOW + 3000, 0), "n35=1"));
  assert_non_null(strstr(get_in(jar, "https://h0.example.com/", NOW + 3000, 0), "n42=1"));
  assert_non_null(strstr(get_in(jar, "https://h5.example.com/", NOW + 3000, 0), "n5=1"));
  assert_non_null(strstr(get_in(jar, "https://h1.example.com/", NOW + 3000, 0), "n36=1"));
  /* another registrable domain is not affected by example.com's count */
  assert_int_equal(set_in(jar, "https://other.com/", "o=1", NOW + 4000), NS_COOKIE_STORED);
  assert_int_equal(ns_cookie_jar_count(jar), 151);
}

static void test_eviction_expired_first(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("evict2");
  ns_cookie_limits l = {10, 8, 0, 0};
  char line[64];
  assert_int_equal(ns_cookie_jar_set_limits(jar, &l), NETSTASH_OK);
  for (int i = 0; i < 10; i++) {
    snprintf(line, sizeof(line), "%s%d=1%s", i < 3 ? "e" : "k", i, i < 3 ? "; Max-Age=5" : "");
    assert_int_equal(set_in(jar, "https://example.com/", line, NOW + i), NS_COOKIE_STORED);
  }
  /* at NOW+10s the three e* are expired: they go, nothing else */
  assert_int_equal(set_in(jar, "https://example.com/", "z=1", NOW + 10000), NS_COOKIE_STORED);
  assert_int_equal(ns_cookie_jar_count(jar), 8);
  assert_string_equal(get_in(jar, "https://example.com/", NOW + 10000, 0),
                      "k3=1; k4=1; k5=1; k6=1; k7=1; k8=1; k9=1; z=1");
  l.per_domain_max = 5;
  l.per_domain_purge_to = 5;
  assert_int_equal(ns_cookie_jar_set_limits(jar, &l), NETSTASH_E_INVALID_ARGUMENT);
}

static void test_eviction_total(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("evict3");
  char line[64], url[64];
  for (int i = 0; i < 3301; i++) {
    snprintf(line, sizeof(line), "c%d=1%s", i, i % 2 ? "; Secure" : "");
    snprintf(url, sizeof(url), "https://d%d.example%d.com/", i % 5, i % 30);
    assert_int_equal(set_in(jar, url, line, NOW + i), NS_COOKIE_STORED);
  }
  assert_int_equal(ns_cookie_jar_count(jar), 3000);
  /* 301 evicted: the oldest non-secure ones (even numbers c0..c600); no
   * secure cookie goes */
  assert_int_equal(strncmp(get_in(jar, "https://d0.example0.com/", NOW + 5000, 0), "c630=1; ", 8), 0);
  assert_int_equal(strncmp(get_in(jar, "https://d1.example1.com/", NOW + 5000, 0), "c1=1; c31=1", 11), 0);
}

/* ------------------------------------------------------------ listener, policy, delete */

typedef struct ev {
  char name[32];
  int change;
} ev;
static ev evs[64];
static int nev;
static void rec_listener(ns_cookie_jar *jar, const ns_cookie *c, ns_cookie_change ch, void *ud) {
  (void)jar;
  (void)ud;
  if (nev < 64) {
    snprintf(evs[nev].name, sizeof(evs[nev].name), "%s=%s", c->name, c->value);
    evs[nev++].change = ch;
  }
}

static void test_listener(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("listen");
  size_t n;
  nev = 0;
  ns_cookie_jar_set_listener(jar, rec_listener, NULL);
  set_in(jar, "https://example.com/", "a=1", NOW);
  set_in(jar, "https://example.com/", "a=2", NOW);
  set_in(jar, "https://example.com/", "a=2; Max-Age=0", NOW);
  set_in(jar, "https://example.com/", "b=1; Max-Age=1", NOW);
  set_in(jar, "https://example.com/", "c=1", NOW);
  assert_int_equal(ns_cookie_jar_sweep(jar, NOW + 1000, &n), NETSTASH_OK);
  assert_int_equal(n, 1);
  assert_int_equal(ns_cookie_jar_delete(jar, NULL, "c", &n), NETSTASH_OK);
  assert_int_equal(n, 1);
  static const struct {
    const char *name;
    int ch;
  } want[] = {{"a=1", NS_COOKIE_ADDED},  {"a=1", NS_COOKIE_OVERWRITTEN}, {"a=2", NS_COOKIE_ADDED},
              {"a=2", NS_COOKIE_REMOVED}, {"b=1", NS_COOKIE_ADDED},      {"c=1", NS_COOKIE_ADDED},
              {"b=1", NS_COOKIE_EXPIRED}, {"c=1", NS_COOKIE_REMOVED}};
  assert_int_equal(nev, NS_ARRAY_LEN(want));
  for (int i = 0; i < nev; i++) {
    assert_string_equal(evs[i].name, want[i].name);
    assert_int_equal(evs[i].change, want[i].ch);
  }
}

static void test_delete(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("del");
  size_t n;
  set_in(jar, "https://example.com/", "a=1", NOW);
  set_in(jar, "https://www.example.com/", "a=1", NOW);
  set_in(jar, "https://www.example.com/", "b=1", NOW);
  set_in(jar, "https://notexample.com/", "a=1", NOW);
  set_in(jar, "https://other.org/", "a=1", NOW);
  assert_int_equal(ns_cookie_jar_delete(jar, "example.com", "a", &n), NETSTASH_OK);
  assert_int_equal(n, 2);
  assert_int_equal(ns_cookie_jar_delete(jar, "example.com", NULL, &n), NETSTASH_OK);
  assert_int_equal(n, 1);
  assert_int_equal(ns_cookie_jar_count(jar), 2);
  assert_int_equal(ns_cookie_jar_delete(jar, NULL, NULL, &n), NETSTASH_OK);
  assert_int_equal(n, 2);
  assert_int_equal(ns_cookie_jar_count(jar), 0);
}

/* third-party blocking, and "modify": every cookie becomes a session cookie */
static ns_cookie_verdict block_3p(ns_cookie_jar *jar, ns_cookie_op op, const ns_cookie_request *req,
                                  ns_cookie *c, void *ud) {
  (void)jar;
  if (req && ns_cookie_jars_cross_site(ud, req))
    return NS_COOKIE_BLOCK;
  if (op == NS_COOKIE_OP_SET) {
    c->persistent = 0;
    c->same_site = NS_COOKIE_SS_STRICT;
  }
  return NS_COOKIE_ALLOW;
}

static void test_policy(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("policy");
  ns_cookie_jar_set_policy(jar, block_3p, g_jars);
  assert_int_equal(set_in(jar, "https://t.example/ sfc=https://top.example/", "n=1; SameSite=None; Secure", NOW),
                   NS_COOKIE_REJ_POLICY);
  assert_int_equal(set_in(jar, "https://t.example/", "n=1; SameSite=None; Secure; Max-Age=100", NOW),
                   NS_COOKIE_STORED);
  assert_string_equal(get_in(jar, "https://t.example/", NOW + 200000, 0), "n=1"); /* now a session cookie */
  assert_string_equal(get_in(jar, "https://t.example/ sfc=https://top.example/", NOW, 0), "");
  ns_cookie_jar_set_policy(jar, NULL, NULL);
  /* it was made Strict by the hook */
  assert_string_equal(get_in(jar, "https://t.example/ sfc=https://top.example/", NOW, 0), "");
  assert_string_equal(get_in(jar, "https://t.example/ init=https://x.example nav", NOW, 0), "");
}

/* ------------------------------------------------------------ jars and PSL */

static void test_jars(void **state) {
  (void)state;
  ns_cookie_jar *a, *b, *a2;
  assert_int_equal(ns_cookie_jars_open(g_jars, "a", NS_COOKIE_JAR_MEMORY, NOW, &a), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(g_jars, "b", NS_COOKIE_JAR_MEMORY, NOW, &b), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(g_jars, "a", 0, NOW, &a2), NETSTASH_OK);
  assert_ptr_equal(a, a2);
  assert_ptr_equal(ns_cookie_jars_get(g_jars, "b"), b);
  assert_string_equal(ns_cookie_jar_name(b), "b");
  set_in(a, "https://example.com/", "x=1", NOW);
  assert_string_equal(get_in(b, "https://example.com/", NOW, 0), "");
  assert_string_equal(get_in(a, "https://example.com/", NOW, 0), "x=1");
  assert_int_equal(ns_cookie_jars_open(g_jars, "", 0, NOW, &a2), NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_cookie_jars_open(g_jars, "0123456789012345678901234567890123456789012345678901234567890123456789", 0, NOW, &a2),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(ns_cookie_jars_remove(g_jars, "a", 0), NETSTASH_OK);
  assert_null(ns_cookie_jars_get(g_jars, "a"));
  assert_int_equal(ns_cookie_jars_remove(g_jars, "a", 0), NETSTASH_E_NOT_FOUND);
}

static void test_psl_file(void **state) {
  (void)state;
  char path[] = "/tmp/nst-psl-XXXXXX";
  int fd = mkstemp(path);
  const char *list = "// test list\ncom\nexample.com\n*.wild.test\n";
  ns_cookie_jar *jar;
  assert_true(fd >= 0);
  assert_int_equal(write(fd, list, strlen(list)), (ssize_t)strlen(list));
  close(fd);
  assert_true(ns_cookie_jars_is_public_suffix(g_jars, "co.uk"));
  assert_false(ns_cookie_jars_is_public_suffix(g_jars, "example.com"));
  assert_int_equal(ns_cookie_jars_load_psl(g_jars, path), NETSTASH_OK);
  assert_true(ns_cookie_jars_is_public_suffix(g_jars, "example.com"));
  jar = fresh_jar("psl");
  assert_int_equal(set_in(jar, "https://www.example.com/", "a=1; Domain=example.com", NOW),
                   NS_COOKIE_REJ_PUBLIC_SUFFIX);
  assert_int_equal(set_in(jar, "https://a.b.wild.test/", "a=1; Domain=b.wild.test", NOW),
                   NS_COOKIE_REJ_PUBLIC_SUFFIX);
  assert_int_equal(ns_cookie_jars_load_psl(g_jars, "/nonexistent/psl.dat"), NETSTASH_E_IO);
  assert_true(ns_cookie_jars_is_public_suffix(g_jars, "example.com")); /* unchanged */
  unlink(path);
}

/* ------------------------------------------------------------ cookies.txt */

static const char k_curl_file[] =
    "# Netscape HTTP Cookie File\n"
    "# https://curl.se/docs/http-cookies.html\n"
    "# This file was generated by libcurl! Edit at your own risk.\n"
    "\n"
    "#HttpOnly_.example.com\tTRUE\t/\tTRUE\t1720000000\tsid\tabc\n"
    "www.example.com\tFALSE\t/app\tFALSE\t0\tlang\ten-US\n"
    ".example.com\tTRUE\t/\tFALSE\t1720000000\tempty\t\n"
    "www.example.com\tFALSE\t/\tFALSE\t1720000000\tnovalue\n"
    "old.example.com\tFALSE\t/\tFALSE\t1000\texpired\t1\r\n"
    ".co.uk\tTRUE\t/\tFALSE\t0\tpsl\t1\n"
    "bad line without tabs\n"
    "www.example.com\tFALSE\t/\tFALSE\tsoon\tbadexp\t1\n"
    "www.example.com\tFALSE\t/\tTRUE\t0\ttabbed\tx\ty\n";

static void test_netscape(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("txt"), *j2;
  size_t imported, skipped;
  ns_buf out, out2;
  assert_int_equal(ns_cookie_jar_import_netscape(jar, k_curl_file, strlen(k_curl_file), NOW,
                                                 &imported, &skipped),
                   NETSTASH_OK);
  assert_int_equal(imported, 5);
  assert_int_equal(skipped, 4);
  assert_string_equal(get_in(jar, "https://www.example.com/app/x", NOW, 0),
                      "lang=en-US; sid=abc; empty=; novalue=; tabbed=x\ty");
  assert_string_equal(get_in(jar, "http://www.example.com/", NOW, 0), "empty=; novalue=");
  assert_string_equal(get_in(jar, "https://www.example.com/", NOW, 1), "empty=; novalue=; tabbed=x\ty");
  ns_buf_init(&out, ns_mem_default(), 1 << 20);
  ns_buf_init(&out2, ns_mem_default(), 1 << 20);
  assert_int_equal(ns_cookie_jar_export_netscape(jar, NOW, &out, &skipped), NETSTASH_OK);
  assert_int_equal(skipped, 0);
  assert_non_null(strstr(ns_buf_str(&out), "#HttpOnly_.example.com\tTRUE\t/\tTRUE\t1720000000\tsid\tabc\n"));
  assert_non_null(strstr(ns_buf_str(&out), "\nwww.example.com\tFALSE\t/app\tFALSE\t0\tlang\ten-US\n"));
  /* round trip: import the export into another jar, export again: same */
  j2 = fresh_jar("txt2");
  assert_int_equal(ns_cookie_jar_import_netscape(j2, (const char *)out.data, out.len, NOW, &imported, NULL),
                   NETSTASH_OK);
  assert_int_equal(imported, 5);
  assert_int_equal(ns_cookie_jar_export_netscape(j2, NOW, &out2, NULL), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&out), ns_buf_str(&out2));
  assert_string_equal(get_in(j2, "https://www.example.com/app/x", NOW, 0),
                      "lang=en-US; sid=abc; empty=; novalue=; tabbed=x\ty");
  /* partitioned cookies are not exported */
  set_in(j2, "https://www.example.com/ tls=https://top.example/", "p=1; Secure; Partitioned", NOW);
  ns_buf_reset(&out2);
  assert_int_equal(ns_cookie_jar_export_netscape(j2, NOW, &out2, &skipped), NETSTASH_OK);
  assert_int_equal(skipped, 1);
  ns_buf_free(&out);
  ns_buf_free(&out2);
}

/* ------------------------------------------------------------ persistence */

static char tmpdir[256];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb;
  (void)flag;
  (void)f;
  return remove(p);
}

static int store_setup(void **state) {
  const char *t = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/nst-cookie-XXXXXX", t ? t : "/tmp");
  if (!mkdtemp(tmpdir))
    return -1;
  return jars_setup(state);
}

static int store_teardown(void **state) {
  jars_teardown(state);
  nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

static ns_store *open_store(void) {
  ns_store_params p;
  ns_store *s = NULL;
  char detail[256];
  ns_store_params_init(&p);
  p.dir = tmpdir;
  p.lmdb_flags = 0;
  if (ns_store_open(&p, &s, detail, sizeof(detail)) != NETSTASH_OK)
    fail_msg("store open: %s", detail);
  return s;
}

static void test_persistence(void **state) {
  (void)state;
  ns_store *s = open_store();
  ns_cookie_jars *js;
  ns_cookie_jar *def, *priv, *work;
  char line[600];
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "default", 0, NOW, &def), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "private", NS_COOKIE_JAR_MEMORY, NOW, &priv), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "work", NS_COOKIE_JAR_PERSIST_SESSION, NOW, &work), NETSTASH_OK);
  assert_int_equal(set_in(def, "https://example.com/", "p=1; Max-Age=3600; SameSite=Strict; HttpOnly", NOW), NS_COOKIE_STORED);
  assert_int_equal(set_in(def, "https://example.com/", "q=2; Max-Age=3600; Path=/a", NOW + 5), NS_COOKIE_STORED);
  assert_int_equal(set_in(def, "https://example.com/", "s=session", NOW), NS_COOKIE_STORED);
  assert_int_equal(set_in(def, "https://e.example/ sfc=none tls=https://top.example/", "c=1; Secure; Partitioned; SameSite=None; Max-Age=99", NOW), NS_COOKIE_STORED);
  assert_int_equal(set_in(def, "https://example.com/", "gone=1; Max-Age=10", NOW), NS_COOKIE_STORED);
  /* a long name: the store key is hashed */
  memset(line, 'N', 520);
  snprintf(line + 520, sizeof(line) - 520, "=long; Max-Age=3600");
  assert_int_equal(set_in(def, "https://example.com/", line, NOW), NS_COOKIE_STORED);
  assert_int_equal(set_in(priv, "https://example.com/", "priv=1; Max-Age=3600", NOW), NS_COOKIE_STORED);
  assert_int_equal(set_in(work, "https://example.com/", "w=1", NOW), NS_COOKIE_STORED);
  /* an overwrite and a delete reach the store too */
  assert_int_equal(set_in(def, "https://example.com/", "q=3; Max-Age=3600; Path=/a", NOW + 10), NS_COOKIE_STORED);
  ns_cookie_jars_del(js);
  ns_store_close(s);

  s = open_store();
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "default", 0, NOW + 60000, &def), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "private", NS_COOKIE_JAR_MEMORY, NOW, &priv), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "work", NS_COOKIE_JAR_PERSIST_SESSION, NOW, &work), NETSTASH_OK);
  assert_int_equal(ns_cookie_jar_count(def), 4); /* p, q, c, the long one; not s, not gone */
  assert_int_equal(ns_cookie_jar_count(priv), 0);
  assert_int_equal(ns_cookie_jar_count(work), 1);
  {
    const char *h = get_in(def, "https://example.com/a", NOW + 60000, 0);
    /* q (longer path) first; p then the long one in creation order */
    assert_int_equal(strncmp(h, "q=3; p=1; NNNN", 14), 0);
  }
  assert_string_equal(get_in(def, "https://example.com/ sfc=https://x.example/", NOW + 60000, 0), "");
  assert_int_equal(strncmp(get_in(def, "https://example.com/", NOW + 60000, 1), "NNNN", 4), 0); /* p is HttpOnly */
  assert_string_equal(get_in(def, "https://e.example/ sfc=none tls=https://top.example/", NOW + 60000, 0), "c=1");
  /* delete all, reopen: empty */
  assert_int_equal(ns_cookie_jar_delete(def, NULL, NULL, NULL), NETSTASH_OK);
  ns_cookie_jars_del(js);
  ns_store_close(s);
  s = open_store();
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "default", 0, NOW, &def), NETSTASH_OK);
  assert_int_equal(ns_cookie_jar_count(def), 0);
  assert_int_equal(ns_cookie_jars_open(js, "work", 0, NOW, &work), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_remove(js, "work", 1), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "work", 0, NOW, &work), NETSTASH_OK);
  assert_int_equal(ns_cookie_jar_count(work), 0);
  ns_cookie_jars_del(js);
  ns_store_close(s);
}

static void test_persist_auto_flush_off_and_damage(void **state) {
  (void)state;
  ns_store *s = open_store();
  ns_cookie_jars *js;
  ns_cookie_jar *j;
  static const uint8_t junk[] = {1, 2, 3};
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "j", 0, NOW, &j), NETSTASH_OK);
  ns_cookie_jar_set_auto_flush(j, 0);
  set_in(j, "https://example.com/", "a=1; Max-Age=100", NOW);
  set_in(j, "https://example.com/", "b=1; Max-Age=100", NOW);
  assert_int_equal(ns_store_put(s, NS_STORE_COOKIES, "j\0junk", 6, junk, sizeof(junk), NULL, 0), NETSTASH_OK);
  ns_cookie_jars_del(js); /* not flushed: lost */
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "j", 0, NOW, &j), NETSTASH_OK);
  assert_int_equal(ns_cookie_jar_count(j), 0);
  ns_cookie_jar_set_auto_flush(j, 0);
  set_in(j, "https://example.com/", "a=1; Max-Age=100", NOW);
  assert_int_equal(ns_cookie_jar_flush(j), NETSTASH_OK);
  ns_cookie_jars_del(js);
  assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
  assert_int_equal(ns_cookie_jars_open(js, "j", 0, NOW, &j), NETSTASH_OK);
  assert_int_equal(ns_cookie_jar_count(j), 1);
  /* the damaged record was dropped by the flush that followed its load */
  assert_int_equal(ns_cookie_jar_flush(j), NETSTASH_OK);
  {
    ns_store_reader *r;
    ns_store_record rec;
    assert_int_equal(ns_store_reader_new(s, &r), NETSTASH_OK);
    assert_int_equal(ns_store_read_begin(r), NETSTASH_OK);
    assert_int_equal(ns_store_get(r, NS_STORE_COOKIES, "j\0junk", 6, &rec), NETSTASH_E_NOT_FOUND);
    ns_store_read_end(r);
    ns_store_reader_del(r);
  }
  ns_cookie_jars_del(js);
  ns_store_close(s);
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_kill9(void **state) {
  (void)state;
  int pp[2], total = 0;
  srand(777);
  assert_int_equal(pipe(pp), 0);
  assert_int_equal(fcntl(pp[1], F_SETFL, O_NONBLOCK), 0);
  for (int round = 0; round < 12; round++) {
    pid_t pid;
    int st;
    char ch, drain[256];
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      ns_store *cs = NULL;
      ns_cookie_jars *js;
      ns_cookie_jar *j;
      ns_store_params p;
      unsigned seed = (unsigned)round * 7919u + 1;
      signal(SIGSEGV, SIG_DFL);
      signal(SIGABRT, SIG_DFL);
      ns_store_params_init(&p);
      p.dir = tmpdir;
      if (ns_store_open(&p, &cs, NULL, 0) != NETSTASH_OK || ns_cookie_jars_new(NULL, cs, &js) != NETSTASH_OK ||
          ns_cookie_jars_open(js, "crash", 0, NOW, &j) != NETSTASH_OK)
        _exit(2);
      for (;;) {
        char line[128], url[64];
        rctx c;
        ns_cookie_status cst;
        seed = seed * 69069u + 1;
        snprintf(url, sizeof(url), "https://h%u.example%u.com/", seed % 7, (seed >> 8) % 50);
        snprintf(line, sizeof(line), "k%u=%u; Max-Age=%u%s", (seed >> 4) % 400, seed, 100 + seed % 1000,
                 seed % 5 == 0 ? "; Max-Age=0" : "");
        ctx_make(&c, url);
        if (ns_cookie_jar_set(j, &c.req, line, strlen(line), NOW, &cst) != NETSTASH_OK)
          _exit(3);
        ctx_free(&c);
        if (write(pp[1], "c", 1) < 0 && errno != EAGAIN)
          _exit(5);
      }
    }
    assert_int_equal(read(pp[0], &ch, 1), 1);
    sleep_ms((unsigned)(rand() % 120));
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    fcntl(pp[0], F_SETFL, O_NONBLOCK);
    while (read(pp[0], drain, sizeof(drain)) > 0)
      ;
    fcntl(pp[0], F_SETFL, 0);
    {
      ns_store *s = open_store();
      ns_cookie_jars *js;
      ns_cookie_jar *j;
      char d[256];
      assert_int_equal(ns_cookie_jars_new(NULL, s, &js), NETSTASH_OK);
      assert_int_equal(ns_cookie_jars_open(js, "crash", 0, NOW, &j), NETSTASH_OK);
      total += (int)ns_cookie_jar_count(j);
      assert_true(ns_cookie_jar_count(j) > 0);
      assert_true(ns_cookie_jar_count(j) <= NS_COOKIE_TOTAL_MAX);
      ns_cookie_jars_del(js);
      if (ns_store_verify(s, d, sizeof(d)) != NETSTASH_OK)
        fail_msg("verify after kill -9: %s", d);
      ns_store_close(s);
    }
  }
  close(pp[0]);
  close(pp[1]);
  print_message("  kill -9 loop: 12 kills, %d cookies reloaded\n", total);
}

/* ------------------------------------------------------------ records */

static void test_record_roundtrip(void **state) {
  (void)state;
  ns_cookie_jar *jar = fresh_jar("rec");
  set_in(jar, "https://e.example/ tls=https://t.example/", "n=v; Secure; HttpOnly; Partitioned; SameSite=Lax; Max-Age=50", NOW);
  ns_cookie *c = ns_list_entry(jar->all.next, ns_cookie, all_link), *d;
  ns_buf b;
  int nomem;
  ns_buf_init(&b, ns_mem_default(), 1 << 16);
  assert_int_equal(ns_cookie_encode_(c, &b), NETSTASH_OK);
  d = ns_cookie_decode_(ns_mem_default(), b.data, b.len, &nomem);
  assert_non_null(d);
  assert_string_equal(d->name, "n");
  assert_string_equal(d->value, "v");
  assert_string_equal(d->partition, "https://t.example");
  assert_true(d->secure && d->http_only && d->persistent && d->host_only);
  assert_int_equal(d->same_site, NS_COOKIE_SS_LAX);
  assert_int_equal(d->expiry_ms, NOW + 50000);
  free(d);
  /* every truncation is refused */
  for (size_t i = 0; i < b.len; i++)
    assert_null(ns_cookie_decode_(ns_mem_default(), b.data, i, &nomem));
  ns_buf_free(&b);
}

/* ------------------------------------------------------------ failmalloc */

static long fail_at, fail_n;
static void *f_malloc(size_t n, void *ud) {
  (void)ud;
  return ++fail_n == fail_at ? NULL : malloc(n);
}
static void *f_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  return ++fail_n == fail_at ? NULL : calloc(a, b);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  return ++fail_n == fail_at ? NULL : realloc(p, n);
}
static void f_free(void *p, void *ud) {
  (void)ud;
  free(p);
}
static const ns_mem failing_mem = {NULL, f_malloc, f_free, f_calloc, f_realloc};

static void test_failmalloc(void **state) {
  (void)state;
  int done = 0;
  static const char *lines[] = {"a=1", "b=2; Domain=example.com; Path=/x", "a=3",
                                "p=1; Secure; Partitioned; Max-Age=100",
                                "b=2; Domain=example.com; Path=/x; Max-Age=0"};
  for (fail_at = 1; fail_at < 100000 && !done; fail_at++) {
    ns_cookie_jars *js = NULL;
    ns_cookie_jar *j = NULL;
    netstash_error rv;
    ns_buf out;
    fail_n = 0;
    rv = ns_cookie_jars_new(&failing_mem, NULL, &js);
    if (rv == NETSTASH_OK)
      rv = ns_cookie_jars_open(js, "m", 0, NOW, &j);
    for (size_t i = 0; rv == NETSTASH_OK && i < NS_ARRAY_LEN(lines); i++) {
      rctx c;
      ctx_make(&c, "https://www.example.com/x/y tls=https://top.example/");
      rv = ns_cookie_jar_set(j, &c.req, lines[i], strlen(lines[i]), NOW, NULL);
      ctx_free(&c);
    }
    if (rv == NETSTASH_OK) {
      rctx c;
      ctx_make(&c, "https://www.example.com/x/y tls=https://top.example/");
      ns_buf_init(&out, &failing_mem, 4096);
      rv = ns_cookie_jar_header(j, &c.req, NOW, &out);
      if (fail_n < fail_at) { /* no allocation failed: the full result */
        assert_int_equal(rv, NETSTASH_OK);
        assert_string_equal(ns_buf_str(&out), "a=3; p=1");
        done = 1;
      }
      ns_buf_free(&out);
      ctx_free(&c);
    }
    if (rv != NETSTASH_OK)
      assert_int_equal(rv, NETSTASH_E_NOMEM);
    ns_cookie_jars_del(js);
  }
  assert_true(done);
  print_message("  failmalloc: succeeded with allocation #%ld failing last\n", fail_at - 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dates),
      cmocka_unit_test_setup_teardown(test_cases, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_sizes, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_eviction_per_domain, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_eviction_expired_first, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_eviction_total, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_listener, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_delete, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_policy, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_jars, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_psl_file, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_netscape, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_record_roundtrip, jars_setup, jars_teardown),
      cmocka_unit_test_setup_teardown(test_persistence, store_setup, store_teardown),
      cmocka_unit_test_setup_teardown(test_persist_auto_flush_off_and_damage, store_setup, store_teardown),
      cmocka_unit_test_setup_teardown(test_kill9, store_setup, store_teardown),
      cmocka_unit_test(test_failmalloc),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
