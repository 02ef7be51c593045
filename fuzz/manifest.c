/*
 * fuzz/manifest.c — lib/preload/manifest.c (manifest parsing and validation)
 * and the signature-file parser of lib/preload/sign.c under libFuzzer.
 *
 * Input layout: the whole input is a manifest (JSON), parsed with now = a
 * fixed instant and no installed version, then again with an installed
 * version; it is also offered as a .sig file to ns_sign_verify (no trusted
 * keys, so the only outcome is a refusal).
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - only the documented error codes come back;
 *  - success means no diagnostics, failure means at least one, the first of
 *    which carries the returned code; every message has a "PATH: " prefix;
 *  - a parsed manifest honours its invariants: https URLs, at least one hash
 *    per resource, sizes summing to total_bytes, the budget respected;
 *  - with installed_version = version, the result is NETSTASH_E_DOWNGRADE
 *    or an earlier violation, never success.
 */
#include "ns_setup.h"

#include <stdlib.h>

#include "preload/manifest.h"
#include "preload/sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      abort();                                                                                     \
  } while (0)

static int allowed(netstash_error e) {
  return e == NETSTASH_OK || e == NETSTASH_E_MANIFEST_INVALID || e == NETSTASH_E_TOO_LARGE ||
         e == NETSTASH_E_MANIFEST_EXPIRED || e == NETSTASH_E_DOWNGRADE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static ns_manifest_diags d; /* large; reset by every parse */
  ns_manifest_check ck = {INT64_C(1795000000), 0, 1 << 20};
  ns_manifest *m = NULL;
  netstash_error rv;
  char detail[256];
  size_t i;

  rv = ns_manifest_parse(ns_mem_default(), data, size, &ck, &m, &d);
  CHECK(allowed(rv));
  if (rv == NETSTASH_OK) {
    uint64_t total = 0, version;
    CHECK(m && d.n == 0);
    CHECK(m->n_resources > 0 && m->n_scope > 0 && m->version > 0);
    for (i = 0; i < m->n_resources; i++) {
      CHECK(!strncmp(m->resources[i].url, "https://", 8));
      CHECK(m->resources[i].n_hashes > 0);
      total += m->resources[i].size;
    }
    CHECK(total == m->total_bytes);
    CHECK(!m->max_bytes || total <= m->max_bytes);
    version = m->version;
    ns_manifest_del(m);
    m = NULL;
    ck.installed_version = version;
    rv = ns_manifest_parse(ns_mem_default(), data, size, &ck, &m, &d);
    CHECK(rv == NETSTASH_E_DOWNGRADE && m == NULL && d.n == 1);
  } else {
    CHECK(m == NULL && d.n > 0 && d.d[0].code == rv);
    for (i = 0; i < d.n; i++)
      CHECK(strstr(d.d[i].msg, ": ") != NULL);
  }

  rv = ns_sign_verify(data, size, data, size, NULL, 0, NULL, detail, sizeof(detail));
  CHECK(rv == NETSTASH_E_SIGNATURE);
  return 0;
}
