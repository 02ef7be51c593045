/*
 * buf.h — a growable byte buffer with a hard cap (after curl's dynbuf).
 * Always NUL-terminated when non-empty, so text can be read as a C string.
 */
#ifndef NS_CORE_BUF_H
#define NS_CORE_BUF_H

#include "ns_setup.h"

typedef struct ns_buf {
  const ns_mem *mem;
  uint8_t *data;
  size_t len;
  size_t cap;     /* allocated */
  size_t max;     /* hard limit on len */
} ns_buf;

void ns_buf_init(ns_buf *b, const ns_mem *mem, size_t max);
void ns_buf_free(ns_buf *b);
void ns_buf_reset(ns_buf *b); /* len = 0, keeps the allocation */
/* NETSTASH_E_TOO_LARGE past max, NETSTASH_E_NOMEM. */
netstash_error ns_buf_append(ns_buf *b, const void *data, size_t len);
/* Makes room for extra more bytes (one allocation), within max. */
netstash_error ns_buf_reserve(ns_buf *b, size_t extra);
netstash_error ns_buf_append_str(ns_buf *b, const char *s);
netstash_error ns_buf_printf(ns_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Hands the allocation to the caller (free with ns_free(b->mem, p)). */
uint8_t *ns_buf_steal(ns_buf *b, size_t *len);
static inline const char *ns_buf_str(const ns_buf *b) {
  return b->data ? (const char *)b->data : "";
}

/* v in decimal into out (NUL-terminated, at most 20 digits): the length.
 * For hot paths that would otherwise call printf for one number. */
size_t ns_fmt_u64(char out[21], uint64_t v);

/* Writes a one-line detail ("which check failed") into d (n bytes,
 * truncated to fit); no-op when d is NULL or n is 0. */
void ns_detailf(char *d, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
