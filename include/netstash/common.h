/*
 * netstash — common definitions: export macro, error codes, version,
 * context, options, logging and allocator.
 *
 * Thread rule (whole library unless a function says otherwise): every public
 * function is safe to call from any thread. Callbacks run on the context's
 * loop thread (see netstash_ctx_new) and must not block.
 */
#ifndef NETSTASH_COMMON_H
#define NETSTASH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BUILDING_NETSTASH) && defined(__GNUC__)
#define NETSTASH_EXTERN __attribute__((visibility("default")))
#else
#define NETSTASH_EXTERN
#endif

/* ------------------------------------------------------------------------
 * Errors
 *
 * One table generates the enum, netstash_strerror() and netstash_error_name().
 * Codes are only ever appended; numbers never change.
 *   1..99    API misuse and local conditions (the caller's bug or resources)
 *   100..199 network outcomes (DNS, connect, TLS, HTTP)
 *   200..299 storage and content
 * ------------------------------------------------------------------------ */
#define NETSTASH_ERROR_MAP(X)                                                  \
  X(OK, 0, "success")                                                          \
  X(E_INVALID_ARGUMENT, 1, "invalid argument")                                 \
  X(E_ILLEGAL_STATE, 2, "call not allowed in the current state")               \
  X(E_NOMEM, 3, "out of memory")                                               \
  X(E_UNSUPPORTED, 4, "not supported by this build")                           \
  X(E_BAD_URL, 5, "malformed or unsupported URL")                              \
  X(E_CANCELED, 6, "operation canceled")                                       \
  X(E_WOULD_DEADLOCK, 7, "blocking call made on the loop thread")              \
  X(E_WAIT_TIMEOUT, 8, "wait timed out before the operation ended")            \
  X(E_INTERNAL, 9, "internal error")                                           \
  X(E_IO, 10, "local I/O error")                                               \
  X(E_SHUTDOWN, 11, "context is shutting down")                                \
  X(E_AGAIN, 12, "nothing to read yet: wait for the readable callback")         \
  X(E_DNS_NOT_FOUND, 100, "host name not found")                               \
  X(E_DNS_TIMEOUT, 101, "DNS lookup timed out")                                \
  X(E_DNS_FAILED, 102, "DNS lookup failed")                                    \
  X(E_CONNECT_REFUSED, 110, "connection refused")                              \
  X(E_CONNECT_FAILED, 111, "could not connect to host")                        \
  X(E_TIMEOUT, 112, "operation timed out")                                     \
  X(E_TLS_HANDSHAKE, 120, "TLS handshake failed")                              \
  X(E_TLS_VERSION, 121, "peer does not offer an allowed TLS version")          \
  X(E_TLS_CERT_EXPIRED, 122, "certificate expired or not yet valid")           \
  X(E_TLS_CERT_UNTRUSTED, 123, "certificate not trusted")                      \
  X(E_TLS_CERT_HOSTNAME, 124, "certificate does not match the host name")      \
  X(E_TLS_CERT_INVALID, 125, "certificate rejected")                           \
  X(E_TLS_CA_FILE, 126, "CA file or directory unusable")                       \
  X(E_PROTOCOL, 130, "HTTP protocol error")                                    \
  X(E_TRUNCATED, 131, "response body truncated")                               \
  X(E_TOO_LARGE, 132, "size limit exceeded")                                   \
  X(E_DECODE, 133, "content decoding failed")                                  \
  X(E_SEND, 134, "failed sending data")                                        \
  X(E_RECV, 135, "failed receiving data")                                      \
  X(E_NETWORK, 136, "network error")                                           \
  X(E_TOO_MANY_REDIRECTS, 137, "too many redirects")                           \
  X(E_CALLBACK, 138, "a callback asked to stop the transfer")                  \
  X(E_NOT_CACHED, 139, "not in the cache and the network may not be used")     \
  X(E_STORE_CORRUPT, 200, "store is corrupt or unreadable")                    \
  X(E_STORE_VERSION, 201, "store was written by an incompatible version")      \
  X(E_STORE_FULL, 202, "store is full")                                        \
  X(E_STORE_BUSY, 203, "store is busy (another writer, or no reader slot)")    \
  X(E_NOT_FOUND, 204, "not found")                                             \
  X(E_MANIFEST_INVALID, 205, "preload manifest invalid")                       \
  X(E_SIGNATURE, 206, "manifest signature missing, malformed or refused")      \
  X(E_MANIFEST_EXPIRED, 207, "preload manifest expired")                       \
  X(E_DOWNGRADE, 208, "manifest version not newer than the installed one")   \
  X(E_INTEGRITY, 209, "body does not match its integrity metadata")           \
  X(E_INCOMPLETE, 210, "critical preload resources missing: not published")   \
  X(E_NOT_TARGETED, 211, "manifest rollout does not include this device")     \
  X(E_DEFERRED, 212, "deferred: the manifest asks for an unmetered network")

