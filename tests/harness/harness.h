/*
 * harness.h — real servers and certificates for tests, on loopback.
 *
 * Everything is created under one temporary work directory per test process
 * (removed at exit) and every server is started as a child process on a free
 * port chosen at random, then stopped (SIGTERM, then SIGKILL) at exit or by
 * nst_stop(). Functions print a reason to stderr and return -1 / NULL when a
 * server cannot start; tests then fail (never skip silently).
 *
 * Servers are children of the calling thread and get SIGKILL when it exits
 * (PR_SET_PDEATHSIG), so nothing outlives a crashed test: start them from
 * the main thread (or a thread that lives as long as the server is needed).
 * Logs of every server are in nst_workdir()/logs/NAME-PORT.log; set
 * NST_KEEP_WORKDIR=1 to keep the work dir after the test for a post-mortem.
 * nst-rawserver is looked up in $NST_BUILDDIR/tests/harness/ (set by
 * 'make check'), else next to the test binary (BUILDDIR/tests/{integration,
 * unit}/, libtool's .libs/lt-* handled).
 */
#ifndef NST_HARNESS_H
#define NST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Per-process temp dir ("/tmp/nst-XXXXXX", or under $TMPDIR), created on
 * first use; NULL if it cannot be created. */
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
 *                          (untrusted-ca.pem / .key; ca.key is there too)
 * Leaves carry keyUsage digitalSignature, extendedKeyUsage serverAuth and
 * CA:FALSE; leaf files hold the leaf only (clients trust ca.pem directly).
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
 *                              replaced by "plain\n"); caddy serves a
 *                              sidecar only to clients that accept br/gzip
 * Returns the directory, NULL on failure. */
const char *nst_site(void);

/* /big50.bin in nst_site(), for HTTP/3 bulk tests: 50 MiB (52,428,800
 * bytes) of deterministic pseudo-random content (xorshift64* seeded with
 * 0xB1650B1650B1650B, each 64-bit output little-endian; same bytes every
 * run), written on the first call only (~0.1 s) so other tests do not pay
 * for it, together with /big50.bin.sha256 ("HEX  big50.bin\n", the
 * sha256sum format; `sha256sum -c` in the site dir checks it). Servers
 * already running serve it too (they read the site dir per request).
 * nst_site_big50() returns the file's absolute path (nst_path()'s buffer
 * ring), nst_site_big50_sha256() its SHA-256 as 64 lowercase hex digits
 * (static storage, valid until nst_cleanup()); both generate the file if
 * needed and return NULL on failure. */
const char *nst_site_big50(void);
const char *nst_site_big50_sha256(void);

typedef struct nst_server {
  pid_t pid;
  int port;
  char name[32];
} nst_server;

/* caddy (2.6) serving nst_site() over HTTPS with good.pem, on 127.0.0.1
 * only. Variants:
 *   "h2"     protocols h1 h2, TLS 1.2+1.3 (default caddy), file_server with
 *            precompressed br gzip; path /hsts adds
 *            Strict-Transport-Security: max-age=3600; the site block also
 *            matches the names localhost, example.test and *.example.test
 *   "h1"     protocols h1 only (ALPN offers http/1.1 only)
 *   "tls12"  TLS 1.2 only (also for clients that send no SNI)
 * HTTP/3 variants: everything "h2" has, plus HTTP/3 (QUIC v1, ALPN h3, TLS
 * 1.3) on UDP 127.0.0.1:srv->port, the same number as the TCP port; the
 * start returns once TCP accepts and QUIC answers (nst_quic_probe):
 *   "h3"     protocols h1 h2 h3; h1/h2 responses (404s too) carry caddy's
 *            own `Alt-Svc: h3=":PORT"; ma=2592000` (one header, PORT =
 *            srv->port); h3 responses carry no Alt-Svc
 *   "h3-altsvc-short"
 *            as "h3", but every response, h3 ones included, carries exactly
 *            one `Alt-Svc: h3=":PORT"; ma=2` (caddy's own one replaced), for
 *            Alt-Svc expiry tests
 *   "h3-badcert-untrusted"
 *            as "h3" with untrusted.pem/.key; leaf and untrusted-ca.pem
 *            are sent as the chain, over TCP and QUIC alike
 *   "h3-badcert-wronghost"
 *            as "h3" with wronghost.pem/.key (SAN other.invalid only), for
 *            every name and for clients without SNI, over TCP and QUIC
 * The badcert variants run with automatic HTTPS off (no redirects, no
 * certificate management: caddy never looks for a better certificate).
 * Returns 0 and fills srv, or -1. */
