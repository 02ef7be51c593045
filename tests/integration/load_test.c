/*
 * load_test — `netstash load` against caddy: a small site written here
 * (stylesheet with @import, @font-face and background url()s, a script, an
 * img with srcset, a picture with sources, an iframe with its own <base> and
 * image, a preload link, a style attribute, data: URLs, duplicates, and
 * references a browser does not load), checked through the --json contract:
 * the exact set discovered and loaded, the HTTP cache on a second load,
 * preload-only offline loads after a warm, priorities, failures and exit
 * codes.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli_run.h"
#include "harness.h"

static nst_server caddy;
static char dir[1024], base[256], common[1024];

/* The site, under nst_site()/load/. mtime: "new" files get one in the
 * future (never heuristically fresh: revalidated on every load), "old" ones
 * 30 days ago (heuristically fresh for 3 days: served from the cache). */
typedef struct file {
  const char *path;
  const char *body;
  int old;
} file;

static const file site[] = {
    {"index.html",
     "<!doctype html>\n"
     "<html><head><meta charset=\"utf-8\"><title>load fixture</title>\n"
     "<link rel=\"preload\" href=\"fonts/body.woff2\" as=\"font\" type=\"font/woff2\" "
     "crossorigin>\n"
     "<link rel=\"preload\" href=\"img/unknown-as.png\" as=\"bogus\">\n"
     "<link rel=\"stylesheet\" href=\"css/site.css\">\n"
     "<link rel=\"stylesheet\" href=\"data:text/css,body%7Bcolor:red%7D\">\n"
     "<link rel=\"icon\" href=\"favicon.png\">\n"
     "<script src=\"js/app.js\"></script>\n"
     "<script type=\"application/ld+json\">{\"@type\": \"WebSite\"}</script>\n"
     "</head><body>\n"
     "<div style=\"background: url(img/inline.png)\">styled</div>\n"
     "<img src=\"img/a-640.png\" srcset=\"img/a-320.png 320w, img/a-640.png 640w, "
     "img/a-1280.png 1280w\" width=\"600\" alt=\"a\">\n"
     "<picture>\n"
     "  <source srcset=\"img/b.jxl\" type=\"image/jxl\">\n"
     "  <source srcset=\"img/b-1x.webp 1x, img/b-2x.webp 2x\" type=\"image/webp\">\n"
     "  <img src=\"img/b.png\" alt=\"b\">\n"
     "</picture>\n"
     "<picture><source srcset=\"img/c-wide.jpg\" media=\"(min-width: 4000px)\">"
     "<img src=\"img/c.jpg\" alt=\"c\"></picture>\n"
     "<video poster=\"img/poster.jpg\"></video>\n"
     "<iframe src=\"frame/inner.html\" title=\"frame\"></iframe>\n"
     "<img src=\"data:image/gif;base64,R0lGODlhAQABAAAAACw=\" alt=\"\">\n"
     "<img src=\"img/a-640.png#again\" alt=\"duplicate\">\n"
     "<script src=\"js/app.js\"></script>\n"
     "<noscript><img src=\"img/noscript.png\" alt=\"\"></noscript>\n"
     "<template><img src=\"img/template.png\" alt=\"\"></template>\n"
     "<a href=\"other.html\">not a subresource</a>\n"
     "<img src=\"mailto:someone@example.test\" alt=\"\">\n"
     "</body></html>\n",
     0},
    {"css/site.css",
     "@import \"more.css\";\n"
     "/* url(../img/commented.png) is a comment */\n"
     "@font-face {\n"
     "  font-family: \"Body\";\n"
     "  src: local(\"Body\"), url(../fonts/body.woff2) format(\"woff2\"),\n"
     "       url(../fonts/body.woff) format(\"woff\");\n"
     "}\n"
     "body { font-family: Body, sans-serif; background: #fff url('../img/bg.png') repeat; }\n"
     ".q::after { content: \"url(../img/not-a-url.png)\"; }\n"
     ".d { background-image: url(data:image/png;base64,iVBORw0KGgo=); }\n",
     0},
    {"css/more.css", ".more { background: url(\"../img/more-bg.png\") no-repeat; }\n", 0},
    {"js/app.js", "document.documentElement.dataset.app = 'ready';\n", 0},
    {"frame/inner.html",
     "<!doctype html><html><head><base href=\"/load/img/\">\n"
     "<link rel=\"stylesheet\" href=\"../css/site.css\"></head>\n"
     "<body><img src=\"frame.png\" alt=\"\"></body></html>\n",
     0},
    {"broken.html",
     "<!doctype html><link rel=\"stylesheet\" href=\"css/more.css\">"
     "<img src=\"img/missing.png\" alt=\"\">\n",
     0},
    {"other.html", "<!doctype html><p>other</p>\n", 0},
    {"fonts/body.woff2", "wOF2 body font, woff2", 1},
    {"fonts/body.woff", "wOFF body font, woff 1.0", 1},
    {"favicon.png", "\x89PNG favicon", 1},
    {"img/inline.png", "\x89PNG inline style", 1},
    {"img/bg.png", "\x89PNG background tile", 1},
    {"img/more-bg.png", "\x89PNG imported background", 1},
    {"img/a-320.png", "\x89PNG a 320", 1},
    {"img/a-640.png", "\x89PNG a 640 wide", 1},
    {"img/a-1280.png", "\x89PNG a 1280 wide!", 1},
    {"img/b.jxl", "JXL b", 1},
    {"img/b-1x.webp", "RIFF b 1x webp", 1},
    {"img/b-2x.webp", "RIFF b 2x webp, larger", 1},
    {"img/b.png", "\x89PNG b fallback", 1},
    {"img/c-wide.jpg", "JFIF c wide", 1},
    {"img/c.jpg", "JFIF c", 1},
    {"img/poster.jpg", "JFIF poster frame", 1},
    {"img/frame.png", "\x89PNG in the iframe", 1},
    {"img/noscript.png", "\x89PNG noscript", 1},
    {"img/template.png", "\x89PNG template", 1},
    {"img/commented.png", "\x89PNG commented", 1},
    {"img/not-a-url.png", "\x89PNG string", 1},
    {"img/unknown-as.png", "\x89PNG unknown as", 1},
};

