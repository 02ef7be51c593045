/*
 * netd_chromium_test — a real browser through both of netd's HTTP/1.1 fronts:
 * headless Chromium (Debian's chromium, installed by scripts/setup) loads the
 * realistic fixture page (tests/fixtures/make-site: 40 resources — HTML, an
 * iframe, CSS, scripts, JSON, fonts, images) twice:
 *
 *   chromium --(PAC)--> proxy front --http://example.test:G/--> gateway front
 *            --https://127.0.0.1:C/--> caddy ("h2" harness variant)
 *
 * One netd (a child process) runs both fronts on one profile, so every
 * resource of the first load is fetched twice by the library: by the proxy
 * front from the gateway, and by the gateway from caddy.
 *
 * Checked on both loads, from the browser's side: the page's scripts ran
 * (the markers the fixture's scripts put on <html>, read from --dump-dom),
 * and Chromium's NetLog (--log-net-log) shows every resource of the site
 * answered 200 through the proxy, no request of the site failing, and no
 * request for another host answered by netd. The second load uses a fresh
 * --user-data-dir and HOME (Chromium's own cache is empty): every resource
 * must come back with X-Netstash-Source cache|revalidated|preload, and netd's
 * metrics must show no network answer at all and at least one netstash answer
 * per resource ("revalidated" — a 304 from upstream, the body from netstash —
 * and "preload" count as served from netstash too). The fixture's files
 * carry Last-Modified 2024-05-14 and no Cache-Control, so the library's
 * heuristic freshness (10 % of their age, capped at 7 days) makes them
 * fresh: expect "cache". With stale entries the second load would not pass:
 * the proxy front's revalidation goes to the gateway front, whose library
 * answers the conditional request with a full 200 from its store (it does
 * not evaluate a client's If-None-Match), so the proxy hop says "network".
 * Finally netd must exit 0 on SIGTERM. Everything is bounded: each Chromium
 * run 20 s, the whole test TEST_BUDGET_S (a watchdog kills what is left).
 *
 * Why a PAC and a host name: Chromium never hands loopback URLs to a PAC
 * script's proxy (its implicit loopback bypass; '<-loopback>' only undoes it
 * for --proxy-server), and with --proxy-server every background request
 * (clients2.google.com time, update.googleapis.com, accounts.google.com,
 * content-autofill.googleapis.com) reaches the proxy too, even with
 * --disable-background-networking — and netd's proxy fetches any target. So
 * the page is http://example.test:G/, the PAC sends example.test to netd's
 * proxy and everything else to a closed loopback port, and netd pins
 * example.test:G to 127.0.0.1 (--resolve).
 *
 * Needs chromium (fails, never skips, without it; $CHROMIUM overrides the
 * binary) and make-site's Debian packages. NST_VERBOSE=1 prints what each
 * resource came back as; NST_KEEP_WORKDIR=1 keeps the DOMs, NetLogs and logs
 * (nst_workdir()/chromium-N/, netd.log, make-site.log).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "netd_run.h"

#ifndef NST_TOP_SRCDIR
#define NST_TOP_SRCDIR "."
#endif

#define SITE_HOST "example.test"
#define CHROMIUM_TIMEOUT_MS 20000  /* one load; measured 1-2 s */
#define MAKE_SITE_TIMEOUT_MS 30000 /* measured 6 s; README says 10-20 s on 2 cores */
#define IO_TIMEOUT_MS 10000
#ifndef TEST_BUDGET_S
#define TEST_BUDGET_S 58 /* the whole test, make-site included */
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define BUDGET_S STR(TEST_BUDGET_S)
#define MAX_RESOURCES 128

static nst_server caddy;
static netd_proc nd = {.pid = -1};
static volatile pid_t child_pgid = -1; /* the process group of run_bounded()'s child */
static char chromium_bin[1024], site_dir[600];
static char pac_url[4096];

/* The site's resources: every file make-site wrote except the .br/.gz
 * sidecars, as paths relative to the site root ("css/site.css"). */
static char *resources[MAX_RESOURCES];
static size_t nresources;

