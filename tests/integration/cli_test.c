/*
 * cli_test — `netstash get` as scripts use it: the --json contract, the body
 * on stdout or in -o FILE, and the documented exit codes.
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "cli_run.h"
#include "harness.h"

static nst_server caddy, raw;

static void test_json_contract(void **state) {
  char args[1024], *out, *err;
  json_t *j, *t;
  (void)state;
  snprintf(args, sizeof(args), "get --json --cacert %s https://127.0.0.1:%d/hello.txt",
           nst_cert("ca.pem"), caddy.port);
  assert_int_equal(cli_run(args, &out, &err), 0);
  j = cli_run_json(out);
  assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
  assert_string_equal(json_string_value(json_object_get(j, "protocol")), "h2");
  assert_string_equal(json_string_value(json_object_get(j, "tls_version")), "TLSv1.3");
  assert_string_equal(json_string_value(json_object_get(j, "source")), "network");
  assert_int_equal(json_integer_value(json_object_get(j, "bytes")), 16);
  assert_true(json_is_object(json_object_get(j, "headers")));
  assert_true(json_is_array(json_object_get(j, "header_list")));
  assert_non_null(json_object_get(json_object_get(j, "headers"), "content-type"));
  assert_true(json_is_null(json_object_get(j, "error")));
  assert_true(json_is_string(json_object_get(j, "url")));
  t = json_object_get(j, "timings");
  assert_true(json_is_object(t));
  assert_true(json_real_value(json_object_get(t, "total_ms")) > 0);
  assert_true(json_real_value(json_object_get(t, "tls_ms")) > 0);
  assert_non_null(json_object_get(t, "dns_ms"));
  assert_non_null(json_object_get(t, "connect_ms"));
  assert_non_null(json_object_get(t, "ttfb_ms"));
  json_decref(j);
  free(out);
  free(err);
}

static void test_body_stdout_and_file(void **state) {
  char args[1024], *out, *err, *file;
  FILE *fp;
  char buf[64] = {0};
  (void)state;
  snprintf(args, sizeof(args), "get --cacert %s https://127.0.0.1:%d/hello.txt",
           nst_cert("ca.pem"), caddy.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_string_equal(out, "hello, netstash\n");
  free(out);
  file = strdup(nst_path("cli-out.txt"));
  snprintf(args, sizeof(args), "get --json -o %s --cacert %s https://127.0.0.1:%d/hello.txt",
           file, nst_cert("ca.pem"), caddy.port);
  assert_int_equal(cli_run(args, &out, &err), 0);
  json_decref(cli_run_json(out)); /* body not on stdout under --json */
  fp = fopen(file, "r");
  assert_non_null(fp);
  assert_true(fread(buf, 1, sizeof(buf) - 1, fp) > 0);
  fclose(fp);
  assert_string_equal(buf, "hello, netstash\n");
  free(out);
  free(err);
  free(file);
}

static void test_http_error_status_exit_0(void **state) {
  char args[512], *out;
  (void)state;
  snprintf(args, sizeof(args), "get --json http://127.0.0.1:%d/status/404", raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  {
    json_t *j = cli_run_json(out);
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 404);
    assert_string_equal(json_string_value(json_object_get(j, "protocol")), "http/1.1");
    json_decref(j);
  }
  free(out);
}

static void test_exit_codes(void **state) {
  char args[1024];
  nst_server bad;
  (void)state;
  cli_run_expect("get", 2, "missing URL", NULL);
  cli_run_expect("get --bogus-option x", 2, NULL, NULL);
  cli_run_expect("get 'ftp://x/'", 3, "bad URL", NULL);
  snprintf(args, sizeof(args), "get --json https://127.0.0.1:%d/", nst_closed_port());
  cli_run_expect(args, 5, "refused", "NETSTASH_E_CONNECT_REFUSED");
  snprintf(args, sizeof(args), "get --json --dns-server 127.0.0.1:%d https://x.example.test:%d/",
           nst_udp_blackhole(), caddy.port);
  cli_run_expect(args, 4, NULL, "NETSTASH_E_DNS_TIMEOUT");
  assert_int_equal(nst_badtls_start("expired", &bad), 0);
  snprintf(args, sizeof(args), "get --cacert %s https://127.0.0.1:%d/", nst_cert("ca.pem"),
           bad.port);
  cli_run_expect(args, 6, "expired", NULL);
  nst_stop(&bad);
  snprintf(args, sizeof(args), "get --json http://127.0.0.1:%d/truncate", raw.port);
  cli_run_expect(args, 8, "truncated", "NETSTASH_E_TRUNCATED");
  snprintf(args, sizeof(args), "get --timeout 300 http://127.0.0.1:%d/hang", raw.port);
  cli_run_expect(args, 7, "timed out", NULL);
  snprintf(args, sizeof(args), "get --max-body 1000 --cacert %s https://127.0.0.1:%d/bomb.txt",
           nst_cert("ca.pem"), caddy.port);
  cli_run_expect(args, 10, NULL, NULL);
  snprintf(args, sizeof(args), "get -o /nonexistent-dir/x http://127.0.0.1:%d/ok", raw.port);
  cli_run_expect(args, 9, "cannot write", NULL);
  /* HTTP/3 only, to a UDP port nobody listens on: refused, no fallback */
  snprintf(args, sizeof(args), "get --http3 --json https://127.0.0.1:%d/", nst_udp_closed_port());
  cli_run_expect(args, 5, "refused", "NETSTASH_E_CONNECT_REFUSED");
}

