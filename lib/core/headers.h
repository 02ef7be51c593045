/*
 * headers.h — an ordered list of HTTP header fields. Internal.
 *
 * (name, value) pairs in arrival order; several lines with the same name are
 * kept apart (Set-Cookie must be). Names are compared case-insensitively
 * (RFC 9110 §5.1) and stored as given. Values are stored with leading and
 * trailing OWS removed (RFC 9110 §5.5). Names must be tokens; values must not
 * contain NUL, CR, LF or other CTLs except HTAB (RFC 9110 §5.5) — such input
 * is refused with NETSTASH_E_INVALID_ARGUMENT rather than stored.
 *
 * Every allocation goes through the ns_mem given at init; sizes are
 * overflow-checked; NETSTASH_E_NOMEM leaves the list unchanged.
 *
 * The binary form (ns_headers_encode/decode) is what the store keeps for a
 * response head:
 *
 *   byte 0        format version, NS_HEADERS_FORMAT_V1 (1)
 *   varint        number of fields N
 *   N times:      varint name length, name bytes, varint value length, value
 *
 * varints are unsigned LEB128 (7 bits per byte, least significant first, at
 * most 5 bytes, minimal encoding required). Limits on decode: N <=
 * NS_HEADERS_MAX_FIELDS, a name or value <= NS_HEADERS_MAX_FIELD_LEN bytes.
 * Decoding validates everything it would accept from the wire (token names,
 * value characters) so a corrupt record can never produce a field that
 * ns_headers_add would refuse.
 */
#ifndef NS_CORE_HEADERS_H
#define NS_CORE_HEADERS_H

#include "ns_setup.h"

#include "core/buf.h"

#define NS_HEADERS_FORMAT_V1 1
#define NS_HEADERS_MAX_FIELDS 4096
#define NS_HEADERS_MAX_FIELD_LEN (1u << 20)

typedef struct ns_header_field {
  char *name;  /* NUL-terminated, in the list's blocks (they never move) */
  char *value; /* NUL-terminated, right after the name */
  size_t name_len, value_len;
} ns_header_field;

struct ns_headers_block;

typedef struct ns_headers {
  const ns_mem *mem;
  ns_header_field *f;
  size_t len, cap;
  /* the fields' bytes, carved from blocks freed with the list (a removed or
   * replaced field's bytes stay until then): a decoded stored head costs
   * two allocations, not one per field */
  struct ns_headers_block *blk;
} ns_headers;

/* Empty list, allocates nothing. mem must outlive the list. */
void ns_headers_init(ns_headers *h, const ns_mem *mem);
/* Frees every field; the list is empty and may be reused. NULL accepted. */
void ns_headers_free(ns_headers *h);
void ns_headers_clear(ns_headers *h); /* same as free (kept for readability) */
/* Empties the list and keeps its field array and newest block for the next
 * fields (a list refilled per lookup allocates once). */
void ns_headers_reset(ns_headers *h);
/* dst (initialised, any content) becomes a copy of src. On error dst is
 * unchanged. */
netstash_error ns_headers_copy(ns_headers *dst, const ns_headers *src);

static inline size_t ns_headers_len(const ns_headers *h) { return h->len; }

/* Appends a field. Errors: NETSTASH_E_INVALID_ARGUMENT (name not a token,
 * value with forbidden characters, too long), NETSTASH_E_NOMEM. */
netstash_error ns_headers_add(ns_headers *h, const char *name, size_t name_len,
                              const char *value, size_t value_len);
netstash_error ns_headers_add_str(ns_headers *h, const char *name, const char *value);
/* Parses one "Name: value" line (no CRLF) and appends it. */
netstash_error ns_headers_add_line(ns_headers *h, const char *line, size_t len);
/* Replaces every field named name by one field (at the position of the first
 * one, or appended). */
netstash_error ns_headers_set_str(ns_headers *h, const char *name, const char *value);
/* Removes every field named name; returns how many. */
size_t ns_headers_remove(ns_headers *h, const char *name);

/* First value of name, or NULL. Valid until the list changes. */
const char *ns_headers_get(const ns_headers *h, const char *name);
size_t ns_headers_count(const ns_headers *h, const char *name);
/* Iterates fields, all of them (name NULL) or those named name: start with
 * *iter = 0; returns the next field or NULL at the end. */
const ns_header_field *ns_headers_next(const ns_headers *h, size_t *iter,
                                       const char *name);

/* The combined field value of name (RFC 9110 §5.3): every line's value, in
 * order, joined with ", ", appended to out. *present (if not NULL) is set
 * when at least one line exists. */
netstash_error ns_headers_combined(const ns_headers *h, const char *name, ns_buf *out,
                                   int *present);

/* Appends the binary form to out (see above). NETSTASH_E_TOO_LARGE when out's
 * cap or the format limits are exceeded. */
netstash_error ns_headers_encode(const ns_headers *h, ns_buf *out);
/* Parses a binary form into h (initialised, emptied first). When consumed is
 * NULL the blob must end exactly after the list; otherwise *consumed receives
 * the number of bytes used so a header list may be embedded in a larger
 * record. Errors: NETSTASH_E_DECODE (malformed, truncated, unknown version,
 * limits), NETSTASH_E_NOMEM; on error h is empty. Never reads outside
 * data[0..len). */
netstash_error ns_headers_decode(ns_headers *h, const uint8_t *data, size_t len,
                                 size_t *consumed);

/* Walks a binary form without allocating: names and values point into data.
 * ns_headers_walk_begin returns 0 when the blob is not a header list;
 * ns_headers_walk_next returns 1 per field, then 0 at the end — with w->bad
 * set when the blob was malformed (the fields seen are then not to be used).
 * The same checks as ns_headers_decode. */
typedef struct ns_headers_walk {
  const uint8_t *data;
  size_t len, pos;
  uint32_t left;
  int bad;
} ns_headers_walk;
int ns_headers_walk_begin(ns_headers_walk *w, const uint8_t *data, size_t len);
int ns_headers_walk_next(ns_headers_walk *w, const char **name, size_t *nlen, const char **value,
                         size_t *vlen);

/* Field-name check (token, RFC 9110 §5.1) and value check (RFC 9110 §5.5). */
int ns_header_name_valid(const char *name, size_t len);
int ns_header_value_valid(const char *value, size_t len);

#endif /* NS_CORE_HEADERS_H */
