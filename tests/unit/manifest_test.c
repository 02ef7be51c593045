/*
 * manifest_test.c — lib/preload: manifest parsing and validation, Ed25519
 * signatures.
 */
#include "ns_setup.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "preload/manifest.h"
#include "preload/sign.h"

#define NOW INT64_C(1795000000) /* 2026-11-18 */

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long n;
  assert_non_null(f);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  n = ftell(f);
  rewind(f);
  buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static char *example(const char *name, size_t *len) {
  char path[1024];
  const char *src = getenv("srcdir");
  snprintf(path, sizeof(path), "%s/manifests/examples/%s", src ? src : ".", name);
  return read_all(path, len);
}

static netstash_error parse(const char *json, ns_manifest_diags *d, uint64_t installed) {
  ns_manifest_check ck = {NOW, installed, 0};
  ns_manifest *m = NULL;
  netstash_error rv =
      ns_manifest_parse(ns_mem_default(), (const uint8_t *)json, strlen(json), &ck, &m, d);
  if (rv == NETSTASH_OK)
    assert_non_null(m);
  else
    assert_null(m);
  ns_manifest_del(m);
  return rv;
}

static int has_diag(const ns_manifest_diags *d, netstash_error code, const char *msg_prefix) {
  size_t i;
  for (i = 0; i < d->n; i++)
    if (d->d[i].code == code && !strncmp(d->d[i].msg, msg_prefix, strlen(msg_prefix)))
      return 1;
  for (i = 0; i < d->n; i++)
    fprintf(stderr, "  diag: %s\n", d->d[i].msg);
  return 0;
}

static void test_examples(void **state) {
  static const char *names[] = {"news-site.json", "shop-rollout.json"};
  size_t i, len;
  (void)state;
  for (i = 0; i < 2; i++) {
    ns_manifest_check ck = {NOW, 0, 0};
    ns_manifest_diags d;
    ns_manifest *m = NULL;
    char *j = example(names[i], &len);
    netstash_error rv = ns_manifest_parse(ns_mem_default(), (uint8_t *)j, len, &ck, &m, &d);
    if (rv != NETSTASH_OK)
      has_diag(&d, NETSTASH_OK, "");
    assert_int_equal(rv, NETSTASH_OK);
    assert_int_equal(d.n, 0);
    assert_true(m->n_resources >= 3);
    if (i == 0) {
      assert_string_equal(m->id, "news.example");
      assert_int_equal(m->version, 42);
      assert_int_equal(m->resources[0].priority, NS_MANIFEST_PRIO_CRITICAL);
      assert_int_equal(m->resources[2].n_hashes, 2);
      assert_int_equal(m->resources[2].hashes[1].alg, NS_SRI_SHA512);
      assert_int_equal(m->resources[0].n_headers, 1);
    } else {
      assert_int_equal(m->resources[1].n_query_ignore, 3);
      assert_int_equal(m->rollout.percent, 25);
      assert_int_equal(m->rollout.pinned_version, 6);
      assert_int_equal(m->network, NS_MANIFEST_NET_UNMETERED);
      assert_int_equal(m->expires_s, INT64_C(4086460800) - 2 * 3600 + 0 * 0 + 0);
    }
    ns_manifest_del(m);
    free(j);
  }
}

#define HDR                                                                                        \
  "{\"id\":\"t\",\"version\":3,\"scope\":[\"https://a.example/app/\"],"                            \
  "\"entry_pages\":[\"https://a.example/app/\"],\"expires\":\"2099-01-01T00:00:00Z\","
#define SHA "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
#define RES(url)                                                                                   \
  "{\"url\":\"" url "\",\"integrity\":\"" SHA "\",\"size\":10,\"content_type\":\"text/html\"}"