/* What a browser loads for index.html: path (relative to base; "" is the
 * page) and destination. */
static const struct {
  const char *path, *dest;
} expected[] = {
    {"", "document"},
    {"fonts/body.woff2", "font"},
    {"css/site.css", "style"},
    {"css/more.css", "style"},
    {"js/app.js", "script"},
    {"favicon.png", "image"},
    {"img/inline.png", "image"},
    {"img/a-640.png", "image"},
    {"img/b-1x.webp", "image"},
    {"img/c.jpg", "image"},
    {"img/poster.jpg", "image"},
    {"img/bg.png", "image"},
    {"img/more-bg.png", "image"},
    {"frame/inner.html", "iframe"},
    {"img/frame.png", "image"},
};
#define N_EXPECTED (sizeof(expected) / sizeof(expected[0]))

static size_t body_len(const char *path) {
  for (size_t i = 0; i < sizeof(site) / sizeof(site[0]); i++)
    if (!strcmp(site[i].path, path))
      return strlen(site[i].body);
  return (size_t)-1;
}

static int is_old(const char *path) {
  for (size_t i = 0; i < sizeof(site) / sizeof(site[0]); i++)
    if (!strcmp(site[i].path, path))
      return site[i].old;
  return 0;
}

static int write_site(void) {
  time_t now = time(NULL);
  for (size_t i = 0; i < sizeof(site) / sizeof(site[0]); i++) {
    char path[2048], *slash;
    struct timespec ts[2];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, site[i].path);
    for (slash = strchr(path + strlen(dir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
      *slash = 0;
      if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return -1;
      *slash = '/';
    }
    if (!(f = fopen(path, "w")) || fputs(site[i].body, f) < 0 || fclose(f) != 0)
      return -1;
    ts[0].tv_sec = ts[1].tv_sec = site[i].old ? now - 30 * 86400 : now + 3600;
    ts[0].tv_nsec = ts[1].tv_nsec = 0;
    if (utimensat(AT_FDCWD, path, ts, 0) != 0)
      return -1;
  }
  return 0;
}

/* `netstash load --json` of base + page with the common options and a
 * profile; exit code checked. */
static json_t *load_json(const char *extra, const char *profile, const char *page, int want_rc) {
  char args[4096], *out, *err;
  json_t *j;
  int rc;
  snprintf(args, sizeof(args), "load --json %s %s --profile %s '%s%s'", common, extra, profile,
           base, page);
  rc = cli_run(args, &out, &err);
  if (rc != want_rc)
    fail_msg("netstash %s: exit %d, expected %d; stderr: %s\nstdout: %s", args, rc, want_rc, err,
             out);
  j = cli_run_json(out);
  free(out);
  free(err);
  return j;
}

static const char *str(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  if (!s)
    fail_msg("field \"%s\" is not a string", k);
  return s;
}

static json_int_t num(const json_t *o, const char *k) {
  const json_t *v = json_object_get(o, k);
  if (!json_is_integer(v))
    fail_msg("field \"%s\" is not an integer", k);
  return json_integer_value(v);
}

static const json_t *find_url(const json_t *list, const char *url) {
  size_t i;
  const json_t *e;
  json_array_foreach(list, i, e) if (!strcmp(str(e, "url"), url)) return e;
  return NULL;
}

/* Exactly the expected resources, each once, complete and 200, with the
 * file's size; source as wanted per resource ("old" files old_src, the rest
 * new_src). */
static void check_set(const json_t *j, const char *new_src, const char *old_src) {
  const json_t *list = json_object_get(j, "resources"), *tot = json_object_get(j, "totals");
  char url[512];
  assert_true(json_is_array(list));
  if (json_array_size(list) != N_EXPECTED) {
    char *dump = json_dumps(list, JSON_INDENT(1));
    fail_msg("%zu resources loaded, %zu expected:\n%s", json_array_size(list), N_EXPECTED, dump);
  }
  for (size_t i = 0; i < N_EXPECTED; i++) {
    const json_t *e;
    snprintf(url, sizeof(url), "%s%s", base, expected[i].path);
    if (!(e = find_url(list, url)))
      fail_msg("%s was not loaded", url);
    assert_string_equal(str(e, "destination"), expected[i].dest);
    if (num(e, "status") != 200 || !json_is_true(json_object_get(e, "ok"))) {
      char *dump = json_dumps(e, JSON_COMPACT);
      fail_msg("%s did not load: %s", url, dump);
    }
    assert_true(json_is_null(json_object_get(e, "error")));
    assert_true(json_is_true(json_object_get(e, "ok")));
    assert_int_equal(num(e, "bytes"),
                     body_len(*expected[i].path ? expected[i].path : "index.html"));
    assert_true(json_is_number(json_object_get(e, "start_ms")));
    assert_true(json_is_number(json_object_get(e, "duration_ms")));
    if (strcmp(str(e, "source"), is_old(expected[i].path) ? old_src : new_src) != 0)
      fail_msg("%s: source %s, expected %s", url, str(e, "source"),
               is_old(expected[i].path) ? old_src : new_src);
  }
  assert_int_equal(num(tot, "resources"), N_EXPECTED);
  assert_int_equal(num(tot, "subresources"), N_EXPECTED - 1);
  assert_int_equal(num(tot, "failures"), 0);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_int_equal(num(j, "status"), 200);
  assert_true(json_is_null(json_object_get(j, "error")));
  assert_true(json_real_value(json_object_get(j, "load_ms")) >=
              json_real_value(json_object_get(j, "document_ms")));
  assert_true(json_real_value(json_object_get(j, "document_ms")) >=
              json_real_value(json_object_get(j, "document_head_ms")));
}

static void test_discovery_network(void **state) {
  json_t *j, *tot;
  size_t i;
  const json_t *e;
  (void)state;
  j = load_json("", nst_path("prof-http"), "", 0);
  check_set(j, "network", "network");
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "network"), N_EXPECTED);
  assert_int_equal(num(tot, "network_requests"), N_EXPECTED);
  assert_int_equal(num(tot, "preload"), 0);
  assert_true(num(tot, "connections") >= 1);
  /* the waterfall order: the page first, found_in points to an earlier line */
  json_array_foreach(json_object_get(j, "resources"), i, e) {
    assert_int_equal(num(e, "index"), i);
    if (i == 0)
      assert_true(json_is_null(json_object_get(e, "found_in")));
    else
      assert_true(num(e, "found_in") < (json_int_t)i);
    assert_string_equal(str(e, "protocol"), "h2");
  }
  json_decref(j);
}