static int verbose(void) {
  const char *v = getenv("NST_VERBOSE");
  return v && *v && strcmp(v, "0") != 0;
}

/* A whole file, NUL-terminated (malloc'd); NULL if it cannot be read. */
static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  size_t cap = 1 << 16, n = 0, r;
  char *b;
  if (f == NULL)
    return NULL;
  b = malloc(cap);
  while (b && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
    n += r;
    if (n + 1 >= cap) {
      char *nb = realloc(b, cap * 2);
      if (nb == NULL) {
        free(b);
        b = NULL;
        break;
      }
      b = nb;
      cap *= 2;
    }
  }
  fclose(f);
  if (b) {
    b[n] = 0;
    if (len)
      *len = n;
  }
  return b;
}

/* The last lines of a log file on stderr (post-mortem of a failure). */
static void print_tail(const char *what, const char *path, size_t max) {
  size_t n = 0;
  char *text = slurp(path, &n);
  if (text == NULL) {
    fprintf(stderr, "netd_chromium_test: %s: %s unreadable\n", what, path);
    return;
  }
  fprintf(stderr, "---- %s (%s), last %zu bytes:\n%s\n----\n", what, path, n < max ? n : max,
          n > max ? text + n - max : text);
  free(text);
}

/* ------------------------------------------------------------ programs */

/* $CHROMIUM, else "chromium" on PATH (Debian's /usr/bin/chromium wrapper). */
static int find_chromium(void) {
  const char *env = getenv("CHROMIUM"), *path = getenv("PATH");
  if (env && *env) {
    snprintf(chromium_bin, sizeof(chromium_bin), "%s", env);
    if (access(chromium_bin, X_OK) == 0)
      return 0;
  } else {
    char dirs[4096], *save = NULL;
    snprintf(dirs, sizeof(dirs), "%s", path && *path ? path : "/usr/bin:/bin");
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
      snprintf(chromium_bin, sizeof(chromium_bin), "%s/chromium", d);
      if (access(chromium_bin, X_OK) == 0)
        return 0;
    }
    snprintf(chromium_bin, sizeof(chromium_bin), "chromium");
  }
  fprintf(stderr,
          "netd_chromium_test: FAIL: %s is not an executable: this test needs headless Chromium\n"
          "  (Debian package chromium; run ./scripts/setup as root, or set CHROMIUM=/path)\n",
          chromium_bin);
  return -1;
}

/* ------------------------------------------------------------ child programs */

/* Runs argv[0] (a path) in a process group of its own — Chromium's renderer,
 * GPU and zygote processes, make-site's pipelines: one group to kill — with
 * stdout and stderr into files and, if home is set, HOME and the XDG config
 * and cache dirs under it. Kills the group after timeout_ms, and whatever of
 * it outlived its leader. Returns the exit status, -1 if it was killed or
 * did not start; *ms is how long it ran. */
