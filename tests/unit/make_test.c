/*
 * make_test.c — lib/preload/make.c: manifests from a directory and from
 * Workbox precache manifests, their helpers, and allocation failures.
 * (The CLI around them: tests/integration/cli_test.c.)
 */
#include "ns_setup.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "preload/make.h"
#include "preload/manifest.h"

#define NOW INT64_C(1795000000) /* 2026-11-18 */

static char tmpdir[] = "/tmp/ns-make-test-XXXXXX";

static void put(const char *rel, const char *content) {
  char path[1024];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
  f = fopen(path, "wb");
  assert_non_null(f);
  fputs(content, f);
  fclose(f);
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  assert_int_equal(system(cmd), 0);
}

static void sri(const char *alg, const char *content, char *out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  assert_int_equal(EVP_Digest(content, strlen(content), md, &n, EVP_get_digestbyname(alg), NULL),
                   1);
  out += sprintf(out, "%s-", alg);
  EVP_EncodeBlock((unsigned char *)out, md, (int)n);
}

static int setup(void **state) {
  (void)state;
  if (!mkdtemp(tmpdir))
    return -1;
  sh("mkdir -p %s/site/a/b %s/site/.cache && cd %s/site && ln -s ../outside.txt link.txt && "
     "ln -s a/b/deep.js again.js && ln -s .. a/loop",
     tmpdir, tmpdir, tmpdir);
  put("outside.txt", "outside\n");
  put("site/index.html", "<p>home</p>\n");
  put("site/a/b/deep.js", "deep()\n");
  put("site/a/b/index.html", "<p>b</p>\n");
  put("site/sp ace&plus+.woff2", "font");
  put("site/.cache/x", "hidden");
  put("site/.hidden", "hidden");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  sh("rm -rf %s", tmpdir);
  return 0;
}

static void test_content_type(void **state) {
  static const struct {
    const char *name, *type;
  } cases[] = {
      {"index.html", "text/html; charset=utf-8"},
      {"a/b/APP.CSS", "text/css"},
      {"x.js", "text/javascript"},
      {"x.mjs", "text/javascript"},
      {"x.json", "application/json"},
      {"x.svg", "image/svg+xml"},
      {"x.png", "image/png"},
      {"x.jpg", "image/jpeg"},
      {"x.jpeg", "image/jpeg"},
      {"x.gif", "image/gif"},
      {"x.webp", "image/webp"},
      {"x.avif", "image/avif"},
      {"favicon.ico", "image/x-icon"},
      {"f.woff", "font/woff"},
      {"f.woff2", "font/woff2"},
      {"f.ttf", "font/ttf"},
      {"f.otf", "font/otf"},
      {"robots.txt", "text/plain; charset=utf-8"},
      {"sitemap.xml", "application/xml"},
      {"m.wasm", "application/wasm"},
      {"v.mp4", "video/mp4"},
      {"v.webm", "video/webm"},
      {"a.mp3", "audio/mpeg"},
      {"d.pdf", "application/pdf"},
      {"no-extension", "application/octet-stream"},
      {".htaccess", "application/octet-stream"}, /* a dotfile has no extension */
      {"dir.css/file", "application/octet-stream"},
      {"x.tar.gz", "application/octet-stream"},
      {"x.", "application/octet-stream"},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(cases); i++)
    assert_string_equal(ns_make_content_type(cases[i].name), cases[i].type);
}

static void test_glob(void **state) {
  static const struct {
    const char *glob, *s;
    int match;
  } cases[] = {
      {"*.png", "logo.png", 1},
      {"*.png", "logo.png.bak", 0},
      {"*", "", 1},
      {"", "", 1},
      {"", "a", 0},
      {"a?c", "abc", 1},
      {"a?c", "ac", 0},
      {"img/*", "img/a/b.png", 1},
      {"img/*.png", "img/x.jpg", 0},
      {"*b*b*", "abxbx", 1},
      {"*b*b*", "abx", 0},
      {"**", "x/y", 1},
      {"a*", "b", 0},
      {"exact", "exact", 1},
      {"exact", "Exact", 0},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(cases); i++)
    if (ns_make_glob_match(cases[i].glob, cases[i].s) != cases[i].match)
      fail_msg("glob \"%s\" vs \"%s\": expected %d", cases[i].glob, cases[i].s, cases[i].match);
}

