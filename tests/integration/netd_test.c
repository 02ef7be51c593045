/*
 * netd_test — the daemon through its unix socket: the library in remote mode
 * (one header, two backends), several client processes, restart under load,
 * the profile lock, socket permissions, control requests, a hostile client.
 * netd runs as a child process ($NST_BUILDDIR/netd/netd).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "harness.h"
#include "netd_run.h"
#include "site_cmp.h"

static nst_server caddy;

/* (per thread: test_restart_under_load's load threads call it) */
static char *url_of(const char *path) {
  static _Thread_local char bufs[8][512];
  static _Thread_local int i;
  char *b = bufs[i++ % 8];
  snprintf(b, sizeof(bufs[0]), "https://127.0.0.1:%d%s", caddy.port, path);
  return b;
}

/* Starts netd on profile name (created) with a configuration file (NULL:
 * none); waits for its socket. A restart keeps the profile and the log. */
static void netd_start(netd_proc *dp, const char *name, const char *config) {
  const char *args[10];
  size_t n = 0;
  if (!dp->profile[0]) {
    snprintf(dp->profile, sizeof(dp->profile), "%s", nst_path(name));
    snprintf(dp->sock, sizeof(dp->sock), "%s/netd.sock", dp->profile);
    snprintf(dp->log, sizeof(dp->log), "%s.log", dp->profile);
  }
  args[n++] = "--profile";
  args[n++] = dp->profile;
  args[n++] = "--cacert";
  args[n++] = nst_cert("ca.pem");
  if (getenv("NETD_TEST_VERBOSE"))
    args[n++] = "-v";
  if (config) {
    args[n++] = "--config";
    args[n++] = config;
  }
  args[n] = NULL;
  if (netd_run_start(dp, args, 5000) != 0)
    fail_msg("netd did not come up (log %s)", dp->log);
}

static netstash_ctx *remote_ctx(const char *sock) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_remote(o, sock), NETSTASH_OK);
  assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(o);
  return ctx;
}

static netstash_error get(netstash_ctx *ctx, const char *url, netstash_fetch **out) {
  netstash_request *req;
  netstash_error rv;
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  assert_int_equal(netstash_request_set_collect_body(req, 16u << 20), NETSTASH_OK);
  rv = netstash_fetch_sync(ctx, req, out);
  if (rv != NETSTASH_OK && getenv("NETD_TEST_VERBOSE"))
    fprintf(stderr, "%s: %s (%s)\n", url, netstash_error_name(rv),
            netstash_fetch_error_detail(*out));
  netstash_request_del(req);
  return rv;
}

/* ------------------------------------------------------------------ cases */

/* The library in remote mode: same API, answers from netd's profile. */
static void test_remote_mode_basic(void **state) {
  netd_proc dp = {0};
  netstash_ctx *ctx;
  netstash_fetch *f;
  (void)state;
  netd_start(&dp, "netd-basic", NULL);
  ctx = remote_ctx(dp.sock);
  assert_int_equal(get(ctx, url_of("/hello.txt"), &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_true(site_cmp_matches(f, "hello.txt"));
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
  assert_null(netstash_fetch_header(f, "x-netstash-source"));
  netstash_fetch_del(f);
  /* compressed on the wire, decoded by netd once */
  assert_int_equal(get(ctx, url_of("/text.txt"), &f), NETSTASH_OK);
  assert_true(site_cmp_matches(f, "text.txt"));
  assert_null(netstash_fetch_header(f, "content-encoding"));
  netstash_fetch_del(f);
  /* the second time from netd's HTTP cache */
  assert_int_equal(get(ctx, url_of("/r/5.bin"), &f), NETSTASH_OK);
  netstash_fetch_del(f);
  assert_int_equal(get(ctx, url_of("/r/5.bin"), &f), NETSTASH_OK);
  assert_true(site_cmp_matches(f, "r/5.bin"));
  if (netstash_fetch_source(f) == NETSTASH_SOURCE_NETWORK)
    fail_msg("second fetch from the network (%s)", netstash_fetch_cache_reason(f));
  netstash_fetch_del(f);
  /* a content coding nobody decodes: the bytes as sent, its field with
   * them — from the network and from netd's cache (was: the field dropped,
   * coded bytes taken as identity) */
  for (int i = 0; i < 2; i++) {
    const char *ce;
    assert_int_equal(get(ctx, url_of("/opaque/hello.txt"), &f), NETSTASH_OK);
    assert_true(site_cmp_matches(f, "hello.txt"));
    ce = netstash_fetch_header(f, "content-encoding");
    assert_non_null(ce);
    assert_string_equal(ce, "x-nst-opaque");
    if (i == 1 && netstash_fetch_source(f) == NETSTASH_SOURCE_NETWORK)
      fail_msg("second fetch from the network (%s)", netstash_fetch_cache_reason(f));
    netstash_fetch_del(f);
  }
  /* errors keep their code across the socket */
  {
    char u[128];
    snprintf(u, sizeof(u), "https://127.0.0.1:%d/", nst_closed_port());
    assert_int_equal(get(ctx, u, &f), NETSTASH_E_CONNECT_REFUSED);
    assert_non_null(strstr(netstash_fetch_error_detail(f), "NETSTASH_E_CONNECT_REFUSED"));
    netstash_fetch_del(f);
  }
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);
  /* stopped cleanly: the socket is gone */
  assert_int_equal(access(dp.sock, F_OK), -1);
}

/* Several client processes at once through the socket. */
static void test_many_processes(void **state) {
  enum { PROCS = 4, EACH = 40 };
  netd_proc dp = {0};
  pid_t kids[PROCS];
  (void)state;
  netd_start(&dp, "netd-procs", NULL);
  for (int p = 0; p < PROCS; p++) {
    kids[p] = fork();
    assert_true(kids[p] >= 0);
    if (kids[p] == 0) {
      netstash_options *o;
      netstash_ctx *ctx = NULL;
      int bad = 0;
      netstash_options_new(&o);
      netstash_options_set_remote(o, dp.sock);
      if (netstash_ctx_new(&ctx, o, NULL, 0) != NETSTASH_OK)
        _exit(2);
      netstash_options_del(o);
      for (int i = 0; i < EACH; i++) {
        char path[64];
        netstash_fetch *f = NULL;
        snprintf(path, sizeof(path), "r/%d.bin", (p * EACH + i) % 200);
        char u[128];
        snprintf(u, sizeof(u), "/%s", path);
        if (get(ctx, url_of(u), &f) != NETSTASH_OK || !site_cmp_matches(f, path))
          bad++;
        netstash_fetch_del(f);
      }
      netstash_ctx_del(ctx);
      _exit(bad ? 1 : 0);
    }
  }
  for (int p = 0; p < PROCS; p++) {
    int st;
    waitpid(kids[p], &st, 0);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
  }
  assert_int_equal(netd_run_stop(&dp), 0);
}

typedef struct load_state {
  const char *sock;
  atomic_int stop, ok, failed, wrong;
} load_state;

static void *load_loop(void *p) {
  load_state *ls = p;
  netstash_ctx *ctx = remote_ctx(ls->sock);
  int i = 0;
  while (!atomic_load(&ls->stop)) {
    char path[64], u[80];
    netstash_fetch *f = NULL;
    snprintf(path, sizeof(path), "r/%d.bin", i++ % 200);
    snprintf(u, sizeof(u), "/%s", path);
    if (get(ctx, url_of(u), &f) == NETSTASH_OK) {
      if (site_cmp_matches(f, path)) {
        atomic_fetch_add(&ls->ok, 1);
      } else {
        /* what it was, so that a rare failure explains itself */
        const uint8_t *body = NULL;
        size_t len = 0;
        (void)netstash_fetch_body(f, &body, &len);
        fprintf(stderr, "WRONG answer for %s: status %d, source %d, %zu body bytes, reason \"%s\"\n",
                path, netstash_fetch_status(f), (int)netstash_fetch_source(f), len,
                netstash_fetch_cache_reason(f) ? netstash_fetch_cache_reason(f) : "");
        atomic_fetch_add(&ls->wrong, 1);
      }
    } else {
      atomic_fetch_add(&ls->failed, 1);
      usleep(10 * 1000);
    }
    netstash_fetch_del(f);
  }
  netstash_ctx_del(ctx);
  return NULL;
}

/* netd restarts under load: clients recover, nothing is answered wrongly. */
static void test_restart_under_load(void **state) {
  netd_proc dp = {0};
  load_state ls;
  pthread_t th[2];
  int ok_before;
  (void)state;
  memset(&ls, 0, sizeof(ls));
  netd_start(&dp, "netd-restart", NULL);
  ls.sock = dp.sock;
  for (int i = 0; i < 2; i++)
    pthread_create(&th[i], NULL, load_loop, &ls);
  usleep(500 * 1000);
  assert_int_equal(netd_run_stop(&dp), 0);
  usleep(200 * 1000);
  netd_start(&dp, "netd-restart", NULL);
  ok_before = atomic_load(&ls.ok);
  usleep(800 * 1000);
  atomic_store(&ls.stop, 1);
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&ls.wrong), 0);
  if (atomic_load(&ls.ok) <= ok_before)
    fail_msg("no request succeeded after the restart (%d ok, %d failed)", atomic_load(&ls.ok),
             atomic_load(&ls.failed));
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* Writes DIR/NAME.json (fmt) and runs netd --config it [ARGS] --check-config;
 * the output (free it), *st the exit status. */