int nst_caddy_start(const char *variant, nst_server *srv);

/* caddy "h2" (no HTTP/3 anywhere) whose responses advertise
 * `Alt-Svc: h3=":udp_port"; ma=60`: an h3 alternative that does not work
 * (point it at nst_udp_blackhole() for "UDP blocked", or at
 * nst_udp_closed_port() for an ICMP port-unreachable). */
int nst_caddy_start_altsvc_to(int udp_port, nst_server *srv);
/* The same, with the alternative on another host:
 * `Alt-Svc: h3="host:udp_port"; ma=60`. */
int nst_caddy_start_altsvc_to_host(const char *host, int udp_port, nst_server *srv);
/* caddy `variant` that also proxies /up/PATH to http://127.0.0.1:upstream_port/PATH
 * (reverse_proxy; e.g. nst-rawserver's hostile paths behind caddy's h2/h3). */
int nst_caddy_start_proxy_to(const char *variant, int upstream_port, nst_server *srv);

/* openssl s_server -www with a bad certificate: kind is "expired",
 * "wronghost" or "untrusted" (sent with its untrusted issuer as chain).
 * Any request gets s_server's status page (200, text/html, then close). */
int nst_badtls_start(const char *kind, nst_server *srv);

/* nghttpd (TLS, h2 only, good.pem) serving nst_site(); extra_args may be
 * NULL or space-separated options (e.g. "--max-concurrent-streams=8"). */
int nst_nghttpd_start(const char *extra_args, nst_server *srv);

/* gtlsserver, the ngtcp2 0.12 example HTTP/3 server (GnuTLS; Debian
 * package ngtcp2-server): QUIC v1 on UDP 127.0.0.1:srv->port (nothing on
 * TCP), TLS 1.3 with good.pem (leaf only), serving nst_site() as its
 * document root. Responses carry only server, content-type (from
 * /etc/mime.types, else application/octet-stream) and content-length: no
 * date, ETag, Last-Modified or Alt-Svc. It answers:
 *   /FILE          200 with the file
 *   / and DIR/     DIR/index.html
 *   /DIR           308 with a broken Location "//DIR/" (a network-path
 *                  reference): do not rely on it
 *   /N (digits)    N generated zero bytes (up to --max-dyn-length, 20M),
 *                  even if a file of that name exists
 *   anything else  404, a small HTML page
 * Defaults (its transport parameters): idle timeout 30 s, 100
 * bidirectional and 3 unidirectional streams, 1 MiB connection / 256 KiB
 * stream flow-control windows (auto-tuned up to 6 MiB). Runs with --quiet
 * (its log has one line); extra_args may be NULL or space-separated
 * options, placed before the address (e.g. "--timeout=2s
 * --max-streams-bidi=4"). Ready once it holds the UDP port and answers
 * nst_quic_probe(). */
int nst_gtlsserver_start(const char *extra_args, nst_server *srv);
/* The same on UDP port (e.g. a restart on a stopped server's port: a new
 * process with new session-ticket keys). */
int nst_gtlsserver_start_port(const char *extra_args, int port, nst_server *srv);

/* Sends one 1200-byte QUIC long-header packet with a reserved version
 * (0x1a2a3a4a) to UDP 127.0.0.1:port and waits up to timeout_ms for the
 * Version Negotiation packet every QUIC server answers with (RFC 9000
 * §6.1). Returns 1 if one came back, 0 otherwise (nothing bound, a
 * blackhole, or not QUIC). Used as the readiness probe of the HTTP/3
 * servers; no connection state is created on the server. */
int nst_quic_probe(int port, int timeout_ms);

/* dnsmasq answering: example.test, *.example.test and *.test -> 127.0.0.1
 * (TTL 60 s; AAAA queries get an empty NOERROR answer); names under
 * .invalid -> NXDOMAIN; everything else REFUSED. UDP and TCP on srv->port. */
int nst_dnsmasq_start(nst_server *srv);

/* Sends one hand-built DNS query (class IN, RD set) over UDP to
 * 127.0.0.1:port and waits up to timeout_ms for the matching answer.
 * Returns the answer's length (copied to reply, truncated to cap) or -1.
 * reply[3] & 0x0f is the RCODE. */