static void test_pct_encode(void **state) {
  ns_buf b;
  const char in[] = "a b/\xc3\xa9%+~._-?#&=\x01Z9";
  (void)state;
  ns_buf_init(&b, ns_mem_default(), 1024);
  assert_int_equal(ns_make_pct_encode(&b, in, sizeof(in) - 1), NETSTASH_OK);
  assert_string_equal(ns_buf_str(&b), "a%20b/%C3%A9%25%2B~._-%3F%23%26%3D%01Z9");
  ns_buf_free(&b);
  ns_buf_init(&b, ns_mem_default(), 4);
  assert_int_equal(ns_make_pct_encode(&b, " ", 1), NETSTASH_OK);
  assert_int_equal(ns_make_pct_encode(&b, " ", 1), NETSTASH_E_TOO_LARGE);
  ns_buf_free(&b);
}

static char warnings[4096];

static void on_warn(const char *msg, void *ud) {
  (void)ud;
  strncat(warnings, msg, sizeof(warnings) - strlen(warnings) - 2);
  strcat(warnings, "\n");
}

static ns_make_opts opts(void) {
  ns_make_opts o;
  memset(&o, 0, sizeof(o));
  o.base = "https://Site.Example:443/app";
  o.id = "site";
  o.version = 5;
  o.expires = "2099-01-01T00:00:00Z";
  o.now_s = NOW;
  o.warn = on_warn;
  return o;
}

static ns_manifest *parse_out(const char *text, size_t len) {
  ns_manifest_check ck = {NOW, 0, 0};
  ns_manifest *m = NULL;
  assert_int_equal(strlen(text), len);
  assert_int_equal(ns_manifest_parse(ns_mem_default(), (const uint8_t *)text, len, &ck, &m, NULL),
                   NETSTASH_OK);
  return m;
}

static const ns_manifest_resource *find(const ns_manifest *m, const char *url) {
  size_t i;
  for (i = 0; i < m->n_resources; i++)
    if (!strcmp(m->resources[i].url, url))
      return &m->resources[i];
  fail_msg("no resource %s", url);
  return NULL;
}

static void test_make_dir(void **state) {
  char dir[512], detail[512] = "", *out = NULL;
  size_t len = 0;
  ns_make_opts o = opts();
  ns_make_rule rules[] = {{"deep.js", NS_MANIFEST_PRIO_LOW}};
  ns_make_header hdrs[] = {{"a/b/*.js", "Cache-Control", "no-cache"},
                           {"*.js", "Cache-Control", "max-age=31536000, immutable"},
                           {"*.js", "X-Kind", "script"}};
  ns_manifest *m;
  const ns_manifest_resource *r;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/site", tmpdir);
  o.rules = rules;
  o.n_rules = 1;
  o.headers = hdrs;
  o.n_headers = 3;
  o.no_last_modified = 1; /* test_make_last_modified */
  warnings[0] = '\0';
  assert_int_equal(
      ns_manifest_make_dir(ns_mem_default(), dir, &o, &out, &len, detail, sizeof(detail)),
      NETSTASH_OK);
  m = parse_out(out, len);
  /* in byte order of the paths: a/b/deep.js, a/b/index.html (its directory), again.js (a
   * link inside), index.html (base), the font */
  assert_int_equal(m->n_resources, 5);
  assert_string_equal(m->resources[0].url, "https://site.example/app/a/b/deep.js");
  assert_string_equal(m->resources[1].url, "https://site.example/app/a/b/");
  assert_string_equal(m->resources[2].url, "https://site.example/app/again.js");
  assert_string_equal(m->resources[3].url, "https://site.example/app/");
  assert_string_equal(m->resources[4].url, "https://site.example/app/sp%20ace%26plus%2B.woff2");
  assert_string_equal(m->entry_pages[0], "https://site.example/app/");
  r = find(m, "https://site.example/app/");
  assert_int_equal(r->priority, NS_MANIFEST_PRIO_CRITICAL);
  assert_int_equal(r->size, 12);
  assert_int_equal(r->n_hashes, 1);
  assert_int_equal(r->hashes[0].alg, NS_SRI_SHA256);
  assert_int_equal(find(m, "https://site.example/app/a/b/deep.js")->priority,
                   NS_MANIFEST_PRIO_LOW); /* the rule */
  assert_int_equal(find(m, "https://site.example/app/again.js")->priority,
                   NS_MANIFEST_PRIO_HIGH); /* rules see the link's own name */
  assert_int_equal(find(m, "https://site.example/app/sp%20ace%26plus%2B.woff2")->priority,
                   NS_MANIFEST_PRIO_HIGH);
  assert_int_equal(find(m, "https://site.example/app/a/b/")->priority, NS_MANIFEST_PRIO_LOW);
  /* --header rules: per name the first match, several names per file */
  r = find(m, "https://site.example/app/a/b/deep.js");
  assert_int_equal(r->n_headers, 2);
  assert_string_equal(r->headers[0].name, "Cache-Control");
  assert_string_equal(r->headers[0].value, "no-cache");
  assert_string_equal(r->headers[1].name, "X-Kind");
  r = find(m, "https://site.example/app/again.js");
  assert_int_equal(r->n_headers, 2);
  assert_string_equal(r->headers[0].value, "max-age=31536000, immutable");
  assert_int_equal(find(m, "https://site.example/app/")->n_headers, 0);
  assert_non_null(strstr(warnings, "skipped link.txt: a symlink to"));
  assert_non_null(strstr(warnings, "skipped a/loop: a symlink loop"));
  assert_null(m->fallback);
  assert_int_equal(m->max_bytes, 0);
  ns_manifest_del(m);
  ns_free(ns_mem_default(), out);
}