static void test_violations(void **state) {
  ns_manifest_diags d;
  (void)state;
  /* baseline passes */
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "]}", &d, 0),
                   NETSTASH_OK);
  /* unknown algorithm, with the path */
  assert_int_equal(parse(HDR "\"resources\":[" RES(
                             "https://a.example/app/") ",{\"url\":"
                                                       "\"https://a.example/app/"
                                                       "x\",\"integrity\":\"md5-AAAA\",\"size\":1,"
                                                       "\"content_type\":\"a/b\"}]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID,
                       "resources[1].integrity: unknown algorithm \"md5\""));
  /* wrong type */
  assert_int_equal(parse(HDR
                         "\"resources\":[{\"url\":\"https://a.example/app/\",\"integrity\":\"" SHA
                         "\",\"size\":\"10\",\"content_type\":\"a/b\"}]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID, "resources[0].size: must be an integer"));
  /* unknown field */
  assert_int_equal(
      parse(HDR "\"colour\":1,\"resources\":[" RES("https://a.example/app/") "]}", &d, 0),
      NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID, "colour: unknown field"));
  /* non-https */
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "http://a.example/app/y") "]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID, "resources[1].url: not an https URL"));
  /* outside scope, including a sibling path and a look-alike host */
  assert_int_equal(
      parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                "https://a.example/application") "," RES("https://a.example.evil/app/") "]}",
            &d, 0),
      NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID,
                       "resources[1].url: \"https://a.example/application\" is outside"));
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID,
                       "resources[2].url: \"https://a.example.evil/app/\" is outside"));
  /* host case and the default port do not matter; credentials are refused */
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "https://A.Example:443/app/x") "]}",
                         &d, 0),
                   NETSTASH_OK);
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "https://A.example/app/") "]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID, "resources[1].url: duplicate URL"));
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "https://u:p@a.example/app/y") "]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(
      has_diag(&d, NETSTASH_E_MANIFEST_INVALID,
               "resources[1].url: URL \"https://u:p@a.example/app/y\" carries credentials"));
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "https://a.example/app/../secret") "]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID,
                       "resources[1].url: \"https://a.example/app/../secret\" is outside"));
  /* duplicate */
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "," RES(
                             "https://a.example/app/") "]}",
                         &d, 0),
                   NETSTASH_E_MANIFEST_INVALID);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_INVALID, "resources[1].url: duplicate URL"));
  /* expired */
  assert_int_equal(
      parse("{\"id\":\"t\",\"version\":3,\"scope\":[\"https://a.example/app/\"],"
            "\"entry_pages\":[\"https://a.example/app/\"],\"expires\":\"2020-01-01T00:00:00Z\","
            "\"resources\":[" RES("https://a.example/app/") "]}",
            &d, 0),
      NETSTASH_E_MANIFEST_EXPIRED);
  assert_true(has_diag(&d, NETSTASH_E_MANIFEST_EXPIRED, "expires: the manifest expired"));
  /* downgrade: version 3 with 3 installed */
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "]}", &d, 3),
                   NETSTASH_E_DOWNGRADE);
  assert_true(has_diag(&d, NETSTASH_E_DOWNGRADE, "version: 3 is not newer"));
  assert_int_equal(parse(HDR "\"resources\":[" RES("https://a.example/app/") "]}", &d, 2),
                   NETSTASH_OK);
  /* budget */
  assert_int_equal(parse(HDR "\"budgets\":{\"max_bytes\":15},\"resources\":[" RES(
                             "https://a.example/app/") "," RES("https://a.example/app/z") "]}",
                         &d, 0),
                   NETSTASH_E_TOO_LARGE);
  assert_true(has_diag(&d, NETSTASH_E_TOO_LARGE, "budgets.max_bytes: resources total 20 bytes"));
  /* not JSON; not an object */
  assert_int_equal(parse("{", &d, 0), NETSTASH_E_MANIFEST_INVALID);
  assert_int_equal(parse("[]", &d, 0), NETSTASH_E_MANIFEST_INVALID);
  /* size cap */
  {
    ns_manifest_check ck = {NOW, 0, 4};
    ns_manifest *m = NULL;
    assert_int_equal(ns_manifest_parse(ns_mem_default(), (const uint8_t *)"{}   ", 5, &ck, &m, &d),
                     NETSTASH_E_TOO_LARGE);
  }
  /* all violations are listed, not only the first */
  assert_int_equal(parse("{\"version\":\"x\",\"extra\":1}", &d, 0), NETSTASH_E_MANIFEST_INVALID);
  assert_true(d.n >= 6);
}

static void test_rfc3339(void **state) {
  int64_t t;
  (void)state;
  assert_int_equal(ns_rfc3339_parse("1970-01-01T00:00:00Z", 20, &t), 0);
  assert_int_equal(t, 0);
  assert_int_equal(ns_rfc3339_parse("2000-03-01T00:00:00.5+01:00", 27, &t), 0);
  assert_int_equal(t, 951865200);
  assert_int_equal(ns_rfc3339_parse("2001-02-29T00:00:00Z", 20, &t), -1);
  assert_int_equal(ns_rfc3339_parse("2001-02-28 00:00:00Z", 20, &t), -1);
  assert_int_equal(ns_rfc3339_parse("2001-02-28T00:00:00", 19, &t), -1);
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
  static const char *names[] = {"news-site.json", "shop-rollout.json"};
  size_t i, len;
  (void)state;
  for (i = 0; i < 2; i++) {
    char *j = example(names[i], &len);
    netstash_error rv;
    for (fail_at = 0;; fail_at++) {
      ns_manifest_check ck = {NOW, 0, 0};
      ns_manifest *m = NULL;
      nallocs = live = 0;
      rv = ns_manifest_parse(&fmem, (uint8_t *)j, len, &ck, &m, NULL);
      if (rv == NETSTASH_OK) {
        ns_manifest_del(m);
        assert_int_equal(live, 0);
        break;
      }
      assert_int_equal(rv, NETSTASH_E_NOMEM);
      assert_null(m);
      assert_int_equal(live, 0);
    }
    assert_true(fail_at > 5);
    fail_at = -1;
    free(j);
  }
}