typedef enum netstash_error {
#define NETSTASH_X_ENUM(name, num, text) NETSTASH_##name = num,
  NETSTASH_ERROR_MAP(NETSTASH_X_ENUM)
#undef NETSTASH_X_ENUM
  NETSTASH_ERROR_MAX_ /* not a code; grows as codes are appended */
} netstash_error;

/* Human-readable text of a code; never NULL (unknown codes get a fixed text).
 * Since 0.1. */
NETSTASH_EXTERN const char *netstash_strerror(netstash_error err);
/* Symbolic name ("NETSTASH_E_DNS_TIMEOUT"); never NULL. Since 0.1. */
NETSTASH_EXTERN const char *netstash_error_name(netstash_error err);
/* Nonzero when err is a network outcome (100..199), not API misuse. */
NETSTASH_EXTERN int netstash_error_is_network(netstash_error err);

/* ------------------------------------------------------------------------
 * Version and features
 * ------------------------------------------------------------------------ */
#define NETSTASH_VERSION_MAJOR 0
#define NETSTASH_VERSION_MINOR 1
#define NETSTASH_VERSION_PATCH 0
#define NETSTASH_VERSION_NUM                                                   \
  ((NETSTASH_VERSION_MAJOR << 16) | (NETSTASH_VERSION_MINOR << 8) |            \
   NETSTASH_VERSION_PATCH)

#define NETSTASH_FEATURE_HTTP2 (1u << 0)
#define NETSTASH_FEATURE_HTTP3 (1u << 1)
#define NETSTASH_FEATURE_BROTLI (1u << 2)
#define NETSTASH_FEATURE_GZIP (1u << 3)
#define NETSTASH_FEATURE_ASYNC_DNS (1u << 4)
#define NETSTASH_FEATURE_HSTS (1u << 5)
#define NETSTASH_FEATURE_ZSTD (1u << 6)

/* Version of the library actually loaded, as "0.1.0"; never NULL. If
 * version_num is not NULL it receives NETSTASH_VERSION_NUM of the library and
 * features (if not NULL) the NETSTASH_FEATURE_* bits it was built with. */
NETSTASH_EXTERN const char *netstash_version(uint32_t *version_num,
                                             uint32_t *features);

/* ------------------------------------------------------------------------
 * Allocator (a caller-filled table: versioned)
 *
 * Copied at netstash_ctx_new(); used for all of the context's own state.
 * libcurl, c-ares and libuv allocate through their own global allocators.
 * ------------------------------------------------------------------------ */
typedef struct netstash_allocator {
  void *user_data;
  void *(*malloc)(size_t size, void *user_data);
  void (*free)(void *ptr, void *user_data);
  void *(*calloc)(size_t nmemb, size_t size, void *user_data);
  void *(*realloc)(void *ptr, size_t size, void *user_data);
} netstash_allocator;

#define NETSTASH_ALLOCATOR_V1 1
#define NETSTASH_ALLOCATOR_VERSION NETSTASH_ALLOCATOR_V1

/* ------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------ */
typedef enum netstash_log_level {
  NETSTASH_LOG_ERROR = 0,
  NETSTASH_LOG_WARN = 1,
  NETSTASH_LOG_INFO = 2,
  NETSTASH_LOG_DEBUG = 3,
  NETSTASH_LOG_TRACE = 4
} netstash_log_level;

/* Called on whatever thread logs (usually the loop thread). msg is valid
 * until the callback returns. Nothing in the library prints by itself. */
typedef void (*netstash_log_cb)(netstash_log_level level, const char *module,
                                const char *msg, void *user_data);

/* ------------------------------------------------------------------------
 * Options: library-owned, one setter per knob. Copied by netstash_ctx_new;
 * the options object may be deleted right after.
 * ------------------------------------------------------------------------ */
typedef struct netstash_options netstash_options;

typedef enum netstash_tls_version {
  NETSTASH_TLS_1_2 = 12,
  NETSTASH_TLS_1_3 = 13
} netstash_tls_version;

NETSTASH_EXTERN netstash_error netstash_options_new(netstash_options **out);
NETSTASH_EXTERN void netstash_options_del(netstash_options *opts);

NETSTASH_EXTERN netstash_error netstash_options_set_allocator_versioned(
    netstash_options *opts, int version, const netstash_allocator *alloc);
