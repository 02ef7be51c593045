/*
 * harness.h — real servers and certificates for tests, on loopback.
 *
 * Everything is created under one temporary work directory per test process
 * (removed at exit) and every server is started as a child process on a free
 * port chosen at random, then stopped (SIGTERM, then SIGKILL) at exit or by
 * nst_stop(). Functions print a reason to stderr and return -1 / NULL when a
 * server cannot start; tests then fail (never skip silently).
 */
#ifndef NST_HARNESS_H
#define NST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

/* Per-process temp dir ("/tmp/nst-XXXXXX"), created on first use. */
const char *nst_workdir(void);
/* Absolute path of name inside the work dir (static buffer ring of 8). */
const char *nst_path(const char *name);

/* Certificates, generated once per process with the OpenSSL API (all keys
 * ECDSA P-256), in nst_workdir()/certs/:
 *   ca.pem                 test CA (trusted by the tests via --cacert)
 *   good.pem / good.key    leaf by the CA; SAN: 127.0.0.1, ::1, localhost,
 *                          example.test, *.example.test, *.test
 *   expired.pem/.key       same SANs, validity ended yesterday
 *   wronghost.pem/.key     SAN only other.invalid
 *   untrusted.pem/.key     same SANs, signed by a CA that is not ca.pem
 * Returns the directory, NULL on failure. */
const char *nst_certs(void);
/* Path of a file in the certs dir, e.g. nst_cert("ca.pem"). */
const char *nst_cert(const char *name);

/* The fixture site, generated once in nst_workdir()/site/:
 *   /index.html                small HTML page
 *   /hello.txt                 "hello, netstash\n"
 *   /r/0.bin .. /r/199.bin     20,000 bytes each, deterministic content
 *   /big.bin                   4 MiB
 *   /text.txt                  ~64 KiB of repetitive text, with text.txt.br and
 *                              text.txt.gz sidecars (brotli / gzip programs)
 *   /bomb.txt                  a 64 MiB run of 'a', served only as bomb.txt.gz
 *                              and bomb.txt.br sidecars (the plain file is
 *                              replaced by a tiny one)
 * Returns the directory. */
const char *nst_site(void);

typedef struct nst_server {
  pid_t pid;
  int port;
  char name[32];
} nst_server;

/* caddy serving nst_site() over HTTPS with good.pem, on 127.0.0.1 only.
 * Variants:
 *   "h2"     protocols h1 h2, TLS 1.2+1.3 (default caddy), file_server with
 *            precompressed br gzip; path /hsts adds
 *            Strict-Transport-Security: max-age=3600; the site block also
 *            matches the names example.test and *.example.test
 *   "h1"     protocols h1 only (ALPN offers http/1.1 only)
 *   "tls12"  TLS 1.2 only
 * Returns 0 and fills srv, or -1. */
int nst_caddy_start(const char *variant, nst_server *srv);

/* openssl s_server -www with a bad certificate: kind is "expired",
 * "wronghost" or "untrusted". */
int nst_badtls_start(const char *kind, nst_server *srv);

/* nghttpd (TLS, h2 only) serving nst_site(); extra_args may be NULL
 * (e.g. "--max-concurrent-streams=8"). */
int nst_nghttpd_start(const char *extra_args, nst_server *srv);

/* dnsmasq answering: example.test, *.example.test and *.test -> 127.0.0.1
 * (TTL 60 s); names under .invalid -> NXDOMAIN; everything else REFUSED. */
int nst_dnsmasq_start(nst_server *srv);

/* nst-rawserver: a plain HTTP/1.1 server with fixed hostile behaviours
 * (see tests/harness/rawserver.c for the paths):
 *   /ok            200, 5 bytes "hello", Content-Length
 *   /truncate      Content-Length: 100000, sends 50000 bytes, closes
 *   /chunked-trunc chunked, sends some chunks, closes without the last chunk
 *   /slow          sends headers, then 1 byte per second for 30 s
 *   /hang          accepts and never answers
 *   /gzip-bad      Content-Encoding: gzip with corrupt bytes
 *   /status/NNN    answers with status NNN and a short body
 *   /echo          echoes the request (method, headers, body) as text
 *   /hsts          200 with Strict-Transport-Security (ignored over http)
 *   /redirect/N    302 to /redirect/N-1, /redirect/0 -> 200
 *   /count         body: number of requests this server has seen
 */
int nst_rawserver_start(nst_server *srv);

/* A bound UDP port on 127.0.0.1 that never answers (DNS timeouts); kept
 * open by the harness until exit. */
int nst_udp_blackhole(void);
/* A TCP port on 127.0.0.1 with nothing listening (connection refused). */
int nst_closed_port(void);

/* Stops one server (SIGTERM, waits up to 2 s, then SIGKILL). */
void nst_stop(nst_server *srv);
/* Stops all servers and removes the work dir (also registered atexit). */
void nst_cleanup(void);

/* Number of file descriptors open in this process (from /proc/self/fd). */
int nst_count_fds(void);

#endif