static int run_bounded(const char *const *argv, const char *out_path, const char *err_path,
                       const char *home, int timeout_ms, uint64_t *ms) {
  uint64_t t0 = netd_run_now_ms(), end = t0 + (uint64_t)timeout_ms;
  int st = 0, killed = 0;
  pid_t pid = fork();
  if (pid == 0) {
    int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    char xdg[800];
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (out < 0 || err < 0)
      _exit(126);
    dup2(out, 1);
    dup2(err, 2);
    if (home) {
      setenv("HOME", home, 1);
      snprintf(xdg, sizeof(xdg), "%s/.config", home);
      setenv("XDG_CONFIG_HOME", xdg, 1);
      snprintf(xdg, sizeof(xdg), "%s/.cache", home);
      setenv("XDG_CACHE_HOME", xdg, 1);
    }
    execv(argv[0], (char *const *)argv);
    dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  if (pid < 0)
    return -1;
  setpgid(pid, pid); /* also here: no race with the kills below */
  child_pgid = pid;
  while (waitpid(pid, &st, WNOHANG) == 0) {
    if (netd_run_now_ms() > end) {
      fprintf(stderr, "netd_chromium_test: %s still running after %d ms: killed\n", argv[0],
              timeout_ms);
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      killed = 1;
      break;
    }
    usleep(20000);
  }
  kill(-pid, SIGKILL);
  child_pgid = -1;
  if (ms)
    *ms = netd_run_now_ms() - t0;
  if (killed)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ the site */

static int add_resource(const char *fpath, const struct stat *sb, int type, struct FTW *ftw) {
  size_t root = strlen(site_dir), n = strlen(fpath);
  (void)sb;
  (void)ftw;
  if (type != FTW_F)
    return 0;
  if ((n > 3 && strcmp(fpath + n - 3, ".br") == 0) || (n > 3 && strcmp(fpath + n - 3, ".gz") == 0))
    return 0; /* sidecars are not resources of the page */
  if (nresources == MAX_RESOURCES || strncmp(fpath, site_dir, root) != 0 || fpath[root] != '/')
    return -1;
  resources[nresources] = strdup(fpath + root + 1);
  return resources[nresources++] ? 0 : -1;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs tests/fixtures/make-site into nst_site()/daily (caddy's root is
 * nst_site(): the page is /daily/index.html) and lists its resources. */
static int make_site(void) {
  char script[700], log[600];
  const char *argv[3];
  uint64_t ms = 0;
  int st;
  snprintf(site_dir, sizeof(site_dir), "%s/daily", nst_site());
  snprintf(log, sizeof(log), "%s", nst_path("make-site.log"));
  snprintf(script, sizeof(script), "%s/tests/fixtures/make-site", NST_TOP_SRCDIR);
  argv[0] = script;
  argv[1] = site_dir;
  argv[2] = NULL;
  st = run_bounded(argv, log, log, NULL, MAKE_SITE_TIMEOUT_MS, &ms);
  if (st != 0) {
    fprintf(stderr, "netd_chromium_test: %s %s failed (status %d)\n", script, site_dir, st);
    print_tail("make-site", log, 3000);
    return -1;
  }
  if (nftw(site_dir, add_resource, 16, FTW_PHYS) != 0 || nresources == 0) {
    fprintf(stderr, "netd_chromium_test: cannot list %s\n", site_dir);
    return -1;
  }
  qsort(resources, nresources, sizeof(resources[0]), cmp_str);
  if (verbose())
    fprintf(stderr, "netd_chromium_test: make-site: %zu resources in %llu ms\n", nresources,
            (unsigned long long)ms);
  return 0;
}

static int find_resource(const char *path) {
  for (size_t i = 0; i < nresources; i++)
    if (strcmp(resources[i], path) == 0)
      return (int)i;
  return -1;
}

/* ------------------------------------------------------------ netd */

static int spawn_netd(void) {
  char proxy[64], gateway[64], metrics[64], upstream[128], resolve[128];
  const char *args[24];
  size_t n = 0;
  snprintf(nd.profile, sizeof(nd.profile), "%s", nst_path("netd-chromium"));
  snprintf(nd.log, sizeof(nd.log), "%s", nst_path("netd.log"));
  nd.proxy = netd_run_free_port();
  nd.gateway = netd_run_free_port();
  nd.metrics = netd_run_free_port();
  snprintf(proxy, sizeof(proxy), "127.0.0.1:%d", nd.proxy);
  snprintf(gateway, sizeof(gateway), "127.0.0.1:%d", nd.gateway);
  snprintf(metrics, sizeof(metrics), "127.0.0.1:%d", nd.metrics);
  snprintf(upstream, sizeof(upstream), "https://127.0.0.1:%d", caddy.port);
  snprintf(resolve, sizeof(resolve), SITE_HOST ":%d:127.0.0.1", nd.gateway);
  args[n++] = "--profile";
  args[n++] = nd.profile;
  args[n++] = "--cacert";
  args[n++] = nst_cert("ca.pem");
  args[n++] = "--gateway";
  args[n++] = gateway;
  args[n++] = "--upstream";
  args[n++] = upstream;
  args[n++] = "--proxy";
  args[n++] = proxy;
  args[n++] = "--metrics";
  args[n++] = metrics;
  args[n++] = "--resolve";
  args[n++] = resolve;
  args[n] = NULL;
  /* up once every front accepts */
  if (netd_run_start(&nd, args, 15000) != 0) {
    if (nd.pid < 0)
      print_tail("netd", nd.log, 2000);
    return -1;
  }
  return 0;
}

/* The ports are picked free but not held: another test may take one in
 * between, so a failed start is retried with new ones. */
static int start_netd(void) {
  for (int attempt = 0; attempt < 3; attempt++) {
    if (spawn_netd() == 0)
      return 0;
    netd_run_stop(&nd);
  }
  return -1;
}

/* ------------------------------------------------------------ metrics */

typedef struct scrape {
  double src[5]; /* preload, cache, revalidated, network, error */
  double front_conns;
} scrape;

static const char *const source_names[5] = {"preload", "cache", "revalidated", "network", "error"};

static int get_metrics(scrape *s) {
  static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char *buf = NULL, name[96];
  size_t n = 0;
  int fd = netd_run_connect(nd.metrics), rc = -1;
  if (fd < 0 || netd_run_send(fd, req, sizeof(req) - 1) != 0 ||
      netd_run_read(fd, IO_TIMEOUT_MS, &buf, &n) != 0)
    goto done;
  if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0)
    goto done;
  for (int i = 0; i < 5; i++) {
    snprintf(name, sizeof(name), "netd_requests_total{source=\"%s\"}", source_names[i]);
    if ((s->src[i] = netd_run_sample(buf, name)) < 0)
      goto done;
  }
  if ((s->front_conns = netd_run_sample(buf, "netd_front_connections_total")) < 0)
    goto done;
  rc = 0;
done:
  if (rc != 0)
    fprintf(stderr, "netd_chromium_test: scrape of 127.0.0.1:%d/metrics failed:\n%s\n", nd.metrics,
            n ? buf : "(nothing)");
  free(buf);
  if (fd >= 0)
    close(fd);
  return rc;
}

static void print_delta(const char *what, const scrape *a, const scrape *b) {
  fprintf(stderr, "netd_chromium_test: %s: netd answered", what);
  for (int i = 0; i < 5; i++)
    fprintf(stderr, " %s +%.0f", source_names[i], b->src[i] - a->src[i]);
  fprintf(stderr, "; front connections +%.0f\n", b->front_conns - a->front_conns);
}

/* ------------------------------------------------------------ chromium */

static void base64(const unsigned char *in, size_t n, char *out, size_t cap) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < n && o + 5 < cap; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                 (i + 2 < n ? in[i + 2] : 0);
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
    out[o++] = i + 2 < n ? tab[v & 63] : '=';
  }
  out[o] = 0;
}

