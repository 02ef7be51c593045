#include "ns_setup.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/buf.h"

void ns_buf_init(ns_buf *b, const ns_mem *mem, size_t max) {
  b->mem = mem;
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->max = max;
}

void ns_buf_free(ns_buf *b) {
  ns_free(b->mem, b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void ns_buf_reset(ns_buf *b) {
  b->len = 0;
  if (b->data)
    b->data[0] = 0;
}

static netstash_error reserve(ns_buf *b, size_t extra) {
  size_t need, ncap;
  uint8_t *p;
  if (!ns_add_size(b->len, extra, &need) || need > b->max)
    return NETSTASH_E_TOO_LARGE;
  if (need + 1 <= b->cap)
    return NETSTASH_OK;
  ncap = b->cap ? b->cap : 64;
  while (ncap < need + 1) {
    if (ncap > SIZE_MAX / 2) {
      ncap = need + 1;
      break;
    }
    ncap *= 2;
  }
  if (b->max < SIZE_MAX && ncap > b->max + 1)
    ncap = b->max + 1;
  p = ns_realloc(b->mem, b->data, ncap);
  if (!p)
    return NETSTASH_E_NOMEM;
  b->data = p;
  b->cap = ncap;
  return NETSTASH_OK;
}

netstash_error ns_buf_reserve(ns_buf *b, size_t extra) {
  return reserve(b, extra);
}

netstash_error ns_buf_append(ns_buf *b, const void *data, size_t len) {
  netstash_error rv = reserve(b, len);
  if (rv != NETSTASH_OK)
    return rv;
  if (len)
    memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = 0;
  return NETSTASH_OK;
}

size_t ns_fmt_u64(char out[21], uint64_t v) {
  char d[20], *p = d + sizeof(d);
  size_t n;
  do
    *--p = (char)('0' + v % 10);
  while (v /= 10);
  n = (size_t)(d + sizeof(d) - p);
  memcpy(out, p, n);
  out[n] = 0;
  return n;
}

netstash_error ns_buf_append_str(ns_buf *b, const char *s) {
  return ns_buf_append(b, s, strlen(s));
}

netstash_error ns_buf_printf(ns_buf *b, const char *fmt, ...) {
  va_list ap;
  int n;
  netstash_error rv;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  rv = reserve(b, (size_t)n);
  if (rv != NETSTASH_OK)
    return rv;
  va_start(ap, fmt);
  vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return NETSTASH_OK;
}

uint8_t *ns_buf_steal(ns_buf *b, size_t *len) {
  uint8_t *p = b->data;
  if (len)
    *len = b->len;
  b->data = NULL;
  b->len = b->cap = 0;
  return p;
}

void ns_detailf(char *d, size_t n, const char *fmt, ...) {
  va_list ap;
  if (!d || !n)
    return;
  va_start(ap, fmt);
  vsnprintf(d, n, fmt, ap);
  va_end(ap);
}
