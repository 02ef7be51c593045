/*
 * fuzz/fetch_response.c — the fetch engine's response handling under
 * libFuzzer, with the server's bytes injected through the transport's socket
 * hook (ctx->test_open_socket, lib/core/ctx.h), as curl-fuzzer does: every
 * connection libcurl opens is sent to the harness's own loopback server
 * (libcurl 7.88 cannot take a socketpair end as connected, so the hook
 * rewrites the address instead), which writes the input and shuts its side.
 * The bytes then drive the whole path: status line, header fields, chunked
 * framing, content codings (lib/transport/decode.c), Set-Cookie into the
 * profile's jar, Alt-Svc/HSTS parsing, the HTTP cache (store, Vary, 304
 * merge) in a temporary profile.
 *
 * Input layout:
 *   byte 0   bit 0-1: method (GET, HEAD, POST with a small body, GET with
 *                     Range 0-99: its second fetch asks for 100-199 with
 *                     bit 3, else for the whole); bit 2: HTTP/2 with prior knowledge (h2c)
 *                     instead of HTTP/1.1; bit 3: raw body (no decoding);
 *                     bit 4: follow one redirect; bit 5: cache mode BYPASS
 *                     instead of DEFAULT; bit 6: a second fetch of the same
 *                     URL (cache hit, revalidation or a second response);
 *                     bit 7: Accept-Encoding / If-None-Match request fields
 *   bytes 1.. the server's bytes. "NSFUZZ-NEXT" splits them: the first part
 *            answers the first connection, the second part the next one
 *            (a redirect's or the second fetch's); further connections see
 *            EOF at once.
 *
 * Each input uses its own URL (a counter in the path), so a response cached
 * by one input is never served to another; the context (and its cookie jar
 * and cache, capped small) is shared across inputs only because creating one
 * per input would take most of the time.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - every fetch ends within 5 s (else abort: a hang), on_complete runs
 *    exactly once, after on_response if that ran, and no on_data/on_response
 *    follows it; netstash_fetch_wait returns the same result;
 *  - the result is a known netstash_error; on success the status is
 *    100..999 and the headers are readable; on failure no status-dependent
 *    promise is broken (the error detail is a string);
 *  - the body handed out never exceeds the decoded-size cap (+ one chunk).
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "core/ctx.h"
#include "loop_dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fetch_response: check failed: %s (line %d)\n", #cond,  \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define MAX_DECODED (256u * 1024u)
#define FETCH_TIMEOUT_MS 2000u
#define WAIT_MS 5000u
#define MAX_FDS 16
#define SEP "NSFUZZ-NEXT"

static netstash_ctx *g_ctx;
static char g_profile[64];
static unsigned long g_counter;

/* The server: a loopback listener served by one thread. The socket hook
 * sends every connection of the transport there (it rewrites the address:
 * libcurl 7.88 cannot take a socketpair end as connected, see ctx.h); the
 * thread answers the n-th accepted connection of an input with part n of
 * it, then shuts its side (EOF) and keeps it open until the input ends.
 * g_lock orders the fuzzing thread (which sets the parts between inputs)
 * and the server thread. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static const uint8_t *g_part[2];
static size_t g_part_len[2];
static int g_conns;
static int g_fds[MAX_FDS];
static int g_nfds;
static int g_listen = -1;
static struct sockaddr_in g_addr;

static void *server_main(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept4(g_listen, NULL, NULL, SOCK_CLOEXEC), idx;
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      return NULL;
    }
    pthread_mutex_lock(&g_lock);
    idx = g_conns++;
    if (g_nfds == MAX_FDS) {
      pthread_mutex_unlock(&g_lock);
      close(fd);
      continue;
    }
    g_fds[g_nfds++] = fd;
    if (idx < 2 && g_part_len[idx]) {
      /* the loopback socket buffers far more than -max_len */
      const uint8_t *p = g_part[idx];
      size_t left = g_part_len[idx];
      fcntl(fd, F_SETFL, O_NONBLOCK);
      while (left) {
        ssize_t n = send(fd, p, left, MSG_NOSIGNAL);
        if (n <= 0)
          break; /* buffer full: the rest is cut, as a server that stops */
        p += n;
        left -= (size_t)n;
      }
    }
    shutdown(fd, SHUT_WR); /* then EOF */
    pthread_mutex_unlock(&g_lock);
  }
}

