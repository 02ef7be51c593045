/*
 * lookup_wire.h — the synchronous preload lookup on netd's IPC socket.
 *
 * netstash_intercept_preloaded() (and netstash_preload_lookup()) on a
 * remote-mode context ask netd over a connection of the hit's own, from the
 * caller's thread: one request, one answer, no HTTP/2 and no loop thread —
 * what a plain unix-socket ping-pong costs, plus netd's lookup. netd tells the
 * protocols apart by a connection's first byte: 0 here, 'P' for the HTTP/2
 * client preface.
 *
 * Client, once per connection: NS_LOOKUP_MAGIC. Then per lookup: a u32 URL
 * length (1..NS_LOOKUP_MAX_URL) and the URL. The next request is sent only
 * after the whole answer was read (netd closes a connection that sends more
 * while an answer is being written).
 * netd, per request: an ns_lookup_answer, then head_len bytes: nfields
 * fields, each a u32 name length, a u32 value length, the name and the value,
 * then the manifest id (id_len bytes); then body_len bytes of body (identity,
 * as stored). err other than 0 (a netstash_error): nothing follows.
 * Integers in host byte order: both ends are on one machine.
 */
#ifndef NS_PRELOAD_LOOKUP_WIRE_H
#define NS_PRELOAD_LOOKUP_WIRE_H

#include <stdint.h>

#define NS_LOOKUP_MAGIC "\0nslook1"
#define NS_LOOKUP_MAGIC_LEN 8
#define NS_LOOKUP_MAX_URL 8192u
/* Larger bodies are answered NETSTASH_E_TOO_LARGE: a job streams them. */
#define NS_LOOKUP_MAX_BODY (16u << 20)
#define NS_LOOKUP_MAX_HEAD (256u << 10)
#define NS_LOOKUP_MAX_FIELDS 64u /* as a local hit keeps */

typedef struct ns_lookup_answer {
  uint32_t err; /* netstash_error, 0: a hit follows */
  uint32_t status;
  uint32_t nfields;
  uint32_t head_len; /* fields and id */
  uint32_t id_len;
  uint32_t reserved; /* 0 */
  uint64_t body_len;
  uint64_t version;
} ns_lookup_answer;

#endif /* NS_PRELOAD_LOOKUP_WIRE_H */