/* Last-Modified from each file's mtime, as a static server sends it: by
 * default, unless a --header rule names it (any case), not with
 * no_last_modified. */
static void test_make_last_modified(void **state) {
  char dir[512], path[600], detail[512] = "", *out = NULL;
  size_t len = 0;
  ns_make_opts o = opts();
  ns_make_header hdrs[] = {{"*.js", "LAST-MODIFIED", "Mon, 01 Jan 2024 00:00:00 GMT"}};
  struct timespec ts[2] = {{1715670000, 0}, {1715670000, 0}}; /* 2024-05-14T07:00:00Z */
  ns_manifest *m;
  const ns_manifest_resource *r;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/site", tmpdir);
  snprintf(path, sizeof(path), "%s/index.html", dir);
  assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
  o.headers = hdrs;
  o.n_headers = 1;
  assert_int_equal(
      ns_manifest_make_dir(ns_mem_default(), dir, &o, &out, &len, detail, sizeof(detail)),
      NETSTASH_OK);
  m = parse_out(out, len);
  r = find(m, "https://site.example/app/");
  assert_int_equal(r->n_headers, 1);
  assert_string_equal(r->headers[0].name, "last-modified");
  assert_string_equal(r->headers[0].value, "Tue, 14 May 2024 07:00:00 GMT");
  r = find(m, "https://site.example/app/a/b/deep.js"); /* the rule's, not the file's */
  assert_int_equal(r->n_headers, 1);
  assert_string_equal(r->headers[0].value, "Mon, 01 Jan 2024 00:00:00 GMT");
  ns_manifest_del(m);
  ns_free(ns_mem_default(), out);
  o.no_last_modified = 1;
  o.n_headers = 0;
  assert_int_equal(
      ns_manifest_make_dir(ns_mem_default(), dir, &o, &out, &len, detail, sizeof(detail)),
      NETSTASH_OK);
  m = parse_out(out, len);
  assert_int_equal(find(m, "https://site.example/app/")->n_headers, 0);
  ns_manifest_del(m);
  ns_free(ns_mem_default(), out);
}