/* netstash --daemon SOCKET: the client side without a netd (netd_test
 * covers the answers of a running one). */
static void test_cli_daemon_client(void **state) {
  char args[2048], sock[1024], stale[1024], file[1024], *out, *err;
  struct sockaddr_un a;
  int fd;
  FILE *f;
  (void)state;
  snprintf(sock, sizeof(sock), "%s", nst_path("no-netd.sock"));
  snprintf(stale, sizeof(stale), "%s", nst_path("stale-netd.sock"));
  snprintf(file, sizeof(file), "%s", nst_path("not-a-socket"));
  /* nothing there */
  snprintf(args, sizeof(args), "--daemon %s status", sock);
  cli_run_expect(args, 5, "netd is not running on", NULL);
  snprintf(args, sizeof(args), "--daemon %s warm --json", sock);
  cli_run_expect(args, 5, "start it with: netd --profile", "NETSTASH_E_CONNECT_REFUSED");
  snprintf(args, sizeof(args), "--daemon=%s ls --json", sock);
  cli_run_expect(args, 5, NULL, "NETSTASH_E_CONNECT_REFUSED");
  /* a socket file left by a netd that is gone: refused */
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  assert_true(strlen(stale) < sizeof(a.sun_path));
  memcpy(a.sun_path, stale, strlen(stale) + 1);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  close(fd);
  snprintf(args, sizeof(args), "--daemon %s status --json", stale);
  cli_run_expect(args, 5, "netd is not running on", "NETSTASH_E_CONNECT_REFUSED");
  /* not a socket */
  f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  snprintf(args, sizeof(args), "--daemon %s status", file);
  cli_run_expect(args, 5, "is not a socket", NULL);
  /* usage */
  cli_run_expect("--daemon", 2, "needs the path", NULL);
  snprintf(args, sizeof(args), "--daemon %s", sock);
  cli_run_expect(args, 2, "missing command", NULL);
  snprintf(args, sizeof(args), "--daemon %s bogus", sock);
  cli_run_expect(args, 2, "unknown command", NULL);
  snprintf(args, sizeof(args), "--daemon %s status extra", sock);
  cli_run_expect(args, 2, "unexpected argument", NULL);
  snprintf(args, sizeof(args), "--daemon %s signals metered=2", sock);
  cli_run_expect(args, 2, "metered=0|1", NULL);
  snprintf(args, sizeof(args), "--daemon %s signals roaming=1", sock);
  cli_run_expect(args, 2, NULL, NULL);
  snprintf(args, sizeof(args), "--daemon %s status --help", sock);
  assert_int_equal(cli_run(args, &out, &err), 0);
  assert_non_null(strstr(out, "usage: netstash --daemon SOCKET"));
  free(out);
  free(err);
  assert_int_equal(cli_run("--help", &out, NULL), 0);
  assert_non_null(strstr(out, "--daemon SOCKET"));
  free(out);
}

static void test_help(void **state) {
  char *out;
  (void)state;
  assert_int_equal(cli_run("--help", &out, NULL), 0);
  assert_non_null(strstr(out, "get URL"));
  free(out);
  assert_int_equal(cli_run("get --help", &out, NULL), 0);
  assert_non_null(strstr(out, "--json"));
  assert_non_null(strstr(out, "--resolve"));
  free(out);
  assert_int_equal(cli_run("--version", &out, NULL), 0);
  assert_non_null(strstr(out, "netstash 0."));
  assert_non_null(strstr(out, " http2 http3 br gzip zstd hsts)")); /* the build's feature bits */
  free(out);
}

static void test_verbose_and_headers(void **state) {
  char args[1024], *out, *err;
  (void)state;
  snprintf(args, sizeof(args), "get -v -X POST --data - -H 'X-Test: 1' http://127.0.0.1:%d/echo "
           "< /dev/null", raw.port);
  /* stdin is /dev/null: an empty POST body */
  assert_int_equal(cli_run(args, &out, &err), 0);
  assert_non_null(strstr(out, "POST /echo"));
  assert_non_null(strcasestr(out, "x-test: 1"));
  assert_non_null(strstr(err, "< http/1.1 200"));
  assert_non_null(strstr(err, "timings: dns"));
  free(out);
  free(err);
}

