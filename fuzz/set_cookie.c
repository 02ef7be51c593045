/*
 * fuzz/set_cookie.c — lib/cookie under libFuzzer: the Set-Cookie parser and
 * cookie-date algorithm, the storage model and Cookie header, cookies.txt
 * import/export and the store record decoder.
 *
 * Input: byte 0 selects the request context (bit 0 http instead of https,
 * bit 1 document.cookie instead of Set-Cookie, bit 2 cross-site, bit 3
 * top-level navigation, bit 4 a top-level site for CHIPS); the rest is split
 * on '\n' into Set-Cookie lines received for https://www.example.com/a/b.
 * The whole input is also fed to the cookie-date parser, the cookies.txt
 * importer and the record decoder.
 * Checked: no crash/leak/UB; parse results inside the input and within the
 * RFC's limits; the jar within its limits; Cookie headers free of control
 * characters other than HTAB; a decoded record re-encodes to its bytes;
 * cookies.txt export -> import -> export is a fixed point.
 */
#include "ns_setup.h"

#include <stdlib.h>

#include "cookie/jar.h"
#include "cookie/jar_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

#define NOW INT64_C(1700000000000)

/* The public suffix list takes milliseconds to load: one jars object for
 * the process (its only state across inputs is the registrable-domain
 * cache); each input gets fresh jars in it. */
static ns_cookie_jars *g_jars;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (ns_cookie_jars_new(NULL, NULL, &g_jars) != NETSTASH_OK)
    abort();
  return 0;
}

static void check_header(const ns_buf *b) {
  size_t i;
  for (i = 0; i < b->len; i++)
    CHECK(!ns_cookie_ctl(b->data[i]));
}

static void get(ns_cookie_jar *jar, const ns_cookie_request *req, int script) {
  ns_buf b;
  netstash_error rv;
  ns_buf_init(&b, ns_mem_default(), (size_t)1 << 24);
  rv = script ? ns_cookie_jar_script_get(jar, req, NOW + 1000, &b)
              : ns_cookie_jar_header(jar, req, NOW + 1000, &b);
  CHECK(rv == NETSTASH_OK);
  check_header(&b);
  ns_buf_free(&b);
}