static void test_http_cache_second_load(void **state) {
  json_t *j, *tot;
  (void)state;
  /* the profile of test_discovery_network: old files fresh by heuristic,
   * the others (Last-Modified in the future) revalidated with caddy's ETag */
  j = load_json("", nst_path("prof-http"), "", 0);
  check_set(j, "revalidated", "cache");
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "network"), 0);
  assert_int_equal(num(tot, "preload"), 0);
  assert_int_equal(num(tot, "revalidated") + num(tot, "cache"), N_EXPECTED);
  assert_int_equal(num(tot, "network_requests"), num(tot, "revalidated"));
  json_decref(j);
  /* offline on that profile: everything from the HTTP cache, stale or not */
  j = load_json("--offline", nst_path("prof-http"), "", 0);
  check_set(j, "cache", "cache");
  assert_int_equal(num(json_object_get(j, "totals"), "network_requests"), 0);
  assert_int_equal(num(json_object_get(j, "totals"), "connections"), 0);
  json_decref(j);
}

static void test_offline_preload(void **state) {
  char args[4096], *out, *err, manifest[1024], prof[1024];
  json_t *j, *tot, *r;
  const json_t *e;
  size_t i;
  (void)state;
  snprintf(manifest, sizeof(manifest), "%s", nst_path("load-manifest.json"));
  snprintf(prof, sizeof(prof), "%s", nst_path("prof-preload"));
  snprintf(args, sizeof(args), "manifest make %s --base '%s' --id load.test --version 1 -o %s", dir,
           base, manifest);
  assert_int_equal(cli_run(args, &out, &err), 0);
  free(out);
  free(err);
  snprintf(args, sizeof(args), "warm %s --allow-unsigned --profile %s %s --no-progress", manifest,
           prof, common);
  if (cli_run(args, &out, &err) != 0)
    fail_msg("warm failed: %s", err);
  free(out);
  free(err);

  /* no network at all: every resource from the preload store */
  j = load_json("--offline", prof, "", 0);
  check_set(j, "preload", "preload");
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "preload"), N_EXPECTED);
  assert_int_equal(num(tot, "network_requests"), 0);
  assert_int_equal(num(tot, "connections"), 0);
  json_decref(j);

  /* --repeat: five loads in one process, each complete, the last reported */
  j = load_json("--offline --repeat 5", prof, "", 0);
  check_set(j, "preload", "preload");
  assert_int_equal(num(j, "repeat"), 5);
  r = json_object_get(j, "passes");
  assert_int_equal(json_array_size(r), 5);
  json_array_foreach(r, i, e) {
    assert_true(json_real_value(json_object_get(e, "load_ms")) > 0);
    assert_true(json_real_value(json_object_get(e, "requests_ms")) > 0);
    assert_true(json_is_number(json_object_get(e, "parse_ms")));
  }
  assert_true(json_real_value(json_object_get(j, "load_ms")) ==
              json_real_value(json_object_get(json_array_get(r, 4), "load_ms")));
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "preload"), N_EXPECTED); /* the last load's, not a sum */
  assert_int_equal(num(tot, "network_requests"), 0);
  json_decref(j);

  /* a reference the manifest lacks fails offline; the page still loads */
  j = load_json("--offline", prof, "broken.html", 0);
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "resources"), 4); /* page, more.css, its image, missing.png */
  assert_int_equal(num(tot, "failures"), 1);
  assert_int_equal(num(tot, "preload"), 3);
  assert_int_equal(num(tot, "network_requests"), 0);
  snprintf(args, sizeof(args), "%simg/missing.png", base);
  e = find_url(json_object_get(j, "resources"), args);
  assert_non_null(e);
  assert_string_equal(str(e, "error"), "NETSTASH_E_NOT_CACHED");
  assert_string_equal(str(e, "source"), "none");
  assert_true(json_is_false(json_object_get(e, "ok")));
  json_decref(j);

  /* a page nobody stored: the document's own error, exit 12 — with
   * --repeat, after the first load */
  j = load_json("--offline --repeat 3", prof, "other.html?never", 12);
  assert_int_equal(num(j, "repeat"), 1);
  assert_true(json_is_false(json_object_get(j, "ok")));
  assert_string_equal(str(j, "error"), "NETSTASH_E_NOT_CACHED");
  r = json_object_get(j, "resources");
  assert_int_equal(json_array_size(r), 1);
  json_array_foreach(r, i, e) assert_string_equal(str(e, "source"), "none");
  json_decref(j);
}