int nst_dns_query(int port, const char *name, int qtype, int timeout_ms, unsigned char *reply,
                  size_t cap);

/* nst-rawserver: a plain HTTP/1.1 server with fixed hostile behaviours
 * (see tests/harness/rawserver.c for the paths):
 * Every response has Content-Length unless noted; connections are kept alive
 * (HTTP/1.1) unless the request says "Connection: close"; HEAD is answered
 * without a body.
 *   /ok            200, 5 bytes "hello", Content-Length
 *   /truncate      Content-Length: 100000, sends 50000 bytes, closes
 *   /chunked-trunc chunked, sends some chunks, closes without the last chunk
 *   /slow          sends headers, then 1 byte per second for 30 s
 *   /hang          accepts and never answers
 *   /gzip-bad      Content-Encoding: gzip with corrupt bytes
 *   /status/NNN    answers with status NNN (200..599; anything else 400)
 *                  and body "status NNN\n" (no body for 204 and 304)
 *   /echo          echoes the request: body = the request head exactly as
 *                  received (request line, header lines, CRLFs, blank line)
 *                  followed by the request body (de-chunked)
 *   /hsts          200 with Strict-Transport-Security (ignored over http)
 *   /redirect/N    302 to /redirect/N-1, /redirect/0 -> 200
 *   /count         body: number of requests this server has seen, this one
 *                  included, in decimal without a newline
 *   anything else  404
 * A query string is ignored when matching paths. */
int nst_rawserver_start(nst_server *srv);

/* nst-evilserver (tests/harness/evilserver.c lists its paths): hostile
 * HTTP/1.1 and hand-made HTTP/2 on 127.0.0.1 for the hostile-peer tests.
 * mode: "http" (plain HTTP/1.1), "tls" (TLS 1.3 with good.pem, ALPN h2 and
 * http/1.1), "tls12" (TLS 1.2 only), "tls10" (TLS 1.0 only). Found like
 * nst-rawserver. Returns 0 and fills srv, or -1. */
int nst_evilserver_start(const char *mode, nst_server *srv);

/* A bound UDP port on 127.0.0.1 that never answers (DNS timeouts, "UDP
 * blocked" for QUIC: no Version Negotiation, no ICMP, a client's handshake
 * times out); kept open by the harness until nst_cleanup(). Datagrams are
 * never read: once the socket buffer is full they are dropped silently. */
int nst_udp_blackhole(void);
/* A UDP port on 127.0.0.1 with nothing bound: datagrams to it get an ICMP
 * port unreachable (a connected UDP socket sees ECONNREFUSED). Best effort:
 * a UDP port cannot be reserved without binding it, so this only picks a
 * port that is free when called; somebody may take it later. */
int nst_udp_closed_port(void);
/* A TCP port on 127.0.0.1 with nothing listening (connection refused); the
 * harness keeps it bound (not listening) so nobody else takes it. */
int nst_closed_port(void);

/* Stops one server (SIGTERM, waits up to 2 s, then SIGKILL) and reaps it;
 * sets srv->pid to -1. Accepts NULL and stopped servers. */
void nst_stop(nst_server *srv);
/* Stops all servers, closes the blackhole/closed ports and removes the work
 * dir (registered with atexit on first use). Afterwards the harness can be
 * used again (a new work dir, new certificates). */
void nst_cleanup(void);

/* Number of file descriptors open in this process (from /proc/self/fd). */
int nst_count_fds(void);

/* Bytes off .. off+n-1 of a deterministic stream without a short period
 * (the rawserver's /cache/big/N bodies), into dst. */
static inline void nst_pattern(unsigned char *dst, uint64_t off, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint64_t x = off + i;
    dst[i] = (unsigned char)(x ^ (x >> 8) * 31 ^ (x >> 16) * 131);
  }
}

/* Bytes off .. off+n-1 of a text that compresses well (the rawserver's
 * /cache/text/N bodies, text/html), into dst. */
static inline void nst_text(unsigned char *dst, uint64_t off, size_t n) {
  static const char line[] = "<p>netstash keeps this page for the next visit.</p>\n";
  for (size_t i = 0; i < n; i++)
    dst[i] = (unsigned char)line[(off + i) % (sizeof(line) - 1)];
}

#endif
