/*
 * fuzz/netd_h2.c — netd's HTTP/2 IPC server (netd/ipc.c: the nghttp2
 * session callbacks, request pseudo-headers and x-netstash-* attributes,
 * request bodies, control requests, answers and resets) under libFuzzer,
 * with the input as a hostile client's frames.
 *
 * netd's IPC listens on a unix socket in a temporary profile, on a library
 * context's loop thread, as in the daemon (fuzz/netd_fuzz.h: the library's
 * connections go to a loopback origin thread through the transport's socket
 * hook). Per input the harness connects, sends the client connection
 * preface, the input, then a GOAWAY (NO_ERROR): a session whose streams
 * are answered then has nothing left to do, and netd closes it. If netd
 * keeps the connection open 10 ms after the last byte it sent (the input
 * left a frame unfinished, or a stream open), the harness shuts its side.
 *
 * Input layout: the client's bytes after the preface "PRI * HTTP/2.0...".
 *
 * Checked beyond "no crash, no leak, no UB" (on the loop thread as well):
 *  - netd closes the session after the client's EOF: a protocol violation
 *    ends in a closed connection, never a hang. Not closed within 5 s is
 *    reported (with whether the loop thread still runs); not closed within
 *    20 s aborts (set NSFUZZ_HANG_SLEEP=SECONDS to attach a debugger first);
 *  - netd's first frame is its SETTINGS.
 */
#include "netd_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char nf_err[256];

static int start_ipc(void) { return netd_ipc_start(&nf_d, nf_err, sizeof(nf_err)); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  nf_setup();
  if (nf_on_loop(start_ipc) != 0) {
    fprintf(stderr, "netd_h2: %s\n", nf_err);
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  static const uint8_t goaway[] = {0, 0, 8, 7, 0, 0, 0, 0, 0, /* GOAWAY, stream 0 */
                                   0, 0, 0, 0, 0, 0, 0, 0};   /* last id 0, NO_ERROR */
  static char out[64];
  size_t got = 0;
  int fd, r, fin;

  fd = nf_connect_ipc("netd_h2");
  /* netd may close (and reset) at any point: write errors are fine */
  if (nf_write_all(fd, preface, sizeof(preface) - 1) == 0 &&
      nf_write_all(fd, data, size) == 0)
    (void)nf_write_all(fd, goaway, sizeof(goaway));
  /* 10 ms: netd answers a hit in well under 1 ms, and an input that leaves
   * a stream open (most of them) spends this wait whole — at 30 ms the
   * harness ran ~35 inputs a second on a few percent of its core */
  r = nf_read_until(fd, 10, 5000, out, sizeof(out), &got);
  fin = r != 1; /* idle, or still sending after 5 s: shut our side */
  if (fin) {
    shutdown(fd, SHUT_WR);
    r = nf_read_until(fd, 0, 5000, out, sizeof(out), &got);
  }
  if (r < 0) {
    /* 5 s: slow (a loaded machine) or hung? 15 s more tell them apart */
    size_t before = got;
    fprintf(stderr, "netd_h2: the session was not closed within 5 s of EOF (%zu bytes back)\n",
            got);
    nf_diagnose("netd_h2");
    r = nf_read_until(fd, 0, 15000, out, sizeof(out), &got);
    if (r < 0) {
      fprintf(stderr, "netd_h2: ... nor within 20 s: hung\n");
      if (getenv("NSFUZZ_HANG_SLEEP")) /* time to attach a debugger */
        sleep((unsigned)atoi(getenv("NSFUZZ_HANG_SLEEP")));
      abort();
    }
    fprintf(stderr, "netd_h2: closed after more than 5 s (%zu more bytes): slow, not hung\n",
            got - before);
  }
  /* the server's preface: a SETTINGS frame (type 4) on stream 0 */
  if (got >= 9)
    NF_CHECK(out[3] == 4 && out[5] == 0 && out[6] == 0 && out[7] == 0 && out[8] == 0);
  if (getenv("NSFUZZ_VERBOSE"))
    fprintf(stderr, "netd_h2: %zu bytes back, closed by netd %s\n", got,
            fin ? "after the client's EOF" : "on its own");
  close(fd);
  return 0;
}
