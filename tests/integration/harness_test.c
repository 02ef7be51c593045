/*
 * harness_test — proves the test harness serves what harness.h promises:
 * certificates verify (or fail) the way their names say, the fixture site
 * holds the documented files, and every server kind really answers on its
 * port with the promised protocol (ALPN, TLS versions, DNS answers, the raw
 * server's paths, keep-alive).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "harness.h"

/* ------------------------------------------------------------- helpers */

static int tcp_connect(int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static int send_str(int fd, const char *s) {
  size_t len = strlen(s);
  while (len > 0) {
    ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
    if (n <= 0)
      return -1;
    s += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads until the peer closes, cap is full or timeout_ms passes without
 * data; returns bytes read. */
static size_t recv_all(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t len = 0;
  while (len + 1 < cap) {
    struct pollfd pfd = {fd, POLLIN, 0};
    ssize_t n;
    if (poll(&pfd, 1, timeout_ms) <= 0)
      break;
    n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  return len;
}

/* Reads exactly one response with a Content-Length body (keep-alive). */
static int read_response(int fd, char *buf, size_t cap, const char **body, size_t *body_len) {
  size_t len = 0;
  char *end = NULL, *cl;
  size_t need;
  while (end == NULL) {
    struct pollfd pfd = {fd, POLLIN, 0};
    ssize_t n;
    if (len + 1 >= cap || poll(&pfd, 1, 5000) <= 0)
      return -1;
    n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n <= 0)
      return -1;
    len += (size_t)n;
    buf[len] = '\0';
    end = strstr(buf, "\r\n\r\n");
  }
  cl = strcasestr(buf, "\r\nContent-Length:");
  if (cl == NULL || cl > end)
    return -1;
  need = (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10);
  if (need >= cap)
    return -1;
  while (len < need) {
    struct pollfd pfd = {fd, POLLIN, 0};
    ssize_t n;
    if (poll(&pfd, 1, 5000) <= 0)
      return -1;
    n = recv(fd, buf + len, need - len, 0);
    if (n <= 0)
      return -1;
    len += (size_t)n;
  }
  buf[len] = '\0';
  *body = end + 4;
  *body_len = need - (size_t)(end + 4 - buf);
  return 0;
}

/* Runs a shell command and captures its stdout. */
static size_t run_capture(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t run_capture(char *out, size_t cap, const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  FILE *p;
  size_t len = 0, n;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  p = popen(cmd, "r");
  out[0] = '\0';
  if (p == NULL)
    return 0;
  while (len + 1 < cap && (n = fread(out + len, 1, cap - 1 - len, p)) > 0)
    len += n;
  out[len] = '\0';
  pclose(p);
  return len;
}

typedef struct tls_probe {
  int handshake_ok;
  long verify_result;
  char alpn[32];
  int version;
} tls_probe;

/* One TLS handshake to 127.0.0.1:port. host: SNI and name to verify (an IP
 * literal is verified as IP and sent without SNI); verify: check against
 * ca.pem; alpn: wire-format list or NULL. */
static void tls_connect(int port, const char *host, int verify, const char *alpn,
                        size_t alpn_len, int min_version, int max_version, tls_probe *res) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = NULL;
  int fd = -1;
  struct in_addr ia;
  const unsigned char *sel = NULL;
  unsigned sel_len = 0;

  memset(res, 0, sizeof(*res));
  res->verify_result = -1;
  assert_non_null(ctx);
  SSL_CTX_set_min_proto_version(ctx, min_version);
  SSL_CTX_set_max_proto_version(ctx, max_version);
  if (verify) {
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, nst_cert("ca.pem"), NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  ssl = SSL_new(ctx);
  assert_non_null(ssl);
  if (inet_pton(AF_INET, host, &ia) == 1) {
    if (verify)
      assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host), 1);
  } else {
    SSL_set_tlsext_host_name(ssl, host);
    if (verify)
      assert_int_equal(SSL_set1_host(ssl, host), 1);
  }
  if (alpn != NULL)
    assert_int_equal(SSL_set_alpn_protos(ssl, (const unsigned char *)alpn, (unsigned)alpn_len), 0);
  fd = tcp_connect(port);
  assert_true(fd >= 0);
  SSL_set_fd(ssl, fd);
  res->handshake_ok = SSL_connect(ssl) == 1;
  res->verify_result = SSL_get_verify_result(ssl);
  if (res->handshake_ok) {
    SSL_get0_alpn_selected(ssl, &sel, &sel_len);
    if (sel_len > 0 && sel_len < sizeof(res->alpn))
      memcpy(res->alpn, sel, sel_len);
    res->version = SSL_version(ssl);
    SSL_shutdown(ssl);
  }
  ERR_clear_error();
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
}

#define ALPN_H2_H1 "\x02h2\x08http/1.1"
#define ALPN_H2_H1_LEN 12

static X509 *load_cert(const char *name) {
  FILE *f = fopen(nst_cert(name), "r");
  X509 *x;
  assert_non_null(f);
  x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(x);
  return x;
}

/* Verifies cert `name` against ca.pem for host (or IP); returns the
 * X509_V_* result. */
static int verify_cert(const char *name, const char *host, const char *ip, const char *chain) {
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *sctx = X509_STORE_CTX_new();
  X509 *ca = load_cert("ca.pem"), *leaf = load_cert(name), *inter = NULL;
  STACK_OF(X509) *untrusted = sk_X509_new_null();
  X509_VERIFY_PARAM *param;
  int rv;
  assert_int_equal(X509_STORE_add_cert(store, ca), 1);
  if (chain != NULL) {
    inter = load_cert(chain);
    sk_X509_push(untrusted, inter);
  }
  assert_int_equal(X509_STORE_CTX_init(sctx, store, leaf, untrusted), 1);
  param = X509_STORE_CTX_get0_param(sctx);
  X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
  if (host != NULL)
    X509_VERIFY_PARAM_set1_host(param, host, 0);
  if (ip != NULL)
    X509_VERIFY_PARAM_set1_ip_asc(param, ip);
  rv = X509_verify_cert(sctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(sctx);
  X509_STORE_CTX_free(sctx);
  X509_STORE_free(store);
  sk_X509_free(untrusted);
  X509_free(inter);
  X509_free(ca);
  X509_free(leaf);
  return rv;
}

static off_t file_size(const char *rel) {
  char path[4096];
  struct stat sb;
  snprintf(path, sizeof(path), "%s/%s", nst_site(), rel);
  if (stat(path, &sb) != 0)
    return -1;
  return sb.st_size;
}

/* ------------------------------------------------------ HTTP/3 client */

/* gtlsclient (ngtcp2 0.12 example client, GnuTLS) logs everything on
 * stderr, and does not verify the server's certificate. */
#define GTLSCLIENT "timeout 20 gtlsclient --exit-on-all-streams-close "

typedef struct h3_response {
  int status;         /* -1: no response */
  char headers[2048]; /* "name: value\n" per field, pseudo-headers included */
  char body[65536];
  size_t body_len;
} h3_response;

static int h3_seq;

/* GET https://127.0.0.1:port/path over HTTP/3 with gtlsclient; the body
 * is what --download saved. Returns the status, -1 if none came. */
static int h3_get(int port, const char *path, h3_response *res) {
  char dir[4096], file[4200], *out = malloc(1 << 20), *line;
  const char *base = strrchr(path, '/');
  FILE *f;

  assert_non_null(out);
  memset(res, 0, sizeof(*res));
  res->status = -1;
  snprintf(dir, sizeof(dir), "%s", nst_path("h3dl"));
  mkdir(dir, 0755);
  snprintf(dir + strlen(dir), sizeof(dir) - strlen(dir), "/%d", ++h3_seq);
  assert_int_equal(mkdir(dir, 0755), 0);
  run_capture(out, 1 << 20,
              GTLSCLIENT "--no-quic-dump --no-http-dump --download=%s 127.0.0.1 %d "
                         "'https://127.0.0.1:%d%s' 2>&1",
              dir, port, port, path);
  /* http: stream 0x0 [name: value] */
  for (line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
    const char *pre = "http: stream 0x0 [";
    size_t l = strlen(line);
    if (strncmp(line, pre, strlen(pre)) != 0 || line[l - 1] != ']')
      continue;
    line[l - 1] = '\0';
    line += strlen(pre);
    if (strncmp(line, ":status: ", 9) == 0)
      res->status = atoi(line + 9);
    if (strlen(res->headers) + strlen(line) + 2 < sizeof(res->headers)) {
      strcat(res->headers, line);
      strcat(res->headers, "\n");
    }
  }
  free(out);
  base = (base == NULL || base[1] == '\0') ? "index.html" : base + 1;
  snprintf(file, sizeof(file), "%s/%.*s", dir, (int)strcspn(base, "?"), base);
  f = fopen(file, "rb");
  if (f != NULL) {
    res->body_len = fread(res->body, 1, sizeof(res->body) - 1, f);
    fclose(f);
  }
  res->body[res->body_len] = '\0';
  return res->status;
}

/* Number of "name: " lines in a header block (case-insensitive). */
static int header_count(const char *headers, const char *name) {
  const char *p = headers;
  size_t n = strlen(name);
  int count = 0;
  while (*p != '\0') {
    if (strncasecmp(p, name, n) == 0 && p[n] == ':')
      count++;
    p = strchr(p, '\n');
    if (p == NULL)
      break;
    p++;
  }
  return count;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* The server's TLS handshake messages (EncryptedExtensions, Certificate,
 * ...) of one QUIC connection, rebuilt from gtlsclient's hexdump of the
 * Handshake-level CRYPTO data ("*" lines repeat the previous row).
 * Returns the length. */
static size_t h3_handshake_bytes(int port, unsigned char *hs, size_t cap) {
  char *out = malloc(1 << 21), *line;
  size_t len = 0, base = 0;
  unsigned char prev[16];
  size_t prev_len = 0;
  int in_dump = 0;
  assert_non_null(out);
  run_capture(out, 1 << 21,
              GTLSCLIENT "--no-http-dump 127.0.0.1 %d https://127.0.0.1:%d/hello.txt 2>&1", port,
              port);
  for (line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n")) {
    unsigned long off;
    char *p;
    size_t n = 0;
    if (strcmp(line, "Ordered CRYPTO data in Handshake crypto level") == 0) {
      in_dump = 1;
      base = len;
      continue;
    }
    if (!in_dump)
      continue;
    if (strcmp(line, "*") == 0)
      continue; /* the gap shows in the next row's offset */
    if (strlen(line) < 8 || sscanf(line, "%8lx", &off) != 1 ||
        (line[8] != ' ' && line[8] != '\0')) {
      in_dump = 0;
      continue;
    }
    while (len < base + off && prev_len > 0 && len + prev_len <= cap) {
      memcpy(hs + len, prev, prev_len);
      len += prev_len;
    }
    /* "OOOOOOOO  hh hh .. hh  hh .. hh  |ascii|" */
    for (p = line + 8; *p != '\0' && *p != '|' && n < 16; p++) {
      if (hexval(p[0]) >= 0 && hexval(p[1]) >= 0 && (p[2] == ' ' || p[2] == '\0')) {
        prev[n++] = (unsigned char)(hexval(p[0]) * 16 + hexval(p[1]));
        p += 2;
        if (*p == '\0')
          break;
      }
    }
    if (n > 0 && len + n <= cap) {
      memcpy(hs + len, prev, n);
      len += n;
      prev_len = n;
    }
  }
  free(out);
  return len;
}

/* 1 if the DER of certificate `name` (in nst_certs()) is in buf. */
static int has_cert_der(const unsigned char *buf, size_t len, const char *name) {
  FILE *f = fopen(nst_cert(name), "r");
  X509 *x;
  unsigned char *der = NULL;
  int n, found;
  assert_non_null(f);
  x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(x);
  n = i2d_X509(x, &der);
  assert_true(n > 0);
  found = memmem(buf, len, der, (size_t)n) != NULL;
  OPENSSL_free(der);
  X509_free(x);
  return found;
}

/* ---------------------------------------------------------------- tests */

static void test_workdir(void **state) {
  const char *wd = nst_workdir();
  struct stat sb;
  (void)state;
  assert_non_null(wd);
  assert_int_equal(strncmp(wd, "/", 1), 0);
  assert_int_equal(stat(wd, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  assert_string_equal(nst_workdir(), wd); /* once per process */
  assert_non_null(strstr(nst_path("x"), wd));
}

static void test_certs(void **state) {
  const char *dir = nst_certs();
  X509 *leaf;
  EVP_PKEY *pk;
  FILE *f;
  (void)state;
  assert_non_null(dir);
  assert_string_equal(nst_certs(), dir); /* lazily, once */

  /* good: valid for every documented name */
  assert_int_equal(verify_cert("good.pem", "example.test", NULL, NULL), X509_V_OK);
  assert_int_equal(verify_cert("good.pem", "a.example.test", NULL, NULL), X509_V_OK);
  assert_int_equal(verify_cert("good.pem", "localhost", NULL, NULL), X509_V_OK);
  assert_int_equal(verify_cert("good.pem", NULL, "127.0.0.1", NULL), X509_V_OK);
  assert_int_equal(verify_cert("good.pem", NULL, "::1", NULL), X509_V_OK);
  assert_int_equal(verify_cert("good.pem", "other.invalid", NULL, NULL),
                   X509_V_ERR_HOSTNAME_MISMATCH);
  /* the bad ones fail for their reason */
  assert_int_equal(verify_cert("expired.pem", "example.test", NULL, NULL),
                   X509_V_ERR_CERT_HAS_EXPIRED);
  assert_int_equal(verify_cert("wronghost.pem", "example.test", NULL, NULL),
                   X509_V_ERR_HOSTNAME_MISMATCH);
  assert_int_equal(verify_cert("wronghost.pem", "other.invalid", NULL, NULL), X509_V_OK);
  assert_int_equal(verify_cert("untrusted.pem", "example.test", NULL, NULL),
                   X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
  assert_int_equal(verify_cert("untrusted.pem", "example.test", NULL, "untrusted-ca.pem"),
                   X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN);

  /* leaf properties: P-256 key matching the .key file, server-auth leaf */
  leaf = load_cert("good.pem");
  assert_int_equal(X509_get_extension_flags(leaf) & EXFLAG_CA, 0);
  assert_true(X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE);
  assert_true(X509_get_extended_key_usage(leaf) & XKU_SSL_SERVER);
  assert_non_null(X509_get0_subject_key_id(leaf));
  assert_non_null(X509_get0_authority_key_id(leaf));
  f = fopen(nst_cert("good.key"), "r");
  assert_non_null(f);
  pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(pk);
  assert_true(EVP_PKEY_is_a(pk, "EC"));
  assert_int_equal(EVP_PKEY_get_bits(pk), 256);
  assert_int_equal(X509_check_private_key(leaf, pk), 1);
  EVP_PKEY_free(pk);
  X509_free(leaf);
  leaf = load_cert("ca.pem");
  assert_true(X509_get_extension_flags(leaf) & EXFLAG_CA);
  X509_free(leaf);
}

static void test_site(void **state) {
  const char *site = nst_site();
  char out[256];
  (void)state;
  assert_non_null(site);
  assert_string_equal(nst_site(), site);
  assert_true(file_size("index.html") > 0);
  assert_int_equal(file_size("hello.txt"), 16);
  assert_int_equal(file_size("r/0.bin"), 20000);
  assert_int_equal(file_size("r/199.bin"), 20000);
  assert_int_equal(file_size("r/200.bin"), -1);
  assert_int_equal(file_size("big.bin"), 4 * 1024 * 1024);
  assert_true(file_size("text.txt") >= 60000 && file_size("text.txt") <= 70000);
  assert_true(file_size("text.txt.br") > 0 && file_size("text.txt.br") < 5000);
  assert_true(file_size("text.txt.gz") > 0 && file_size("text.txt.gz") < 20000);
  assert_int_equal(file_size("bomb.txt"), 6);
  assert_true(file_size("bomb.txt.gz") > 0 && file_size("bomb.txt.gz") < 100000);
  assert_true(file_size("bomb.txt.br") > 0 && file_size("bomb.txt.br") < 1000);
  /* deterministic content: r/0.bin differs from r/1.bin, same every run */
  run_capture(out, sizeof(out), "cmp -s %s/r/0.bin %s/r/1.bin; echo $?", site, site);
  assert_string_equal(out, "1\n");
  /* the sidecars decode to the promised bytes */
  run_capture(out, sizeof(out), "gzip -dc %s/bomb.txt.gz | wc -c", site);
  assert_int_equal(strtol(out, NULL, 10), 64 * 1024 * 1024);
  run_capture(out, sizeof(out), "brotli -dc %s/bomb.txt.br | tr -d a | wc -c", site);
  assert_int_equal(strtol(out, NULL, 10), 0);
  run_capture(out, sizeof(out), "brotli -dc %s/bomb.txt.br | wc -c", site);
  assert_int_equal(strtol(out, NULL, 10), 64 * 1024 * 1024);
  run_capture(out, sizeof(out), "brotli -dc %s/text.txt.br | cmp -s - %s/text.txt; echo $?", site,
              site);
  assert_string_equal(out, "0\n");
  run_capture(out, sizeof(out), "gzip -dc %s/text.txt.gz | cmp -s - %s/text.txt; echo $?", site,
              site);
  assert_string_equal(out, "0\n");
}

#define CURL "curl -s --max-time 20 --cacert %s "

static void test_caddy_h2(void **state) {
  nst_server srv;
  char out[4096];
  tls_probe tp;
  (void)state;
  assert_int_equal(nst_caddy_start("h2", &srv), 0);
  assert_true(srv.pid > 0 && srv.port >= 20000 && srv.port <= 60000);
  assert_string_equal(srv.name, "caddy-h2");

  run_capture(out, sizeof(out), CURL "-w '|%%{http_version}' https://127.0.0.1:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n|2");
  /* the other names of the site block, TLS verified by name */
  run_capture(out, sizeof(out),
              CURL "--resolve example.test:%d:127.0.0.1 -w '|%%{http_version}' "
                   "https://example.test:%d/hello.txt",
              nst_cert("ca.pem"), srv.port, srv.port);
  assert_string_equal(out, "hello, netstash\n|2");
  run_capture(out, sizeof(out),
              CURL "--resolve www.example.test:%d:127.0.0.1 -w '|%%{http_version}' "
                   "https://www.example.test:%d/hello.txt",
              nst_cert("ca.pem"), srv.port, srv.port);
  assert_string_equal(out, "hello, netstash\n|2");
  run_capture(out, sizeof(out),
              CURL "--http1.1 -w '|%%{http_version}' https://localhost:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n|1.1");

  /* ALPN offers h2 (and http/1.1 for clients that ask only for it) */
  tls_connect(srv.port, "127.0.0.1", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
  assert_true(tp.handshake_ok);
  assert_int_equal(tp.verify_result, X509_V_OK);
  assert_string_equal(tp.alpn, "h2");
  assert_int_equal(tp.version, TLS1_3_VERSION);
  tls_connect(srv.port, "example.test", 1, "\x08http/1.1", 9, TLS1_2_VERSION, TLS1_2_VERSION,
              &tp);
  assert_true(tp.handshake_ok);
  assert_string_equal(tp.alpn, "http/1.1");
  assert_int_equal(tp.version, TLS1_2_VERSION);

  /* /hsts */
  run_capture(out, sizeof(out), CURL "-i https://127.0.0.1:%d/hsts", nst_cert("ca.pem"), srv.port);
  assert_non_null(strstr(out, "HTTP/2 200"));
  assert_non_null(strcasestr(out, "strict-transport-security: max-age=3600"));
  /* precompressed sidecars */
  run_capture(out, sizeof(out),
              CURL "-D - -o /dev/null -H 'Accept-Encoding: br' https://127.0.0.1:%d/text.txt",
              nst_cert("ca.pem"), srv.port);
  assert_non_null(strcasestr(out, "content-encoding: br"));
  run_capture(out, sizeof(out),
              CURL "-D - -o /dev/null -H 'Accept-Encoding: gzip' https://127.0.0.1:%d/bomb.txt",
              nst_cert("ca.pem"), srv.port);
  assert_non_null(strcasestr(out, "content-encoding: gzip"));
  run_capture(out, sizeof(out), CURL "https://127.0.0.1:%d/bomb.txt", nst_cert("ca.pem"),
              srv.port);
  assert_string_equal(out, "plain\n");
  run_capture(out, sizeof(out), CURL "--compressed https://127.0.0.1:%d/text.txt | wc -c",
              nst_cert("ca.pem"), srv.port);
  assert_int_equal(strtol(out, NULL, 10), file_size("text.txt"));
  run_capture(out, sizeof(out), CURL "https://127.0.0.1:%d/r/7.bin | cmp -s - %s/r/7.bin; echo $?",
              nst_cert("ca.pem"), srv.port, nst_site());
  assert_string_equal(out, "0\n");
  nst_stop(&srv);
  assert_int_equal(srv.pid, -1);
}

static void test_caddy_h1(void **state) {
  nst_server srv;
  char out[256];
  tls_probe tp;
  (void)state;
  assert_int_equal(nst_caddy_start("h1", &srv), 0);
  tls_connect(srv.port, "127.0.0.1", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
  assert_true(tp.handshake_ok);
  assert_int_equal(tp.verify_result, X509_V_OK);
  assert_string_not_equal(tp.alpn, "h2");
  run_capture(out, sizeof(out), CURL "-w '|%%{http_version}' https://127.0.0.1:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n|1.1");
  nst_stop(&srv);
}

static void test_caddy_tls12(void **state) {
  nst_server srv;
  char out[256];
  tls_probe tp;
  (void)state;
  assert_int_equal(nst_caddy_start("tls12", &srv), 0);
  /* TLS 1.3 refused, with and without SNI */
  tls_connect(srv.port, "127.0.0.1", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, TLS1_3_VERSION,
              TLS1_3_VERSION, &tp);
  assert_false(tp.handshake_ok);
  tls_connect(srv.port, "example.test", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, TLS1_3_VERSION,
              TLS1_3_VERSION, &tp);
  assert_false(tp.handshake_ok);
  /* TLS 1.2 works and is what an unrestricted client gets */
  tls_connect(srv.port, "127.0.0.1", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
  assert_true(tp.handshake_ok);
  assert_int_equal(tp.version, TLS1_2_VERSION);
  assert_string_equal(tp.alpn, "h2");
  run_capture(out, sizeof(out), CURL "--tlsv1.3 https://127.0.0.1:%d/hello.txt; printf '|%%d' $?",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "|35"); /* CURLE_SSL_CONNECT_ERROR */
  run_capture(out, sizeof(out), CURL "--tls-max 1.2 https://127.0.0.1:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n");
  nst_stop(&srv);
}

static void test_badtls(void **state) {
  static const struct {
    const char *kind;
    long expect;
  } cases[] = {
      {"expired", X509_V_ERR_CERT_HAS_EXPIRED},
      {"wronghost", X509_V_ERR_HOSTNAME_MISMATCH},
      {"untrusted", X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN},
  };
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    nst_server srv;
    tls_probe tp;
    char out[4096];
    assert_int_equal(nst_badtls_start(cases[i].kind, &srv), 0);
    tls_connect(srv.port, "example.test", 1, NULL, 0, 0, 0, &tp);
    assert_false(tp.handshake_ok);
    assert_int_equal(tp.verify_result, cases[i].expect);
    /* without verification the server answers */
    tls_connect(srv.port, "example.test", 0, NULL, 0, 0, 0, &tp);
    assert_true(tp.handshake_ok);
    run_capture(out, sizeof(out), "curl -sk --max-time 10 -o /dev/null -w '|%%{response_code}' "
                "https://127.0.0.1:%d/",
                srv.port);
    assert_string_equal(out, "|200");
    run_capture(out, sizeof(out), CURL "https://127.0.0.1:%d/ ; printf '|%%d' $?", nst_cert("ca.pem"),
                srv.port);
    /* 60: CURLE_PEER_FAILED_VERIFICATION */
    assert_string_equal(out, "|60");
    nst_stop(&srv);
  }
  {
    nst_server srv;
    assert_int_equal(nst_badtls_start("nonsense", &srv), -1);
  }
}

static void test_nghttpd(void **state) {
  nst_server srv;
  char out[256];
  tls_probe tp;
  (void)state;
  assert_int_equal(nst_nghttpd_start(NULL, &srv), 0);
  tls_connect(srv.port, "127.0.0.1", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
  assert_true(tp.handshake_ok);
  assert_string_equal(tp.alpn, "h2");
  run_capture(out, sizeof(out), CURL "-w '|%%{http_version}' https://127.0.0.1:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n|2");
  nst_stop(&srv);

  assert_int_equal(nst_nghttpd_start("--max-concurrent-streams=8 -n 1", &srv), 0);
  run_capture(out, sizeof(out), CURL "https://127.0.0.1:%d/r/3.bin | wc -c", nst_cert("ca.pem"),
              srv.port);
  assert_int_equal(strtol(out, NULL, 10), 20000);
  nst_stop(&srv);
}

static void test_caddy_h3(void **state) {
  nst_server srv;
  char out[4096], want[128];
  h3_response r;
  (void)state;
  assert_int_equal(nst_caddy_start("h3", &srv), 0);
  assert_string_equal(srv.name, "caddy-h3");
  assert_int_equal(nst_quic_probe(srv.port, 1000), 1);

  /* HTTP/3 on UDP, same port number */
  assert_int_equal(h3_get(srv.port, "/hello.txt", &r), 200);
  assert_int_equal(r.body_len, 16);
  assert_string_equal(r.body, "hello, netstash\n");
  assert_non_null(strstr(r.headers, "content-length: 16\n"));
  assert_int_equal(header_count(r.headers, "alt-svc"), 0); /* not over h3 */
  assert_int_equal(h3_get(srv.port, "/r/7.bin", &r), 200);
  run_capture(out, sizeof(out), "cmp -s %s/r/7.bin %s/h3dl/%d/7.bin; echo $?", nst_site(),
              nst_workdir(), h3_seq);
  assert_string_equal(out, "0\n");
  assert_int_equal(h3_get(srv.port, "/hsts", &r), 200);
  assert_non_null(strstr(r.headers, "strict-transport-security: max-age=3600\n"));
  assert_int_equal(h3_get(srv.port, "/nope", &r), 404);

  /* TCP: h2 as before, advertising h3 on the same port, on 404s too */
  snprintf(want, sizeof(want), "alt-svc: h3=\":%d\"; ma=2592000\r\n", srv.port);
  run_capture(out, sizeof(out), CURL "-sI https://127.0.0.1:%d/hello.txt", nst_cert("ca.pem"),
              srv.port);
  assert_non_null(strstr(out, "HTTP/2 200"));
  assert_non_null(strstr(out, want));
  assert_int_equal(header_count(strstr(out, "\n") + 1, "alt-svc"), 1);
  run_capture(out, sizeof(out), CURL "-sI --http1.1 https://127.0.0.1:%d/nope", nst_cert("ca.pem"),
              srv.port);
  assert_non_null(strstr(out, "HTTP/1.1 404"));
  snprintf(want, sizeof(want), "Alt-Svc: h3=\":%d\"; ma=2592000\r\n", srv.port);
  assert_non_null(strstr(out, want));
  run_capture(out, sizeof(out), CURL "-w '|%%{http_version}' https://127.0.0.1:%d/hello.txt",
              nst_cert("ca.pem"), srv.port);
  assert_string_equal(out, "hello, netstash\n|2");
  nst_stop(&srv);
  assert_int_equal(nst_quic_probe(srv.port, 200), 0);
}

static void test_caddy_h3_altsvc_short(void **state) {
  nst_server srv;
  char out[4096], want[128];
  h3_response r;
  (void)state;
  assert_int_equal(nst_caddy_start("h3-altsvc-short", &srv), 0);
  snprintf(want, sizeof(want), "alt-svc: h3=\":%d\"; ma=2\r\n", srv.port);
  run_capture(out, sizeof(out), CURL "-sI https://127.0.0.1:%d/hello.txt", nst_cert("ca.pem"),
              srv.port);
  assert_non_null(strstr(out, "HTTP/2 200"));
  assert_non_null(strstr(out, want));
  assert_int_equal(header_count(strstr(out, "\n") + 1, "alt-svc"), 1); /* caddy's own is gone */
  run_capture(out, sizeof(out), CURL "-sI https://127.0.0.1:%d/nope", nst_cert("ca.pem"), srv.port);
  assert_non_null(strstr(out, want));
  assert_int_equal(header_count(strstr(out, "\n") + 1, "alt-svc"), 1);
  /* over h3 too */
  snprintf(want, sizeof(want), "alt-svc: h3=\":%d\"; ma=2\n", srv.port);
  assert_int_equal(h3_get(srv.port, "/hello.txt", &r), 200);
  assert_string_equal(r.body, "hello, netstash\n");
  assert_non_null(strstr(r.headers, want));
  assert_int_equal(header_count(r.headers, "alt-svc"), 1);
  nst_stop(&srv);
}

/* The same certificate over TCP and QUIC: TLS verification fails the same
 * way on TCP, the QUIC handshake carries the same DER. */
static void test_caddy_h3_badcert(void **state) {
  static const struct {
    const char *variant, *leaf, *issuer;
    long expect;
  } cases[] = {
      {"h3-badcert-untrusted", "untrusted.pem", "untrusted-ca.pem",
       X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN},
      {"h3-badcert-wronghost", "wronghost.pem", NULL, X509_V_ERR_HOSTNAME_MISMATCH},
  };
  static unsigned char hs[1 << 16];
  size_t i;
  (void)state;
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    nst_server srv;
    tls_probe tp;
    h3_response r;
    char out[4096];
    size_t hs_len;
    assert_int_equal(nst_caddy_start(cases[i].variant, &srv), 0);
    /* TCP */
    tls_connect(srv.port, "example.test", 1, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
    assert_false(tp.handshake_ok);
    assert_int_equal(tp.verify_result, cases[i].expect);
    tls_connect(srv.port, "127.0.0.1", 0, ALPN_H2_H1, ALPN_H2_H1_LEN, 0, 0, &tp);
    assert_true(tp.handshake_ok);
    assert_string_equal(tp.alpn, "h2");
    run_capture(out, sizeof(out), CURL "https://127.0.0.1:%d/hello.txt ; printf '|%%d' $?",
                nst_cert("ca.pem"), srv.port);
    assert_string_equal(out, "|60");
    run_capture(out, sizeof(out), "curl -sk --max-time 10 https://127.0.0.1:%d/hello.txt",
                srv.port);
    assert_string_equal(out, "hello, netstash\n");
    /* QUIC: answers (gtlsclient does not verify), with the same chain */
    assert_int_equal(h3_get(srv.port, "/hello.txt", &r), 200);
    assert_string_equal(r.body, "hello, netstash\n");
    hs_len = h3_handshake_bytes(srv.port, hs, sizeof(hs));
    assert_true(hs_len > 300);
    assert_true(has_cert_der(hs, hs_len, cases[i].leaf));
    assert_false(has_cert_der(hs, hs_len, "good.pem"));
    if (cases[i].issuer != NULL)
      assert_true(has_cert_der(hs, hs_len, cases[i].issuer));
    nst_stop(&srv);
  }
  {
    nst_server srv;
    assert_int_equal(nst_caddy_start("h3-nonsense", &srv), -1);
    assert_int_equal(srv.pid, -1);
  }
}

static void test_gtlsserver(void **state) {
  static unsigned char hs[1 << 16];
  nst_server srv;
  char out[4096];
  h3_response r;
  size_t hs_len;
  (void)state;
  assert_int_equal(nst_gtlsserver_start(NULL, &srv), 0);
  assert_string_equal(srv.name, "gtlsserver");
  assert_true(srv.port >= 20000 && srv.port <= 60000);
  assert_int_equal(nst_quic_probe(srv.port, 1000), 1);
  assert_int_equal(tcp_connect(srv.port), -1); /* UDP only */

  assert_int_equal(h3_get(srv.port, "/hello.txt", &r), 200);
  assert_string_equal(r.body, "hello, netstash\n");
  assert_non_null(strstr(r.headers, "content-type: text/plain\n"));
  assert_int_equal(header_count(r.headers, "etag") + header_count(r.headers, "last-modified") +
                       header_count(r.headers, "date") + header_count(r.headers, "alt-svc"),
                   0);
  assert_int_equal(h3_get(srv.port, "/r/7.bin", &r), 200);
  assert_int_equal(r.body_len, 20000);
  run_capture(out, sizeof(out), "cmp -s %s/r/7.bin %s/h3dl/%d/7.bin; echo $?", nst_site(),
              nst_workdir(), h3_seq);
  assert_string_equal(out, "0\n");
  assert_int_equal(h3_get(srv.port, "/", &r), 200); /* index.html */
  assert_non_null(strstr(r.body, "netstash fixture site"));
  assert_int_equal(h3_get(srv.port, "/nope", &r), 404);
  assert_int_equal(h3_get(srv.port, "/r", &r), 308); /* a directory, broken Location */
  assert_non_null(strstr(r.headers, "location: //r/\n"));
  assert_int_equal(h3_get(srv.port, "/1000", &r), 200); /* generated zeros */
  assert_int_equal(r.body_len, 1000);
  assert_int_equal(r.body[0], 0);
  /* TLS with good.pem */
  hs_len = h3_handshake_bytes(srv.port, hs, sizeof(hs));
  assert_true(has_cert_der(hs, hs_len, "good.pem"));
  /* the log stays small (--quiet) */
  run_capture(out, sizeof(out), "wc -c < %s/logs/gtlsserver-%d.log", nst_workdir(), srv.port);
  assert_true(strtol(out, NULL, 10) < 1000);
  nst_stop(&srv);
  assert_int_equal(nst_quic_probe(srv.port, 200), 0);

  /* extra options reach the server: 2 s idle timeout in its transport
   * parameters */
  assert_int_equal(nst_gtlsserver_start("--timeout=2s --max-streams-bidi=4", &srv), 0);
  run_capture(out, sizeof(out),
              GTLSCLIENT
              "--no-quic-dump --no-http-dump 127.0.0.1 %d https://127.0.0.1:%d/hello.txt "
              "2>&1 | grep -c -E 'remote transport_parameters "
              "(max_idle_timeout=2000|initial_max_streams_bidi=4)$'",
              srv.port, srv.port);
  assert_string_equal(out, "2\n");
  nst_stop(&srv);
}

static void test_big50(void **state) {
  nst_server srv;
  char out[4096], want[128];
  const char *path, *hex;
  struct stat sb;
  (void)state;
  assert_int_equal(file_size("big50.bin"), -1); /* not part of nst_site() */
  path = nst_site_big50();
  assert_non_null(path);
  assert_string_equal(path, nst_path("site/big50.bin"));
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_size, 50 * 1024 * 1024);
  hex = nst_site_big50_sha256();
  assert_non_null(hex);
  assert_int_equal(strlen(hex), 64);
  run_capture(out, sizeof(out), "sha256sum < %s", path);
  snprintf(want, sizeof(want), "%s  -\n", hex);
  assert_string_equal(out, want);
  run_capture(out, sizeof(out), "cd %s && sha256sum -c big50.bin.sha256", nst_site());
  assert_string_equal(out, "big50.bin: OK\n");
  /* deterministic: the documented stream, first 8 bytes little-endian */
  run_capture(out, sizeof(out), "head -c 8 %s | od -An -tx8 | tr -d ' \n'", path);
  {
    uint64_t s = 0xB1650B1650B1650Bull, v;
    char exp[32];
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    v = s * 0x2545F4914F6CDD1Dull;
    snprintf(exp, sizeof(exp), "%016llx", (unsigned long long)v);
    assert_string_equal(out, exp);
  }
  assert_string_equal(nst_site_big50(), path); /* once */

  /* over HTTP/3, whole */
  assert_int_equal(nst_gtlsserver_start(NULL, &srv), 0);
  run_capture(
      out, sizeof(out),
      "d=%s/big50dl && mkdir -p $d && " GTLSCLIENT
      "-q --download=$d 127.0.0.1 %d https://127.0.0.1:%d/big50.bin && sha256sum < $d/big50.bin",
      nst_workdir(), srv.port, srv.port);
  assert_string_equal(out, want);
  nst_stop(&srv);
}

/* Parses the first A record of a DNS answer. */
static void dns_expect_a(int port, const char *name, const char *ip, uint32_t ttl) {
  unsigned char r[512];
  int n = nst_dns_query(port, name, 1, 2000, r, sizeof(r));
  size_t off = 12;
  char got[INET_ADDRSTRLEN];
  uint32_t got_ttl;
  assert_true(n > 12);
  assert_int_equal(r[3] & 0x0f, 0); /* NOERROR */
  assert_int_equal((r[6] << 8) | r[7], 1);
  /* skip the question */
  while (off < (size_t)n && r[off] != 0)
    off += (size_t)r[off] + 1;
  off += 5;
  /* answer: name (a pointer), type, class, ttl, rdlength, rdata */
  assert_true(off + 16 <= (size_t)n);
  assert_int_equal(r[off] & 0xc0, 0xc0);
  off += 2;
  assert_int_equal((r[off] << 8) | r[off + 1], 1);
  got_ttl = ((uint32_t)r[off + 4] << 24) | ((uint32_t)r[off + 5] << 16) |
            ((uint32_t)r[off + 6] << 8) | r[off + 7];
  assert_int_equal((r[off + 8] << 8) | r[off + 9], 4);
  inet_ntop(AF_INET, r + off + 10, got, sizeof(got));
  assert_string_equal(got, ip);
  assert_int_equal(got_ttl, ttl);
}

static int dns_rcode(int port, const char *name, int qtype) {
  unsigned char r[512];
  int n = nst_dns_query(port, name, qtype, 2000, r, sizeof(r));
  return n > 12 ? (r[3] & 0x0f) : -1;
}

static void test_dnsmasq(void **state) {
  nst_server srv;
  (void)state;
  assert_int_equal(nst_dnsmasq_start(&srv), 0);
  dns_expect_a(srv.port, "example.test", "127.0.0.1", 60);
  dns_expect_a(srv.port, "www.example.test", "127.0.0.1", 60);
  dns_expect_a(srv.port, "a.b.example.test", "127.0.0.1", 60);
  dns_expect_a(srv.port, "foo.test", "127.0.0.1", 60);
  assert_int_equal(dns_rcode(srv.port, "nothing.invalid", 1), 3);  /* NXDOMAIN */
  assert_int_equal(dns_rcode(srv.port, "example.com", 1), 5);      /* REFUSED */
  assert_int_equal(dns_rcode(srv.port, "example.test", 28), 0);    /* AAAA: NODATA */
  nst_stop(&srv);
  assert_int_equal(dns_rcode(srv.port, "example.test", 1), -1);
}

static void test_rawserver(void **state) {
  nst_server srv;
  char buf[200000];
  const char *body;
  size_t body_len, n;
  int fd, i, fds[64];
  (void)state;
  assert_int_equal(nst_rawserver_start(&srv), 0);

  /* keep-alive: three requests on one connection; /count sees all three */
  fd = tcp_connect(srv.port);
  assert_true(fd >= 0);
  assert_int_equal(send_str(fd, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_int_equal(body_len, 5);
  assert_memory_equal(body, "hello", 5);
  assert_int_equal(send_str(fd, "GET /ok?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_memory_equal(body, "hello", 5);
  assert_int_equal(send_str(fd, "GET /count HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(body_len, 1);
  assert_memory_equal(body, "3", 1);
  /* /echo with a body, on the same connection */
  assert_int_equal(
      send_str(fd, "POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: 42\r\nContent-Length: 4\r\n\r\nabcd"),
      0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(body_len,
                   strlen("POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: 42\r\nContent-Length: 4\r\n\r\nabcd"));
  assert_memory_equal(body, "POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: 42\r\n", 42);
  assert_memory_equal(body + body_len - 8, "\r\n\r\nabcd", 8);
  /* chunked request body is de-chunked */
  assert_int_equal(send_str(fd, "PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "3\r\nxyz\r\n2\r\n12\r\n0\r\n\r\n"),
                   0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_memory_equal(body + body_len - 9, "\r\n\r\nxyz12", 9);
  /* status, hsts, redirects, 404 */
  assert_int_equal(send_str(fd, "GET /status/418 HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(strncmp(buf, "HTTP/1.1 418 ", 13), 0);
  assert_int_equal(send_str(fd, "GET /status/503 HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(strncmp(buf, "HTTP/1.1 503 ", 13), 0);
  assert_int_equal(send_str(fd, "GET /hsts HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_non_null(strstr(buf, "\r\nStrict-Transport-Security: max-age=3600\r\n"));
  assert_int_equal(send_str(fd, "GET /redirect/2 HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(strncmp(buf, "HTTP/1.1 302 ", 13), 0);
  assert_non_null(strstr(buf, "\r\nLocation: /redirect/1\r\n"));
  assert_int_equal(send_str(fd, "GET /redirect/0 HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(strncmp(buf, "HTTP/1.1 200 ", 13), 0);
  assert_int_equal(send_str(fd, "GET /nope HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_int_equal(strncmp(buf, "HTTP/1.1 404 ", 13), 0);
  assert_int_equal(send_str(fd, "GET /gzip-bad HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(read_response(fd, buf, sizeof(buf), &body, &body_len), 0);
  assert_non_null(strstr(buf, "\r\nContent-Encoding: gzip\r\n"));
  assert_true(body_len > 10);
  assert_memory_equal(body, "\x1f\x8b\x08", 3);
  close(fd);

  /* curl follows the redirect chain */
  run_capture(buf, sizeof(buf), "curl -s --max-time 10 -L http://127.0.0.1:%d/redirect/5", srv.port);
  assert_string_equal(buf, "done\n");
  /* curl reuses the connection: one connect for three URLs */
  run_capture(buf, sizeof(buf),
              "curl -s --max-time 10 -w '|%%{num_connects}' http://127.0.0.1:%d/ok "
              "http://127.0.0.1:%d/ok http://127.0.0.1:%d/ok",
              srv.port, srv.port, srv.port);
  assert_string_equal(buf, "hello|1hello|0hello|0");
  /* gzip-bad is undecodable */
  run_capture(buf, sizeof(buf), "curl -s --max-time 10 --compressed http://127.0.0.1:%d/gzip-bad; "
                                "printf '|%%d' $?", srv.port);
  assert_string_equal(buf, "|61"); /* CURLE_BAD_CONTENT_ENCODING */

  /* /truncate: 50000 of 100000 bytes, then close */
  fd = tcp_connect(srv.port);
  assert_int_equal(send_str(fd, "GET /truncate HTTP/1.1\r\n\r\n"), 0);
  n = recv_all(fd, buf, sizeof(buf), 5000);
  close(fd);
  assert_non_null(strstr(buf, "Content-Length: 100000\r\n"));
  assert_int_equal(n - (size_t)(strstr(buf, "\r\n\r\n") + 4 - buf), 50000);
  /* /chunked-trunc: no last chunk */
  fd = tcp_connect(srv.port);
  assert_int_equal(send_str(fd, "GET /chunked-trunc HTTP/1.1\r\n\r\n"), 0);
  n = recv_all(fd, buf, sizeof(buf), 5000);
  close(fd);
  assert_non_null(strstr(buf, "Transfer-Encoding: chunked\r\n"));
  assert_true(n > 3000);
  assert_null(strstr(buf, "\r\n0\r\n"));
  /* /slow: headers at once, the body trickles */
  fd = tcp_connect(srv.port);
  assert_int_equal(send_str(fd, "GET /slow HTTP/1.1\r\n\r\n"), 0);
  n = recv_all(fd, buf, sizeof(buf), 500);
  assert_non_null(strstr(buf, "Content-Length: 30\r\n"));
  assert_true(n - (size_t)(strstr(buf, "\r\n\r\n") + 4 - buf) < 3);
  close(fd);
  /* /hang: nothing comes back */
  fd = tcp_connect(srv.port);
  assert_int_equal(send_str(fd, "GET /hang HTTP/1.1\r\n\r\n"), 0);
  n = recv_all(fd, buf, sizeof(buf), 300);
  assert_int_equal(n, 0);
  close(fd);

  /* many connections at once */
  for (i = 0; i < 64; i++) {
    fds[i] = tcp_connect(srv.port);
    assert_true(fds[i] >= 0);
  }
  for (i = 0; i < 64; i++)
    assert_int_equal(send_str(fds[i], "GET /ok HTTP/1.1\r\n\r\n"), 0);
  for (i = 0; i < 64; i++) {
    assert_int_equal(read_response(fds[i], buf, sizeof(buf), &body, &body_len), 0);
    assert_memory_equal(body, "hello", 5);
    close(fds[i]);
  }
  /* Connection: close is honoured */
  fd = tcp_connect(srv.port);
  assert_int_equal(send_str(fd, "GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
  n = recv_all(fd, buf, sizeof(buf), 5000);
  close(fd);
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_memory_equal(buf + n - 5, "hello", 5);
  nst_stop(&srv);
}

/* The rawserver is found from /proc/self/exe when NST_BUILDDIR is unset
 * (running the test binary by hand). */
static void test_rawserver_without_env(void **state) {
  char *saved = getenv("NST_BUILDDIR") ? strdup(getenv("NST_BUILDDIR")) : NULL;
  nst_server srv;
  int rc, rc2;
  (void)state;
  unsetenv("NST_BUILDDIR");
  rc = nst_rawserver_start(&srv);
  if (rc == 0)
    nst_stop(&srv);
  setenv("NST_BUILDDIR", "/nonexistent", 1);
  rc2 = nst_rawserver_start(&srv);
  if (saved != NULL) {
    setenv("NST_BUILDDIR", saved, 1);
    free(saved);
  } else {
    unsetenv("NST_BUILDDIR");
  }
  assert_int_equal(rc, 0);
  assert_int_equal(rc2, -1);
  assert_int_equal(srv.pid, -1);
}

/* Sends one datagram to 127.0.0.1:port on a connected UDP socket and
 * returns the errno of the following recv (ETIMEDOUT if nothing came). */
static int udp_send_recv_errno(int port, int timeout_ms) {
  struct sockaddr_in sa;
  struct pollfd pfd;
  char buf[64];
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), e = 0;
  assert_true(fd >= 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  assert_int_equal(send(fd, "x", 1, 0), 1);
  pfd.fd = fd;
  pfd.events = POLLIN;
  pfd.revents = 0;
  if (poll(&pfd, 1, timeout_ms) <= 0)
    e = ETIMEDOUT;
  else if (recv(fd, buf, sizeof(buf), 0) < 0)
    e = errno;
  close(fd);
  return e;
}

static void test_odd_ports(void **state) {
  unsigned char r[512];
  char out[256];
  int bh = nst_udp_blackhole(), cp = nst_closed_port(), ucp = nst_udp_closed_port(), fd;
  (void)state;
  assert_true(bh > 0);
  assert_true(cp > 0);
  assert_true(ucp > 0);
  assert_int_equal(nst_dns_query(bh, "example.test", 1, 300, r, sizeof(r)), -1);
  fd = tcp_connect(cp);
  assert_int_equal(fd, -1);
  assert_int_equal(errno, ECONNREFUSED);
  /* blackhole: silence, for QUIC too; a QUIC client times out */
  assert_int_equal(udp_send_recv_errno(bh, 200), ETIMEDOUT);
  assert_int_equal(nst_quic_probe(bh, 200), 0);
  /* (gtlsclient exits 0 even then: its log tells) */
  run_capture(out, sizeof(out),
              "timeout 10 gtlsclient --handshake-timeout=300ms 127.0.0.1 %d "
              "https://127.0.0.1:%d/ 2>&1 | grep -E -o 'ERR_HANDSHAKE_TIMEOUT|:status' | sort -u",
              bh, bh);
  assert_string_equal(out, "ERR_HANDSHAKE_TIMEOUT\n");
  /* closed UDP port: ICMP port unreachable */
  assert_int_equal(udp_send_recv_errno(ucp, 1000), ECONNREFUSED);
  assert_int_equal(nst_quic_probe(ucp, 1000), 0);
}

static void test_stop_reaps_and_fds(void **state) {
  nst_server srv;
  int before, port;
  pid_t pid;
  (void)state;
  before = nst_count_fds();
  assert_true(before >= 3);
  assert_int_equal(nst_rawserver_start(&srv), 0);
  pid = srv.pid;
  port = srv.port;
  nst_stop(&srv);
  assert_int_equal(srv.pid, -1);
  assert_int_equal(kill(pid, 0), -1); /* reaped, not a zombie */
  assert_int_equal(errno, ESRCH);
  assert_int_equal(tcp_connect(port), -1);
  assert_int_equal(nst_count_fds(), before);
  nst_stop(&srv); /* twice is harmless */
  nst_stop(NULL);
}

static void test_cleanup_removes_workdir(void **state) {
  char wd[4096];
  struct stat sb;
  nst_server srv;
  pid_t pid;
  (void)state;
  snprintf(wd, sizeof(wd), "%s", nst_workdir());
  assert_int_equal(nst_dnsmasq_start(&srv), 0);
  pid = srv.pid;
  nst_cleanup();
  assert_int_equal(stat(wd, &sb), -1);
  assert_int_equal(kill(pid, 0), -1);
  /* usable again afterwards */
  assert_non_null(nst_certs());
  assert_string_not_equal(nst_workdir(), wd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_workdir),
      cmocka_unit_test(test_certs),
      cmocka_unit_test(test_site),
      cmocka_unit_test(test_caddy_h2),
      cmocka_unit_test(test_caddy_h1),
      cmocka_unit_test(test_caddy_tls12),
      cmocka_unit_test(test_badtls),
      cmocka_unit_test(test_nghttpd),
      cmocka_unit_test(test_caddy_h3),
      cmocka_unit_test(test_caddy_h3_altsvc_short),
      cmocka_unit_test(test_caddy_h3_badcert),
      cmocka_unit_test(test_gtlsserver),
      cmocka_unit_test(test_big50),
      cmocka_unit_test(test_dnsmasq),
      cmocka_unit_test(test_rawserver),
      cmocka_unit_test(test_rawserver_without_env),
      cmocka_unit_test(test_odd_ports),
      cmocka_unit_test(test_stop_reaps_and_fds),
      cmocka_unit_test(test_cleanup_removes_workdir),
  };
  size_t total = sizeof(tests) / sizeof(tests[0]);
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  printf("%zu passed, %d failed\n", total - (size_t)failed, failed);
  return failed == 0 ? 0 : 1;
}
