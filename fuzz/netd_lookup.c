/*
 * fuzz/netd_lookup.c — netd's synchronous preload lookups (netd/ipc.c, the
 * lookup protocol of lib/preload/lookup_wire.h) under libFuzzer, with the
 * input as a hostile client's requests.
 *
 * As fuzz/netd_h2.c: netd's IPC on a unix socket in a temporary profile, on
 * a library context's loop thread. Before it starts, a manifest is
 * installed in that profile (no network: the installer is given the bodies)
 * with three resources — a small page, a body over one store chunk, an empty
 * one — so requests can hit. Per input the harness connects, sends the
 * protocol's magic, the input, then shuts its side, and reads netd's
 * answers until netd closes.
 *
 * Input layout: the client's bytes after the magic (u32 URL lengths in host
 * byte order and URLs; see fuzz/corpus/netd_lookup/).
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - netd closes the connection after the client's EOF (20 s: hung, abort);
 *  - every complete answer is well formed: an error code with nothing after
 *    it, or a 200 whose fields parse exactly into head_len and whose body is
 *    byte for byte one of the installed bodies (netd never serves a wrong or
 *    torn body); only the last answer may be cut short (netd closes a
 *    client that does not read what it asked for).
 */
#include "netd_fuzz.h"

#include <openssl/evp.h>

#include "preload/install.h"
#include "preload/lookup_wire.h"
#include "preload/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char nf_err[256];
static uint8_t big[70000]; /* two store chunks */

static const struct {
  const char *url;
  const char *ctype;
} site[] = {
    {"https://app.test/", "text/html"},
    {"https://app.test/big.bin", "application/octet-stream"},
    {"https://app.test/empty.txt", "text/plain"},
};
static const char page[] = "<html>preloaded</html>";

static const uint8_t *body_of(size_t i, size_t *len) {
  *len = i == 0 ? sizeof(page) - 1 : i == 1 ? sizeof(big) : 0;
  return i == 0 ? (const uint8_t *)page : i == 1 ? big : (const uint8_t *)"";
}

static int start_ipc(void) { return netd_ipc_start(&nf_d, nf_err, sizeof(nf_err)); }

/* The manifest, unsigned, with every body: published in nf_d's profile. */
static void install_site(void) {
  char text[4096], *p = text;
  size_t left = sizeof(text), i;
  ns_manifest_check ck = {(int64_t)time(NULL), 0, 0};
  ns_manifest *m = NULL;
  ns_pl_install *in = NULL;
  ns_pl_device dev = {NULL, NULL, "fuzz-device"};
  static ns_manifest_diags diags;
  char detail[256] = "";
  int n = snprintf(p, left,
                   "{\"id\":\"fuzz\",\"version\":1,\"scope\":[\"https://app.test/\"],"
                   "\"entry_pages\":[\"https://app.test/\"],\"expires\":\"2099-12-31T23:59:59Z\","
                   "\"resources\":[");
  p += n;
  left -= (size_t)n;
  for (i = 0; i < sizeof(site) / sizeof(site[0]); i++) {
    uint8_t d[32];
    char b64[64];
    size_t len;
    const uint8_t *b = body_of(i, &len);
    NF_CHECK(EVP_Digest(b, len, d, NULL, EVP_sha256(), NULL) == 1);
    EVP_EncodeBlock((unsigned char *)b64, d, 32);
    n = snprintf(p, left,
                 "%s{\"url\":\"%s\",\"integrity\":\"sha256-%s\",\"size\":%zu,"
                 "\"content_type\":\"%s\",\"priority\":\"critical\"}",
                 i ? "," : "", site[i].url, b64, len, site[i].ctype);
    p += n;
    left -= (size_t)n;
  }
  NF_CHECK(snprintf(p, left, "]}") == 2);
  NF_CHECK(ns_manifest_parse(&nf_d.ctx->mem, (const uint8_t *)text, strlen(text), &ck, &m,
                             &diags) == NETSTASH_OK);
  NF_CHECK(ns_pl_install_begin(nf_d.ctx->store, &nf_d.ctx->mem, (const uint8_t *)text,
                               strlen(text), NULL, 0, "", m, &dev, &in, detail,
                               sizeof(detail)) == NETSTASH_OK);
  for (i = 0; i < sizeof(site) / sizeof(site[0]); i++) {
    size_t len;
    const uint8_t *b = body_of(i, &len);
    if (ns_pl_install_needed(in, i))
      NF_CHECK(ns_pl_install_body(in, i, b, len) == NETSTASH_OK);
  }
  NF_CHECK(ns_pl_install_publish(in) == NETSTASH_OK);
  ns_pl_install_free(in);
  ns_manifest_del(m);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  (void)nf_read_until; /* netd_fuzz.h's; answers are read here as they come */
  for (size_t i = 0; i < sizeof(big); i++)
    big[i] = (uint8_t)((i * 2654435761u) >> 11);
  nf_setup();
  install_site();
  if (nf_on_loop(start_ipc) != 0) {
    fprintf(stderr, "netd_lookup: %s\n", nf_err);
    abort();
  }
  return 0;
}

