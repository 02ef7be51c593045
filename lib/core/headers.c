/*
 * headers.c — ordered header field list and its binary form.
 */
#include "ns_setup.h"

#include "core/headers.h"
#include "core/reader.h"
#include "core/url.h"

struct ns_headers_block {
  struct ns_headers_block *next; /* older */
  size_t size, used;
  char data[];
};

#define BLOCK_MIN 256
#define BLOCK_MAX 4096

void ns_headers_init(ns_headers *h, const ns_mem *mem) {
  h->mem = mem;
  h->f = NULL;
  h->len = h->cap = 0;
  h->blk = NULL;
}

void ns_headers_free(ns_headers *h) {
  struct ns_headers_block *b, *next;
  if (!h)
    return;
  for (b = h->blk; b; b = next) {
    next = b->next;
    ns_free(h->mem, b);
  }
  ns_free(h->mem, h->f);
  h->f = NULL;
  h->len = h->cap = 0;
  h->blk = NULL;
}

/* Makes room for n more bytes of fields in the newest block (a new block
 * when it has not: twice the last one's size up to BLOCK_MAX, at least n). */
static netstash_error block_room(ns_headers *h, size_t n) {
  struct ns_headers_block *b = h->blk;
  size_t size, bytes;
  if (b && b->size - b->used >= n)
    return NETSTASH_OK;
  size = b ? (b->size >= BLOCK_MAX / 2 ? BLOCK_MAX : b->size * 2) : BLOCK_MIN;
  if (size < n)
    size = n;
  if (!ns_add_size(sizeof(*b), size, &bytes))
    return NETSTASH_E_NOMEM;
  b = ns_malloc(h->mem, bytes);
  if (!b)
    return NETSTASH_E_NOMEM;
  b->next = h->blk;
  b->size = size;
  b->used = 0;
  h->blk = b;
  return NETSTASH_OK;
}

void ns_headers_clear(ns_headers *h) { ns_headers_free(h); }

void ns_headers_reset(ns_headers *h) {
  struct ns_headers_block *b, *next;
  h->len = 0;
  if (!h->blk)
    return;
  for (b = h->blk->next; b; b = next) {
    next = b->next;
    ns_free(h->mem, b);
  }
  h->blk->next = NULL;
  h->blk->used = 0;
}

int ns_header_name_valid(const char *name, size_t len) {
  size_t i;
  if (!name || len == 0 || len > NS_HEADERS_MAX_FIELD_LEN)
    return 0;
  for (i = 0; i < len; i++)
    if (!ns_is_tchar((unsigned char)name[i]))
      return 0;
  return 1;
}

/* A word with no byte below 0x20 and none 0x7f passes whole (most of a
 * value): SWAR, as this runs for every byte of every field decoded from the
 * store. A word that has one (HTAB is one) is checked byte by byte. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
static int word_plain(uint64_t w) {
  uint64_t del = w ^ (ONES * 0x7f);
  /* below 0x20: (b - 0x20) borrows into the high bit for b < 0x20 (and the
   * ~w term drops bytes >= 0x80, which pass); 0x7f: a zero byte of del */
  return (((w - ONES * 0x20) & ~w) | ((del - ONES) & ~del)) & HIGHS ? 0 : 1;
}
#undef ONES
#undef HIGHS

int ns_header_value_valid(const char *value, size_t len) {
  size_t i = 0;
  if (len > NS_HEADERS_MAX_FIELD_LEN || (len && !value))
    return 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, value + i, 8);
    if (word_plain(w))
      continue;
    for (size_t k = i; k < i + 8; k++)
      if (!ns_is_field_char((unsigned char)value[k]))
        return 0;
  }
  for (; i < len; i++)
    if (!ns_is_field_char((unsigned char)value[i]))
      return 0;
  return 1;
}

static netstash_error reserve(ns_headers *h, size_t extra) {
  size_t need, ncap, bytes;
  ns_header_field *nf;
  if (!ns_add_size(h->len, extra, &need))
    return NETSTASH_E_NOMEM;
  if (need <= h->cap)
    return NETSTASH_OK;
  ncap = h->cap ? h->cap : 8;
  while (ncap < need) {
    if (!ns_mul_size(ncap, 2, &ncap))
      return NETSTASH_E_NOMEM;
  }
  if (!ns_mul_size(ncap, sizeof(*nf), &bytes))
    return NETSTASH_E_NOMEM;
  nf = ns_realloc(h->mem, h->f, bytes);
  if (!nf)
    return NETSTASH_E_NOMEM;
  h->f = nf;
  h->cap = ncap;
  return NETSTASH_OK;
}

