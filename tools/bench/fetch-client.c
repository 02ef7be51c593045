/*
 * fetch-client — benchmark helper: one process, one netstash context, fetch
 * every URL of a list concurrently over HTTP/2, verify each completed with
 * 200 and the expected size, exit 0 on success.
 *
 *   fetch-client URLS_FILE CAFILE RESOLVE EXPECT_BYTES
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

static void on_complete(netstash_fetch *f, netstash_error err, void *ud) {
  uint64_t expect = *(uint64_t *)ud;
  if (err != NETSTASH_OK || netstash_fetch_status(f) != 200 ||
      netstash_fetch_body_bytes(f) != expect) {
    fprintf(stderr, "fetch-client: %s: %s %d %llu\n", netstash_fetch_effective_url(f),
            netstash_error_name(err), netstash_fetch_status(f),
            (unsigned long long)netstash_fetch_body_bytes(f));
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
  uint64_t expect;
  char detail[256];
  netstash_fetch_callbacks cbs = {NULL, NULL, on_complete};

  if (argc != 5) {
    fprintf(stderr, "usage: fetch-client URLS_FILE CAFILE HOST:PORT:ADDR EXPECT_BYTES\n");
    return 2;
  }
  expect = strtoull(argv[4], NULL, 10);
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
        netstash_fetch_start(ctx, req, &cbs, &expect, &fs[n]) != NETSTASH_OK) {
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