static void test_failures_exit_0(void **state) {
  json_t *j, *tot;
  const json_t *e;
  char url[512];
  (void)state;
  j = load_json("", nst_path("prof-broken"), "broken.html", 0);
  tot = json_object_get(j, "totals");
  assert_int_equal(num(tot, "resources"), 4);
  assert_int_equal(num(tot, "failures"), 1);
  snprintf(url, sizeof(url), "%simg/missing.png", base);
  e = find_url(json_object_get(j, "resources"), url);
  assert_non_null(e);
  assert_int_equal(num(e, "status"), 404);
  assert_true(json_is_null(json_object_get(e, "error")));
  assert_true(json_is_false(json_object_get(e, "ok")));
  assert_true(json_is_true(json_object_get(j, "ok")));
  json_decref(j);
}

static void test_priorities(void **state) {
  json_t *j;
  const json_t *list, *e;
  size_t i, n;
  char url[512];
  (void)state;
  /* one request at a time: the start order is the scheduler's order */
  j = load_json("--concurrency 1", nst_path("prof-prio"), "", 0);
  list = json_object_get(j, "resources");
  n = json_array_size(list);
  assert_int_equal(n, N_EXPECTED);
  /* after the page, render-blocking resources first: the preloaded font,
   * the stylesheet, the parser-blocking script */
  for (i = 1; i <= 3; i++) {
    const char *d = str(json_array_get(list, i), "destination");
    if (strcmp(d, "font") && strcmp(d, "style") && strcmp(d, "script"))
      fail_msg("resource %zu is a %s before the render-blocking ones", i, d);
  }
  /* the iframe before any image; the icon last */
  json_array_foreach(list, i, e) {
    if (!strcmp(str(e, "destination"), "iframe")) {
      for (size_t k = 1; k < i; k++)
        assert_string_not_equal(str(json_array_get(list, k), "destination"), "image");
      break;
    }
  }
  snprintf(url, sizeof(url), "%sfavicon.png", base);
  assert_string_equal(str(json_array_get(list, n - 1), "url"), url);
  /* sequential: each starts when the previous one ended */
  for (i = 1; i < n; i++) {
    const json_t *a = json_array_get(list, i - 1), *b = json_array_get(list, i);
    assert_true(json_real_value(json_object_get(b, "start_ms")) + 0.001 >=
                json_real_value(json_object_get(a, "start_ms")) +
                    json_real_value(json_object_get(a, "duration_ms")));
  }
  json_decref(j);
}