static void export_import_fixpoint(ns_cookie_jar *src) {
  ns_cookie_jar *a, *b;
  ns_buf e1, e2, e3;
  ns_buf_init(&e1, ns_mem_default(), (size_t)1 << 26);
  ns_buf_init(&e2, ns_mem_default(), (size_t)1 << 26);
  ns_buf_init(&e3, ns_mem_default(), (size_t)1 << 26);
  CHECK(ns_cookie_jar_export_netscape(src, NOW, &e1, NULL) == NETSTASH_OK);
  CHECK(ns_cookie_jars_open(g_jars, "fa", NS_COOKIE_JAR_MEMORY, NOW, &a) == NETSTASH_OK);
  CHECK(ns_cookie_jar_import_netscape(a, (const char *)e1.data, e1.len, NOW, NULL, NULL) ==
        NETSTASH_OK);
  CHECK(ns_cookie_jar_export_netscape(a, NOW, &e2, NULL) == NETSTASH_OK);
  CHECK(ns_cookie_jars_open(g_jars, "fb", NS_COOKIE_JAR_MEMORY, NOW, &b) == NETSTASH_OK);
  CHECK(ns_cookie_jar_import_netscape(b, (const char *)e2.data, e2.len, NOW, NULL, NULL) ==
        NETSTASH_OK);
  CHECK(ns_cookie_jar_export_netscape(b, NOW, &e3, NULL) == NETSTASH_OK);
  CHECK(e2.len == e3.len && (e2.len == 0 || memcmp(e2.data, e3.data, e2.len) == 0));
  CHECK(ns_cookie_jars_remove(g_jars, "fa", 0) == NETSTASH_OK);
  CHECK(ns_cookie_jars_remove(g_jars, "fb", 0) == NETSTASH_OK);
  ns_buf_free(&e1);
  ns_buf_free(&e2);
  ns_buf_free(&e3);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const ns_mem *mem = ns_mem_default();
  ns_url u, sfc, tls, other, up;
  ns_cookie_request req, req2;
  ns_cookie_jar *jar;
  unsigned fl;
  size_t i, start;
  int64_t t;

  /* date parser on everything */
  if (ns_cookie_date_parse((const char *)data, size, &t)) {
    CHECK(t >= INT64_C(-11644473600) && t <= INT64_C(253402300799));
  }
  /* the record decoder on everything */
  {
    int nomem;
    ns_cookie *c = ns_cookie_decode_(mem, data, size, &nomem);
    if (c) {
      ns_buf b;
      ns_buf_init(&b, mem, (size_t)1 << 20);
      CHECK(ns_cookie_encode_(c, &b) == NETSTASH_OK);
      CHECK(b.len == size && memcmp(b.data, data, size) == 0);
      ns_buf_free(&b);
      ns_free(mem, c);
    }
  }
  if (size == 0)
    return 0;
  fl = data[0];
  CHECK(ns_url_parse(mem, fl & 1 ? "http://www.example.com/a/b" : "https://www.example.com/a/b",
                     &u, NULL, 0) == NETSTASH_OK);
  CHECK(ns_url_parse(mem, "https://other.example/", &sfc, NULL, 0) == NETSTASH_OK);
  CHECK(ns_url_parse(mem, "https://top.example/x", &tls, NULL, 0) == NETSTASH_OK);
  CHECK(ns_url_parse(mem, "https://sub.www.example.com/a/b/c", &other, NULL, 0) == NETSTASH_OK);
  CHECK(ns_url_parse(mem, "https://example.com/", &up, NULL, 0) == NETSTASH_OK);
  memset(&req, 0, sizeof(req));
  req.url = &u;
  req.site_for_cookies = fl & 4 ? &sfc : &u;
  req.top_level_navigation = (fl & 8) != 0;
  req.top_level_site = fl & 16 ? &tls : NULL;
  CHECK(ns_cookie_jars_open(g_jars, "f", NS_COOKIE_JAR_MEMORY, NOW, &jar) == NETSTASH_OK);
  {
    ns_cookie_limits l = {20, 15, 40, 30};
    CHECK(ns_cookie_jar_set_limits(jar, &l) == NETSTASH_OK);
  }

  for (start = 1, i = 1; i <= size; i++) {
    if (i == size || data[i] == '\n') {
      const char *line = (const char *)data + start;
      size_t len = i - start;
      ns_cookie_parsed pc;
      ns_cookie_status st = NS_COOKIE_STATUS_COUNT_;
      netstash_error rv;
      if (ns_cookie_parse(line, len, NOW, &pc)) {
        CHECK(pc.name.len + pc.value.len <= NS_COOKIE_MAX_NAME_VALUE);
        CHECK(pc.name.len + pc.value.len > 0);
        CHECK(pc.name.len == 0 || (pc.name.p >= line && pc.name.p + pc.name.len <= line + len));
        CHECK(pc.value.len == 0 || (pc.value.p >= line && pc.value.p + pc.value.len <= line + len));
        CHECK(!pc.persistent || pc.expiry_ms <= NOW + NS_COOKIE_MAX_AGE_MS);
        CHECK(pc.domain.len <= NS_COOKIE_MAX_ATTR_VALUE && pc.path.len <= NS_COOKIE_MAX_ATTR_VALUE);
      }
      rv = fl & 2 ? ns_cookie_jar_script_set(jar, &req, line, len, NOW, &st)
                  : ns_cookie_jar_set(jar, &req, line, len, NOW, &st);
      CHECK(rv == NETSTASH_OK);
      CHECK(st < NS_COOKIE_STATUS_COUNT_);
      CHECK(ns_cookie_jar_count(jar) <= 40);
      start = i + 1;
    }
  }
  get(jar, &req, 0);
  get(jar, &req, 1);
  req2 = req;
  req2.url = &other;
  get(jar, &req2, 0);
  req2.url = &up;
  get(jar, &req2, 0);
  export_import_fixpoint(jar);
  /* cookies.txt importer on the raw input */
  CHECK(ns_cookie_jar_import_netscape(jar, (const char *)data, size, NOW, NULL, NULL) == NETSTASH_OK);
  CHECK(ns_cookie_jar_count(jar) <= 40);
  CHECK(ns_cookie_jar_sweep(jar, NOW + NS_COOKIE_MAX_AGE_MS + 1, NULL) == NETSTASH_OK);
  CHECK(ns_cookie_jars_remove(g_jars, "f", 0) == NETSTASH_OK);
  ns_url_free(mem, &u);
  ns_url_free(mem, &sfc);
  ns_url_free(mem, &tls);
  ns_url_free(mem, &other);
  ns_url_free(mem, &up);
  return 0;
}