/* The PAC: the test host through netd's proxy, everything else (Chromium's
 * own background requests) to a closed loopback port, so it fails at once
 * and never leaves the machine. A data: URL: no file to write. */
static void make_pac(void) {
  char pac[1024], b64[2048];
  int n = snprintf(pac, sizeof(pac),
                   "function FindProxyForURL(url, host) {\n"
                   "  if (host == \"" SITE_HOST "\") return \"PROXY 127.0.0.1:%d\";\n"
                   "  return \"PROXY 127.0.0.1:%d\";\n"
                   "}\n",
                   nd.proxy, nst_closed_port());
  base64((const unsigned char *)pac, (size_t)n, b64, sizeof(b64));
  snprintf(pac_url, sizeof(pac_url), "data:application/x-javascript-config;base64,%s", b64);
}

typedef struct load {
  char dir[600], dom[700], netlog[700], log[700];
  uint64_t ms;
} load;

/* One page load in a fresh profile and HOME (so nothing is cached in
 * Chromium): the DOM after the scripts ran, the NetLog, stderr. Returns
 * Chromium's exit status, -1 if it had to be killed. */
static int run_chromium(int n, load *ld) {
  char name[32], udd[700], home[700], udd_arg[800], netlog_arg[800], pac_arg[4200], url[128];
  const char *argv[24];
  size_t a = 0;
  int st;
  snprintf(name, sizeof(name), "chromium-%d", n);
  snprintf(ld->dir, sizeof(ld->dir), "%s", nst_path(name));
  snprintf(udd, sizeof(udd), "%s/profile", ld->dir);
  snprintf(home, sizeof(home), "%s/home", ld->dir);
  snprintf(ld->dom, sizeof(ld->dom), "%s/dom.html", ld->dir);
  snprintf(ld->netlog, sizeof(ld->netlog), "%s/netlog.json", ld->dir);
  snprintf(ld->log, sizeof(ld->log), "%s/chromium.log", ld->dir);
  if (mkdir(ld->dir, 0700) != 0 || mkdir(udd, 0700) != 0 || mkdir(home, 0700) != 0) {
    fprintf(stderr, "netd_chromium_test: mkdir %s: %s\n", ld->dir, strerror(errno));
    return -1;
  }
  snprintf(udd_arg, sizeof(udd_arg), "--user-data-dir=%s", udd);
  snprintf(netlog_arg, sizeof(netlog_arg), "--log-net-log=%s", ld->netlog);
  snprintf(pac_arg, sizeof(pac_arg), "--proxy-pac-url=%s", pac_url);
  snprintf(url, sizeof(url), "http://" SITE_HOST ":%d/daily/index.html", nd.gateway);
  argv[a++] = chromium_bin;
  argv[a++] = "--headless";
  argv[a++] = "--no-sandbox";
  argv[a++] = "--disable-gpu";
  argv[a++] = "--no-first-run";
  argv[a++] = "--disable-background-networking";
  argv[a++] = "--disable-component-update";
  argv[a++] = "--disable-sync";
  argv[a++] = udd_arg;
  argv[a++] = pac_arg;
  argv[a++] = netlog_arg;
  argv[a++] = "--virtual-time-budget=5000"; /* --dump-dom waits for the scripts */
  argv[a++] = "--dump-dom";
  argv[a++] = url;
  argv[a] = NULL;
  st = run_bounded(argv, ld->dom, ld->log, home, CHROMIUM_TIMEOUT_MS, &ld->ms);
  if (verbose())
    fprintf(stderr, "netd_chromium_test: load %d: chromium ran %llu ms, status %d\n", n,
            (unsigned long long)ld->ms, st);
  return st;
}