/* Builds one field of h (no validation) into *out. */
static netstash_error make_field(ns_headers *h, const char *name, size_t nl, const char *value,
                                 size_t vl, ns_header_field *out) {
  size_t total;
  char *p;
  netstash_error rv;
  if (!ns_add_size(nl, vl, &total) || !ns_add_size(total, 2, &total))
    return NETSTASH_E_NOMEM;
  if ((rv = block_room(h, total)) != NETSTASH_OK)
    return rv;
  p = h->blk->data + h->blk->used;
  h->blk->used += total;
  memcpy(p, name, nl);
  p[nl] = 0;
  if (vl)
    memcpy(p + nl + 1, value, vl);
  p[nl + 1 + vl] = 0;
  out->name = p;
  out->name_len = nl;
  out->value = p + nl + 1;
  out->value_len = vl;
  return NETSTASH_OK;
}

netstash_error ns_headers_add(ns_headers *h, const char *name, size_t name_len,
                              const char *value, size_t value_len) {
  ns_span v;
  netstash_error rv;
  if (!h || !ns_header_name_valid(name, name_len))
    return NETSTASH_E_INVALID_ARGUMENT;
  v = ns_span_trim(ns_span_make(value ? value : "", value ? value_len : 0));
  if (!ns_header_value_valid(v.p, v.len))
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = reserve(h, 1)) != NETSTASH_OK)
    return rv;
  if ((rv = make_field(h, name, name_len, v.p, v.len, &h->f[h->len])) != NETSTASH_OK)
    return rv;
  h->len++;
  return NETSTASH_OK;
}

netstash_error ns_headers_add_str(ns_headers *h, const char *name, const char *value) {
  if (!name || !value)
    return NETSTASH_E_INVALID_ARGUMENT;
  return ns_headers_add(h, name, strlen(name), value, strlen(value));
}

netstash_error ns_headers_add_line(ns_headers *h, const char *line, size_t len) {
  ns_reader r;
  ns_span name;
  if (!line)
    return NETSTASH_E_INVALID_ARGUMENT;
  ns_reader_init(&r, line, len);
  /* field-line = field-name ":" OWS field-value OWS (RFC 9112 §5); no
   * whitespace before the colon (RFC 9112 §5.1). */
  if (!ns_reader_token(&r, &name) || !ns_reader_skip_char(&r, ':'))
    return NETSTASH_E_INVALID_ARGUMENT;
  return ns_headers_add(h, name.p, name.len, r.p + r.pos, ns_reader_left(&r));
}

static int name_is(const ns_header_field *f, const char *name, size_t nl) {
  return f->name_len == nl && ns_ascii_casecmp_n(f->name, name, nl) == 0;
}

size_t ns_headers_remove(ns_headers *h, const char *name) {
  size_t i, j = 0, nl, removed = 0;
  if (!h || !name)
    return 0;
  nl = strlen(name);
  for (i = 0; i < h->len; i++) {
    if (name_is(&h->f[i], name, nl)) {
      removed++;
    } else {
      h->f[j++] = h->f[i];
    }
  }
  h->len = j;
  return removed;
}

netstash_error ns_headers_set_str(ns_headers *h, const char *name, const char *value) {
  size_t i, nl;
  ns_header_field nf;
  ns_span v;
  netstash_error rv;
  if (!h || !name || !value || !ns_header_name_valid(name, strlen(name)))
    return NETSTASH_E_INVALID_ARGUMENT;
  nl = strlen(name);
  v = ns_span_trim(ns_span_make(value, strlen(value)));
  if (!ns_header_value_valid(v.p, v.len))
    return NETSTASH_E_INVALID_ARGUMENT;
  for (i = 0; i < h->len; i++) {
    if (name_is(&h->f[i], name, nl)) {
      if ((rv = make_field(h, name, nl, v.p, v.len, &nf)) != NETSTASH_OK)
        return rv;
      h->f[i] = nf;
      /* drop the later duplicates */
      {
        size_t k, j = i + 1;
        for (k = i + 1; k < h->len; k++) {
          if (!name_is(&h->f[k], name, nl))
            h->f[j++] = h->f[k];
        }
        h->len = j;
      }
      return NETSTASH_OK;
    }
  }
  return ns_headers_add(h, name, nl, v.p, v.len);
}