static int open_hook(void *ud, struct sockaddr *addr, unsigned *addrlen) {
  (void)ud;
  if (addr->sa_family != AF_INET || *addrlen < sizeof(g_addr))
    return -1; /* the harness only fetches http://127.0.0.1 */
  memcpy(addr, &g_addr, sizeof(g_addr));
  *addrlen = sizeof(g_addr);
  return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

typedef struct run_state {
  int responses, completes, data_after_complete;
  netstash_error err;
  uint64_t body;
} run_state;

static void on_response(netstash_fetch *f, void *ud) {
  run_state *st = ud;
  int status = netstash_fetch_status(f);
  CHECK(st->completes == 0);
  if (status < 100 || status > 999)
    fprintf(stderr, "fetch_response: on_response with status %d\n", status);
  CHECK(status >= 100 && status <= 999);
  for (size_t i = 0, n = netstash_fetch_header_count(f); i < n; i++) {
    const char *name = NULL, *value = NULL;
    CHECK(netstash_fetch_header_at(f, i, &name, &value) == NETSTASH_OK);
    CHECK(name && value);
  }
  st->responses++;
}

static void on_data(netstash_fetch *f, const uint8_t *d, size_t len, void *ud) {
  run_state *st = ud;
  (void)f;
  (void)d;
  if (st->completes)
    st->data_after_complete = 1;
  CHECK(st->responses > 0);
  st->body += len;
}

static void on_complete(netstash_fetch *f, netstash_error err, void *ud) {
  run_state *st = ud;
  (void)f;
  st->completes++;
  st->err = err;
}

static const netstash_fetch_callbacks cbs = {on_response, on_data, on_complete};

static void one_fetch(const char *url, unsigned flags, int second) {
  static const char *const methods[] = {"GET", "HEAD", "POST", "GET"};
  netstash_request *req = NULL;
  netstash_fetch *f = NULL;
  run_state st;
  netstash_error e;
  const char *name;

  memset(&st, 0, sizeof(st));
  CHECK(netstash_request_new(&req, url) == NETSTASH_OK);
  netstash_request_set_method(req, methods[flags & 3]);
  if ((flags & 3) == 2)
    netstash_request_set_body(req, (const uint8_t *)"a=1&b=2", 7);
  /* a second range fetch: the next range (pieces joined) with a raw body,
   * else the whole (the stored piece completed with a range request) */
  if ((flags & 3) == 3 && (!second || (flags & 8)))
    netstash_request_add_header(req, "Range", second ? "bytes=100-199" : "bytes=0-99");
  netstash_request_set_http_version(req, (flags & 4) ? NETSTASH_HTTP_2 : NETSTASH_HTTP_1_1);
  if (flags & 8)
    netstash_request_set_raw_body(req, 1);
  if (flags & 16)
    netstash_request_set_follow_redirects(req, 1);
  netstash_request_set_cache_mode(req, (flags & 32) ? NETSTASH_CACHE_BYPASS : NETSTASH_CACHE_DEFAULT);
  if (flags & 128) {
    netstash_request_add_header(req, "Accept-Encoding", "gzip, deflate, br");
    netstash_request_add_header(req, "If-None-Match", "\"v1\"");
  }
  netstash_request_set_timeout_ms(req, FETCH_TIMEOUT_MS);
  netstash_request_set_max_body(req, MAX_DECODED);

  e = netstash_fetch_start(g_ctx, req, &cbs, &st, &f);
  netstash_request_del(req);
  if (e != NETSTASH_OK) {
    CHECK(f == NULL);
    CHECK(netstash_error_name(e) != NULL);
    return;
  }
  e = netstash_fetch_wait(f, WAIT_MS);
  if (e == NETSTASH_E_WAIT_TIMEOUT) {
    fprintf(stderr, "fetch_response: the fetch did not end within %u ms\n", WAIT_MS);
    abort();
  }
  CHECK(st.completes == 1);
  CHECK(!st.data_after_complete);
  CHECK(e == st.err);
  CHECK(netstash_fetch_result(f) == e);
  name = netstash_error_name(e);
  CHECK(name != NULL && strncmp(name, "NETSTASH_", 9) == 0);
  CHECK(netstash_fetch_error_detail(f) != NULL);
  if (e == NETSTASH_OK) {
    int status = netstash_fetch_status(f);
    CHECK(status >= 100 && status <= 999);
    CHECK(st.responses == 1);
  }
  CHECK(st.body <= MAX_DECODED + 64u * 1024u);
  if (getenv("NSFUZZ_VERBOSE"))
    fprintf(stderr, "fetch_response: %s -> %s status %d, %llu body bytes (%s)\n", url, name,
            netstash_fetch_status(f), (unsigned long long)st.body, netstash_fetch_error_detail(f));
  netstash_fetch_del(f);
}

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  (void)type;
  (void)ftw;
  return remove(path);
}