/* ------------------------------------------------------------ what Chromium saw */

typedef struct seen {
  unsigned responses; /* response heads read from the proxy */
  unsigned ok;        /* of those, 200 */
  unsigned netstash;  /* X-Netstash-Source preload|cache|revalidated */
  unsigned network;   /* X-Netstash-Source network */
  char status[64], source[32], reason[160];
} seen;

typedef struct netlog_result {
  seen res[MAX_RESOURCES];
  unsigned outside;        /* responses for test-host URLs outside the site */
  unsigned other_answered; /* responses for other hosts (must be 0: PAC) */
  unsigned failed;         /* requests for the test host ending in a net error */
  char first_failure[256];
} netlog_result;

typedef struct src_url {
  json_int_t id;
  char *url;
} src_url;

static int event_type(json_t *types, const char *name) {
  json_t *v = json_object_get(types, name);
  return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

/* Header value without the "name:" prefix, copied into out. */
static void header_value(const char *line, char *out, size_t cap) {
  const char *v = strchr(line, ':');
  v = v ? v + 1 : line;
  while (*v == ' ')
    v++;
  snprintf(out, cap, "%s", v);
}

/* Reads Chromium's NetLog: for each URL request (a NetLog source) its URL
 * (URL_REQUEST_START_JOB), its response heads
 * (HTTP_TRANSACTION_READ_RESPONSE_HEADERS: status line and X-Netstash-*
 * fields) and net errors. Requests answered by Chromium's own cache within
 * the load have no response head and are not counted. */
static int read_netlog(const char *path, netlog_result *out) {
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr), *types, *events, *ev;
  src_url *srcs = NULL;
  size_t nsrcs = 0, i;
  char host[128];
  int t_start, t_headers, rc = -1;
  memset(out, 0, sizeof(*out));
  snprintf(host, sizeof(host), "http://" SITE_HOST ":%d/", nd.gateway);
  if (root == NULL) {
    fprintf(stderr, "netd_chromium_test: %s: %s (line %d)\n", path, jerr.text, jerr.line);
    return -1;
  }
  types = json_object_get(json_object_get(root, "constants"), "logEventTypes");
  events = json_object_get(root, "events");
  t_start = event_type(types, "URL_REQUEST_START_JOB");
  t_headers = event_type(types, "HTTP_TRANSACTION_READ_RESPONSE_HEADERS");
  if (!json_is_array(events) || t_start < 0 || t_headers < 0) {
    fprintf(stderr, "netd_chromium_test: %s: not a NetLog this test understands\n", path);
    goto done;
  }
  srcs = calloc(json_array_size(events) + 1, sizeof(*srcs));
  if (srcs == NULL)
    goto done;
  json_array_foreach(events, i, ev) {
    json_t *params = json_object_get(ev, "params");
    json_int_t id = json_integer_value(json_object_get(json_object_get(ev, "source"), "id"));
    int type = (int)json_integer_value(json_object_get(ev, "type"));
    const char *url = NULL;
    size_t k;
    for (k = 0; k < nsrcs; k++)
      if (srcs[k].id == id) {
        url = srcs[k].url;
        break;
      }
    if (type == t_start && json_is_string(json_object_get(params, "url"))) {
      const char *u = json_string_value(json_object_get(params, "url"));
      if (url == NULL && (srcs[nsrcs].url = strdup(u)) != NULL)
        srcs[nsrcs++].id = id;
      continue;
    }
    if (url == NULL)
      continue;
    if (type == t_headers) {
      json_t *headers = json_object_get(params, "headers"), *h;
      char path_only[512], *q;
      int r;
      seen *s;
      size_t j;
      if (strncmp(url, host, strlen(host)) != 0) {
        out->other_answered++;
        if (verbose())
          fprintf(stderr, "netd_chromium_test: answered although not for the site: %s\n", url);
        continue;
      }
      snprintf(path_only, sizeof(path_only), "%s", url + strlen(host));
      if ((q = strchr(path_only, '?')) != NULL)
        *q = 0;
      if (strncmp(path_only, "daily/", 6) != 0 || (r = find_resource(path_only + 6)) < 0) {
        if (verbose())
          fprintf(stderr, "netd_chromium_test: not a resource of the site: %s\n", url);
        out->outside++;
        continue;
      }
      s = &out->res[r];
      s->responses++;
      s->source[0] = 0;
      s->reason[0] = 0;
      json_array_foreach(headers, j, h) {
        const char *line = json_string_value(h);
        if (line == NULL)
          continue;
        if (j == 0) {
          snprintf(s->status, sizeof(s->status), "%s", line);
          if (strncmp(line, "HTTP/1.1 200 ", 13) == 0)
            s->ok++;
        }
        /* The last one counts: the proxy front appends its own after the
         * fields it relays, and those include the gateway's (the proxy's
         * upstream is the gateway), stored with the response and relayed
         * again on every cache hit. */
        if (strncasecmp(line, "X-Netstash-Source:", 18) == 0)
          header_value(line, s->source, sizeof(s->source));
        else if (strncasecmp(line, "X-Netstash-Cache-Reason:", 24) == 0)
          header_value(line, s->reason, sizeof(s->reason));
      }
      if (strcmp(s->source, "network") == 0)
        s->network++;
      else if (strcmp(s->source, "cache") == 0 || strcmp(s->source, "revalidated") == 0 ||
               strcmp(s->source, "preload") == 0)
        s->netstash++;
      continue;
    }
    {
      /* any event of a test-host request with a net error (ERR_ABORTED is
       * Chromium cancelling a request it no longer needs) */
      json_t *ne = json_object_get(params, "net_error");
      if (json_is_integer(ne) && json_integer_value(ne) < 0 && json_integer_value(ne) != -3 &&
          strncmp(url, host, strlen(host)) == 0) {
        if (out->failed++ == 0)
          snprintf(out->first_failure, sizeof(out->first_failure), "%s: net error %lld", url,
                   (long long)json_integer_value(ne));
      }
    }
  }
  rc = 0;
done:
  for (i = 0; i < nsrcs; i++)
    free(srcs[i].url);
  free(srcs);
  json_decref(root);
  return rc;
}

