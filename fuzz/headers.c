/*
 * fuzz/headers.c — lib/core/headers.c binary form, header lines and the HTTP
 * field reader under libFuzzer.
 *
 * Input: any bytes.
 *  1. decoded as a binary header list (ns_headers_decode, with and without
 *     `consumed`); on success it must re-encode to exactly the bytes it was
 *     decoded from (the format has one encoding per list), and every field
 *     must pass the same checks ns_headers_add applies;
 *  2. split on '\n' into "Name: value" lines for ns_headers_add_line; the
 *     accepted list must round-trip through encode/decode unchanged;
 *  3. parsed as an HTTP-date; a success must format and parse back to the
 *     same instant.
 * Checked: no crash/leak/UB, only documented error codes, the round trips.
 */
#include "ns_setup.h"

#include <stdlib.h>

#include "core/headers.h"
#include "core/reader.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

static void same(const ns_headers *a, const ns_headers *b) {
  size_t i;
  CHECK(a->len == b->len);
  for (i = 0; i < a->len; i++) {
    CHECK(a->f[i].name_len == b->f[i].name_len && a->f[i].value_len == b->f[i].value_len);
    CHECK(!memcmp(a->f[i].name, b->f[i].name, a->f[i].name_len));
    CHECK(!memcmp(a->f[i].value, b->f[i].value, a->f[i].value_len));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const ns_mem *mem = ns_mem_default();
  ns_headers h, d;
  ns_buf b;
  size_t used = 0, i, start;
  netstash_error rv;
  int64_t t;

  ns_headers_init(&h, mem);
  ns_headers_init(&d, mem);
  ns_buf_init(&b, mem, (size_t)1 << 26);

  /* 1. binary form */
  rv = ns_headers_decode(&h, data, size, &used);
  CHECK(rv == NETSTASH_OK || rv == NETSTASH_E_DECODE);
  if (rv == NETSTASH_OK) {
    CHECK(used <= size);
    for (i = 0; i < h.len; i++) {
      CHECK(ns_header_name_valid(h.f[i].name, h.f[i].name_len));
      CHECK(ns_header_value_valid(h.f[i].value, h.f[i].value_len));
    }
    CHECK(ns_headers_encode(&h, &b) == NETSTASH_OK);
    CHECK(b.len == used && !memcmp(b.data, data, used));
    rv = ns_headers_decode(&d, data, size, NULL);
    CHECK((rv == NETSTASH_OK) == (used == size));
  } else {
    CHECK(h.len == 0);
    CHECK(ns_headers_decode(&d, data, size, NULL) == NETSTASH_E_DECODE);
  }
  ns_headers_free(&h);
  ns_headers_free(&d);
  ns_buf_reset(&b);

  /* 2. header lines */
  for (start = 0, i = 0; i <= size; i++) {
    if (i == size || data[i] == '\n') {
      rv = ns_headers_add_line(&h, (const char *)data + start, i - start);
      CHECK(rv == NETSTASH_OK || rv == NETSTASH_E_INVALID_ARGUMENT);
      start = i + 1;
    }
  }
  CHECK(ns_headers_encode(&h, &b) == NETSTASH_OK);
  CHECK(ns_headers_decode(&d, b.data, b.len, NULL) == NETSTASH_OK);
  same(&h, &d);
  if (h.len) {
    ns_buf c;
    int present;
    ns_buf_init(&c, mem, (size_t)1 << 26);
    CHECK(ns_headers_combined(&h, h.f[0].name, &c, &present) == NETSTASH_OK && present);
    ns_buf_free(&c);
    CHECK(ns_headers_remove(&d, h.f[0].name) >= 1);
    CHECK(ns_headers_get(&d, h.f[0].name) == NULL);
  }
  ns_headers_free(&h);
  ns_headers_free(&d);
  ns_buf_free(&b);

  /* 3. HTTP-date */
  if (ns_http_date_parse((const char *)data, size, 1700000000, &t) == NETSTASH_OK) {
    char out[NS_HTTP_DATE_LEN];
    int64_t back;
    ns_http_date_format(t, out);
    CHECK(ns_http_date_parse(out, strlen(out), 1700000000, &back) == NETSTASH_OK);
    CHECK(back == t);
  }
  return 0;
}