const ns_header_field *ns_headers_next(const ns_headers *h, size_t *iter,
                                       const char *name) {
  size_t nl = name ? strlen(name) : 0;
  if (!h)
    return NULL;
  while (*iter < h->len) {
    const ns_header_field *f = &h->f[(*iter)++];
    if (!name || name_is(f, name, nl))
      return f;
  }
  return NULL;
}

const char *ns_headers_get(const ns_headers *h, const char *name) {
  size_t it = 0;
  const ns_header_field *f = ns_headers_next(h, &it, name);
  return f ? f->value : NULL;
}

size_t ns_headers_count(const ns_headers *h, const char *name) {
  size_t it = 0, n = 0;
  while (ns_headers_next(h, &it, name))
    n++;
  return n;
}

netstash_error ns_headers_combined(const ns_headers *h, const char *name, ns_buf *out,
                                   int *present) {
  size_t it = 0;
  const ns_header_field *f;
  int first = 1;
  netstash_error rv;
  if (present)
    *present = 0;
  while ((f = ns_headers_next(h, &it, name)) != NULL) {
    if (!first && (rv = ns_buf_append(out, ", ", 2)) != NETSTASH_OK)
      return rv;
    if ((rv = ns_buf_append(out, f->value, f->value_len)) != NETSTASH_OK)
      return rv;
    first = 0;
    if (present)
      *present = 1;
  }
  return NETSTASH_OK;
}

netstash_error ns_headers_copy(ns_headers *dst, const ns_headers *src) {
  ns_headers tmp;
  size_t i;
  netstash_error rv = NETSTASH_OK;
  ns_headers_init(&tmp, dst->mem);
  if (src->len && (rv = reserve(&tmp, src->len)) != NETSTASH_OK)
    return rv;
  for (i = 0; i < src->len; i++) {
    const ns_header_field *f = &src->f[i];
    if ((rv = make_field(&tmp, f->name, f->name_len, f->value, f->value_len, &tmp.f[tmp.len])) !=
        NETSTASH_OK) {
      ns_headers_free(&tmp);
      return rv;
    }
    tmp.len++;
  }
  ns_headers_free(dst);
  *dst = tmp;
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ binary form */

static netstash_error put_varint(ns_buf *out, uint32_t v) {
  uint8_t b[5];
  size_t n = 0;
  do {
    b[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v)
      b[n] |= 0x80;
    n++;
  } while (v);
  return ns_buf_append(out, b, n);
}

/* 1 and *v on success; 0 on truncation, overlong or non-minimal encoding. */
static int get_varint(const uint8_t *d, size_t len, size_t *pos, uint32_t *v) {
  uint64_t acc = 0;
  unsigned shift = 0, i;
  for (i = 0; i < 5; i++) {
    uint8_t b;
    if (*pos >= len)
      return 0;
    b = d[(*pos)++];
    acc |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      if (i > 0 && b == 0)
        return 0; /* non-minimal */
      if (acc > UINT32_MAX)
        return 0;
      *v = (uint32_t)acc;
      return 1;
    }
    shift += 7;
  }
  return 0;
}

netstash_error ns_headers_encode(const ns_headers *h, ns_buf *out) {
  size_t i, len0 = out->len;
  netstash_error rv;
  uint8_t ver = NS_HEADERS_FORMAT_V1;
  if (h->len > NS_HEADERS_MAX_FIELDS)
    return NETSTASH_E_TOO_LARGE;
  if ((rv = ns_buf_append(out, &ver, 1)) != NETSTASH_OK ||
      (rv = put_varint(out, (uint32_t)h->len)) != NETSTASH_OK)
    goto fail;
  for (i = 0; i < h->len; i++) {
    const ns_header_field *f = &h->f[i];
    if (f->name_len > NS_HEADERS_MAX_FIELD_LEN || f->value_len > NS_HEADERS_MAX_FIELD_LEN) {
      rv = NETSTASH_E_TOO_LARGE;
      goto fail;
    }
    if ((rv = put_varint(out, (uint32_t)f->name_len)) != NETSTASH_OK ||
        (rv = ns_buf_append(out, f->name, f->name_len)) != NETSTASH_OK ||
        (rv = put_varint(out, (uint32_t)f->value_len)) != NETSTASH_OK ||
        (rv = ns_buf_append(out, f->value, f->value_len)) != NETSTASH_OK)
      goto fail;
  }
  return NETSTASH_OK;
fail:
  out->len = len0;
  if (out->data)
    out->data[len0] = 0;
  return rv;
}