/* ------------------------------------------------------------ the page */

/* The <html …> start tag of the dumped DOM, where the fixture's scripts put
 * their markers (tests/fixtures/README.md). */
static void check_dom(const load *ld) {
  static const char *const markers[] = {
      "data-app=\"ready\"",     /* jQuery, Bootstrap's bundle, highlight.js, app.js */
      "data-cart=\"ready\"",    /* cart.js */
      "data-headlines=\"20\"",  /* fetch() of data/headlines.json, rendered */
      "data-chart=\"270\"",     /* d3 + charts.js + data/prices.json */
      "data-highlighted=\"3\"", /* highlight.js on three code blocks */
      "data-resources=\"",      /* analytics.js after onload (Resource Timing) */
  };
  char *dom = slurp(ld->dom, NULL);
  char *tag = dom ? strstr(dom, "<html") : NULL;
  char *end = tag ? strchr(tag, '>') : NULL;
  if (end == NULL) {
    print_tail("chromium stderr", ld->log, 3000);
    free(dom);
    fail_msg("no DOM dumped in %s", ld->dom);
    return;
  }
  *end = 0;
  if (verbose())
    fprintf(stderr, "netd_chromium_test: %s>\n", tag);
  for (size_t i = 0; i < sizeof(markers) / sizeof(markers[0]); i++)
    if (strstr(tag, markers[i]) == NULL) {
      print_tail("chromium stderr", ld->log, 3000);
      fail_msg("the page's scripts did not finish: no %s in %s>", markers[i], tag);
    }
  *end = '>';
  if (strstr(end, "<title>The Daily Packet") == NULL)
    fail_msg("the dumped DOM (%s) is not the fixture page", ld->dom);
  free(dom);
}

