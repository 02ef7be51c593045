/*
 * fuzz/netd_lookup.c — netd's synchronous preload lookups (netd/ipc.c:
 * HTTP/1.1 on the IPC socket, lib/preload/lookup_http.h) under libFuzzer,
 * with the input as a hostile client's requests.
 *
 * As fuzz/netd_h2.c: netd's IPC on a unix socket in a temporary profile, on
 * a library context's loop thread. Before it starts, a manifest is
 * installed in that profile (no network: the installer is given the bodies)
 * with three resources — a small page, a body over one store chunk, an empty
 * one — so requests can hit. Per input the harness connects, sends the
 * input, then shuts its side, and reads netd's answers until netd closes.
 *
 * Input layout: the client's bytes (HTTP/1.1 requests; an input starting
 * with "PRI" is the HTTP/2 side's, which fuzz/netd_h2.c covers). netd runs
 * with one lookup thread: an input of even length is served by it, one of
 * odd length by the event loop (a connection the harness keeps open holds
 * the thread meanwhile) — both paths answer with the same code, each has
 * its own reading and writing.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - netd closes the connection after the client's EOF (20 s: hung, abort);
 *  - every complete answer is well formed: "HTTP/1.1 ", a status, fields,
 *    Content-Length; a 200 carries X-Netstash-Preload-Id: fuzz and a body
 *    that is byte for byte one of the installed ones (netd never serves a
 *    wrong or torn body), a 502 an X-Netstash-Error and no body, a 4xx ends
 *    the connection; only the last answer may be cut short (netd closes a
 *    client that does not read what it asked for). Lookups with
 *    "X-Netstash-Lookup: cache" (netstash_intercept_cached's: the request's
 *    fields parsed into a request) reach an HTTP cache that holds nothing
 *    here, so they too must be the 502.
 */
#include "netd_fuzz.h"

#include <openssl/evp.h>
#include <stdatomic.h>
#include <strings.h>
#include <unistd.h>

#include "preload/install.h"
#include "preload/lookup_http.h"
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

static int start_ipc(void) {
  return netd_ipc_start(&nf_d, nf_err, sizeof(nf_err));
}

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
  NF_CHECK(ns_pl_install_begin(nf_d.ctx->store, &nf_d.ctx->mem, (const uint8_t *)text, strlen(text),
                               NULL, 0, "", m, &dev, &in, detail, sizeof(detail)) == NETSTASH_OK);
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
  nf_d.cfg.lookup_threads = 1;
  if (nf_on_loop(start_ipc) != 0) {
    fprintf(stderr, "netd_lookup: %s\n", nf_err);
    abort();
  }
  return 0;
}

/* One complete answer at p (n bytes available): its length, 0 when more
 * bytes are needed. Aborts on a malformed answer; *refused set on a 4xx. */
static size_t n_hits, n_errors, n_refused;

static size_t check_answer(const uint8_t *p, size_t n, int *refused) {
  const char *h = (const char *)p, *hend, *line, *eol;
  long status;
  size_t clen = SIZE_MAX, blen, total;
  int id_ok = 0, err_ok = 0, match = 0;
  if (n < 12)
    return 0;
  NF_CHECK(!memcmp(h, "HTTP/1.1 ", 9));
  if (!(hend = memmem(h, n, "\r\n\r\n", 4))) {
    NF_CHECK(n < NS_LOOKUP_MAX_HEAD);
    return 0;
  }
  status = strtol(h + 9, NULL, 10);
  NF_CHECK(status >= 100 && status <= 999);
  line = (const char *)memchr(h, '\n', (size_t)(hend - h)) + 1;
  for (; line < hend + 2; line = eol + 2) {
    const char *colon;
    NF_CHECK((eol = memmem(line, (size_t)(hend + 2 - line), "\r\n", 2)) != NULL);
    NF_CHECK((colon = memchr(line, ':', (size_t)(eol - line))) != NULL && colon > line);
    if ((size_t)(colon - line) == 14 && !strncasecmp(line, "content-length", 14)) {
      NF_CHECK(clen == SIZE_MAX);
      clen = strtoul(colon + 1, NULL, 10);
    } else if ((size_t)(colon - line) == 21 && !strncasecmp(line, "x-netstash-preload-id", 21)) {
      id_ok = eol - colon == 6 && !memcmp(colon + 1, " fuzz", 5);
    } else if ((size_t)(colon - line) == 16 && !strncasecmp(line, "x-netstash-error", 16)) {
      err_ok = eol - colon > 11 && !memcmp(colon + 1, " NETSTASH_E_", 12);
    }
  }
  NF_CHECK(clen != SIZE_MAX);
  total = (size_t)(hend + 4 - h) + clen;
  if (n < total)
    return 0;
  if (status == 200) {
    NF_CHECK(id_ok);
    for (size_t i = 0; i < sizeof(site) / sizeof(site[0]); i++) {
      const uint8_t *b = body_of(i, &blen);
      if (blen == clen && !memcmp(b, hend + 4, blen))
        match = 1;
    }
    NF_CHECK(match);
    n_hits++;
  } else if (status == 502) {
    NF_CHECK(err_ok && clen == 0);
    n_errors++;
  } else {
    NF_CHECK(status >= 400 && status < 500 && clen == 0);
    *refused = 1;
    n_refused++;
  }
  return total;
}

/* netd's lookup threads serving now become want (2 s, else abort). */
static void wait_lookup_threads(uint64_t want) {
  for (int i = 0; atomic_load(&nf_d.metrics.lookup_threads) != want; i++) {
    if (i == 20000) {
      fprintf(stderr, "netd_lookup: %llu lookup threads after 2 s, expected %llu\n",
              (unsigned long long)atomic_load(&nf_d.metrics.lookup_threads),
              (unsigned long long)want);
      abort();
    }
    usleep(100);
  }
}

/* The next connection's path: the loop (the one lookup thread held by a
 * connection of the harness's, an incomplete request on it) or the thread. */
static void lookup_path(int on_loop) {
  static int hold = -1;
  if (on_loop && hold < 0) {
    hold = nf_connect_ipc("netd_lookup");
    NF_CHECK(nf_write_all(hold, (const uint8_t *)"GET ", 4) == 0);
    wait_lookup_threads(1);
  } else if (!on_loop && hold >= 0) {
    close(hold);
    hold = -1;
    wait_lookup_threads(0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t in[1 << 18];
  size_t have = 0;
  int fd, r = 0, idle_polls = 0, refused = 0;

  lookup_path(size & 1);
  fd = nf_connect_ipc("netd_lookup");
  if (size >= 3 && !memcmp(data, "PRI", 3))
    size = 2; /* the HTTP/2 side: netd_h2's */
  /* netd may close at any point: write errors are fine */
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
    while ((used = check_answer(in, have, &refused)) > 0) {
      NF_CHECK(!refused || used == have); /* nothing after a refusal */
      memmove(in, in + used, have - used);
      have -= used;
    }
    NF_CHECK(have < sizeof(in)); /* an answer is at most 70 KB and a head */
  }
  if (have) /* a last answer cut short: only when netd gave up on the client */
    NF_CHECK(check_answer(in, have, &refused) == 0);
  if (getenv("NSFUZZ_VERBOSE"))
    fprintf(stderr, "netd_lookup: %zu hits, %zu errors, %zu refused%s\n", n_hits, n_errors,
            n_refused, have ? ", then cut short" : "");
  n_hits = n_errors = n_refused = 0;
  close(fd);
  return 0;
}