static void test_make_errors(void **state) {
  static const struct {
    const char *what;
    netstash_error code;
    const char *detail;
  } cases[] = {
      {"base", NETSTASH_E_INVALID_ARGUMENT, "--base \"http://x/\": not an https URL"},
      {"base?", NETSTASH_E_INVALID_ARGUMENT, "has a query or fragment"},
      {"id", NETSTASH_E_INVALID_ARGUMENT, "--id \"a b\""},
      {"expired", NETSTASH_E_INVALID_ARGUMENT, "is not in the future"},
      {"expires", NETSTASH_E_INVALID_ARGUMENT, "not an RFC 3339"},
      {"budget", NETSTASH_E_TOO_LARGE, "the manifest would not be valid: budgets.max_bytes"},
      {"entry", NETSTASH_E_INVALID_ARGUMENT, "entry page \"https://site.example/app/nope\""},
      {"param", NETSTASH_E_INVALID_ARGUMENT, "--ignore-param \"a=b\""},
      {"dir", NETSTASH_E_IO, "/missing: No such file"},
  };
  size_t i;
  (void)state;
  for (i = 0; i < NS_ARRAY_LEN(cases); i++) {
    ns_make_opts o = opts();
    const char *entry = "nope", *param = "a=b";
    char dir[512], detail[512] = "", *out = (char *)"x";
    size_t len = 1;
    const char *w = cases[i].what;
    netstash_error rv;
    snprintf(dir, sizeof(dir), "%s/%s", tmpdir, !strcmp(w, "dir") ? "missing" : "site");
    if (!strcmp(w, "base"))
      o.base = "http://x/";
    else if (!strcmp(w, "base?"))
      o.base = "https://x/?q";
    else if (!strcmp(w, "id"))
      o.id = "a b";
    else if (!strcmp(w, "expired"))
      o.expires = "2020-01-01T00:00:00Z";
    else if (!strcmp(w, "expires"))
      o.expires = "tomorrow";
    else if (!strcmp(w, "budget"))
      o.max_bytes = 10;
    else if (!strcmp(w, "entry"))
      o.entries = &entry, o.n_entries = 1;
    else if (!strcmp(w, "param"))
      o.ignore = &param, o.n_ignore = 1;
    rv = ns_manifest_make_dir(ns_mem_default(), dir, &o, &out, &len, detail, sizeof(detail));
    if (rv != cases[i].code || !strstr(detail, cases[i].detail))
      fail_msg("%s: %s (%s), expected %s with \"%s\"", w, netstash_error_name(rv), detail,
               netstash_error_name(cases[i].code), cases[i].detail);
    assert_null(out);
    assert_int_equal(len, 0);
  }
}

static void test_import(void **state) {
  char dir[512], detail[1024] = "", *out = NULL, wb[2048], s384[128], s256[128];
  size_t len = 0;
  ns_make_opts o = opts();
  const char *ignore[] = {"utm_source", "fbclid"};
  ns_manifest *m;
  const ns_manifest_resource *r;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/site", tmpdir);
  sri("sha384", "deep()\n", s384);
  sri("sha256", "font", s256);
  snprintf(wb, sizeof(wb),
           "// generated\nself.__WB_MANIFEST = [{\"url\": \"a/b/deep.js\", \"integrity\": \"%s\", "
           "\"revision\": null}, {\"url\": \"/app/\", \"revision\": \"1\"}, "
           "\"sp%%20ace%%26plus%%2B.woff2\", {\"url\": \"a/b/index.html?v=2\"}];\nfoo();\n",
           s384);
  o.dir = dir;
  o.ignore = ignore;
  o.n_ignore = 2;
  assert_int_equal(ns_manifest_import_workbox(ns_mem_default(), (const uint8_t *)wb, strlen(wb), &o,
                                              &out, &len, detail, sizeof(detail)),
                   NETSTASH_OK);
  m = parse_out(out, len);
  assert_int_equal(m->n_resources, 4);
  r = &m->resources[0]; /* input order */
  assert_string_equal(r->url, "https://site.example/app/a/b/deep.js");
  assert_int_equal(r->n_hashes, 1);
  assert_int_equal(r->hashes[0].alg, NS_SRI_SHA384); /* kept */
  assert_int_equal(r->size, 7);
  assert_int_equal(r->n_query_ignore, 2);
  assert_string_equal(r->query_ignore[1], "fbclid");
  assert_string_equal(m->resources[1].url, "https://site.example/app/");
  assert_int_equal(m->resources[1].priority, NS_MANIFEST_PRIO_CRITICAL);
  assert_string_equal(m->resources[1].content_type, "text/html; charset=utf-8");
  assert_string_equal(m->resources[2].url, "https://site.example/app/sp%20ace%26plus%2B.woff2");
  assert_int_equal(m->resources[2].size, 4);
  assert_string_equal(m->resources[3].url, "https://site.example/app/a/b/index.html?v=2");
  assert_int_equal(m->resources[3].size, 9);
  ns_manifest_del(m);
  ns_free(ns_mem_default(), out);
  out = NULL;

  /* workbox-build getManifest's result */
  snprintf(wb, sizeof(wb),
           "{\"count\": 2, \"size\": 16, \"warnings\": [], \"manifestEntries\": "
           "[{\"url\": \"index.html\", \"revision\": \"x\"}, {\"url\": "
           "\"sp%%20ace%%26plus%%2B.woff2\", \"integrity\": \"%s\"}]}",
           s256);
  o.ignore = NULL;
  o.n_ignore = 0;
  assert_int_equal(ns_manifest_import_workbox(ns_mem_default(), (const uint8_t *)wb, strlen(wb), &o,
                                              &out, &len, detail, sizeof(detail)),
                   NETSTASH_OK);
  m = parse_out(out, len);
  assert_int_equal(m->n_resources, 2);
  assert_string_equal(m->resources[0].url, "https://site.example/app/");
  ns_manifest_del(m);
  ns_free(ns_mem_default(), out);
}