/* Loads the page once; fills the NetLog's view and checks what every load
 * must show. */
static void load_page(int n, load *ld, netlog_result *nr) {
  int st = run_chromium(n, ld);
  if (st != 0) {
    print_tail("chromium stderr", ld->log, 3000);
    fail_msg("chromium (load %d) exited with %d", n, st);
  }
  check_dom(ld);
  assert_int_equal(read_netlog(ld->netlog, nr), 0);
  if (nr->failed)
    fail_msg("load %d: %u request(s) of the site failed in Chromium, first: %s", n, nr->failed,
             nr->first_failure);
  if (nr->other_answered)
    fail_msg("load %d: %u request(s) for other hosts were answered (PAC not applied?)", n,
             nr->other_answered);
  if (nr->outside)
    fprintf(stderr,
            "netd_chromium_test: load %d: %u request(s) of the test host outside the "
            "site\n",
            n, nr->outside);
  for (size_t i = 0; i < nresources; i++) {
    const seen *s = &nr->res[i];
    if (verbose())
      fprintf(stderr, "  load %d %-45s %u× %-16s %-12s %s\n", n, resources[i], s->responses,
              s->status, s->source, s->reason);
    if (s->responses == 0)
      fail_msg("load %d: /daily/%s was never answered through netd's proxy", n, resources[i]);
    if (s->ok != s->responses)
      fail_msg("load %d: /daily/%s answered \"%s\"", n, resources[i], s->status);
  }
}

/* ------------------------------------------------------------ tests */

static load load1, load2;
static netlog_result nl1, nl2;
static scrape m0, m1, m2;
static int first_done, setup_done;

/* First load: everything from the origin, through both fronts. */
static void test_first_load(void **state) {
  (void)state;
  assert_int_equal(get_metrics(&m0), 0);
  load_page(1, &load1, &nl1);
  assert_int_equal(get_metrics(&m1), 0);
  print_delta("first load", &m0, &m1);
  for (size_t i = 0; i < nresources; i++)
    if (nl1.res[i].network != nl1.res[i].responses)
      fail_msg("first load: /daily/%s: X-Netstash-Source %s (%s), want network", resources[i],
               nl1.res[i].source, nl1.res[i].reason);
  /* each resource asked of the proxy front, which asked the gateway front */
  assert_true(m1.src[3] - m0.src[3] >= 2.0 * (double)nresources);
  assert_true(m1.src[4] - m0.src[4] == 0);
  assert_true(m1.front_conns - m0.front_conns >= 2);
  fprintf(stderr, "netd_chromium_test: first load: %zu resources, Chromium ran %llu ms\n",
          nresources, (unsigned long long)load1.ms);
  first_done = 1;
}

