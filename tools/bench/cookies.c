/*
 * tools/bench/cookies.c — building the Cookie header: netstash's jar next to
 * libcurl's cookie engine, in one run.
 *
 *   tools/bench/cookies [REQUESTS [CURL_REQUESTS]]     (100000 20000)
 *
 * The jar: 3,000 cookies over 300 registrable domains (site0.com ..
 * site299.com; per site 4 host-only cookies on www.siteN.com, 3 domain
 * cookies on siteN.com, 3 on api.siteN.com; paths "/", "/a", "/a/b"; values
 * of 24 bytes; not Secure, SameSite unset = Lax-by-default). Requests are
 * GETs to http://www.siteN.com/a/b/x, http://siteN.com/ or
 * http://api.siteN.com/a/x for uniformly random N (the same sequence for both
 * engines), same-site (site for cookies = the URL).
 *
 * netstash: ns_cookie_jar_header() alone, timed per call with
 *   clock_gettime(CLOCK_MONOTONIC) (overhead ~20 ns, included). URLs are
 *   parsed beforehand, as the fetch engine has them parsed anyway.
 * libcurl: there is no public call that returns the Cookie header for a URL,
 *   so its engine is measured through curl_easy_perform: the same cookies
 *   are loaded with CURLOPT_COOKIELIST (Netscape lines exported from the
 *   netstash jar), every request goes to a tiny in-process HTTP/1.1 server
 *   on loopback used as the proxy (one kept-alive connection for all hosts),
 *   and the same requests are run with the cookie engine off (baseline).
 *   Requests alternate cookie / baseline in blocks of 500 to share drift.
 *   curl's cost is estimated as p50(with) - p50(baseline) (and the same
 *   for p99, which is noisier); it includes sending the longer request
 *   over loopback and the server reading it: an upper bound, a few hundred
 *   ns of which is not the cookie engine.
 *
 * The process (its server threads included) runs on one CPU, the first its
 * affinity allows: unpinned, the two connections' server threads landed on
 * different vCPUs of this VM and one handle's requests paid a cross-CPU
 * wake-up (10-70 us) the other did not — a baseline slower than the run with
 * cookies, a negative estimate. NETSTASH_BENCH_NO_PIN=1 leaves it unpinned;
 * an estimate that is not positive is reported as invalid (exit 1).
 */
#include "ns_setup.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cookie/jar.h"

#define NSITES 300

