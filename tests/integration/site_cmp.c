/*
 * site_cmp.c — a fetched body against the fixture site's file (site_cmp.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "site_cmp.h"

/* nst_site()/name, whole; NULL if it cannot be read. */
static unsigned char *slurp(const char *name, size_t *len) {
  char path[1024];
  unsigned char *buf = NULL;
  FILE *fp;
  long n = 0;
  snprintf(path, sizeof(path), "%s/%s", nst_site(), name);
  if (!(fp = fopen(path, "rb")))
    return NULL;
  if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0 &&
      (buf = malloc((size_t)n + 1)) != NULL && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(fp);
  if (buf)
    *len = (size_t)n;
  return buf;
}

unsigned char *site_cmp_read(const char *name, size_t *len) {
  unsigned char *buf = slurp(name, len);
  if (!buf)
    fail_msg("cannot read %s/%s", nst_site(), name);
  return buf;
}

void site_cmp_expect(netstash_fetch *f, const char *name) {
  const uint8_t *body;
  size_t len, n;
  unsigned char *want = site_cmp_read(name, &n);
  assert_int_equal(netstash_fetch_body(f, &body, &len), NETSTASH_OK);
  assert_int_equal(len, n);
  assert_memory_equal(body, want, len);
  free(want);
}

int site_cmp_matches(netstash_fetch *f, const char *name) {
  const uint8_t *body;
  size_t len, n;
  unsigned char *want = slurp(name, &n);
  int ok = want && netstash_fetch_body(f, &body, &len) == NETSTASH_OK && len == n &&
           memcmp(body, want, len) == 0;
  free(want);
  return ok;
}