int ns_headers_walk_begin(ns_headers_walk *w, const uint8_t *data, size_t len) {
  memset(w, 0, sizeof(*w));
  w->data = data;
  w->len = len;
  w->bad = 1;
  if (!data || len < 2 || data[0] != NS_HEADERS_FORMAT_V1)
    return 0;
  w->pos = 1;
  if (!get_varint(data, len, &w->pos, &w->left) || w->left > NS_HEADERS_MAX_FIELDS ||
      w->left > (len - w->pos) / 3)
    return 0;
  w->bad = 0;
  return 1;
}

int ns_headers_walk_next(ns_headers_walk *w, const char **name, size_t *nlen, const char **value,
                         size_t *vlen) {
  uint32_t nl, vl;
  const uint8_t *d = w->data;
  if (w->bad)
    return 0;
  if (!w->left) {
    w->bad = w->pos != w->len;
    return 0;
  }
  if (!get_varint(d, w->len, &w->pos, &nl) || nl > w->len - w->pos ||
      nl > NS_HEADERS_MAX_FIELD_LEN)
    goto bad;
  *name = (const char *)d + w->pos;
  w->pos += nl;
  if (!get_varint(d, w->len, &w->pos, &vl) || vl > w->len - w->pos ||
      vl > NS_HEADERS_MAX_FIELD_LEN)
    goto bad;
  *value = (const char *)d + w->pos;
  w->pos += vl;
  if (!ns_header_name_valid(*name, nl) || !ns_header_value_valid(*value, vl) ||
      (vl && (ns_is_ows((unsigned char)(*value)[0]) || ns_is_ows((unsigned char)(*value)[vl - 1]))))
    goto bad;
  *nlen = nl;
  *vlen = vl;
  w->left--;
  return 1;
bad:
  w->bad = 1;
  return 0;
}

netstash_error ns_headers_decode(ns_headers *h, const uint8_t *data, size_t len,
                                 size_t *consumed) {
  size_t pos = 0, i;
  uint32_t n, nl, vl;
  netstash_error rv = NETSTASH_E_DECODE;
  ns_headers_free(h);
  if (!data || len < 2 || data[0] != NS_HEADERS_FORMAT_V1)
    return NETSTASH_E_DECODE;
  pos = 1;
  if (!get_varint(data, len, &pos, &n) || n > NS_HEADERS_MAX_FIELDS)
    return NETSTASH_E_DECODE;
  /* each field takes at least 3 bytes (two lengths, a 1-byte name): refuse a
   * count the blob cannot hold before reserving room for it */
  if (n > (len - pos) / 3)
    return NETSTASH_E_DECODE;
  /* the strings fit in the blob's bytes plus two NULs per field: one block */
  if (n && ((rv = reserve(h, n)) != NETSTASH_OK ||
            (rv = block_room(h, (len - pos) + 2 * (size_t)n)) != NETSTASH_OK))
    return rv;
  rv = NETSTASH_E_DECODE;
  for (i = 0; i < n; i++) {
    const char *name, *value;
    if (!get_varint(data, len, &pos, &nl) || nl > len - pos || nl > NS_HEADERS_MAX_FIELD_LEN)
      goto fail;
    name = (const char *)data + pos;
    pos += nl;
    if (!get_varint(data, len, &pos, &vl) || vl > len - pos || vl > NS_HEADERS_MAX_FIELD_LEN)
      goto fail;
    value = (const char *)data + pos;
    pos += vl;
    if (!ns_header_name_valid(name, nl) || !ns_header_value_valid(value, vl))
      goto fail;
    /* stored values are trimmed: an untrimmed one is not ours */
    if (vl && (ns_is_ows((unsigned char)value[0]) || ns_is_ows((unsigned char)value[vl - 1])))
      goto fail;
    if ((rv = make_field(h, name, nl, value, vl, &h->f[h->len])) != NETSTASH_OK)
      goto fail;
    rv = NETSTASH_E_DECODE;
    h->len++;
  }
  if (consumed)
    *consumed = pos;
  else if (pos != len)
    goto fail;
  return NETSTASH_OK;
fail:
  ns_headers_free(h);
  return rv;
}
