/*
 * fuzz/bundle.c — lib/preload/bundle.c (offline bundle reader) under
 * libFuzzer: the whole input is an archive (tar, tar.gz or zip), opened with
 * ns_pl_bundle_open_mem, then read body by body to the end.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - only the documented error codes come back, each with a detail;
 *  - an open bundle has a manifest of at most NS_MANIFEST_MAX_LEN bytes and
 *    a signature (if any) of at most NS_SIG_MAX_LEN;
 *  - every body handed out is at most max_body bytes and its SHA-256 equals
 *    the hash returned (the name it came under);
 *  - the end and fatal errors are sticky: the next call returns the same
 *    code;
 *  - ns_pl_bundle_sniff_mem says yes for every input that opens.
 */
#include "ns_setup.h"

#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>

#include "preload/bundle.h"
#include "preload/manifest.h"
#include "preload/sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      abort();                                                                                     \
  } while (0)

/* Small enough that the seeds hit the limit too. */
#define MAX_BODY 4096
/* Bodies read per input (a crafted archive may hold very many). */
#define MAX_BODIES 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ns_pl_bundle *b = NULL;
  char detail[256];
  netstash_error rv;
  const uint8_t *p;
  size_t len, n;

  detail[0] = 0;
  rv = ns_pl_bundle_open_mem(ns_mem_default(), data, size, &b, detail, sizeof(detail));
  CHECK(rv == NETSTASH_OK || rv == NETSTASH_E_MANIFEST_INVALID || rv == NETSTASH_E_NOMEM);
  if (rv != NETSTASH_OK) {
    CHECK(b == NULL && (rv == NETSTASH_E_NOMEM || detail[0] != 0));
    return 0;
  }
  CHECK(b != NULL);
  CHECK(ns_pl_bundle_sniff_mem(data, size) == 1);
  p = ns_pl_bundle_manifest(b, &len);
  CHECK(p != NULL && len <= NS_MANIFEST_MAX_LEN);
  p = ns_pl_bundle_sig(b, &len);
  CHECK(p ? len <= NS_SIG_MAX_LEN : len == 0);

  for (n = 0; n < MAX_BODIES; n++) {
    uint8_t hash[32], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    detail[0] = 0;
    rv = ns_pl_bundle_next_body(b, MAX_BODY, hash, &p, &len, detail, sizeof(detail));
    if (rv == NETSTASH_OK) {
      CHECK(p != NULL && len <= MAX_BODY);
      CHECK(EVP_Digest(p, len, md, &mdlen, EVP_sha256(), NULL) && mdlen == 32);
      CHECK(memcmp(md, hash, 32) == 0);
      continue;
    }
    CHECK(p == NULL && len == 0);
    if (rv == NETSTASH_E_TOO_LARGE || rv == NETSTASH_E_INTEGRITY) {
      CHECK(detail[0] != 0); /* this entry only: go on */
      continue;
    }
    CHECK(rv == NETSTASH_E_NOT_FOUND || rv == NETSTASH_E_MANIFEST_INVALID ||
          rv == NETSTASH_E_NOMEM);
    CHECK(rv != NETSTASH_E_MANIFEST_INVALID || detail[0] != 0);
    /* sticky */
    CHECK(ns_pl_bundle_next_body(b, MAX_BODY, hash, &p, &len, NULL, 0) == rv);
    break;
  }
  ns_pl_bundle_close(b);
  return 0;
}