static char *check_config(const char *dir, const char *name, const char *args, int *st,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static char *check_config(const char *dir, const char *name, const char *args, int *st,
                          const char *fmt, ...) {
  char path[1024], cmd[4096];
  va_list ap;
  FILE *fp;
  snprintf(path, sizeof(path), "%s/%s.json", dir, name);
  fp = fopen(path, "w");
  assert_non_null(fp);
  va_start(ap, fmt);
  vfprintf(fp, fmt, ap);
  va_end(ap);
  fclose(fp);
  snprintf(cmd, sizeof(cmd), "%s --config %s %s --check-config 2>&1", netd_run_bin(), path, args);
  return netd_run_capture(cmd, st);
}

/* netd --check-config on {"profile": "/tmp/x", FIELDS}: exit status want_st,
 * want in what it says. */
static void config_says(const char *dir, const char *fields, int want_st, const char *want) {
  int st;
  char *out = check_config(dir, "says", "", &st, "{\"profile\": \"/tmp/x\", %s}", fields);
  if (st != want_st || !strstr(out, want))
    fail_msg("--check-config with %s: status %d (want %d), said: %s", fields, st, want_st, out);
  free(out);
}

/* One netd per profile; --check-config. */
static void test_lock_and_config(void **state) {
  netd_proc dp = {0};
  char cmd[2048], *out;
  int st;
  (void)state;
  netd_start(&dp, "netd-lock", NULL);
  snprintf(cmd, sizeof(cmd), "%s --profile %s 2>&1", netd_run_bin(), dp.profile);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 4);
  assert_non_null(strstr(out, "another netd"));
  free(out);
  assert_int_equal(netd_run_stop(&dp), 0);

  out = check_config(dp.profile, "good", "", &st,
                     "{\"profile\": \"%s\", \"proxy\": \"127.0.0.1:18080\", \"fast_hits\": false, "
                     "\"log\": {\"level\": \"debug\"}, \"warm\": [{\"manifest\": "
                     "\"https://example.test/m.json\", \"interval_s\": 600}]}",
                     dp.profile);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "configuration OK"));
  free(out);
  config_says(dp.profile, "\"proxy\": \"10.1.2.3:8080\"", 3, "not a loopback address");
  config_says(dp.profile, "\"fast_hits\": 1", 3, "fast_hits: true or false expected");
  /* lookup threads: none by default when netd may use one CPU only */
  snprintf(cmd, sizeof(cmd), "%s --profile %s --check-config 2>&1", netd_run_bin(), dp.profile);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  {
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    assert_non_null(
        strstr(out, CPU_COUNT(&set) > 1 ? "16 lookup thread(s)" : " 0 lookup thread(s)"));
  }
  free(out);
  snprintf(cmd, sizeof(cmd), "taskset -c 0 %s --profile %s --check-config 2>&1", netd_run_bin(),
           dp.profile);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, " 0 lookup thread(s)"));
  free(out);
  config_says(dp.profile, "\"lookup_threads\": 3", 0, " 3 lookup thread(s)");
  config_says(dp.profile, "\"lookup_threads\": 65", 3,
              "lookup_threads: an integer from 0 to 64 expected");
  /* the store's size: the library's default, or the configured one */
  config_says(dp.profile, "\"lookup_threads\": 3", 0, "store limit 268435456 bytes");
  config_says(dp.profile, "\"cache_max_bytes\": 5000000", 0, "store limit 5000000 bytes");
  config_says(dp.profile, "\"cache_max_bytes\": 1000", 3,
              "cache_max_bytes: an integer of bytes from 1048576 (1 MiB) expected");
  /* the gateway's hot bodies: 16 MiB unless configured, 0 for none */
  config_says(dp.profile, "\"lookup_threads\": 3", 0, "hot bodies 16777216 bytes");
  config_says(dp.profile, "\"hot_body_bytes\": 0", 0, "hot bodies 0 bytes)");
  config_says(dp.profile, "\"hot_body_bytes\": -1", 3,
              "hot_body_bytes: an integer of bytes from 0 (none) to 2^40 expected");
  config_says(dp.profile, "\"hot_body_bytes\": \"1M\"", 3,
              "hot_body_bytes: an integer of bytes from 0 (none) to 2^40 expected");
  config_says(dp.profile, "\"sockett\": \"/tmp/s\"", 3, "unknown key \"sockett\"");
  /* the HTTP/2 gateway: TLS needs a certificate and key; a bad pair is
   * named at start */
  out = check_config(dp.profile, "h2", "", &st,
                     "{\"profile\": \"/tmp/x\", \"gateway_h2\": \"127.0.0.1:18443\","
                     " \"upstream\": \"https://example.test\"}");
  assert_int_equal(st, 3);
  assert_non_null(strstr(out, "needs --tls-cert FILE and --tls-key FILE"));
  free(out);
  snprintf(cmd, sizeof(cmd), "--tls-cert %s --tls-key %s", nst_cert("good.pem"),
           nst_cert("good.key"));
  out = check_config(dp.profile, "h2", cmd, &st, "{\"profile\": \"/tmp/x\", \"gateway_h2\": "
                     "\"127.0.0.1:18443\", \"upstream\": \"https://example.test\"}");
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "HTTP/2 gateway"));
  free(out);
  snprintf(cmd, sizeof(cmd),
           "%s --profile %s --gateway-h2 127.0.0.1:%d --upstream https://example.test "
           "--tls-cert %s --tls-key %s 2>&1",
           netd_run_bin(), dp.profile, netd_run_free_port(), nst_cert("good.pem"),
           nst_cert("ca.pem"));
  out = netd_run_capture(cmd, &st);
  assert_int_not_equal(st, 0);
  assert_non_null(strstr(out, "is not the PEM private key of"));
  free(out);
}

/* The socket is 0660 and other users cannot connect. */
static void test_socket_permissions(void **state) {
  netd_proc dp = {0};
  struct stat sb;
  pid_t kid;
  int st;
  (void)state;
  netd_start(&dp, "netd-perm", NULL);
  assert_int_equal(stat(dp.sock, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0660);
  if (getuid() == 0) {
    kid = fork();
    if (kid == 0) {
      int fd;
      if (setgid(65534) != 0 || setuid(65534) != 0)
        _exit(3);
      fd = netd_run_connect_unix(dp.sock);
      _exit(fd >= 0 ? 1 : (errno == EACCES ? 0 : 2));
    }
    waitpid(kid, &st, 0);
    assert_int_equal(WEXITSTATUS(st), 0);
  }
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* Control requests (curl over the socket, HTTP/2 prior knowledge) and a
 * client that sends garbage frames: dropped, netd unharmed. */
static void test_control_and_hostile_client(void **state) {
  netd_proc dp = {0};
  char cmd[2048], *out;
  int st;
  netstash_ctx *ctx;
  netstash_fetch *f;
  (void)state;
  netd_start(&dp, "netd-ctl", NULL);
  ctx = remote_ctx(dp.sock);
  assert_int_equal(get(ctx, url_of("/hello.txt"), &f), NETSTASH_OK);
  netstash_fetch_del(f);
  snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge --unix-socket %s http://netd/status",
           dp.sock);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "\"network\":"));
  assert_non_null(strstr(out, "\"uptime_s\""));
  free(out);
  snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge --unix-socket %s http://netd/metrics",
           dp.sock);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "netd_requests_total"));
  free(out);
  snprintf(cmd, sizeof(cmd),
           "curl -s -X POST --http2-prior-knowledge --unix-socket %s "
           "'http://netd/signals?metered=1&foreground=0'",
           dp.sock);
  out = netd_run_capture(cmd, &st);
  assert_non_null(strstr(out, "\"metered\":true"));
  free(out);

  /* garbage instead of the HTTP/2 preface */
  {
    int fd = netd_run_connect_unix(dp.sock);
    char junk[4096], back[256];
    assert_true(fd >= 0);
    memset(junk, 0xff, sizeof(junk));
    (void)!write(fd, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    (void)!write(fd, junk, sizeof(junk));
    /* netd answers GOAWAY and closes */
    while (read(fd, back, sizeof(back)) > 0)
      ;
    close(fd);
  }
  assert_int_equal(get(ctx, url_of("/hello.txt"), &f), NETSTASH_OK);
  assert_true(site_cmp_matches(f, "hello.txt"));
  netstash_fetch_del(f);
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);
}