/* --profile goes through the HTTP cache: source, cache_reason, --no-cache;
 * a one-shot run that serves stale-while-revalidate stores the refresh
 * before it exits. */
static void test_cli_cache(void **state) {
  char args[1024], *out, *prof = strdup(nst_path("cli-profile"));
  json_t *j;
  char first[128];
  (void)state;
  snprintf(args, sizeof(args), "get --json --profile %s http://127.0.0.1:%d/cache/max-age/600/cli",
           prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_string_equal(json_string_value(json_object_get(j, "source")), "network");
  assert_non_null(strstr(json_string_value(json_object_get(j, "cache_reason")), "stored"));
  json_decref(j);
  free(out);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_string_equal(json_string_value(json_object_get(j, "source")), "cache");
  assert_non_null(strstr(json_string_value(json_object_get(j, "cache_reason")), "fresh"));
  json_decref(j);
  free(out);
  snprintf(args, sizeof(args),
           "get --json --no-cache --profile %s http://127.0.0.1:%d/cache/max-age/600/cli", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_string_equal(json_string_value(json_object_get(j, "source")), "network");
  json_decref(j);
  free(out);

  /* stale-while-revalidate across three one-shot runs */
  snprintf(args, sizeof(args), "get --profile %s http://127.0.0.1:%d/cache/swr", prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  snprintf(first, sizeof(first), "%s", out);
  free(out);
  usleep(2100000);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_string_equal(out, first); /* stale, served at once */
  free(out);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_string_not_equal(out, first); /* the second run stored the refresh */
  free(out);
  free(prof);
}

/* netstash cache ls / rm: the HTTP cache as stored — a whole response and a
 * piece (a 206), listed with their fields; rm removes a URL (exit 9 the
 * second time), ls then lists the rest. */
static void test_cli_cache_ls_rm(void **state) {
  char args[1024], *out, *prof = strdup(nst_path("cli-cache-ls"));
  json_t *j, *e;
  size_t i;
  int whole = 0, piece = 0;
  (void)state;
  snprintf(args, sizeof(args), "get --profile %s http://127.0.0.1:%d/cache/max-age/600/ls", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args),
           "get --profile %s -H 'Range: bytes=10-19' http://127.0.0.1:%d/cache/ranged/1000", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "cache ls --json --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(json_integer_value(json_object_get(j, "count")), 2);
  json_array_foreach(json_object_get(j, "entries"), i, e) {
    const char *u = json_string_value(json_object_get(e, "url"));
    assert_non_null(json_object_get(e, "site"));
    assert_true(json_is_true(json_object_get(e, "fresh")));
    assert_true(json_integer_value(json_object_get(e, "stored")) > 0);
    if (strstr(u, "/cache/max-age/600/ls")) {
      whole = 1;
      assert_int_equal(json_integer_value(json_object_get(e, "status")), 200);
      assert_int_equal(json_integer_value(json_object_get(e, "lifetime")), 600);
      assert_null(json_object_get(e, "range"));
    } else {
      piece = 1;
      assert_non_null(strstr(u, "/cache/ranged/1000"));
      assert_int_equal(json_integer_value(json_object_get(e, "status")), 206);
      assert_int_equal(json_integer_value(json_object_get(e, "size")), 10);
      assert_string_equal(json_string_value(json_object_get(e, "range")), "bytes 10-19/1000");
    }
  }
  assert_true(whole && piece);
  json_decref(j);
  free(out);
  /* the table, and a prefix */
  snprintf(args, sizeof(args), "cache ls --profile %s http://127.0.0.1:%d/cache/ranged/", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_non_null(strstr(out, "(bytes 10-19/1000)"));
  assert_null(strstr(out, "/cache/max-age/600/ls"));
  assert_non_null(strstr(out, "1 stored response\n"));
  free(out);
  snprintf(args, sizeof(args),
           "cache rm --json --profile %s http://127.0.0.1:%d/cache/max-age/600/ls", prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_int_equal(json_integer_value(json_object_get(j, "removed")), 1);
  json_decref(j);
  free(out);
  assert_int_equal(cli_run(args, &out, NULL), 9); /* nothing left for it */
  free(out);
  snprintf(args, sizeof(args),
           "get --offline --profile %s http://127.0.0.1:%d/cache/max-age/600/ls", prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 12);
  free(out);
  snprintf(args, sizeof(args), "cache ls --json --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(json_integer_value(json_object_get(j, "count")), 1);
  json_decref(j);
  free(out);
  assert_int_equal(cli_run("cache frobnicate", &out, NULL), 2);
  free(out);
  free(prof);
}

/* A corrupt store: get fails with exit 13 and a hint, verify says so,
 * purge deletes it, get works again. */
static void test_cli_corrupt_store(void **state) {
  char args[1024], path[1024], *out, *err, *prof = strdup(nst_path("cli-corrupt"));
  FILE *fp;
  (void)state;
  snprintf(args, sizeof(args), "get --profile %s http://127.0.0.1:%d/cache/max-age/600/z", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "verify --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(path, sizeof(path), "%s/store/data.mdb", prof);
  fp = fopen(path, "r+b");
  assert_non_null(fp);
  for (int i = 0; i < 8192; i++)
    fputc(0xa5, fp);
  fclose(fp);
  snprintf(args, sizeof(args), "get --profile %s http://127.0.0.1:%d/cache/max-age/600/z", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, &err), 13);
  assert_non_null(strstr(err, "netstash purge"));
  free(out);
  free(err);
  snprintf(args, sizeof(args), "verify --json --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 13);
  {
    json_t *j = cli_run_json(out);
    assert_false(json_is_true(json_object_get(j, "ok")));
    assert_string_equal(json_string_value(json_object_get(j, "error")), "NETSTASH_E_STORE_CORRUPT");
    json_decref(j);
  }
  free(out);
  snprintf(args, sizeof(args), "purge --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  assert_int_equal(cli_run(args, &out, NULL), 9); /* nothing left */
  free(out);
  snprintf(args, sizeof(args), "get --json --profile %s http://127.0.0.1:%d/cache/max-age/600/z",
           prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  {
    json_t *j = cli_run_json(out);
    assert_string_equal(json_string_value(json_object_get(j, "source")), "network");
    json_decref(j);
  }
  free(out);
  free(prof);
}

/* netstash cookies: import a curl cookies.txt, list --json, export, clear;
 * netstash get sends the imported cookie. */
static void test_cli_cookies(void **state) {
  char args[2048], *out, *prof = strdup(nst_path("cli-cookies")), *txt = strdup(nst_path("c.txt"));
  FILE *fp = fopen(txt, "w");
  json_t *j;
  (void)state;
  assert_non_null(fp);
  fprintf(fp, "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tk\tv\n"
              "#HttpOnly_.example.com\tTRUE\t/\tTRUE\t4102444800\th\tx\n");
  fclose(fp);
  snprintf(args, sizeof(args), "cookies import %s --profile %s --json", txt, prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(json_integer_value(json_object_get(j, "count")), 2);
  json_decref(j);
  free(out);
  snprintf(args, sizeof(args), "cookies list --profile %s --json", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(json_array_size(json_object_get(j, "cookies")), 2);
  json_decref(j);
  free(out);
  snprintf(args, sizeof(args), "cookies export --profile %s", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_non_null(strstr(out, "#HttpOnly_.example.com\tTRUE\t/\tTRUE\t"));
  free(out);
  snprintf(args, sizeof(args), "get --profile %s http://127.0.0.1:%d/echo", prof, raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_non_null(strstr(out, "k=v"));
  free(out);
  snprintf(args, sizeof(args), "get --no-cookies --profile %s http://127.0.0.1:%d/echo", prof,
           raw.port);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_null(strstr(out, "k=v"));
  free(out);
  snprintf(args, sizeof(args), "cookies clear --domain example.com --profile %s --json", prof);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(json_integer_value(json_object_get(j, "count")), 1);
  json_decref(j);
  free(out);
  assert_int_equal(cli_run("cookies bogus", &out, NULL), 2);
  free(out);
  free(prof);
  free(txt);
}

static void test_cli_manifest(void **state) {
  char args[4096], src[1024], *out, *err, *dir = strdup(nst_path("cli-manifest"));
  const char *sd = getenv("srcdir");
  json_t *j;
  FILE *in, *o;
  int c;
  (void)state;
  snprintf(args, sizeof(args), "mkdir -p %s", dir);
  assert_int_equal(system(args), 0);
  snprintf(src, sizeof(src), "%s/manifests/examples/news-site.json", sd ? sd : ".");
  snprintf(args, sizeof(args), "%s/site.json", dir);
  in = fopen(src, "rb");
  o = fopen(args, "wb");
  assert_non_null(in);
  assert_non_null(o);
  while ((c = fgetc(in)) != EOF)
    fputc(c, o);
  fclose(in);
  fclose(o);
  snprintf(args, sizeof(args), "manifest keygen %s/ops.key", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  assert_int_equal(strlen(out), 17); /* 16 hex digits and a newline */
  free(out);
  snprintf(args, sizeof(args), "manifest keygen %s/other.key --json", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_int_equal(strlen(json_string_value(json_object_get(j, "key_id"))), 16);
  json_decref(j);
  free(out);
  snprintf(args, sizeof(args), "manifest lint %s/site.json --json", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_true(json_is_true(json_object_get(j, "ok")));
  assert_int_equal(json_array_size(json_object_get(j, "violations")), 0);
  json_decref(j);
  free(out);
  snprintf(args, sizeof(args), "manifest sign %s/site.json --key %s/ops.key", dir, dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "manifest verify %s/site.json --trust %s/ops.key.pub --json", dir,
           dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  j = cli_run_json(out);
  assert_true(json_is_true(json_object_get(j, "ok")));
  json_decref(j);
  free(out);
  /* wrong key: 14 with the reason */
  snprintf(args, sizeof(args), "manifest verify %s/site.json --trust %s/other.key.pub", dir, dir);
  assert_int_equal(cli_run(args, &out, &err), 14);
  assert_non_null(strstr(err, "unknown key id"));
  free(out);
  free(err);
  /* tampered manifest: 14 */
  snprintf(args, sizeof(args), "sed -i 's/\"version\": 42/\"version\": 43/' %s/site.json", dir);
  assert_int_equal(system(args), 0);
  snprintf(args, sizeof(args), "manifest verify %s/site.json --trust %s/ops.key.pub", dir, dir);
  assert_int_equal(cli_run(args, &out, &err), 14);
  assert_non_null(strstr(err, "bad signature"));
  free(out);
  free(err);
  /* lint: every violation with its path */
  snprintf(args, sizeof(args), "%s/bad.json", dir);
  o = fopen(args, "w");
  assert_non_null(o);
  fputs("{\"id\":\"x\",\"version\":1,\"scope\":[\"https://a.example/\"],\"entry_pages\":"
        "[\"https://a.example/\"],\"expires\":\"2099-01-01T00:00:00Z\",\"resources\":[{\"url\":"
        "\"https://a.example/\",\"integrity\":\"md5-AAAA\",\"size\":1,\"content_type\":\"a/b\","
        "\"colour\":1}]}",
        o);
  fclose(o);
  snprintf(args, sizeof(args), "manifest lint %s/bad.json --json", dir);
  assert_int_equal(cli_run(args, &out, NULL), 14);
  j = cli_run_json(out);
  assert_int_equal(json_array_size(json_object_get(j, "violations")), 2);
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(json_object_get(j, "violations"), 1),
                                        "path")),
      "resources[0].integrity");
  json_decref(j);
  free(out);
  assert_int_equal(cli_run("manifest --help", &out, NULL), 0);
  assert_non_null(strstr(out, "netstash manifest lint"));
  free(out);
  assert_int_equal(cli_run("manifest bogus", &out, NULL), 2);
  free(out);
  free(dir);
}

/* ---- netstash manifest make / import */

static void put_file(const char *dir, const char *rel, const char *content) {
  char path[2048];
  FILE *fp;
  snprintf(path, sizeof(path), "%s/%s", dir, rel);
  fp = fopen(path, "wb");
  if (!fp)
    fail_msg("cannot create %s", path);
  fputs(content, fp);
  fclose(fp);
}

static char *slurp(const char *path) {
  FILE *fp = fopen(path, "rb");
  char *buf = calloc(1, 1 << 20);
  size_t n;
  assert_non_null(fp);
  n = fread(buf, 1, (1 << 20) - 1, fp);
  buf[n] = 0;
  fclose(fp);
  return buf;
}

/* "ALG-BASE64" of content. */
static void sri_of(const char *alg, const char *content, char *out, size_t out_len) {
  unsigned char md[EVP_MAX_MD_SIZE], b64[4 * EVP_MAX_MD_SIZE / 3 + 4];
  unsigned int n = 0;
  assert_int_equal(EVP_Digest(content, strlen(content), md, &n, EVP_get_digestbyname(alg), NULL),
                   1);
  EVP_EncodeBlock(b64, md, (int)n);
  snprintf(out, out_len, "%s-%s", alg, b64);
}

/* The resource of m with url, or fails. */
static json_t *resource(json_t *m, const char *url) {
  size_t i;
  json_t *r;
  json_array_foreach(json_object_get(m, "resources"), i, r) {
    if (!strcmp(json_string_value(json_object_get(r, "url")), url))
      return r;
  }
  fail_msg("no resource %s", url);
  return NULL;
}

static const char *field(json_t *r, const char *key) {
  return json_string_value(json_object_get(r, key));
}

/* make → lint → sign → verify over a tree with nested files, odd names,
 * dotfiles and a symlink out of the tree. */
static void test_cli_manifest_make(void **state) {
  char args[16384], site[1024], *out, *err, *file, *again, sri[200];
  char *dir = strdup(nst_path("cli-make"));
  json_t *m, *r;
  (void)state;
  snprintf(site, sizeof(site), "%s/site", dir);
  snprintf(args, sizeof(args),
           "rm -rf %s && mkdir -p '%s/css' '%s/docs/guide' '%s/odd dir' '%s/.git' '%s/empty' && "
           "echo secret > %s/secret.txt && ln -s ../secret.txt %s/outside && "
           "ln -s css/app.css %s/alias.css",
           dir, site, site, site, site, site, dir, site, site);
  assert_int_equal(system(args), 0);
  put_file(site, "index.html", "<!doctype html><title>home</title>\n");
  put_file(site, "css/app.css", "body{margin:0}\n");
  put_file(site, "app.mjs", "export {};\n");
  put_file(site, "logo.PNG", "\x89PNG....");
  put_file(site, "docs/guide/index.html", "<p>guide</p>\n");
  put_file(site, "odd dir/r\xc3\xa9sum\xc3\xa9 #1+50%.txt", "odd\n");
  put_file(site, "data.bin", "\x01\x02");
  put_file(site, ".env", "SECRET=1\n");
  put_file(site, ".git/config", "[core]\n");

  snprintf(args, sizeof(args),
           "manifest make %s --base https://www.example.com/app --id site.app --version 7 "
           "--expires 2099-01-01T00:00:00Z -o %s/m.json --priority 'docs/*=high' --max-bytes 100000",
           site, dir);
  assert_int_equal(cli_run(args, &out, &err), 0);
  assert_non_null(strstr(out, "7, 8 resources")); /* the summary line */
  assert_non_null(strstr(err, "skipped outside")); /* a symlink out of the tree */
  free(out);
  free(err);

  snprintf(args, sizeof(args), "%s/m.json", dir);
  file = slurp(args);
  m = cli_run_json(file);
  assert_string_equal(field(m, "id"), "site.app");
  assert_int_equal(json_integer_value(json_object_get(m, "version")), 7);
  assert_string_equal(json_string_value(json_array_get(json_object_get(m, "scope"), 0)),
                      "https://www.example.com/app/");
  assert_string_equal(json_string_value(json_array_get(json_object_get(m, "entry_pages"), 0)),
                      "https://www.example.com/app/");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "budgets"), "max_bytes")),
                   100000);
  assert_int_equal(json_array_size(json_object_get(m, "resources")), 8);
  /* sorted by path: alias.css, app.mjs, css/, data.bin, docs/, index.html, logo, odd dir */
  assert_string_equal(field(json_array_get(json_object_get(m, "resources"), 0), "url"),
                      "https://www.example.com/app/alias.css");
  assert_string_equal(field(json_array_get(json_object_get(m, "resources"), 7), "url"),
                      "https://www.example.com/app/odd%20dir/r%C3%A9sum%C3%A9%20%231%2B50%25.txt");
  r = resource(m, "https://www.example.com/app/"); /* index.html is the directory */
  assert_string_equal(field(r, "priority"), "critical");
  assert_string_equal(field(r, "content_type"), "text/html; charset=utf-8");
  sri_of("sha256", "<!doctype html><title>home</title>\n", sri, sizeof(sri));
  assert_string_equal(field(r, "integrity"), sri);
  assert_int_equal(json_integer_value(json_object_get(r, "size")), 35);
  r = resource(m, "https://www.example.com/app/docs/guide/");
  assert_string_equal(field(r, "priority"), "high"); /* --priority docs/... */
  r = resource(m, "https://www.example.com/app/css/app.css");
  assert_string_equal(field(r, "priority"), "high");
  assert_string_equal(field(r, "content_type"), "text/css");
  assert_null(json_object_get(r, "query"));
  r = resource(m, "https://www.example.com/app/app.mjs");
  assert_string_equal(field(r, "content_type"), "text/javascript");
  r = resource(m, "https://www.example.com/app/logo.PNG");
  assert_string_equal(field(r, "content_type"), "image/png");
  assert_string_equal(field(r, "priority"), "low");
  r = resource(m, "https://www.example.com/app/data.bin");
  assert_string_equal(field(r, "content_type"), "application/octet-stream");
  assert_null(strstr(file, ".env"));
  assert_null(strstr(file, ".git"));
  assert_null(strstr(file, "outside"));
  assert_non_null(strstr(file, "\n  \"id\": \"site.app\",\n")); /* pretty, in field order */
  json_decref(m);

  /* reproducible: the same bytes again, on stdout this time */
  snprintf(args, sizeof(args),
           "manifest make %s --base https://www.example.com/app --id site.app --version 7 "
           "--expires 2099-01-01T00:00:00Z --priority 'docs/*=high' --max-bytes 100000",
           site);
  assert_int_equal(cli_run(args, &again, NULL), 0);
  assert_string_equal(again, file);
  free(again);
  free(file);

  /* lint, sign, verify */
  snprintf(args, sizeof(args), "manifest lint %s/m.json", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "manifest keygen %s/k", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "manifest sign %s/m.json --key %s/k", dir, dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);
  snprintf(args, sizeof(args), "manifest verify %s/m.json --trust %s/k.pub --json", dir, dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  m = cli_run_json(out);
  assert_true(json_is_true(json_object_get(m, "ok")));
  json_decref(m);
  free(out);

  /* defaults: --ttl-days, --ignore-param on every resource */
  snprintf(args, sizeof(args),
           "manifest make %s/css --base https://www.example.com/css/ --id c --version 1 "
           "--entry app.css --ttl-days 2 --ignore-param utm_source --ignore-param fbclid",
           site);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  m = cli_run_json(out);
  r = resource(m, "https://www.example.com/css/app.css");
  assert_string_equal(field(r, "priority"), "critical"); /* an entry page */
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(json_object_get(r, "query"), "ignore"), 1)),
      "fbclid");
  json_decref(m);
  free(out);

  /* errors say what to do */
  snprintf(args, sizeof(args), "manifest make %s/css --base https://x.example/ --id c --version 1",
           site);
  cli_run_expect(args, 2, "--entry", NULL); /* no index.html: no entry page */
  snprintf(args, sizeof(args),
           "manifest make %s --base https://x.example/ --id c --version 1 --max-bytes 10", site);
  cli_run_expect(args, 14, "over the budget", NULL);
  snprintf(args, sizeof(args), "manifest make %s --base http://x.example/ --id c --version 1",
           site);
  cli_run_expect(args, 2, "not an https URL", NULL);
  snprintf(args, sizeof(args), "manifest make %s --base https://x.example/ --id c --version 1 "
           "--expires 2001-01-01T00:00:00Z", site);
  cli_run_expect(args, 2, "not in the future", NULL);
  snprintf(args, sizeof(args), "manifest make %s/nope --base https://x.example/ --id c --version 1",
           dir);
  cli_run_expect(args, 9, "No such file", NULL);
  cli_run_expect("manifest make . --id c --version 1", 2, "--base URL is required", NULL);
  assert_int_equal(cli_run("manifest make --help", &out, NULL), 0);
  assert_non_null(strstr(out, "--priority GLOB=P"));
  free(out);
  free(dir);
}

/* Workbox precache manifests: integrity entries kept, revision entries
 * hashed from --dir, and the error when neither is available. */
static void test_cli_manifest_import(void **state) {
  char args[16384], site[1024], wb[1024], sri384[200], sri256[200], bad[200], *out, *err;
  char *dir = strdup(nst_path("cli-import"));
  FILE *fp;
  json_t *m, *r;
  (void)state;
  snprintf(site, sizeof(site), "%s/dist", dir);
  snprintf(args, sizeof(args), "rm -rf %s && mkdir -p %s/js", dir, site);
  assert_int_equal(system(args), 0);
  put_file(site, "index.html", "<html>app</html>\n");
  put_file(site, "js/app.3f2a.js", "console.log(1)\n");
  put_file(site, "icon.svg", "<svg/>\n");
  sri_of("sha384", "console.log(1)\n", sri384, sizeof(sri384));
  sri_of("sha256", "<svg/>\n", sri256, sizeof(sri256));
  sri_of("sha256", "something else\n", bad, sizeof(bad));

  /* a JSON array as workbox-build writes it */
  snprintf(wb, sizeof(wb), "%s/precache.json", dir);
  fp = fopen(wb, "w");
  assert_non_null(fp);
  fprintf(fp,
          "[{\"url\": \"index.html\", \"revision\": \"a1b2\"},\n"
          " {\"url\": \"/js/app.3f2a.js\", \"revision\": null, \"integrity\": \"%s\"},\n"
          " {\"url\": \"icon.svg\", \"integrity\": \"%s\"}]\n",
          sri384, sri256);
  fclose(fp);
  snprintf(args, sizeof(args),
           "manifest import --workbox %s --dir %s --base https://pwa.example/ --id pwa "
           "--version 3 --ignore-param utm_source --expires 2099-01-01T00:00:00Z -o %s/m.json",
           wb, site, dir);
  assert_int_equal(cli_run(args, &out, &err), 0);
  free(out);
  free(err);
  snprintf(args, sizeof(args), "%s/m.json", dir);
  out = slurp(args);
  m = cli_run_json(out);
  free(out);
  assert_int_equal(json_array_size(json_object_get(m, "resources")), 3);
  r = json_array_get(json_object_get(m, "resources"), 0); /* Workbox order */
  assert_string_equal(field(r, "url"), "https://pwa.example/");
  assert_string_equal(field(r, "priority"), "critical");
  {
    char want[200];
    sri_of("sha256", "<html>app</html>\n", want, sizeof(want));
    assert_string_equal(field(r, "integrity"), want); /* hashed from --dir */
  }
  r = resource(m, "https://pwa.example/js/app.3f2a.js");
  assert_string_equal(field(r, "integrity"), sri384); /* kept as given */
  assert_int_equal(json_integer_value(json_object_get(r, "size")), 15);
  assert_string_equal(field(r, "content_type"), "text/javascript");
  assert_string_equal(field(r, "priority"), "high");
  assert_string_equal(
      json_string_value(json_array_get(json_object_get(json_object_get(r, "query"), "ignore"), 0)),
      "utm_source");
  r = resource(m, "https://pwa.example/icon.svg");
  assert_string_equal(field(r, "integrity"), sri256);
  assert_string_equal(field(r, "content_type"), "image/svg+xml");
  json_decref(m);
  snprintf(args, sizeof(args), "manifest lint %s/m.json", dir);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  free(out);

  /* the service worker form: self.__WB_MANIFEST = [...] */
  snprintf(wb, sizeof(wb), "%s/sw.js", dir);
  fp = fopen(wb, "w");
  assert_non_null(fp);
  fprintf(fp, "importScripts('workbox-sw.js');\nself.__WB_MANIFEST = "
              "[{\"url\":\"icon.svg\",\"integrity\":\"%s\"},{\"url\":\"index.html\","
              "\"revision\":\"1\"}];\nworkbox.precaching.precacheAndRoute(self.__WB_MANIFEST);\n",
          sri256);
  fclose(fp);
  snprintf(args, sizeof(args),
           "manifest import --workbox %s --dir %s --base https://pwa.example/ --id pwa "
           "--version 3 --scope https://cdn.pwa.example/",
           wb, site);
  assert_int_equal(cli_run(args, &out, NULL), 0);
  m = cli_run_json(out);
  assert_int_equal(json_array_size(json_object_get(m, "resources")), 2);
  assert_int_equal(json_array_size(json_object_get(m, "scope")), 2);
  json_decref(m);
  free(out);

  /* neither integrity nor --dir: the revision-only entries are named */
  snprintf(wb, sizeof(wb), "%s/precache.json", dir);
  snprintf(args, sizeof(args),
           "manifest import --workbox %s --base https://pwa.example/ --id pwa --version 3", wb);
  assert_int_equal(cli_run(args, &out, &err), 2);
  assert_non_null(strstr(err, "\"https://pwa.example/index.html\""));
  assert_null(strstr(err, "app.3f2a.js")); /* has integrity */
  assert_non_null(strstr(err, "pass --dir"));
  assert_string_equal(out, ""); /* nothing half-written */
  free(out);
  free(err);

  /* a body that does not match its entry's integrity */
  fp = fopen(wb, "w");
  assert_non_null(fp);
  fprintf(fp, "[{\"url\": \"icon.svg\", \"integrity\": \"%s\"}, \"index.html\"]", bad);
  fclose(fp);
  snprintf(args, sizeof(args),
           "manifest import --workbox %s --dir %s --base https://pwa.example/ --id pwa "
           "--version 3", wb, site);
  cli_run_expect(args, 15, "does not match the entry's integrity", NULL);
  /* an entry whose file is missing; not a Workbox manifest */
  fp = fopen(wb, "w");
  assert_non_null(fp);
  fputs("[\"index.html\", {\"url\": \"gone.js\", \"revision\": \"1\"}]", fp);
  fclose(fp);
  cli_run_expect(args, 9, "workbox[1] \"https://pwa.example/gone.js\"", NULL);
  fp = fopen(wb, "w");
  assert_non_null(fp);
  fputs("{\"files\": []}", fp);
  fclose(fp);
  cli_run_expect(args, 14, "not a Workbox precache manifest", NULL);
  cli_run_expect("manifest import --base https://pwa.example/ --id pwa --version 3", 2,
                 "--workbox FILE is required", NULL);
  assert_int_equal(cli_run("manifest import --help", &out, NULL), 0);
  assert_non_null(strstr(out, "--ignore-param"));
  free(out);
  free(dir);
}

static int setup(void **state) {
  (void)state;
  if (cli_run_setup("cli") != 0)
    return -1;
  if (!nst_certs() || !nst_site() || nst_caddy_start("h2", &caddy) || nst_rawserver_start(&raw))
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
      cmocka_unit_test(test_json_contract),
      cmocka_unit_test(test_body_stdout_and_file),
      cmocka_unit_test(test_http_error_status_exit_0),
      cmocka_unit_test(test_exit_codes),
      cmocka_unit_test(test_help),
      cmocka_unit_test(test_verbose_and_headers),
      cmocka_unit_test(test_cli_cache),
      cmocka_unit_test(test_cli_corrupt_store),
      cmocka_unit_test(test_cli_cache_ls_rm),
      cmocka_unit_test(test_cli_cookies),
      cmocka_unit_test(test_cli_manifest),
      cmocka_unit_test(test_cli_manifest_make),
      cmocka_unit_test(test_cli_manifest_import),
      cmocka_unit_test(test_cli_daemon_client),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