#define netstash_options_set_allocator(opts, alloc)                            \
  netstash_options_set_allocator_versioned((opts), NETSTASH_ALLOCATOR_VERSION, \
                                           (alloc))

/* Log callback and the most verbose level passed to it (default WARN). */
NETSTASH_EXTERN netstash_error netstash_options_set_log(netstash_options *opts,
                                                        netstash_log_cb cb,
                                                        netstash_log_level level,
                                                        void *user_data);
/* PEM bundle of trusted CAs, replacing the system store. */
NETSTASH_EXTERN netstash_error netstash_options_set_ca_file(netstash_options *opts,
                                                            const char *path);
/* Hashed CA directory (c_rehash), replacing the system store. */
NETSTASH_EXTERN netstash_error netstash_options_set_ca_dir(netstash_options *opts,
                                                           const char *path);
/* Lowest TLS version accepted (default NETSTASH_TLS_1_3). */
NETSTASH_EXTERN netstash_error netstash_options_set_tls_min_version(
    netstash_options *opts, netstash_tls_version v);
/* DNS servers as "ADDR[:PORT],..." (IPv6 as "[ADDR]:PORT"); default: the
 * system's resolv.conf. */
NETSTASH_EXTERN netstash_error netstash_options_set_dns_servers(netstash_options *opts,
                                                                const char *csv);
/* Per-try DNS timeout (default 2000 ms) and tries per server (default 2). */
NETSTASH_EXTERN netstash_error netstash_options_set_dns_timeout_ms(netstash_options *opts,
                                                                   uint32_t ms);
NETSTASH_EXTERN netstash_error netstash_options_set_dns_tries(netstash_options *opts,
                                                              uint32_t tries);
/* Upper bound on the DNS cache entries (default 1024); TTLs are respected. */
NETSTASH_EXTERN netstash_error netstash_options_set_dns_cache_size(netstash_options *opts,
                                                                   uint32_t entries);
/* Default connect timeout for requests that do not set one (10000 ms). */
NETSTASH_EXTERN netstash_error netstash_options_set_connect_timeout_ms(
    netstash_options *opts, uint32_t ms);
/* Connection limits: per host (default 6, as browsers) and total (0: none).
 * HTTP/2 multiplexes any number of requests over one connection. */
NETSTASH_EXTERN netstash_error netstash_options_set_max_host_connections(
    netstash_options *opts, uint32_t n);
NETSTASH_EXTERN netstash_error netstash_options_set_max_total_connections(
    netstash_options *opts, uint32_t n);
/* Cap on a decoded (decompressed) body, bomb protection (default 256 MiB). */
NETSTASH_EXTERN netstash_error netstash_options_set_max_decoded_body(
    netstash_options *opts, uint64_t bytes);
/* Honour Strict-Transport-Security (default on). */
NETSTASH_EXTERN netstash_error netstash_options_set_hsts(netstash_options *opts,
                                                         int enable);
/* HTTP/3 (default on): an https origin that advertised h3 with Alt-Svc
 * (RFC 7838, remembered in the profile's store, or in memory without a
 * profile) is fetched over QUIC; when QUIC fails or is slow the request goes
 * over TCP without failing, and the origin's h3 is left alone for a while
 * (5 min, doubling per failure). Off: never h3 unless a request forces it
 * with netstash_request_set_http_version(NETSTASH_HTTP_3). */
NETSTASH_EXTERN netstash_error netstash_options_set_http3(netstash_options *opts, int enable);
/* Remote mode: the context sends every fetch and job to a running netd on
 * this unix socket (HTTP/2), which answers from its profile's preload store,
 * HTTP cache and cookie jar, or the network; the API is unchanged (one
 * header, two backends). Local caches, cookies and DNS are then unused; the
 * answer's source and cache reason are netd's. A request in flight when netd
 * stops fails (never a cut body taken as complete); later requests reconnect.
 * NULL: local mode (default). */
NETSTASH_EXTERN netstash_error netstash_options_set_remote(netstash_options *opts,
                                                           const char *socket_path);
/* How long a request waits for a new QUIC connection's handshake before it
 * goes over TCP instead (default 300 ms, 1..60000); the handshake goes on,
 * and later requests use h3 once it is done. */
NETSTASH_EXTERN netstash_error netstash_options_set_h3_race_ms(netstash_options *opts,
                                                               uint32_t ms);
/* User-Agent sent when a request sets none (default "netstash/VERSION"). */
NETSTASH_EXTERN netstash_error netstash_options_set_user_agent(netstash_options *opts,
                                                               const char *ua);