/* One complete answer at p (n bytes available): its length, 0 when more
 * bytes are needed. Aborts on a malformed answer. */
static size_t n_hits, n_errors;

static size_t check_answer(const uint8_t *p, size_t n) {
  ns_lookup_answer a;
  const uint8_t *f, *end, *body;
  size_t total, blen;
  int match = 0;
  if (n < sizeof(a))
    return 0;
  memcpy(&a, p, sizeof(a));
  if (a.err) { /* an error: the fixed part alone */
    NF_CHECK(a.err < 300 && !a.status && !a.head_len && !a.body_len);
    n_errors++;
    return sizeof(a);
  }
  NF_CHECK(a.status == 200 && a.head_len <= NS_LOOKUP_MAX_HEAD && a.body_len <= sizeof(big) &&
           a.nfields <= NS_LOOKUP_MAX_FIELDS && a.version == 1 && a.id_len == 4);
  total = sizeof(a) + a.head_len + (size_t)a.body_len;
  if (n < total)
    return 0;
  f = p + sizeof(a);
  end = f + a.head_len;
  for (uint32_t i = 0; i < a.nfields; i++) {
    uint32_t l[2];
    NF_CHECK((size_t)(end - f) >= 8);
    memcpy(l, f, 8);
    f += 8;
    NF_CHECK((size_t)(end - f) >= (size_t)l[0] + l[1]);
    f += (size_t)l[0] + l[1];
  }
  NF_CHECK((size_t)(end - f) == 4 && !memcmp(f, "fuzz", 4));
  body = end;
  for (size_t i = 0; i < sizeof(site) / sizeof(site[0]); i++) {
    const uint8_t *b = body_of(i, &blen);
    if (blen == a.body_len && !memcmp(b, body, blen))
      match = 1;
  }
  NF_CHECK(match);
  n_hits++;
  return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t in[1 << 18];
  size_t have = 0;
  int fd, r = 0, idle_polls = 0;

  fd = nf_connect_ipc("netd_lookup");
  /* netd may close at any point: write errors are fine */
  if (nf_write_all(fd, (const uint8_t *)NS_LOOKUP_MAGIC, NS_LOOKUP_MAGIC_LEN) == 0)
    (void)nf_write_all(fd, data, size);
  shutdown(fd, SHUT_WR);
  /* answers until netd closes (it does on the client's EOF); 20 s: hung */
  for (;;) {
    struct pollfd pf = {fd, POLLIN, 0};
    ssize_t got;
    size_t used;
    if ((r = poll(&pf, 1, 100)) == 0) {
      if (++idle_polls == 200) {
        fprintf(stderr, "netd_lookup: netd did not close the connection within 20 s of EOF\n");
        nf_diagnose("netd_lookup");
        abort();
      }
      continue;
    }
    got = recv(fd, in + have, sizeof(in) - have, 0);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break; /* closed (a reset when netd dropped unread answers) */
    idle_polls = 0;
    have += (size_t)got;
    while ((used = check_answer(in, have)) > 0) {
      memmove(in, in + used, have - used);
      have -= used;
    }
    NF_CHECK(have < sizeof(in)); /* an answer is at most 70 KB and a head */
  }
  if (have) /* a last answer cut short: only when netd gave up on the client */
    NF_CHECK(check_answer(in, have) == 0);
  if (getenv("NSFUZZ_VERBOSE"))
    fprintf(stderr, "netd_lookup: %zu hits, %zu errors answered%s\n", n_hits, n_errors,
            have ? ", then cut short" : "");
  n_hits = n_errors = 0;
  close(fd);
  return 0;
}