static long json_num(const char *js, const char *key) {
  char k[64];
  const char *p;
  snprintf(k, sizeof(k), "\"%s\":", key);
  p = strstr(js, k);
  return p ? strtol(p + strlen(k), NULL, 10) : -1;
}

static char *ctl(const netd_proc *dp, const char *method, const char *path) {
  char cmd[1024];
  snprintf(cmd, sizeof(cmd),
           "curl -s -m 10 -X %s --http2-prior-knowledge --unix-socket %s http://netd%s", method,
           dp->sock, path);
  return netd_run_capture(cmd, NULL);
}

/* SIGTERM while netd warms a manifest in the background: it stops cleanly,
 * and after a restart the warm completes without fetching again what was
 * verified before. */
static void test_sigterm_during_warm(void **state) {
  enum { FILES = 48, SIZE = 1 << 20 };
  netd_proc dp = {0};
  char dir[1024], cmd[4096], base[256], conf[1100], key[1100];
  const char *cli = getenv("NST_BUILDDIR");
  char *out;
  unsigned char *buf = malloc(SIZE);
  long done_before = -1, last_bytes;
  FILE *fp;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/nwarm/www", nst_site());
  snprintf(cmd, sizeof(cmd), "mkdir -p %s", dir);
  assert_int_equal(system(cmd), 0);
  for (int i = 0; i < FILES; i++) {
    char path[1200];
    for (int k = 0; k < SIZE; k++)
      buf[k] = (unsigned char)((k * 131 + i * 7919) >> 3);
    snprintf(path, sizeof(path), "%s/f%02d.bin", dir, i);
    fp = fopen(path, "wb");
    assert_int_equal(fwrite(buf, 1, SIZE, fp), SIZE);
    fclose(fp);
  }
  free(buf);
  snprintf(base, sizeof(base), "https://127.0.0.1:%d/nwarm/", caddy.port);
  snprintf(key, sizeof(key), "%s/nwarm/k", nst_site());
  snprintf(cmd, sizeof(cmd),
           "%s/tools/netstash manifest make %s --base %swww/ --id nwarm --version 1 --entry f00.bin -o %s/nwarm/m.json "
           ">/dev/null && %s/tools/netstash manifest keygen %s >/dev/null && "
           "%s/tools/netstash manifest sign %s/nwarm/m.json --key %s >/dev/null",
           cli, dir, base, nst_site(), cli, key, cli, nst_site(), key);
  assert_int_equal(system(cmd), 0);
  snprintf(conf, sizeof(conf), "%s/nwarm.json", nst_workdir());
  fp = fopen(conf, "w");
  fprintf(fp, "{\"trusted_keys\": [\"%s.pub\"], \"warm\": [{\"manifest\": \"%sm.json\", "
              "\"interval_s\": 3600}]}",
          key, base);
  fclose(fp);
  netd_start(&dp, "netd-warm", conf);
  free(ctl(&dp, "POST", "/warm"));
  /* SIGTERM once at least one resource is verified (not merely some bytes
   * received: on a loaded machine the first megabyte may still be in flight,
   * and then the resumed warm rightly fetches everything) */
  for (int i = 0; i < 2000 && done_before <= 0; i++) {
    out = ctl(&dp, "GET", "/status");
    done_before = json_num(out, "done");
    free(out);
    if (done_before <= 0)
      usleep(5 * 1000);
  }
  assert_true(done_before > 0);
  assert_int_equal(netd_run_stop(&dp), 0); /* mid-warm */
  netd_start(&dp, "netd-warm", conf);
  out = ctl(&dp, "GET", "/status");
  if (strstr(out, "\"state\":\"idle\"") && strstr(out, "NETSTASH_OK"))
    fail_msg("the first warm finished before SIGTERM; the test needs a slower warm");
  free(out);
  free(ctl(&dp, "POST", "/warm"));
  out = NULL;
  for (int i = 0; i < 3000; i++) {
    free(out);
    out = ctl(&dp, "GET", "/status");
    if (strstr(out, "\"last_result\":\"NETSTASH_OK\""))
      break;
    usleep(10 * 1000);
  }
  if (!strstr(out, "\"last_result\":\"NETSTASH_OK\""))
    fail_msg("the resumed warm did not end OK in 30 s: %s", out);
  last_bytes = json_num(out, "last_bytes");
  free(out);
  /* what was verified before SIGTERM was not fetched again */
  if (last_bytes < 0 || last_bytes >= (long)FILES * SIZE)
    fail_msg("second warm fetched %ld bytes of %ld", last_bytes, (long)FILES * SIZE);
  {
    netstash_ctx *ctx = remote_ctx(dp.sock);
    netstash_fetch *f;
    char u[300];
    snprintf(u, sizeof(u), "%swww/f07.bin", base);
    assert_int_equal(get(ctx, u, &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_PRELOAD);
    netstash_fetch_del(f);
    netstash_ctx_del(ctx);
  }
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* Reads a whole file into a malloc'd buffer. */
static unsigned char *slurp(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  unsigned char *b;
  long n;
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  b = malloc((size_t)n + 1);
  assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
  fclose(fp);
  *len = (size_t)n;
  return b;
}

static double ms_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static double ipc_finishing(const netd_proc *dp) {
  char *out = ctl(dp, "GET", "/metrics");
  double v = netd_run_sample(out, "netd_ipc_jobs_finishing");
  free(out);
  return v;
}

/* Waits (up to 3 s) until no IPC job is finishing: every miss answered
 * before is committed to netd's HTTP cache. */
static void ipc_settled(const netd_proc *dp) {
  for (int i = 0; i < 300 && ipc_finishing(dp) != 0; i++)
    usleep(10000);
  assert_true(ipc_finishing(dp) == 0);
}

/* The hit's body equals the file's bytes. */
static void check_hit_body(const netstash_preload_hit *h, const char *file) {
  size_t flen, off = 0;
  unsigned char *want = slurp(file, &flen);
  uint32_t nc = netstash_preload_hit_chunk_count(h);
  assert_int_equal(netstash_preload_hit_body_size(h), flen);
  for (uint32_t i = 0; i < nc; i++) {
    const uint8_t *d;
    size_t len;
    assert_int_equal(netstash_preload_hit_chunk(h, i, &d, &len), NETSTASH_OK);
    assert_true(off + len <= flen);
    assert_memory_equal(d, want + off, len);
    off += len;
  }
  assert_int_equal(off, flen);
  free(want);
}

/* netstash_intercept_cached on a remote-mode context: netd answers fresh
 * entries of its HTTP cache on the lookup connection, bodies it keeps
 * encoded decoded, with their Age; what a job must do is NOT_FOUND. */
/* A lookup on netd's socket by curl with X-Netstash-Lookup: MODE: the first
 * cap - 1 bytes of the answer (head first) in head, NUL-terminated. */
static void lookup_by_hand(const netd_proc *dp, const char *mode, const char *url, char *head,
                           size_t cap) {
  char cmd[4096], path[1100];
  size_t n;
  FILE *fp;
  snprintf(path, sizeof(path), "%s/cached.out", nst_workdir());
  snprintf(cmd, sizeof(cmd),
           "curl -s -i -o %s --unix-socket %s -H 'X-Netstash-Lookup: %s' --request-target '%s' "
           "http://netd/",
           path, dp->sock, mode, url);
  assert_int_equal(system(cmd), 0);
  fp = fopen(path, "rb");
  assert_non_null(fp);
  n = fread(head, 1, cap - 1, fp);
  head[n] = 0;
  fclose(fp);
}

static void test_remote_cached_lookup(void **state) {
  netd_proc dp = {0};
  netstash_ctx *ctx;
  netstash_preload_hit *h;
  netstash_request *req;
  netstash_fetch *f;
  char path[1200], cmd[4096], *out;
  const char *name, *value;
  size_t nl, vl, i;
  int age = 0, cenc = 0, st;
  (void)state;
  /* the harness's caddy sends Cache-Control: max-age=600 under /fresh/ */
  snprintf(cmd, sizeof(cmd),
           "mkdir -p %s/fresh && head -c 200000 /dev/urandom >%s/fresh/a.bin && "
           "for i in $(seq 400); do echo \"line $i of a text stored compressed\"; done "
           ">%s/fresh/t.txt && gzip -kf %s/fresh/t.txt",
           nst_site(), nst_site(), nst_site(), nst_site());
  assert_int_equal(system(cmd), 0);
  netd_start(&dp, "netd-cached", NULL);
  ctx = remote_ctx(dp.sock);
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
  assert_int_equal(netstash_request_new(&req, url_of("/fresh/a.bin")), NETSTASH_OK);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_E_NOT_FOUND); /* not stored */
  assert_int_equal(get(ctx, url_of("/fresh/a.bin"), &f), NETSTASH_OK);
  netstash_fetch_del(f);
  ipc_settled(&dp); /* the fetch ended with its last byte, before the commit */
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_CACHE);
  assert_int_equal(netstash_preload_hit_status(h), 200);
  snprintf(path, sizeof(path), "%s/fresh/a.bin", nst_site());
  check_hit_body(h, path);
  for (i = 0; i < netstash_preload_hit_header_count(h); i++) {
    assert_int_equal(netstash_preload_hit_header_at(h, i, &name, &nl, &value, &vl), NETSTASH_OK);
    if (nl == 3 && !strncasecmp(name, "age", 3))
      age++;
  }
  assert_int_equal(age, 1);
  /* the kernel's whole fast path in one round trip: not preloaded, then
   * netd's HTTP cache */
  assert_int_equal(netstash_intercept_lookup(req, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_CACHE);
  check_hit_body(h, path);
  {
    /* a load flag keeps the HTTP cache out: only the preload store is asked */
    netstash_request *r2;
    assert_int_equal(netstash_request_new(&r2, url_of("/fresh/a.bin")), NETSTASH_OK);
    assert_int_equal(netstash_request_set_load_flags(r2, NETSTASH_LOAD_VALIDATE_CACHE),
                     NETSTASH_OK);
    assert_int_equal(netstash_intercept_lookup(r2, h), NETSTASH_E_NOT_FOUND);
    netstash_request_del(r2);
    /* a worker's navigation keeps the preload store out: only the HTTP cache
     * is asked (X-Netstash-Lookup: cache), and it answers */
    assert_int_equal(netstash_request_new(&r2, url_of("/fresh/a.bin")), NETSTASH_OK);
    assert_int_equal(netstash_request_set_from_worker(r2, 1), NETSTASH_OK);
    assert_int_equal(netstash_request_set_destination(r2, NETSTASH_DEST_DOCUMENT), NETSTASH_OK);
    assert_int_equal(netstash_intercept_lookup(r2, h), NETSTASH_OK);
    assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_CACHE);
    check_hit_body(h, path);
    netstash_request_del(r2);
  }
  /* a Range request is a job's */
  assert_int_equal(netstash_request_add_header(req, "Range", "bytes=0-3"), NETSTASH_OK);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);
  /* gzip on the wire and stored so: served decoded, without its coding */
  assert_int_equal(get(ctx, url_of("/fresh/t.txt"), &f), NETSTASH_OK);
  netstash_fetch_del(f);
  ipc_settled(&dp);
  assert_int_equal(netstash_request_new(&req, url_of("/fresh/t.txt")), NETSTASH_OK);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_OK);
  snprintf(path, sizeof(path), "%s/fresh/t.txt", nst_site());
  check_hit_body(h, path);
  for (i = 0; i < netstash_preload_hit_header_count(h); i++) {
    assert_int_equal(netstash_preload_hit_header_at(h, i, &name, &nl, &value, &vl), NETSTASH_OK);
    if (nl == 16 && !strncasecmp(name, "content-encoding", 16))
      cenc++;
  }
  assert_int_equal(cenc, 0);
  netstash_request_del(req);
  /* the lookup side by hand: the field asks for the HTTP cache */
  {
    char head[4096];
    lookup_by_hand(&dp, "cache", url_of("/fresh/a.bin"), head, sizeof(head));
    assert_non_null(strstr(head, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(head, "X-Netstash-Source: cache\r\n"));
    assert_non_null(strstr(head, "Content-Length: 200000\r\n"));
    /* "any": the preload store, then the HTTP cache */
    lookup_by_hand(&dp, "any", url_of("/fresh/a.bin"), head, sizeof(head));
    assert_non_null(strstr(head, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(head, "X-Netstash-Source: cache\r\n"));
  }
  /* the same URL from another top-level site is another partition: not
   * stored there; then without the field again (netd fills one request again
   * for lookups of the same URL: the field must not stay) */
  for (i = 0; i < 2; i++) {
    snprintf(cmd, sizeof(cmd),
             "curl -s -i -o /dev/null -w '%%{http_code}' --unix-socket %s -H 'X-Netstash-Lookup: "
             "cache' %s --request-target '%s' http://netd/",
             dp.sock, i ? "" : "-H 'X-Netstash-Top-Level-Site: https://other.test/'",
             url_of("/fresh/a.bin"));
    out = netd_run_capture(cmd, &st);
    assert_string_equal(out, i ? "200" : "502");
    free(out);
  }
  snprintf(cmd, sizeof(cmd),
           "curl -s -i --unix-socket %s -H 'X-Netstash-Lookup: cache' --request-target '%s' "
           "http://netd/",
           dp.sock, url_of("/fresh/never-fetched.txt"));
  out = netd_run_capture(cmd, &st);
  assert_non_null(strstr(out, "X-Netstash-Error: NETSTASH_E_NOT_FOUND"));
  free(out);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* Sends a GET for url on a raw lookup connection (kept alive) and reads its
 * answer: the status, or -1 when the connection failed. */
static int raw_lookup(int fd, const char *url) {
  char req[1024], buf[4096], *hend = NULL;
  size_t got = 0, want = SIZE_MAX;
  int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: netd\r\n\r\n", url);
  if (write(fd, req, (size_t)n) != n)
    return -1;
  while (got < want) {
    ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
    const char *cl;
    if (r <= 0)
      return -1;
    got += (size_t)r;
    buf[got] = 0;
    if (!hend && (hend = strstr(buf, "\r\n\r\n")) != NULL) {
      if (!(cl = strstr(buf, "Content-Length: ")) || cl > hend)
        return -1;
      want = (size_t)(hend + 4 - buf) + strtoul(cl + 16, NULL, 10);
    }
  }
  return got > 12 ? atoi(buf + 9) : -1;
}

/* netd_ipc_lookup_threads becomes want within 2 s. */
static void wait_lookup_threads(netd_proc *dp, double want) {
  double v = -1;
  for (int i = 0; i < 200; i++) {
    char *out = ctl(dp, "GET", "/metrics");
    v = netd_run_sample(out, "netd_ipc_lookup_threads");
    free(out);
    if (v == want)
      return;
    usleep(10000);
  }
  fail_msg("netd_ipc_lookup_threads %g, expected %g", v, want);
}

/* The synchronous lookup protocol: netstash_preload_lookup and
 * netstash_intercept_preloaded on a remote-mode context ask netd on the
 * caller's thread; head, body, manifest id and version as netd holds them;
 * misses, lookup connections on threads and on the loop, a restart of netd,
 * netd gone, and hostile lookup clients. With config (NULL: the defaults) and
 * its lookup_threads (threads: how many connections get one). */
static void remote_lookup_checks(const char *config, int threads) {
  netd_proc dp = {0};
  char dir[1024], cmd[4096], base[256], prof[1024], url[512], path[1200], pname[64];
  const char *cli = getenv("NST_BUILDDIR");
  unsigned char *big = malloc(300000);
  netstash_ctx *ctx;
  netstash_preload_hit *h;
  netstash_request *req;
  const char *name, *value;
  size_t nl, vl, i;
  int ctype = 0, st;
  double hits;
  char *out;
  FILE *fp;
  snprintf(dir, sizeof(dir), "%s/nlook", nst_site());
  snprintf(cmd, sizeof(cmd), "mkdir -p %s", dir);
  assert_int_equal(system(cmd), 0);
  snprintf(path, sizeof(path), "%s/a.txt", dir);
  fp = fopen(path, "w");
  fputs("hello from the preload store\n", fp);
  fclose(fp);
  for (i = 0; i < 300000; i++) /* several store chunks */
    big[i] = (unsigned char)((i * 2654435761u) >> 13);
  snprintf(path, sizeof(path), "%s/big.bin", dir);
  fp = fopen(path, "wb");
  assert_int_equal(fwrite(big, 1, 300000, fp), 300000);
  fclose(fp);
  free(big);
  snprintf(path, sizeof(path), "%s/empty.txt", dir);
  fp = fopen(path, "w");
  fclose(fp);
  snprintf(base, sizeof(base), "https://127.0.0.1:%d/nlook/", caddy.port);
  snprintf(pname, sizeof(pname), "netd-lookup-%d", threads); /* a profile of its own */
  snprintf(prof, sizeof(prof), "%s", nst_path(pname));
  snprintf(cmd, sizeof(cmd),
           "%s/tools/netstash manifest make %s --base %s --id nlook --version 3 --entry a.txt -o "
           "%s/nlook.json "
           ">/dev/null && %s/tools/netstash warm %s/nlook.json --allow-unsigned --profile %s "
           "--cacert %s --no-progress >/dev/null",
           cli, dir, base, nst_workdir(), cli, nst_workdir(), prof, nst_cert("ca.pem"));
  assert_int_equal(system(cmd), 0);
  netd_start(&dp, pname, config);
  ctx = remote_ctx(dp.sock);
  assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);

  snprintf(url, sizeof(url), "%sa.txt", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_status(h), 200);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "nlook");
  assert_int_equal(netstash_preload_hit_manifest_version(h), 3);
  for (i = 0; i < netstash_preload_hit_header_count(h); i++) {
    assert_int_equal(netstash_preload_hit_header_at(h, i, &name, &nl, &value, &vl), NETSTASH_OK);
    if (nl == 12 && !strncasecmp(name, "content-type", 12) && vl >= 10 &&
        !strncmp(value, "text/plain", 10))
      ctype = 1;
  }
  assert_true(ctype);
  assert_int_equal(netstash_preload_hit_header_at(h, i, &name, &nl, &value, &vl),
                   NETSTASH_E_NOT_FOUND);
  snprintf(path, sizeof(path), "%s/a.txt", dir);
  check_hit_body(h, path);

  snprintf(url, sizeof(url), "%sbig.bin", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_OK);
  snprintf(path, sizeof(path), "%s/big.bin", dir);
  check_hit_body(h, path);
  snprintf(url, sizeof(url), "%sempty.txt", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_body_size(h), 0);
  assert_int_equal(netstash_preload_hit_chunk_count(h), 0);

  /* misses: not in the manifest, another host, not a URL */
  snprintf(url, sizeof(url), "%snope.txt", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_hit_status(h), 0);
  assert_int_equal(netstash_preload_lookup(h, "https://elsewhere.test/a.txt"),
                   NETSTASH_E_NOT_FOUND);
  assert_int_equal(netstash_preload_lookup(h, "no url"), NETSTASH_E_BAD_URL);

  /* lookup connections get a thread of their own up to lookup_threads (the
   * hit's is the first), the others are served by the loop; a thread ends
   * with its connection */
  wait_lookup_threads(&dp, threads < 1 ? threads : 1);
  out = ctl(&dp, "GET", "/status");
  snprintf(url, sizeof(url), "\"lookup_threads\":{\"serving\":%d,\"max\":%d}",
           threads < 1 ? threads : 1, threads);
  if (!strstr(out, url))
    fail_msg("status without %s: %s", url, out);
  free(out);
  {
    int fd = netd_run_connect_unix(dp.sock);
    snprintf(url, sizeof(url), "%sa.txt", base);
    assert_true(fd >= 0);
    assert_int_equal(raw_lookup(fd, url), 200);
    wait_lookup_threads(&dp, threads < 2 ? threads : 2);
    snprintf(url, sizeof(url), "%snope.txt", base);
    assert_int_equal(raw_lookup(fd, url), 502);
    close(fd);
    wait_lookup_threads(&dp, threads < 1 ? threads : 1);
  }

  /* the interceptor's fast path: a GET is answered, a Range request not */
  snprintf(url, sizeof(url), "%sa.txt", base);
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  assert_int_equal(netstash_intercept_preloaded(req, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_body_size(h), 29);
  assert_int_equal(netstash_request_add_header(req, "Range", "bytes=0-3"), NETSTASH_OK);
  assert_int_equal(netstash_intercept_preloaded(req, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);

  out = ctl(&dp, "GET", "/metrics");
  assert_non_null(strstr(out, "netd_lookups_total{result=\"hit\"} 5\n"));
  /* ("no url" never left the client: a space cannot go on a request line) */
  assert_non_null(strstr(out, "netd_lookups_total{result=\"miss\"} 3\n"));
  free(out);

  /* the lookup side of the socket is plain HTTP/1.1: curl can ask it */
  snprintf(url, sizeof(url), "%sa.txt", base);
  snprintf(cmd, sizeof(cmd), "curl -s -i --unix-socket %s --request-target '%s' http://netd/",
           dp.sock, url);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(out, "X-Netstash-Source: preload\r\n"));
  assert_non_null(strstr(out, "X-Netstash-Preload-Id: nlook\r\n"));
  assert_non_null(strstr(out, "\r\n\r\nhello from the preload store\n"));
  free(out);
  snprintf(cmd, sizeof(cmd), "curl -s -i --unix-socket %s --request-target '%snope' http://netd/",
           dp.sock, base);
  out = netd_run_capture(cmd, &st);
  assert_non_null(strstr(out, "HTTP/1.1 502 Bad Gateway\r\n"));
  assert_non_null(strstr(out, "X-Netstash-Error: NETSTASH_E_NOT_FOUND\r\n"));
  free(out);

  /* hostile lookup clients: another method, an origin-form target, a body,
   * garbage, a target over the limit; each is refused (4xx) and closed */
  {
    static const char *bad[] = {
        "POST https://x.test/ HTTP/1.1\r\nHost: n\r\n\r\n", "GET / HTTP/1.1\r\nHost: n\r\n\r\n",
        "GET https://x.test/ HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", "\x01\x02garbage\r\n\r\n"};
    static const char *want[] = {"HTTP/1.1 405 ", "HTTP/1.1 400 ", "HTTP/1.1 400 ",
                                 "HTTP/1.1 400 "};
    char *longreq = malloc(20000);
    for (i = 0; i < 5; i++) {
      int fd = netd_run_connect_unix(dp.sock);
      char back[512];
      const char *q = i < 4 ? bad[i] : longreq;
      size_t got = 0;
      ssize_t r;
      if (i == 4) {
        memcpy(longreq, "GET https://x.test/", 19);
        memset(longreq + 19, 'a', 9000);
        memcpy(longreq + 9019, " HTTP/1.1\r\n\r\n", 14);
      }
      assert_true(fd >= 0);
      assert_int_equal(write(fd, q, i < 4 ? strlen(q) : 9033), (ssize_t)(i < 4 ? strlen(q) : 9033));
      while ((r = read(fd, back + got, sizeof(back) - 1 - got)) > 0) /* until netd closes */
        got += (size_t)r;
      back[got] = 0;
      if (strncmp(back, i < 4 ? want[i] : "HTTP/1.1 414 ", 13) != 0)
        fail_msg("bad lookup request %zu: answered \"%s\"", i, back);
      close(fd);
    }
    free(longreq);
  }
  {
    int fd = netd_run_connect_unix(dp.sock);
    char req_buf[512];
    size_t n, rl;
    snprintf(req_buf, sizeof(req_buf), "GET %sbig.bin HTTP/1.1\r\nHost: netd\r\n\r\n", base);
    rl = strlen(req_buf);
    assert_true(fd >= 0);
    /* 200 requests for 300 KB each, none of the answers read */
    for (n = 0; n < 200; n++)
      if (write(fd, req_buf, rl) != (ssize_t)rl)
        break; /* netd closed it */
    close(fd);
  }
  snprintf(url, sizeof(url), "%sa.txt", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_OK);
  snprintf(path, sizeof(path), "%s/a.txt", dir);
  check_hit_body(h, path);
  /* the kernel's whole fast path in one round trip: preloaded first; a
   * request that may use neither store does not ask */
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  assert_int_equal(netstash_intercept_lookup(req, h), NETSTASH_OK);
  assert_int_equal(netstash_preload_hit_source(h), NETSTASH_SOURCE_PRELOAD);
  assert_string_equal(netstash_preload_hit_manifest_id(h), "nlook");
  check_hit_body(h, path);
  assert_int_equal(netstash_request_set_cache_mode(req, NETSTASH_CACHE_BYPASS), NETSTASH_OK);
  assert_int_equal(netstash_intercept_lookup(req, h), NETSTASH_E_NOT_FOUND);
  netstash_request_del(req);

  /* a page loaded through netd as a sandboxed kernel would: the
   * preloaded document by the fast path, nothing from the network */
  out = ctl(&dp, "GET", "/metrics");
  hits = netd_run_sample(out, "netd_lookups_total{result=\"hit\"}");
  free(out);
  snprintf(cmd, sizeof(cmd), "%s/tools/netstash load --daemon %s --json %sa.txt", cli, dp.sock,
           base);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  if (!strstr(out, "\"source\":\"preload\"") || !strstr(out, "\"network_requests\":0"))
    fail_msg("netstash load --daemon: %s", out);
  free(out);
  out = ctl(&dp, "GET", "/metrics");
  assert_true(netd_run_sample(out, "netd_lookups_total{result=\"hit\"}") == hits + 1);
  free(out);
  snprintf(cmd, sizeof(cmd), "%s/tools/netstash load --daemon %s --profile /nonexistent %sa.txt",
           cli, dp.sock, base);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 2);
  free(out);

  /* netd restarted: the hit's connection is gone (a SIGTERM while it is
   * open and idle), the next lookup reconnects */
  assert_int_equal(netd_run_stop(&dp), 0);
  netd_start(&dp, pname, config);
  snprintf(url, sizeof(url), "%sbig.bin", base);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_OK);
  snprintf(path, sizeof(path), "%s/big.bin", dir);
  check_hit_body(h, path);
  /* netd gone: a clear error, nothing hangs */
  assert_int_equal(netd_run_stop(&dp), 0);
  assert_int_equal(netstash_preload_lookup(h, url), NETSTASH_E_CONNECT_REFUSED);
  assert_int_equal(netstash_preload_hit_status(h), 0);
  netstash_preload_hit_del(h);
  netstash_ctx_del(ctx);
}