/* Profile directory: its LMDB store holds the HTTP cache (and, in later
 * releases, cookie jars, HSTS state and preloads). Created if missing. A
 * store that cannot be opened (corrupt, newer schema) fails
 * netstash_ctx_new with the reason in detail. No profile: no HTTP cache. */
NETSTASH_EXTERN netstash_error netstash_options_set_profile_dir(netstash_options *opts,
                                                                const char *dir);
/* Use the profile's HTTP cache (RFC 9111 private cache; default on). */
NETSTASH_EXTERN netstash_error netstash_options_set_http_cache(netstash_options *opts,
                                                               int enable);
/* Partition cache keys by top-level site (default on, as Chromium). */
NETSTASH_EXTERN netstash_error netstash_options_set_cache_partitioning(netstash_options *opts,
                                                                       int enable);
/* Store the HTTP cache's text bodies (HTML, CSS, JavaScript, JSON...) that
 * came uncompressed recompressed with Brotli where that saves 10 % (default
 * off). Less disk, but every hit on such a body decodes it (a 50 KB HTML
 * hit through netd's gateway: ~15x the CPU of a stored-as-is one), where
 * a body kept as it came is handed out from the store's map. Bodies stored
 * either way stay readable. */
NETSTASH_EXTERN netstash_error netstash_options_set_cache_recompress(netstash_options *opts,
                                                                     int enable);
/* Size the store evicts down to (least recently used first; default 256 MiB,
 * at least 1 MiB). */
NETSTASH_EXTERN netstash_error netstash_options_set_cache_max_bytes(netstash_options *opts,
                                                                    uint64_t bytes);

/* ------------------------------------------------------------------------
 * Context
 *
 * A context owns one loop thread (libuv) that runs every transfer, DNS lookup
 * and callback of the context. Public calls from other threads post work to
 * that thread; callbacks are always invoked on it, never from inside the
 * public call that started the work.
 * ------------------------------------------------------------------------ */
typedef struct netstash_ctx netstash_ctx;

/* opts may be NULL (all defaults). On error *out is NULL and detail (if not
 * NULL, of detail_len bytes) receives a one-line reason. */
NETSTASH_EXTERN netstash_error netstash_ctx_new(netstash_ctx **out,
                                                const netstash_options *opts,
                                                char *detail, size_t detail_len);
/* Cancels every transfer still running (each gets its terminal callback with
 * NETSTASH_E_CANCELED), stops and joins the loop thread, frees everything.
 * Must not be called from the loop thread. NULL is accepted. */
NETSTASH_EXTERN void netstash_ctx_del(netstash_ctx *ctx);

typedef enum netstash_stat {
  NETSTASH_STAT_CONNECTIONS_OPENED = 0, /* TCP connections and QUIC connections opened */
  NETSTASH_STAT_TLS_HANDSHAKES = 1,     /* TLS handshakes completed */
  NETSTASH_STAT_DNS_QUERIES = 2,        /* lookups sent to the resolver */
  NETSTASH_STAT_DNS_CACHE_HITS = 3,     /* lookups answered by the DNS cache */
  NETSTASH_STAT_FETCHES_STARTED = 4,
  NETSTASH_STAT_FETCHES_ACTIVE = 5,
  NETSTASH_STAT_BYTES_RECEIVED = 6,     /* body bytes off the wire */
  NETSTASH_STAT_H3_REQUESTS = 7,        /* requests sent over HTTP/3 */
  NETSTASH_STAT_TLS_RESUMED = 8,        /* handshakes (TCP or QUIC) that resumed a session */
  NETSTASH_STAT_EARLY_DATA = 9          /* requests sent as 0-RTT early data (HTTP/3, safe
                                           methods) that the server accepted */
} netstash_stat;

/* A counter of the context; 0 for an unknown stat. */
NETSTASH_EXTERN uint64_t netstash_ctx_stat(netstash_ctx *ctx, netstash_stat which);

/* Blocks until every fetch of the context has ended, background cache
 * revalidations included (a one-shot tool calls it before netstash_ctx_del
 * so that a stale-while-revalidate refresh is stored). timeout_ms 0: no
 * limit. NETSTASH_E_WAIT_TIMEOUT, NETSTASH_E_WOULD_DEADLOCK on the loop
 * thread. */
NETSTASH_EXTERN netstash_error netstash_ctx_drain(netstash_ctx *ctx, uint32_t timeout_ms);

/* Frees memory the library handed out with a "free with netstash_free" note. */
NETSTASH_EXTERN void netstash_free(netstash_ctx *ctx, void *ptr);

#ifdef __cplusplus
}
#endif
#endif /* NETSTASH_COMMON_H */
