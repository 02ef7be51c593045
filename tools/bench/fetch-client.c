/*
 * fetch-client — benchmark helper: one process, one netstash context, fetch
 * every URL of a list concurrently, verify each completed with 200 and the
 * expected size, exit 0 on success.
 *
 *   fetch-client URLS_FILE CAFILE RESOLVE EXPECT_BYTES [PROTO]
 *
 * PROTO h2 or h3 sets every request's HTTP version (NETSTASH_HTTP_2 or
 * NETSTASH_HTTP_3) and fails any fetch whose protocol is not that one, so a
 * silent fallback is never measured as the protocol asked for. Without it the
 * library chooses (h2 via ALPN today).
 *
 * Driven by tools/bench/fetch, which measures wall time, CPU time and peak
 * RSS of this process beside curl and h2load doing the same work.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netstash/netstash.h>

static atomic_int bad;

struct want {
  uint64_t bytes;
  const char *proto; /* "h2", "h3" or NULL: not checked */
};

static void on_complete(netstash_fetch *f, netstash_error err, void *ud) {
  const struct want *w = ud;
  const char *proto = netstash_fetch_protocol_name(f);
  if (err != NETSTASH_OK || netstash_fetch_status(f) != 200 ||
      netstash_fetch_body_bytes(f) != w->bytes) {
    fprintf(stderr, "fetch-client: %s: %s %d %llu (%s) %s\n", netstash_fetch_effective_url(f),
            netstash_error_name(err), netstash_fetch_status(f),
            (unsigned long long)netstash_fetch_body_bytes(f), proto[0] ? proto : "-",
            netstash_fetch_error_detail(f));
    atomic_fetch_add(&bad, 1);
  } else if (w->proto && strcmp(proto, w->proto) != 0) {
    fprintf(stderr, "fetch-client: %s: fetched over \"%s\", not %s\n",
            netstash_fetch_effective_url(f), proto, w->proto);
    atomic_fetch_add(&bad, 1);
  }
}

int main(int argc, char **argv) {
  FILE *fp;
  char line[2048];
  netstash_options *o;
  netstash_ctx *ctx;
  netstash_fetch **fs = NULL;
  size_t n = 0, cap = 0, i;
  struct want want = {0, NULL};
  netstash_http_version version = NETSTASH_HTTP_ANY;
  char detail[256];
  netstash_fetch_callbacks cbs = {NULL, NULL, on_complete};

  if (argc == 6 && strcmp(argv[5], "h2") == 0)
    version = NETSTASH_HTTP_2;
  else if (argc == 6 && strcmp(argv[5], "h3") == 0)
    version = NETSTASH_HTTP_3;
  if (argc < 5 || argc > 6 || (argc == 6 && version == NETSTASH_HTTP_ANY)) {
    fprintf(stderr, "usage: fetch-client URLS_FILE CAFILE HOST:PORT:ADDR EXPECT_BYTES [h2|h3]\n");
    return 2;
  }
  want.bytes = strtoull(argv[4], NULL, 10);
  if (version != NETSTASH_HTTP_ANY)
    want.proto = argv[5];
  if (!(fp = fopen(argv[1], "r"))) {
    perror(argv[1]);
    return 2;
  }
  netstash_options_new(&o);
  netstash_options_set_ca_file(o, argv[2]);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK) {
    fprintf(stderr, "fetch-client: %s\n", detail);
    return 1;
  }
  netstash_options_del(o);
  while (fgets(line, sizeof(line), fp)) {
    netstash_request *req;
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0])
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 256;
      fs = realloc(fs, cap * sizeof(*fs));
      if (!fs)
        return 1;
    }
    if (netstash_request_new(&req, line) != NETSTASH_OK ||
        netstash_request_add_resolve(req, argv[3]) != NETSTASH_OK ||
        (version != NETSTASH_HTTP_ANY &&
         netstash_request_set_http_version(req, version) != NETSTASH_OK) ||
        netstash_fetch_start(ctx, req, &cbs, &want, &fs[n]) != NETSTASH_OK) {
      fprintf(stderr, "fetch-client: cannot start %s\n", line);
      return 1;
    }
    netstash_request_del(req);
    n++;
  }
  fclose(fp);
  for (i = 0; i < n; i++) {
    netstash_fetch_wait(fs[i], 0);
    netstash_fetch_del(fs[i]);
  }
  free(fs);
  fprintf(stderr, "fetch-client: %zu fetches, %llu connections, %llu TLS handshakes\n", n,
          (unsigned long long)netstash_ctx_stat(ctx, NETSTASH_STAT_CONNECTIONS_OPENED),
          (unsigned long long)netstash_ctx_stat(ctx, NETSTASH_STAT_TLS_HANDSHAKES));
  netstash_ctx_del(ctx);
  return atomic_load(&bad) ? 1 : 0;
}
