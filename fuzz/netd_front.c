/*
 * fuzz/netd_front.c — netd's HTTP/1.1 fronts (netd/front.c: the forward
 * proxy, the gateway, the metrics listener) under libFuzzer: request
 * parsing (http-parser callbacks, header and body limits, pipelining,
 * 100-continue, Upgrade), dispatch (absolute-form / origin-form targets,
 * the request handed to the library) and the relayed answer.
 *
 * The fronts run as in the daemon, on a library context's loop thread, each
 * on a loopback port (fuzz/netd_fuzz.h: the library's connections go to a
 * loopback origin thread through the transport's socket hook). Per input
 * the harness connects, writes the bytes, shuts its side and reads the
 * answer to the end.
 *
 * Input layout:
 *   byte 0   bits 0-1: the front (0, 1 proxy; 2 gateway; 3 metrics). An
 *            input with "CONNECT" anywhere goes to the gateway instead: the
 *            proxy would open a tunnel with the system resolver, out of the
 *            harness's reach.
 *   bytes 1.. what the client sends (requests, pipelined or not)
 *
 * Checked beyond "no crash, no leak, no UB" (on the loop thread as well):
 *  - netd closes the connection after the client's EOF (no hang, no
 *    connection kept after an error): not within 5 s is reported, not
 *    within 20 s aborts;
 *  - whatever netd sends starts with an HTTP/1.1 status line with a status
 *    100..599.
 */
#include "netd_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static int nf_ports[4];
static int nf_want_port;
static netd_front_kind nf_want_kind;
static char nf_err[256];

static int start_front(void) {
  netd_front **slot = nf_want_kind == NETD_FRONT_PROXY     ? &nf_d.proxy
                      : nf_want_kind == NETD_FRONT_GATEWAY ? &nf_d.gateway
                                                           : &nf_d.metrics_front;
  return netd_front_start(&nf_d, nf_want_kind, "127.0.0.1", nf_want_port, slot, nf_err,
                          sizeof(nf_err));
}

/* A free loopback port (the front does not tell the one it bound). */
static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;
  NF_CHECK(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  NF_CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
  NF_CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  static const netd_front_kind kinds[] = {NETD_FRONT_PROXY, NETD_FRONT_GATEWAY,
                                          NETD_FRONT_METRICS};
  (void)argc;
  (void)argv;
  nf_setup();
  for (size_t i = 0; i < 3; i++) {
    int tries = 0;
    nf_want_kind = kinds[i];
    do {
      nf_want_port = free_port();
    } while (nf_on_loop(start_front) != 0 && ++tries < 5);
    if (tries == 5) {
      fprintf(stderr, "netd_front: %s\n", nf_err);
      abort();
    }
    nf_ports[kinds[i]] = nf_want_port;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char out[4096];
  struct sockaddr_in a;
  struct timeval tv = {2, 0};
  netd_front_kind kind;
  size_t got = 0;
  int fd, r;

  if (size < 1)
    return 0;
  kind = (data[0] & 3) == 3 ? NETD_FRONT_METRICS
         : (data[0] & 3) == 2 ? NETD_FRONT_GATEWAY
                              : NETD_FRONT_PROXY;
  if (kind == NETD_FRONT_PROXY && memmem(data + 1, size - 1, "CONNECT", 7))
    kind = NETD_FRONT_GATEWAY;

  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  NF_CHECK(fd >= 0);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)nf_ports[kind]);
  nf_connect(fd, (struct sockaddr *)&a, sizeof(a),
             kind == NETD_FRONT_PROXY     ? "netd_front (proxy)"
             : kind == NETD_FRONT_GATEWAY ? "netd_front (gateway)"
                                          : "netd_front (metrics)");
  (void)nf_write_all(fd, data + 1, size - 1); /* netd may close first */
  shutdown(fd, SHUT_WR);
  r = nf_read_until(fd, 0, 5000, out, sizeof(out), &got);
  if (r < 0) {
    /* 5 s: slow (a loaded machine) or hung? 15 s more tell them apart */
    size_t before = got;
    fprintf(stderr, "netd_front: the connection was not closed within 5 s of EOF (%zu bytes back)\n",
            got);
    nf_diagnose("netd_front");
    r = nf_read_until(fd, 0, 15000, out, sizeof(out), &got);
    if (r < 0) {
      fprintf(stderr, "netd_front: ... nor within 20 s: hung\n");
      if (getenv("NSFUZZ_HANG_SLEEP")) /* time to attach a debugger */
        sleep((unsigned)atoi(getenv("NSFUZZ_HANG_SLEEP")));
      abort();
    }
    fprintf(stderr, "netd_front: closed after more than 5 s (%zu more bytes): slow, not hung\n",
            got - before);
  }
  if (got) {
    NF_CHECK(got >= 12 && memcmp(out, "HTTP/1.1 ", 9) == 0);
    NF_CHECK(out[9] >= '1' && out[9] <= '5' && out[10] >= '0' && out[10] <= '9' &&
             out[11] >= '0' && out[11] <= '9');
  }
  if (getenv("NSFUZZ_VERBOSE")) {
    const char *eol = memchr(out, '\r', got);
    fprintf(stderr, "netd_front: %zu bytes back: %.*s\n", got, (int)(eol ? eol - out : (long)got),
            out);
  }
  nf_close_rst(fd); /* netd has closed: no TIME_WAIT on our side */
  return 0;
}