__attribute__((noreturn)) static void die(const char *msg) {
  fprintf(stderr, "bench/cookies: %s\n", msg);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t rs = 2463534242u;
static uint32_t rnd(void) {
  rs ^= rs << 13;
  rs ^= rs >> 17;
  rs ^= rs << 5;
  return rs;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t pct(uint64_t *v, size_t n, double p) {
  qsort(v, n, sizeof(*v), cmp_u64);
  return v[(size_t)(p * (double)(n - 1))];
}

/* ------------------------------------------------------------ loopback server */

static int srv_fd;

/* Pins the process to the first CPU it may run on; -1 when it is not. */
static int pin_one_cpu(void) {
  cpu_set_t set;
  const char *no = getenv("NETSTASH_BENCH_NO_PIN");
  if (no && *no && strcmp(no, "0") != 0)
    return -1;
  if (sched_getaffinity(0, sizeof(set), &set) != 0)
    return -1;
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (CPU_ISSET(c, &set)) {
      CPU_ZERO(&set);
      CPU_SET(c, &set);
      return sched_setaffinity(0, sizeof(set), &set) == 0 ? c : -1;
    }
  }
  return -1;
}

/* one thread per connection (each easy handle keeps its own) */
static void *conn(void *arg) {
  int c = (int)(intptr_t)arg;
  char buf[65536];
  size_t have = 0;
  for (;;) {
    ssize_t n = read(c, buf + have, sizeof(buf) - have - 1);
    char *end;
    if (n <= 0)
      break;
    have += (size_t)n;
    buf[have] = 0;
    while ((end = strstr(buf, "\r\n\r\n")) != NULL) {
      static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
      size_t used = (size_t)(end + 4 - buf);
      if (write(c, resp, sizeof(resp) - 1) < 0)
        break;
      memmove(buf, buf + used, have - used);
      have -= used;
      buf[have] = 0;
    }
  }
  close(c);
  return NULL;
}

static void *server(void *arg) {
  (void)arg;
  for (;;) {
    pthread_t t;
    int c = accept(srv_fd, NULL, NULL);
    if (c < 0)
      return NULL;
    if (pthread_create(&t, NULL, conn, (void *)(intptr_t)c) == 0)
      pthread_detach(t);
    else
      close(c);
  }
}

static int start_server(void) {
  struct sockaddr_in a;
  socklen_t al = sizeof(a);
  pthread_t t;
  srv_fd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (srv_fd < 0 || bind(srv_fd, (struct sockaddr *)&a, sizeof(a)) || listen(srv_fd, 8) ||
      getsockname(srv_fd, (struct sockaddr *)&a, &al))
    die("cannot listen on loopback");
  if (pthread_create(&t, NULL, server, NULL))
    die("thread");
  pthread_detach(t);
  return ntohs(a.sin_port);
}

static size_t discard(char *p, size_t s, size_t n, void *ud) {
  (void)p;
  (void)ud;
  return s * n;
}

/* request s: site s / 3, URL kind s % 3 */
static void url_of(char *out, size_t n, uint32_t s) {
  if (s % 3 == 0)
    snprintf(out, n, "http://www.site%u.com/a/b/x", s / 3);
  else if (s % 3 == 1)
    snprintf(out, n, "http://site%u.com/", s / 3);
  else
    snprintf(out, n, "http://api.site%u.com/a/x", s / 3);
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv) {
  size_t nreq = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 100000;
  size_t ncurl = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 20000;
  ns_cookie_jars *jars;
  ns_cookie_jar *jar;
  static ns_url urls[NSITES][3];
  char url[128], line[128];
  uint32_t *seq;
  uint64_t *t, *tc, *tb;
  ns_buf hdr, txt;
  size_t i, total_len = 0, n_nonempty = 0;
  int rc = 0;
  const ns_mem *mem = ns_mem_default();
  int64_t NOW_MS; /* wall clock: libcurl compares expiry with it */
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    NOW_MS = (int64_t)ts.tv_sec * 1000;
  }

  if (nreq < 100 || ncurl < 1000)
    die("usage: cookies [REQUESTS>=100 [CURL_REQUESTS>=1000]]");
  {
    int cpu = pin_one_cpu();
    if (cpu >= 0)
      printf("pinned to CPU %d (NETSTASH_BENCH_NO_PIN=1: not)\n", cpu);
    else
      printf("not pinned: the libcurl estimate may be noise (cross-CPU wake-ups)\n");
  }
  if (ns_cookie_jars_new(NULL, NULL, &jars) != NETSTASH_OK ||
      ns_cookie_jars_open(jars, "bench", NS_COOKIE_JAR_MEMORY, NOW_MS, &jar) != NETSTASH_OK)
    die("jar");
  for (i = 0; i < NSITES; i++) {
    for (int k = 0; k < 3; k++) {
      url_of(url, sizeof(url), (uint32_t)(i * 3 + (size_t)k));
      if (ns_url_parse(mem, url, &urls[i][k], NULL, 0) != NETSTASH_OK)
        die("url");
    }
    for (int k = 0; k < 10; k++) {
      static const char *paths[3] = {"/", "/a", "/a/b"};
      const ns_url *from = &urls[i][k < 4 ? 0 : k < 7 ? 1 : 2];
      ns_cookie_request req = {from, from, NULL, NULL, NULL, 0};
      ns_cookie_status st;
      snprintf(line, sizeof(line), "c%d_%zu=%016x%08x; Max-Age=86400; Path=%s%s", k, i, rnd(),
               rnd(), paths[k % 3], k < 4 ? "" : k < 7 ? "; Domain=site" : "; Domain=api.site");
      if (k >= 4) {
        size_t l = strlen(line);
        snprintf(line + l, sizeof(line) - l, "%zu.com", i);
      }
      if (ns_cookie_jar_set(jar, &req, line, strlen(line), NOW_MS, &st) != NETSTASH_OK ||
          st != NS_COOKIE_STORED)
        die("set");
    }
  }
  if (ns_cookie_jar_count(jar) != 3000)
    die("expected 3000 cookies");

  seq = malloc(nreq * sizeof(*seq));
  t = malloc(nreq * sizeof(*t));
  tc = malloc(ncurl * sizeof(*tc));
  tb = malloc(ncurl * sizeof(*tb));
  if (!seq || !t || !tc || !tb)
    die("memory");
  for (i = 0; i < nreq; i++)
    seq[i] = rnd() % (NSITES * 3);

  /* ---- netstash */
  ns_buf_init(&hdr, mem, 1 << 20);
  for (i = 0; i < 2000 && i < nreq; i++) { /* warm up */
    const ns_url *u = &urls[seq[i] / 3][seq[i] % 3];
    ns_cookie_request req = {u, u, NULL, NULL, NULL, 0};
    ns_buf_reset(&hdr);
    (void)ns_cookie_jar_header(jar, &req, NOW_MS, &hdr);
  }
  for (i = 0; i < nreq; i++) {
    const ns_url *u = &urls[seq[i] / 3][seq[i] % 3];
    ns_cookie_request req = {u, u, NULL, NULL, NULL, 0};
    uint64_t t0;
    ns_buf_reset(&hdr);
    t0 = now_ns();
    if (ns_cookie_jar_header(jar, &req, NOW_MS + 1000, &hdr) != NETSTASH_OK)
      die("header");
    t[i] = now_ns() - t0;
    total_len += hdr.len;
    n_nonempty += hdr.len > 0;
  }
  {
    uint64_t p50 = pct(t, nreq, 0.50), p99 = pct(t, nreq, 0.99), p999 = pct(t, nreq, 0.999);
    printf("netstash  ns_cookie_jar_header   %zu requests, %zu cookies, %zu sites\n", nreq,
           ns_cookie_jar_count(jar), (size_t)NSITES);
    printf("          p50 %llu ns  p99 %llu ns  p99.9 %llu ns  (avg header %zu bytes, %zu%% non-empty)\n",
           (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)p999,
           total_len / nreq, n_nonempty * 100 / nreq);

    /* ---- libcurl */
    {
      CURL *with, *base;
      int port = start_server();
      char proxy[64];
      size_t imported = 0;
      ns_buf_init(&txt, mem, 1 << 24);
      if (ns_cookie_jar_export_netscape(jar, NOW_MS, &txt, NULL) != NETSTASH_OK)
        die("export");
      curl_global_init(CURL_GLOBAL_DEFAULT);
      with = curl_easy_init();
      base = curl_easy_init();
      snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", port);
      for (CURL *h = with; h; h = h == with ? base : NULL) {
        curl_easy_setopt(h, CURLOPT_PROXY, proxy);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
      }
      curl_easy_setopt(with, CURLOPT_COOKIEFILE, "");
      {
        char *p = (char *)txt.data, *e;
        while ((e = strchr(p, '\n')) != NULL) {
          *e = 0;
          if (*p && *p != '#') {
            curl_easy_setopt(with, CURLOPT_COOKIELIST, p);
            imported++;
          }
          p = e + 1;
        }
      }
      {
        struct curl_slist *l = NULL;
        size_t n = 0;
        curl_easy_getinfo(with, CURLINFO_COOKIELIST, &l);
        for (struct curl_slist *x = l; x; x = x->next)
          n++;
        curl_slist_free_all(l);
        if (n != 3000) {
          fprintf(stderr, "libcurl holds %zu cookies of %zu lines\n", n, imported);
          die("libcurl did not load the 3000 cookies");
        }
      }
      /* one request first: connection up on both handles */
      for (i = 0; i < ncurl; i += 500) {
        for (int pass = 0; pass < 2; pass++) {
          CURL *h = pass ? base : with;
          uint64_t *dst = pass ? tb : tc;
          for (size_t k = i; k < i + 500 && k < ncurl; k++) {
            uint32_t s = seq[k];
            uint64_t t0;
            url_of(url, sizeof(url), s);
            curl_easy_setopt(h, CURLOPT_URL, url);
            t0 = now_ns();
            if (curl_easy_perform(h) != CURLE_OK)
              die("curl_easy_perform");
            dst[k] = now_ns() - t0;
          }
        }
      }
      {
        uint64_t c50 = pct(tc, ncurl, 0.5), c99 = pct(tc, ncurl, 0.99);
        uint64_t b50 = pct(tb, ncurl, 0.5), b99 = pct(tb, ncurl, 0.99);
        double d50 = (double)c50 - (double)b50, d99 = (double)c99 - (double)b99;
        printf("libcurl %s  curl_easy_perform via loopback proxy, %zu requests each\n",
               curl_version_info(CURLVERSION_NOW)->version, ncurl);
        printf("          with cookies p50 %llu ns p99 %llu ns; baseline p50 %llu ns p99 %llu ns\n",
               (unsigned long long)c50, (unsigned long long)c99, (unsigned long long)b50,
               (unsigned long long)b99);
        printf("          cookie cost estimate: p50 %.0f ns, p99 %.0f ns\n", d50, d99);
        if (d50 <= 0) {
          printf("ratio     invalid: the baseline was not faster than the run with cookies "
                 "(wake-up noise; run pinned)\n");
          rc = 1;
        } else {
          printf("ratio     libcurl / netstash at p50: %.1fx\n", d50 / (double)(p50 ? p50 : 1));
        }
      }
      curl_easy_cleanup(with);
      curl_easy_cleanup(base);
      curl_global_cleanup();
      ns_buf_free(&txt);
    }
  }
  ns_buf_free(&hdr);
  for (i = 0; i < NSITES; i++)
    for (int k = 0; k < 3; k++)
      ns_url_free(mem, &urls[i][k]);
  ns_cookie_jars_del(jars);
  free(seq);
  free(t);
  free(tc);
  free(tb);
  return rc;
}
