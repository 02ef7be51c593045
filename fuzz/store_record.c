/*
 * fuzz/store_record.c — the preload store's record decoders
 * (lib/preload/install.c: the per-manifest state and the per-resource entry
 * values read back from LMDB) and the strict base64 decoder of
 * lib/preload/sign.c, under libFuzzer. A store written by another version,
 * or damaged on disk, must be refused with NETSTASH_E_STORE_CORRUPT, never
 * read out of bounds.
 *
 * Input: any bytes, offered whole to each decoder.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - only NETSTASH_OK / NETSTASH_E_STORE_CORRUPT from the record decoders;
 *  - a decoded state: every pointer it hands out (scope prefixes, ignore
 *    lists and their names) lies inside the input, and the walks end (the
 *    counts n_scope / n_ignore are informational: no caller sizes by them);
 *  - a decoded entry: url and head inside the input; the head decodes as a
 *    header list or is refused with a documented code;
 *  - base64: the output fits the buffer and re-encodes to the input.
 */
#include "ns_setup.h"

#include <stdlib.h>
#include <string.h>

#include "core/headers.h"
#include "preload/install.h"
#include "preload/sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

static int inside(const void *p, size_t len, const uint8_t *data, size_t size) {
  const uint8_t *q = p;
  return len == 0 || (q >= data && q <= data + size && len <= (size_t)(data + size - q));
}

static void check_state(const uint8_t *data, size_t size) {
  ns_pl_state st;
  size_t it = 0, n = 0;
  const char *p;
  size_t len;
  const uint8_t *list;
  size_t nl;
  netstash_error e = ns_pl_state_decode(data, size, &st);
  CHECK(e == NETSTASH_OK || e == NETSTASH_E_STORE_CORRUPT);
  if (e != NETSTASH_OK)
    return;
  CHECK(inside(st.scopes, st.scopes_len, data, size));
  CHECK(inside(st.ignores, st.ignores_len, data, size));
  while (ns_pl_state_scope(&st, &it, &p, &len)) {
    CHECK(inside(p, len, data, size));
    CHECK(++n <= size / 2); /* every prefix takes 2 bytes or more */
  }
  it = 0;
  n = 0;
  while (ns_pl_state_ignore(&st, &it, &list, &nl)) {
    const uint8_t *walk = list;
    CHECK(++n <= size / 2);
    for (size_t i = 0; i < nl; i++) {
      const char *name;
      size_t name_len;
      if (!ns_pl_ignore_name(&walk, &name, &name_len))
        break;
      CHECK(inside(name, name_len, data, size));
    }
  }
}

static void check_entry(const uint8_t *data, size_t size) {
  ns_pl_entry en;
  ns_headers h;
  netstash_error e = ns_pl_entry_decode(data, size, &en);
  CHECK(e == NETSTASH_OK || e == NETSTASH_E_STORE_CORRUPT);
  if (e != NETSTASH_OK)
    return;
  CHECK(inside(en.url, en.url_len, data, size));
  CHECK(inside(en.head, en.head_len, data, size));
  ns_headers_init(&h, ns_mem_default());
  e = ns_headers_decode(&h, en.head, en.head_len, NULL);
  CHECK(e == NETSTASH_OK || e == NETSTASH_E_DECODE || e == NETSTASH_E_NOMEM);
  ns_headers_free(&h);
}

static void check_b64(const uint8_t *data, size_t size) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  uint8_t out[3072];
  char back[4100];
  size_t n = 0, k = 0;
  if (ns_b64_decode((const char *)data, size, out, sizeof(out), &n) != 0)
    return;
  CHECK(n <= sizeof(out));
  /* strict: one encoding per value, so encoding back gives the input */
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)out[i] << 16 | (i + 1 < n ? (uint32_t)out[i + 1] << 8 : 0) |
                 (i + 2 < n ? out[i + 2] : 0);
    back[k++] = abc[v >> 18 & 63];
    back[k++] = abc[v >> 12 & 63];
    back[k++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
    back[k++] = i + 2 < n ? abc[v & 63] : '=';
  }
  CHECK(k == size && memcmp(back, data, size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_state(data, size);
  check_entry(data, size);
  if (size <= 4096)
    check_b64(data, size);
  return 0;
}