/* Second load, Chromium's cache empty: netstash answers all of it. */
static void test_second_load_from_netstash(void **state) {
  double from_netstash;
  size_t hits = 0;
  (void)state;
  if (!first_done)
    fail_msg("the first load failed");
  load_page(2, &load2, &nl2);
  assert_int_equal(get_metrics(&m2), 0);
  print_delta("second load", &m1, &m2);
  for (size_t i = 0; i < nresources; i++) {
    if (nl2.res[i].netstash != nl2.res[i].responses)
      fail_msg("second load: /daily/%s: X-Netstash-Source %s (%s), want cache, revalidated or "
               "preload",
               resources[i], nl2.res[i].source, nl2.res[i].reason);
    if (strcmp(nl2.res[i].source, "cache") == 0)
      hits++;
  }
  from_netstash = (m2.src[0] - m1.src[0]) + (m2.src[1] - m1.src[1]) + (m2.src[2] - m1.src[2]);
  assert_true(from_netstash >= (double)nresources);
  assert_true(m2.src[3] - m1.src[3] == 0); /* nothing from the origin, at either front */
  assert_true(m2.src[4] - m1.src[4] == 0);
  fprintf(stderr,
          "netd_chromium_test: second load: %zu resources from netstash (%zu fresh cache hits), "
          "Chromium ran %llu ms\n",
          nresources, hits, (unsigned long long)load2.ms);
}

/* SIGTERM: netd closes its fronts and exits 0. */
static void test_netd_stops_cleanly(void **state) {
  int st;
  (void)state;
  st = netd_run_stop(&nd);
  if (st != 0) {
    print_tail("netd", nd.log, 2000);
    fail_msg("netd exited with %d on SIGTERM, want 0", st);
  }
}

/* ------------------------------------------------------------ setup */

static int setup(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  if (find_chromium() != 0 || netd_run_setup("netd_chromium") != 0)
    return -1;
  if (!nst_certs() || !nst_site() || make_site() != 0 || nst_caddy_start("h2", &caddy) != 0)
    return -1;
  if (start_netd() != 0)
    return -1;
  make_pac();
  setup_done = 1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  netd_run_stop(&nd); /* if test_netd_stops_cleanly did not run */
  nst_stop(&caddy);
  for (size_t i = 0; i < nresources; i++)
    free(resources[i]);
  nresources = 0;
  return 0;
}

/* Over the budget: kill Chromium's (or make-site's) group and netd (caddy
 * dies with this process: PR_SET_PDEATHSIG), keep the work dir, fail. */
static void watchdog(int sig) {
  static const char msg[] = "netd_chromium_test: FAIL: over the budget of " BUDGET_S
                            " s: children and netd killed, work dir kept\n0 passed, 3 failed\n";
  ssize_t w;
  (void)sig;
  if (child_pgid > 0)
    kill(-child_pgid, SIGKILL);
  if (nd.pid > 0)
    kill(nd.pid, SIGKILL);
  w = write(2, msg, sizeof(msg) - 1);
  (void)w;
  _exit(1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_load),
      cmocka_unit_test(test_second_load_from_netstash),
      cmocka_unit_test(test_netd_stops_cleanly),
  };
  int ntests = (int)(sizeof(tests) / sizeof(tests[0]));
  int failed;
  signal(SIGALRM, watchdog);
  alarm(TEST_BUDGET_S);
  failed = cmocka_run_group_tests(tests, setup, teardown);
  alarm(0);
  if (!setup_done || failed > ntests)
    failed = ntests; /* a failed group setup runs nothing */
  printf("%d passed, %d failed\n", ntests - failed, failed);
  return failed != 0;
}