static void test_import_errors(void **state) {
  static const struct {
    const char *wb;
    int with_dir;
    netstash_error code;
    const char *detail;
  } cases[] = {
      {"[{\"url\": \"index.html\", \"revision\": \"1\"}, \"a/b/deep.js\"]", 0,
       NETSTASH_E_INVALID_ARGUMENT,
       "2 Workbox entries have only a revision, no integrity "
       "(\"https://site.example/app/index.html\", \"https://site.example/app/a/b/deep.js\")"},
      {"[{\"url\": \"index.html\", \"integrity\": \"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
       "AAAA=\"}]",
       0, NETSTASH_E_INVALID_ARGUMENT, "Workbox entries carry no size"},
      {"[{\"url\": \"index.html\", \"integrity\": \"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
       "AAAA=\"}]",
       1, NETSTASH_E_INTEGRITY, "does not match the entry's integrity"},
      {"[{\"url\": \"index.html\", \"rev\": \"1\"}]", 1, NETSTASH_E_MANIFEST_INVALID,
       "workbox[0].rev: unknown field"},
      {"[{\"url\": 5}]", 1, NETSTASH_E_MANIFEST_INVALID, "workbox[0].url: wrong type"},
      {"[{\"revision\": \"1\"}]", 1, NETSTASH_E_MANIFEST_INVALID, "workbox[0]: not an entry"},
      {"[]", 1, NETSTASH_E_MANIFEST_INVALID, "lists no entries"},
      {"{}", 1, NETSTASH_E_MANIFEST_INVALID, "not a Workbox precache manifest"},
      {"precacheAndRoute([{url:\"a\"}])", 1, NETSTASH_E_MANIFEST_INVALID, "no self.__WB_MANIFEST"},
      {"self.__WB_MANIFEST = [{url: \"a\"}];", 1, NETSTASH_E_MANIFEST_INVALID,
       "not assigned a JSON array"},
      {"[\"../x\"]", 1, NETSTASH_E_INVALID_ARGUMENT, "is not below --base"},
      {"[\"%2e%2e/outside.txt\"]", 1, NETSTASH_E_INVALID_ARGUMENT, "\"..\" segment"},
      {"[\"a%2F%2E%2E%2Findex.html\"]", 1, NETSTASH_E_INVALID_ARGUMENT, "\"..\" segment"},
      {"[\"link.txt\"]", 1, NETSTASH_E_IO, "not a regular file inside --dir"}, /* a link out */
      {"[\"a/b\"]", 1, NETSTASH_E_IO, "not a regular file inside --dir"},      /* a directory */
      {"[\"nope.js\"]", 1, NETSTASH_E_IO, "nope.js: No such file or directory (is --dir"},
      {"[\"index.html\", \"a/%00\"]", 1, NETSTASH_E_INVALID_ARGUMENT, "malformed %-escape"},
      {"[\"http://site.example/app/index.html\"]", 1, NETSTASH_E_INVALID_ARGUMENT,
       "workbox[0].url \"http://site.example/app/index.html\": not an https URL"},
      {"[\"index.html\", \"/app/\"]", 1, NETSTASH_E_MANIFEST_INVALID,
       "resources[1].url: duplicate URL"},
      {"[\"a/b/deep.js\"]", 1, NETSTASH_E_INVALID_ARGUMENT, "no entry page"},
  };
  size_t i;
  char dir[512];
  (void)state;
  snprintf(dir, sizeof(dir), "%s/site", tmpdir);
  for (i = 0; i < NS_ARRAY_LEN(cases); i++) {
    ns_make_opts o = opts();
    char detail[1024] = "", *out = NULL;
    size_t len = 0;
    netstash_error rv;
    o.dir = cases[i].with_dir ? dir : NULL;
    rv = ns_manifest_import_workbox(ns_mem_default(), (const uint8_t *)cases[i].wb,
                                    strlen(cases[i].wb), &o, &out, &len, detail, sizeof(detail));
    if (rv != cases[i].code || !strstr(detail, cases[i].detail))
      fail_msg("case %zu: %s (%s), expected %s with \"%s\"", i, netstash_error_name(rv), detail,
               netstash_error_name(cases[i].code), cases[i].detail);
    assert_null(out);
  }
}