static void test_remote_lookup(void **state) {
  (void)state;
  remote_lookup_checks(NULL, 16); /* the default lookup_threads */
}

/* The same with one lookup thread (the second connection is the loop's)
 * and with none (every lookup served by the loop). */
static void test_remote_lookup_few_threads(void **state) {
  char conf[1024];
  FILE *fp;
  (void)state;
  for (int n = 1; n >= 0; n--) {
    snprintf(conf, sizeof(conf), "%s/lookup-threads-%d.json", nst_workdir(), n);
    assert_non_null(fp = fopen(conf, "w"));
    fprintf(fp, "{\"lookup_threads\": %d}\n", n);
    fclose(fp);
    remote_lookup_checks(conf, n);
  }
}

/* One answer as the library in remote mode sees it. */
typedef struct ipc_answer {
  int status;
  netstash_source src;
  char reason[192]; /* without the age it names */
  char head[8192];  /* "name: value\n" in order, Age left out (it may tick) */
  uint8_t *body;
  size_t len;
} ipc_answer;

static void ipc_take(netstash_ctx *ctx, const char *url, int raw, ipc_answer *a) {
  netstash_request *req;
  netstash_fetch *f;
  const uint8_t *b;
  size_t n, off = 0;
  char *p;
  memset(a, 0, sizeof(*a));
  assert_int_equal(netstash_request_new(&req, url), NETSTASH_OK);
  assert_int_equal(netstash_request_set_collect_body(req, 16u << 20), NETSTASH_OK);
  if (raw)
    assert_int_equal(netstash_request_set_raw_body(req, 1), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  netstash_request_del(req);
  a->status = netstash_fetch_status(f);
  a->src = netstash_fetch_source(f);
  snprintf(a->reason, sizeof(a->reason), "%s",
           netstash_fetch_cache_reason(f) ? netstash_fetch_cache_reason(f) : "");
  if ((p = strstr(a->reason, ", age ")) != NULL)
    *p = 0; /* it may tick between two answers, as Age may */
  for (size_t i = 0; i < netstash_fetch_header_count(f); i++) {
    const char *hn, *hv;
    assert_int_equal(netstash_fetch_header_at(f, i, &hn, &hv), NETSTASH_OK);
    if (!strcasecmp(hn, "age"))
      continue;
    off += (size_t)snprintf(a->head + off, sizeof(a->head) - off, "%s: %s\n", hn, hv);
    assert_true(off < sizeof(a->head));
  }
  assert_int_equal(netstash_fetch_body(f, &b, &n), NETSTASH_OK);
  a->body = malloc(n ? n : 1);
  memcpy(a->body, b, n);
  a->len = n;
  netstash_fetch_del(f);
}

static double ipc_fast_count(const netd_proc *dp) {
  char *out = ctl(dp, "GET", "/metrics");
  double v = netd_run_sample(out, "netd_ipc_fast_hits_total");
  free(out);
  return v;
}

/* netd's HTTP/2 IPC answers stored responses without a job (ipc.c
 * answer_stored): for each URL the answer a client gets equals a job's from
 * the same entry — netd restarted on the same profile with "fast_hits":
 * false answered the same requests first — status, source, cache reason
 * (its age aside), every field but Age, body; netd_ipc_fast_hits_total
 * counts them; and the HTTP/1.1 gateway's preloaded answer (front.c) is
 * byte for byte a job's. Conditional requests (a job's 304: the preload check took
 * them before), ranges, HEAD, a raw request for a body stored encoded (the
 * remote client did not tell netd "raw" before: the body came decoded) and
 * a body over 1 MiB are still a job's. */
/* A remote-mode fetch of a miss ends with its last byte: netd sends
 * END_STREAM with it, while the job waits for the HTTP cache's commit of the
 * response (here held up by the store's write lock, taken by the test as
 * another process's writer would: before, the fetch waited for it). The job
 * still ends and stores: the next fetch is a cache hit. */
static void test_ipc_end_before_commit(void **state) {
  netd_proc dp = {0};
  netstash_ctx *ctx;
  netstash_fetch *f;
  char path[1200], cmd[1400];
  struct timespec t0;
  int lfd;
  (void)state;
  snprintf(cmd, sizeof(cmd), "mkdir -p %s/fresh && head -c 30000 /dev/urandom >%s/fresh/early.bin",
           nst_site(), nst_site());
  assert_int_equal(system(cmd), 0);
  netd_start(&dp, "netd-early", NULL);
  ctx = remote_ctx(dp.sock);
  snprintf(path, sizeof(path), "%s/store/write.lock", dp.profile);
  lfd = open(path, O_RDWR | O_CLOEXEC);
  assert_true(lfd >= 0);
  assert_int_equal(flock(lfd, LOCK_EX), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(get(ctx, url_of("/fresh/early.bin"), &f), NETSTASH_OK);
  assert_true(ms_since(&t0) < 500); /* the writer waits up to 1 s for the lock */
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_NETWORK);
  {
    size_t flen, blen;
    const uint8_t *body;
    char file[1200];
    unsigned char *want;
    snprintf(file, sizeof(file), "%s/fresh/early.bin", nst_site());
    want = slurp(file, &flen);
    assert_int_equal(netstash_fetch_body(f, &body, &blen), NETSTASH_OK);
    assert_int_equal(blen, flen);
    assert_memory_equal(body, want, flen);
    free(want);
  }
  netstash_fetch_del(f);
  assert_true(ipc_finishing(&dp) == 1);
  assert_int_equal(flock(lfd, LOCK_UN), 0);
  close(lfd);
  ipc_settled(&dp);
  assert_int_equal(get(ctx, url_of("/fresh/early.bin"), &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_CACHE);
  netstash_fetch_del(f);
  /* SIGTERM while such a job waits: netd still stops cleanly (the commit
   * gives up on the lock, or the stop's grace cancels the job) */
  lfd = open(path, O_RDWR | O_CLOEXEC);
  assert_true(lfd >= 0);
  assert_int_equal(flock(lfd, LOCK_EX), 0);
  assert_int_equal(get(ctx, url_of("/fresh/early.bin?again"), &f), NETSTASH_OK);
  netstash_fetch_del(f);
  assert_true(ipc_finishing(&dp) == 1);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(netd_run_stop(&dp), 0);
  assert_true(ms_since(&t0) < 8000);
  assert_int_equal(flock(lfd, LOCK_UN), 0);
  close(lfd);
  netstash_ctx_del(ctx);
}

/* A stand-in for netd on a unix socket: reads one lookup request and writes
 * the answer given a few bytes at a time (a pause between writes), so the
 * client finds the head's end across several reads — and the CR LF pairs of
 * the head split between them. */
typedef struct dribble {
  int lfd;
  const char *answer;
  size_t step;
} dribble;

static void *dribble_serve(void *arg) {
  dribble *d = arg;
  char req[4096];
  size_t have = 0, n = strlen(d->answer);
  int fd = accept(d->lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  while (have < sizeof(req) - 1) { /* up to the request's CR LF CR LF */
    ssize_t r = read(fd, req + have, sizeof(req) - 1 - have);
    if (r <= 0)
      break;
    have += (size_t)r;
    req[have] = '\0';
    if (strstr(req, "\r\n\r\n"))
      break;
  }
  for (size_t off = 0; off < n; off += d->step) {
    size_t k = n - off < d->step ? n - off : d->step;
    if (write(fd, d->answer + off, k) != (ssize_t)k)
      break;
    usleep(2000);
  }
  close(fd);
  return NULL;
}

static void test_remote_lookup_answer_in_pieces(void **state) {
  static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "X-Netstash-Source: preload\r\nX-Netstash-Preload-Version: 7\r\n"
                               "X-Netstash-Preload-Id: drip\r\nContent-Length: 11\r\n\r\n"
                               "hello drips";
  static const size_t steps[] = {1, 2, 3, 5};
  char sock[1024];
  (void)state;
  snprintf(sock, sizeof(sock), "%s/drip.sock", nst_workdir());
  for (size_t si = 0; si < sizeof(steps) / sizeof(steps[0]); si++) {
    struct sockaddr_un sa;
    dribble d = {socket(AF_UNIX, SOCK_STREAM, 0), answer, steps[si]};
    pthread_t th;
    netstash_ctx *ctx;
    netstash_preload_hit *h;
    const uint8_t *data;
    size_t len, nl, vl;
    const char *name, *value;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    assert_true(strlen(sock) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    unlink(sock);
    assert_true(d.lfd >= 0);
    assert_int_equal(bind(d.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(d.lfd, 4), 0);
    assert_int_equal(pthread_create(&th, NULL, dribble_serve, &d), 0);
    ctx = remote_ctx(sock);
    assert_int_equal(netstash_preload_hit_new(ctx, &h), NETSTASH_OK);
    assert_int_equal(netstash_preload_lookup(h, "https://drip.test/a.txt"), NETSTASH_OK);
    assert_int_equal(netstash_preload_hit_status(h), 200);
    assert_string_equal(netstash_preload_hit_manifest_id(h), "drip");
    assert_int_equal(netstash_preload_hit_manifest_version(h), 7);
    assert_int_equal(netstash_preload_hit_header_count(h), 1);
    assert_int_equal(netstash_preload_hit_header_at(h, 0, &name, &nl, &value, &vl), NETSTASH_OK);
    assert_int_equal(nl, 12);
    assert_memory_equal(name, "Content-Type", 12);
    assert_int_equal(vl, 10);
    assert_memory_equal(value, "text/plain", 10);
    assert_int_equal(netstash_preload_hit_chunk_count(h), 1);
    assert_int_equal(netstash_preload_hit_chunk(h, 0, &data, &len), NETSTASH_OK);
    assert_int_equal(len, 11);
    assert_memory_equal(data, "hello drips", 11);
    netstash_preload_hit_del(h);
    netstash_ctx_del(ctx);
    pthread_join(th, NULL);
    close(d.lfd);
  }
  unlink(sock);
}

static void test_ipc_fast_hits(void **state) {
  enum { NURL = 5 };
  netd_proc dp = {0};
  char dir[600], cmd[8192], base[256], pbase[300], conf[1100], urls[NURL][512], *gw_job, *gw_fast;
  const int raw[NURL] = {0, 0, 1, 1, 0};
  const char *cli = getenv("NST_BUILDDIR");
  ipc_answer job[NURL], fast;
  netstash_ctx *ctx;
  netstash_request *req;
  netstash_fetch *f;
  FILE *fp;
  int i;
  (void)state;
  snprintf(dir, sizeof(dir), "%s/fresh/ipcf", nst_site());
  snprintf(cmd, sizeof(cmd),
           "mkdir -p %s/p && head -c 200000 /dev/urandom >%s/a.bin && "
           "head -c 1500000 /dev/urandom >%s/big.bin && echo preloaded >%s/p/p.txt && "
           "for i in $(seq 300); do echo \"line $i, stored compressed\"; done >%s/t.txt && "
           "gzip -kf %s/t.txt",
           dir, dir, dir, dir, dir, dir);
  assert_int_equal(system(cmd), 0);
  snprintf(base, sizeof(base), "https://127.0.0.1:%d/fresh/ipcf/", caddy.port);
  snprintf(pbase, sizeof(pbase), "%sp/", base);
  snprintf(cmd, sizeof(cmd),
           "%s/tools/netstash manifest make %s/p --base %s --id ipcf --version 1 --entry p.txt -o "
           "%s/ipcf.json >/dev/null && %s/tools/netstash warm %s/ipcf.json --allow-unsigned "
           "--profile %s --cacert %s --no-progress >/dev/null",
           cli, dir, pbase, nst_workdir(), cli, nst_workdir(), nst_path("netd-ipcfast"),
           nst_cert("ca.pem"));
  assert_int_equal(system(cmd), 0);
  /* a.bin, t.txt (gzip on the wire, served decoded), a.bin and p.txt (the
   * preload store) raw and not */
  snprintf(urls[0], sizeof(urls[0]), "%sa.bin", base);
  snprintf(urls[1], sizeof(urls[1]), "%st.txt", base);
  snprintf(urls[2], sizeof(urls[2]), "%sa.bin", base);
  snprintf(urls[3], sizeof(urls[3]), "%sp.txt", pbase);
  snprintf(urls[4], sizeof(urls[4]), "%sp.txt", pbase);

  /* jobs only: the answers to compare with; with the HTTP/1.1 gateway in
   * front of caddy (its preloaded answers: front.c's answer_stored) */
  dp.gateway = netd_run_free_port();
  snprintf(conf, sizeof(conf), "%s/nofast.json", nst_workdir());
  fp = fopen(conf, "w");
  fprintf(fp,
          "{\"fast_hits\": false, \"gateway\": \"127.0.0.1:%d\", "
          "\"upstream\": \"https://127.0.0.1:%d\"}",
          dp.gateway, caddy.port);
  fclose(fp);
  netd_start(&dp, "netd-ipcfast", conf);
  ctx = remote_ctx(dp.sock);
  for (i = 0; i < NURL; i++) {
    ipc_take(ctx, urls[i], raw[i], &job[i]); /* stores a.bin and t.txt */
    free(job[i].body);
    ipc_take(ctx, urls[i], raw[i], &job[i]);
    assert_int_equal(job[i].status, 200);
    assert_int_equal(job[i].src, i >= 3 ? NETSTASH_SOURCE_PRELOAD : NETSTASH_SOURCE_CACHE);
  }
  /* decoded: neither the coding nor the length of the bytes that came */
  assert_null(strstr(job[1].head, "content-encoding"));
  assert_null(strstr(job[1].head, "content-length"));
  /* raw: the length as stored (x-netstash-raw reaches netd); a body that goes
   * as it is keeps its length too, as in local mode (was dropped) */
  assert_non_null(strstr(job[2].head, "content-length: 200000\n"));
  assert_non_null(strstr(job[0].head, "content-length: 200000\n"));
  assert_true(ipc_fast_count(&dp) == 0);
  snprintf(cmd, sizeof(cmd), "curl -s -i http://127.0.0.1:%d/fresh/ipcf/p/p.txt", dp.gateway);
  gw_job = netd_run_capture(cmd, NULL);
  assert_non_null(strstr(gw_job, "X-Netstash-Source: preload\r\n"));
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);

  /* the same profile, fast hits on (the default) */
  fp = fopen(conf, "w");
  fprintf(fp, "{\"gateway\": \"127.0.0.1:%d\", \"upstream\": \"https://127.0.0.1:%d\"}", dp.gateway,
          caddy.port);
  fclose(fp);
  netd_start(&dp, "netd-ipcfast", conf);
  gw_fast = netd_run_capture(cmd, NULL);
  assert_string_equal(gw_fast, gw_job);
  {
    char *m = ctl(&dp, "GET", "/metrics");
    assert_true(netd_run_sample(m, "netd_gateway_fast_hits_total") == 1);
    free(m);
  }
  free(gw_job);
  free(gw_fast);
  ctx = remote_ctx(dp.sock);
  for (i = 0; i < NURL; i++) {
    ipc_take(ctx, urls[i], raw[i], &fast);
    assert_int_equal(fast.status, job[i].status);
    assert_int_equal(fast.src, job[i].src);
    assert_string_equal(fast.reason, job[i].reason);
    assert_string_equal(fast.head, job[i].head);
    assert_int_equal(fast.len, job[i].len);
    assert_memory_equal(fast.body, job[i].body, fast.len);
    assert_true(ipc_fast_count(&dp) == i + 1);
    free(fast.body);
    free(job[i].body);
  }

  /* a job's: conditional (304 when the validator matches, preloaded or
   * cached), a range, HEAD, t.txt raw (kept gzip-encoded), over 1 MiB */
  for (i = 0; i < 4; i += 3) {
    const char *etag;
    assert_int_equal(netstash_request_new(&req, urls[i]), NETSTASH_OK);
    ipc_take(ctx, urls[i], 0, &fast);
    etag = strstr(fast.head, "etag: ");
    assert_non_null(etag);
    {
      char v[128];
      size_t n = strcspn(etag + 6, "\n");
      assert_true(n < sizeof(v));
      memcpy(v, etag + 6, n);
      v[n] = 0;
      assert_int_equal(netstash_request_add_header(req, "If-None-Match", v), NETSTASH_OK);
    }
    free(fast.body);
    assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_status(f), 304);
    netstash_fetch_del(f);
    netstash_request_del(req);
  }
  assert_true(ipc_fast_count(&dp) == NURL + 2); /* the two takes for the ETags */
  assert_int_equal(netstash_request_new(&req, urls[0]), NETSTASH_OK);
  assert_int_equal(netstash_request_add_header(req, "Range", "bytes=0-3"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 206);
  netstash_fetch_del(f);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, urls[0]), NETSTASH_OK);
  assert_int_equal(netstash_request_set_method(req, "HEAD"), NETSTASH_OK);
  assert_int_equal(netstash_fetch_sync(ctx, req, &f), NETSTASH_OK);
  assert_int_equal(netstash_fetch_status(f), 200);
  assert_int_equal(netstash_fetch_source(f), NETSTASH_SOURCE_CACHE);
  netstash_fetch_del(f);
  netstash_request_del(req);
  ipc_take(ctx, urls[1], 1, &fast);
  assert_non_null(strstr(fast.head, "content-encoding: gzip\n"));
  assert_true(fast.len > 2 && fast.body[0] == 0x1f && fast.body[1] == 0x8b);
  assert_int_equal(fast.src, NETSTASH_SOURCE_CACHE);
  free(fast.body);
  snprintf(urls[0], sizeof(urls[0]), "%sbig.bin", base);
  ipc_take(ctx, urls[0], 0, &fast);
  free(fast.body);
  ipc_take(ctx, urls[0], 0, &fast);
  assert_int_equal(fast.src, NETSTASH_SOURCE_CACHE);
  assert_int_equal(fast.len, 1500000);
  free(fast.body);
  assert_true(ipc_fast_count(&dp) == NURL + 2);
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* SIGHUP re-reads the configuration: a warm schedule added to the file
 * appears in /status without a restart. */
static void test_sighup_reload(void **state) {
  netd_proc dp = {0};
  char conf[1100], *out = NULL;
  FILE *fp;
  (void)state;
  snprintf(conf, sizeof(conf), "%s/hup.json", nst_workdir());
  fp = fopen(conf, "w");
  fprintf(fp, "{\"log\": {\"level\": \"info\"}}");
  fclose(fp);
  netd_start(&dp, "netd-hup", conf);
  out = ctl(&dp, "GET", "/status");
  assert_non_null(strstr(out, "\"warms\":[]"));
  free(out);
  fp = fopen(conf, "w");
  fprintf(fp, "{\"log\": {\"level\": \"debug\"}, \"warm\": [{\"manifest\": "
              "\"https://127.0.0.1:%d/none/m.json\", \"interval_s\": 3600}]}",
          caddy.port);
  fclose(fp);
  kill(dp.pid, SIGHUP);
  out = NULL;
  for (int i = 0; i < 200; i++) {
    free(out);
    out = ctl(&dp, "GET", "/status");
    if (strstr(out, "none/m.json"))
      break;
    usleep(10 * 1000);
  }
  assert_non_null(strstr(out, "none/m.json"));
  free(out);
  /* a broken file leaves the running configuration alone */
  fp = fopen(conf, "w");
  fprintf(fp, "{\"warm\": 3}");
  fclose(fp);
  kill(dp.pid, SIGHUP);
  usleep(200 * 1000);
  out = ctl(&dp, "GET", "/status");
  assert_non_null(strstr(out, "none/m.json"));
  free(out);
  assert_int_equal(netd_run_stop(&dp), 0);
}

/* The number after "key": in a JSON text (-1 when absent). */
static long long json_number(const char *text, const char *key) {
  char k[64];
  const char *p;
  snprintf(k, sizeof(k), "\"%s\":", key);
  p = strstr(text, k);
  return p ? strtoll(p + strlen(k), NULL, 10) : -1;
}

/* The HTTP cache's records in netd's store, read by `netstash stats` (whose
 * reads note no access). */
static long http_records(const char *profile) {
  char cmd[2048], *out;
  long n;
  int st;
  snprintf(cmd, sizeof(cmd), "%s/tools/netstash stats --profile %s --json", getenv("NST_BUILDDIR"),
           profile);
  out = netd_run_capture(cmd, &st);
  assert_int_equal(st, 0);
  n = (long)json_number(out, "http");
  free(out);
  return n;
}

/* A kernel process reading netd's store directly (a local-mode context on
 * netd's profile) keeps the entries it serves: its hits reach the LRU order
 * netd evicts by (the store's shared access notes), although that process
 * never writes. Entry a is stored first, b1..b4 after it; the reader hits a
 * only; then netd stores more than its cache_max_bytes holds, and the first
 * eviction takes b1..., not a — without the reader's hits a, the oldest,
 * would go first. */
static void test_direct_reader_keeps_entries(void **state) {
  enum { SIZE = 50000, FILL = 30 };
  netd_proc dp = {0};
  netstash_ctx *ctx, *local;
  netstash_options *o;
  netstash_preload_hit *h;
  netstash_request *req;
  netstash_fetch *f;
  char cmd[2048], conf[1100], detail[256], name[64];
  long before, now;
  int evicted = 0;
  FILE *fp;
  (void)state;
  snprintf(
      cmd, sizeof(cmd),
      "mkdir -p %s/fresh/lru && cd %s/fresh/lru && for n in a b1 b2 b3 b4 $(seq -f f%%02g 1 %d); "
      "do head -c %d /dev/urandom >$n.bin; done",
      nst_site(), nst_site(), FILL, SIZE);
  assert_int_equal(system(cmd), 0);
  snprintf(conf, sizeof(conf), "%s.json", nst_path("netd-lru"));
  fp = fopen(conf, "w");
  assert_non_null(fp);
  fprintf(fp, "{\"cache_max_bytes\": 1048576}");
  fclose(fp);
  netd_start(&dp, "netd-lru", conf);
  ctx = remote_ctx(dp.sock);
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof(name), "/fresh/lru/%s.bin",
             i ? (const char *[]){"b1", "b2", "b3", "b4"}[i - 1] : "a");
    assert_int_equal(get(ctx, url_of(name), &f), NETSTASH_OK);
    assert_int_equal(netstash_fetch_status(f), 200);
    netstash_fetch_del(f);
  }
  ipc_settled(&dp);
  /* the reader: netd's profile, read directly */
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_profile_dir(o, dp.profile), NETSTASH_OK);
  assert_int_equal(netstash_ctx_new(&local, o, detail, sizeof(detail)), NETSTASH_OK);
  netstash_options_del(o);
  assert_int_equal(netstash_preload_hit_new(local, &h), NETSTASH_OK);
  usleep(1100 * 1000); /* an access moves a record's time once it is a second old */
  assert_int_equal(netstash_request_new(&req, url_of("/fresh/lru/a.bin")), NETSTASH_OK);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_OK);
  netstash_preload_hit_release(h);
  /* netd stores more until its first eviction */
  before = http_records(dp.profile);
  assert_true(before > 0);
  for (int i = 1; i <= FILL && !evicted; i++) {
    snprintf(name, sizeof(name), "/fresh/lru/f%02d.bin", i);
    assert_int_equal(get(ctx, url_of(name), &f), NETSTASH_OK);
    netstash_fetch_del(f);
    ipc_settled(&dp);
    now = http_records(dp.profile);
    evicted = now < before + 2; /* each entry is two records: index, variant */
    before = now;
  }
  assert_true(evicted);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_OK); /* a stayed */
  netstash_preload_hit_release(h);
  netstash_request_del(req);
  assert_int_equal(netstash_request_new(&req, url_of("/fresh/lru/b1.bin")), NETSTASH_OK);
  assert_int_equal(netstash_intercept_cached(req, h), NETSTASH_E_NOT_FOUND); /* b1 went */
  netstash_request_del(req);
  /* what netd says of its store: the limit, the evictions */
  {
    char *out = ctl(&dp, "GET", "/status"), *m;
    int st;
    if (json_number(out, "limit_bytes") != 1048576 || json_number(out, "evicted") < 1)
      fail_msg("/status: %s", out);
    free(out);
    m = ctl(&dp, "GET", "/metrics");
    assert_true(netd_run_sample(m, "netd_store_limit_bytes") == 1048576);
    assert_true(netd_run_sample(m, "netd_store_evicted_total") >= 1);
    assert_true(netd_run_sample(m, "netd_store_used_bytes") > 0);
    free(m);
    snprintf(cmd, sizeof(cmd), "%s/tools/netstash --daemon %s status", getenv("NST_BUILDDIR"),
             dp.sock);
    out = netd_run_capture(cmd, &st);
    assert_int_equal(st, 0);
    if (!strstr(out, "used of a 1.0 MiB limit"))
      fail_msg("netstash --daemon status: %s", out);
    free(out);
  }
  netstash_preload_hit_del(h);
  netstash_ctx_del(local);
  netstash_ctx_del(ctx);
  assert_int_equal(netd_run_stop(&dp), 0);
}