static void cleanup(void) {
  netstash_ctx_del(g_ctx);
  g_ctx = NULL;
  nftw(g_profile, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  netstash_options *o = NULL;
  char err[256], dns[32];
  (void)argc;
  (void)argv;
  snprintf(g_profile, sizeof(g_profile), "/tmp/nsfuzz-fetch-XXXXXX");
  if (!mkdtemp(g_profile)) {
    perror("mkdtemp");
    abort();
  }
  CHECK(netstash_options_new(&o) == NETSTASH_OK);
  netstash_options_set_profile_dir(o, g_profile);
  netstash_options_set_cache_max_bytes(o, 4u << 20);
  netstash_options_set_max_decoded_body(o, MAX_DECODED);
  netstash_options_set_http3(o, 0);
  /* a redirect to a name: answered by fuzz/loop_dns.h, never the network */
  loop_dns_start(dns, sizeof(dns));
  netstash_options_set_dns_servers(o, dns);
  netstash_options_set_dns_timeout_ms(o, 100);
  netstash_options_set_dns_tries(o, 1);
  if (netstash_ctx_new(&g_ctx, o, err, sizeof(err)) != NETSTASH_OK) {
    fprintf(stderr, "fetch_response: context: %s\n", err);
    abort();
  }
  netstash_options_del(o);
  {
    pthread_t th;
    socklen_t alen = sizeof(g_addr);
    int one = 1;
    g_listen = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(g_listen >= 0);
    setsockopt(g_listen, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&g_addr, 0, sizeof(g_addr));
    g_addr.sin_family = AF_INET;
    g_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(g_listen, (struct sockaddr *)&g_addr, sizeof(g_addr)) == 0);
    CHECK(listen(g_listen, 64) == 0);
    CHECK(getsockname(g_listen, (struct sockaddr *)&g_addr, &alen) == 0);
    CHECK(pthread_create(&th, NULL, server_main, NULL) == 0);
    pthread_detach(th);
  }
  g_ctx->test_open_socket = open_hook;
  g_ctx->test_open_socket_ud = NULL;
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned flags;
  char url[96];
  const uint8_t *body, *sep;
  size_t blen;

  if (size < 1)
    return 0;
  flags = data[0];
  body = data + 1;
  blen = size - 1;

  pthread_mutex_lock(&g_lock);
  sep = blen >= sizeof(SEP) - 1 ? memmem(body, blen, SEP, sizeof(SEP) - 1) : NULL;
  g_part[0] = body;
  g_part_len[0] = sep ? (size_t)(sep - body) : blen;
  g_part[1] = sep ? sep + sizeof(SEP) - 1 : NULL;
  g_part_len[1] = sep ? blen - g_part_len[0] - (sizeof(SEP) - 1) : 0;
  g_conns = 0;
  g_nfds = 0;
  pthread_mutex_unlock(&g_lock);

  snprintf(url, sizeof(url), "http://127.0.0.1:8080/f/%lu?q=%u", ++g_counter, flags);
  one_fetch(url, flags, 0);
  if (flags & 64)
    one_fetch(url, flags & ~64u, 1);

  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < g_nfds; i++) {
    /* a reset, not a FIN: no TIME_WAIT (hundreds of connections a second
     * would hold most of the machine's ephemeral ports) */
    struct linger lg = {1, 0};
    setsockopt(g_fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(g_fds[i]);
  }
  g_nfds = 0;
  pthread_mutex_unlock(&g_lock);
  return 0;
}