static char tmpdir[] = "/tmp/ns-manifest-test-XXXXXX";

static void test_sign_verify(void **state) {
  char key[256], pub[256], other[256], otherpub[256], kid[NS_KEY_ID_LEN + 1],
      kid2[NS_KEY_ID_LEN + 1];
  char detail[256];
  char *sig = NULL;
  size_t sig_len = 0;
  struct stat st;
  const char *msg = "{\"id\":\"x\"}\n";
  uint8_t buf[64];
  const char *trust[1], *both[2];
  (void)state;
  assert_non_null(mkdtemp(tmpdir));
  snprintf(key, sizeof(key), "%s/k", tmpdir);
  snprintf(pub, sizeof(pub), "%s/k.pub", tmpdir);
  snprintf(other, sizeof(other), "%s/o", tmpdir);
  snprintf(otherpub, sizeof(otherpub), "%s/o.pub", tmpdir);
  assert_int_equal(ns_sign_keygen(key, kid, detail, sizeof(detail)), NETSTASH_OK);
  assert_int_equal(strlen(kid), NS_KEY_ID_LEN);
  assert_int_equal(stat(key, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(stat(pub, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0644);
  /* never overwrites */
  assert_int_equal(ns_sign_keygen(key, kid2, detail, sizeof(detail)), NETSTASH_E_IO);
  assert_int_equal(ns_sign_keygen(other, kid2, detail, sizeof(detail)), NETSTASH_OK);
  assert_string_not_equal(kid, kid2);

  assert_int_equal(ns_sign_create(ns_mem_default(), key, (const uint8_t *)msg, strlen(msg), &sig,
                                  &sig_len, kid2, detail, sizeof(detail)),
                   NETSTASH_OK);
  assert_string_equal(kid, kid2);
  trust[0] = pub;
  assert_int_equal(ns_sign_verify((const uint8_t *)msg, strlen(msg), (uint8_t *)sig, sig_len, trust,
                                  1, kid2, detail, sizeof(detail)),
                   NETSTASH_OK);
  both[0] = otherpub;
  both[1] = pub;
  assert_int_equal(ns_sign_verify((const uint8_t *)msg, strlen(msg), (uint8_t *)sig, sig_len, both,
                                  2, NULL, detail, sizeof(detail)),
                   NETSTASH_OK);
  /* a flipped byte in the manifest */
  {
    char *m2 = strdup(msg);
    m2[3] ^= 1;
    assert_int_equal(ns_sign_verify((const uint8_t *)m2, strlen(m2), (uint8_t *)sig, sig_len, trust,
                                    1, NULL, detail, sizeof(detail)),
                     NETSTASH_E_SIGNATURE);
    assert_non_null(strstr(detail, "bad signature"));
    free(m2);
  }
  /* a flipped byte in the signature value */
  {
    char *s2 = strdup(sig), *p = strstr(s2, "\"sig\": \"");
    assert_non_null(p);
    p += 10;
    *p = *p == 'A' ? 'B' : 'A';
    assert_int_equal(ns_sign_verify((const uint8_t *)msg, strlen(msg), (uint8_t *)s2, sig_len,
                                    trust, 1, NULL, detail, sizeof(detail)),
                     NETSTASH_E_SIGNATURE);
    free(s2);
  }
  /* wrong key: unknown key id */
  trust[0] = otherpub;
  assert_int_equal(ns_sign_verify((const uint8_t *)msg, strlen(msg), (uint8_t *)sig, sig_len, trust,
                                  1, NULL, detail, sizeof(detail)),
                   NETSTASH_E_SIGNATURE);
  assert_non_null(strstr(detail, "unknown key id"));
  /* malformed .sig */
  trust[0] = pub;
  assert_int_equal(ns_sign_verify((const uint8_t *)msg, strlen(msg), (const uint8_t *)"{}", 2,
                                  trust, 1, NULL, detail, sizeof(detail)),
                   NETSTASH_E_SIGNATURE);
  assert_non_null(strstr(detail, "malformed"));
  ns_free(ns_mem_default(), sig);
  sig = NULL;
  /* a public key is not a private key */
  assert_int_equal(ns_sign_create(ns_mem_default(), pub, (const uint8_t *)msg, strlen(msg), &sig,
                                  &sig_len, NULL, detail, sizeof(detail)),
                   NETSTASH_E_IO);
  assert_null(sig);
  assert_int_equal(ns_b64_decode("AA==", 4, buf, sizeof(buf), &sig_len), 0);
  assert_int_equal(sig_len, 1);
  assert_int_equal(ns_b64_decode("AB==", 4, buf, sizeof(buf), &sig_len), -1);
  unlink(key);
  unlink(pub);
  unlink(other);
  unlink(otherpub);
  rmdir(tmpdir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_examples),    cmocka_unit_test(test_violations),
      cmocka_unit_test(test_rfc3339),     cmocka_unit_test(test_failmalloc),
      cmocka_unit_test(test_sign_verify),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