static int setup(void **state) {
  (void)state;
  if (netd_run_setup("netd") != 0)
    return -1;
  if (!nst_certs() || !nst_site() || nst_caddy_start("h2", &caddy) != 0)
    return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  nst_cleanup();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_remote_mode_basic),
      cmocka_unit_test(test_many_processes),
      cmocka_unit_test(test_restart_under_load),
      cmocka_unit_test(test_lock_and_config),
      cmocka_unit_test(test_socket_permissions),
      cmocka_unit_test(test_control_and_hostile_client),
      cmocka_unit_test(test_sigterm_during_warm),
      cmocka_unit_test(test_sighup_reload),
      cmocka_unit_test(test_remote_lookup),
      cmocka_unit_test(test_remote_lookup_few_threads),
      cmocka_unit_test(test_remote_cached_lookup),
      cmocka_unit_test(test_ipc_fast_hits),
      cmocka_unit_test(test_remote_lookup_answer_in_pieces),
      cmocka_unit_test(test_ipc_end_before_commit),
      cmocka_unit_test(test_direct_reader_keeps_entries),
  };
  if (getenv("NST_TEST_FILTER")) /* e.g. test_restart_under_load, to loop one test */
    cmocka_set_test_filter(getenv("NST_TEST_FILTER"));
  return cmocka_run_group_tests(tests, setup, teardown);
}