/* ---- an allocator that fails the Nth allocation and counts live blocks */
static long fail_at = -1, nallocs, live;
static void *f_malloc(size_t n, void *ud) {
  (void)ud;
  if (nallocs++ == fail_at)
    return NULL;
  live++;
  return malloc(n);
}
static void f_free(void *p, void *ud) {
  (void)ud;
  if (p)
    live--;
  free(p);
}
static void *f_calloc(size_t a, size_t b, void *ud) {
  (void)ud;
  if (nallocs++ == fail_at)
    return NULL;
  live++;
  return calloc(a, b);
}
static void *f_realloc(void *p, size_t n, void *ud) {
  (void)ud;
  if (nallocs++ == fail_at)
    return NULL;
  if (!p)
    live++;
  return realloc(p, n);
}
static const ns_mem fmem = {NULL, f_malloc, f_free, f_calloc, f_realloc};

/* Every allocation failure gives NETSTASH_E_NOMEM and leaks nothing. */
static void test_failmalloc(void **state) {
  char dir[512];
  const char *wb = "[\"index.html\", {\"url\": \"a/b/deep.js\", \"revision\": \"1\"}]";
  const char *ignore[] = {"utm_source"};
  int which;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/site", tmpdir);
  for (which = 0; which < 3; which++) {
    for (fail_at = 0;; fail_at++) {
      ns_make_opts o = opts();
      char detail[512] = "", *out = NULL;
      size_t len = 0;
      netstash_error rv;
      o.ignore = ignore;
      o.n_ignore = 1;
      o.warn = NULL;
      nallocs = live = 0;
      if (which == 0) {
        rv = ns_manifest_make_dir(&fmem, dir, &o, &out, &len, detail, sizeof(detail));
      } else {
        o.dir = which == 1 ? dir : NULL; /* 2: the "pass --dir" error */
        rv = ns_manifest_import_workbox(&fmem, (const uint8_t *)wb, strlen(wb), &o, &out, &len,
                                        detail, sizeof(detail));
      }
      if (rv != NETSTASH_E_NOMEM) {
        assert_int_equal(rv, which == 2 ? NETSTASH_E_INVALID_ARGUMENT : NETSTASH_OK);
        ns_free(&fmem, out);
        assert_int_equal(live, 0);
        break;
      }
      assert_null(out);
      assert_int_equal(live, 0);
    }
    assert_true(fail_at > 5);
  }
  fail_at = -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_content_type),  cmocka_unit_test(test_glob),
      cmocka_unit_test(test_pct_encode),    cmocka_unit_test(test_make_dir),
      cmocka_unit_test(test_make_last_modified),
      cmocka_unit_test(test_make_errors),   cmocka_unit_test(test_import),
      cmocka_unit_test(test_import_errors), cmocka_unit_test(test_failmalloc),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
