/*
 * netd_run.h — netd ($NST_BUILDDIR/netd/netd) as a child process, for the
 * integration tests that drive it (netd_test, netd_front_test,
 * netd_chromium_test): start, readiness of its socket and ports, stop;
 * loopback TCP plumbing for its fronts and metrics; a command's output.
 */
#ifndef NST_NETD_RUN_H
#define NST_NETD_RUN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct netd_proc {
  pid_t pid;                   /* <= 0: not running */
  int proxy, gateway, metrics; /* its TCP listeners on 127.0.0.1, 0 = off */
  int gateway_h2;               /* the HTTP/2 gateway (TLS), 0 = off */
  char profile[512];
  char sock[600]; /* its unix socket, "" = not waited for */
  char log[600];  /* its stdout and stderr */
} netd_proc;

/* Finds $NST_BUILDDIR/netd/netd (else ./netd/netd). name ("netd",
 * "netd_front") names the test in messages ("NAME_test: ..."). Returns 0,
 * or -1 with a reason on stderr. */
int netd_run_setup(const char *name);

/* The netd binary netd_run_setup() found. */
const char *netd_run_bin(void);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t netd_run_now_ms(void);

/* A TCP port on 127.0.0.1 that is free now (bound to 0, then released);
 * -1 on failure. */
int netd_run_free_port(void);

/* A connected socket to 127.0.0.1:port, or to the unix socket at path;
 * -1 with errno set when it does not connect. */
int netd_run_connect(int port);
int netd_run_connect_unix(const char *path);

/* Runs netd with args (a NULL-terminated list, after the binary), its
 * stdout and stderr appended to p->log, killed (PR_SET_PDEATHSIG) when the
 * calling thread exits. Sets p->pid (-1 if fork failed) and returns it. */
pid_t netd_run_spawn(netd_proc *p, const char *const *args);

/* netd_run_spawn(), then waits up to timeout_ms until every nonzero port of
 * p and, if set, p->sock accept. Returns 0 once they do; -1 with a reason
 * on stderr otherwise, p->pid -1 if netd exited (reaped), else still set
 * (netd_run_stop() it). */
int netd_run_start(netd_proc *p, const char *const *args, int timeout_ms);

/* SIGTERM, then the exit status; -1 if it died of a signal or had to be
 * killed (SIGKILL after 10 s); 0 if nothing was running. Sets p->pid -1. */
int netd_run_stop(netd_proc *p);

/* Writes all of buf to a socket (no SIGPIPE); 0, or -1. */
int netd_run_send(int fd, const void *buf, size_t len);

/* Reads from a socket until EOF (requests say "Connection: close") or an
 * error; *out (malloc'd, NUL-terminated) and *len get what came. Returns 0,
 * or -1 (with a message on stderr) if that took over timeout_ms. */
int netd_run_read(int fd, int timeout_ms, char **out, size_t *len);

/* The value of the sample line "NAME VALUE" in a metrics scrape (NAME with
 * its labels); -1 if absent. */
double netd_run_sample(const char *text, const char *name);

/* Runs cmd with popen; returns its stdout (malloc'd, NUL-terminated) and,
 * unless status is NULL, its exit code (-1 if it did not exit) in *status. */
char *netd_run_capture(const char *cmd, int *status);

#endif