static void test_waterfall_text(void **state) {
  char args[4096], *out, *err;
  (void)state;
  snprintf(args, sizeof(args), "load %s --profile %s '%s'", common, nst_path("prof-text"), base);
  assert_int_equal(cli_run(args, &out, &err), 0);
  assert_non_null(strstr(out, "15 resources (14 subresources)"));
  assert_non_null(strstr(out, "sources: preload 0, cache 0, revalidated 0, network 15"));
  assert_non_null(strstr(out, "failures 0"));
  assert_non_null(strstr(out, "page load"));
  assert_non_null(strstr(out, "document head"));
  assert_non_null(strstr(out, "img/frame.png"));
  assert_non_null(strstr(out, "|"));
  free(out);
  free(err);
}

static void test_usage_and_errors(void **state) {
  char args[4096], *out;
  json_t *j;
  (void)state;
  cli_run_expect("load", 2, "missing URL", NULL);
  cli_run_expect("load --bogus x", 2, NULL, NULL);
  cli_run_expect("load --concurrency 0 https://example.test/", 2, "--concurrency", NULL);
  cli_run_expect("load --repeat 0 https://example.test/", 2, "--repeat takes 1..1000", NULL);
  cli_run_expect("load --repeat 1001 https://example.test/", 2, "--repeat takes 1..1000", NULL);
  cli_run_expect("load 'ftp://example.test/'", 3, "bad URL", NULL);
  cli_run_expect("load relative/path.html", 3, "bad URL", NULL);
  snprintf(args, sizeof(args), "load --json --profile %s https://127.0.0.1:%d/",
           nst_path("prof-err"), nst_closed_port());
  assert_int_equal(cli_run(args, &out, NULL), 5);
  j = cli_run_json(out);
  assert_string_equal(str(j, "error"), "NETSTASH_E_CONNECT_REFUSED");
  assert_true(json_is_false(json_object_get(j, "ok")));
  assert_int_equal(num(json_object_get(j, "totals"), "failures"), 1);
  json_decref(j);
  free(out);
  assert_int_equal(cli_run("load --help", &out, NULL), 0);
  assert_non_null(strstr(out, "--offline"));
  assert_non_null(strstr(out, "--resolve"));
  free(out);
  assert_int_equal(cli_run("--help", &out, NULL), 0);
  assert_non_null(strstr(out, "load URL"));
  free(out);
}

static int setup(void **state) {
  (void)state;
  if (cli_run_setup("load") != 0)
    return -1;
  if (!nst_certs() || !nst_site())
    return -1;
  snprintf(dir, sizeof(dir), "%s/load", nst_site());
  if (mkdir(dir, 0755) != 0 || write_site() != 0) {
    fprintf(stderr, "load_test: cannot write the site in %s: %s\n", dir, strerror(errno));
    return -1;
  }
  if (nst_caddy_start("h2", &caddy))
    return -1;
  snprintf(base, sizeof(base), "https://example.test:%d/load/", caddy.port);
  snprintf(common, sizeof(common), "--cacert %s --resolve example.test:%d:127.0.0.1",
           nst_cert("ca.pem"), caddy.port);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_discovery_network), cmocka_unit_test(test_http_cache_second_load),
      cmocka_unit_test(test_offline_preload),   cmocka_unit_test(test_failures_exit_0),
      cmocka_unit_test(test_priorities),        cmocka_unit_test(test_waterfall_text),
      cmocka_unit_test(test_usage_and_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
