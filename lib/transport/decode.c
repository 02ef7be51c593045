/*
 * decode.c — streaming content decoding (RFC 9110 8.4.1) with a hard output
 * cap. See decode.h for the contract.
 *
 * Shape: one layer per coding, in the order they are undone (the last coding
 * applied is undone first, RFC 9110 8.4). Each layer owns one fixed output
 * buffer of NS_DECODE_CHUNK bytes; whenever it fills (or the input runs out)
 * its content is pushed into the next layer, and the last layer's output goes
 * through emit(), which enforces max_out. Nothing grows with the input, so a
 * decompression bomb costs at most max_out bytes of work plus one chunk per
 * layer before it is stopped.
 *
 * Decisions:
 *  - gzip, one member only. RFC 1952 2.2 allows a series of members and curl
 *    decodes them all; Chromium decodes only the first and ignores the rest.
 *    Either choice silently yields a body another client does not show, so we
 *    fail closed: any byte after the first member's trailer (a second member
 *    or garbage) is NETSTASH_E_DECODE, the same rule as for br and deflate.
 *  - deflate: RFC 9110 8.4.1.2 says zlib format (RFC 1950); some servers send
 *    raw deflate (RFC 1951). As Chromium and Firefox do, the first two bytes
 *    decide: a valid zlib header (CM 8, CINFO <= 7, FCHECK, no preset
 *    dictionary; RFC 1950 2.2) means zlib, anything else raw deflate.
 *  - An empty coded stream (no byte at all) decodes to an empty body rather
 *    than NETSTASH_E_TRUNCATED: servers send Content-Encoding on empty
 *    redirects and 204-like bodies, and truncation of the transfer itself is
 *    the transport's to detect (Content-Length, chunked terminator).
 */
#include "ns_setup.h"

#include <limits.h>

#define ZLIB_CONST 1
#include <zlib.h>
#include <brotli/decode.h>
/* ZSTD_createDCtx_advanced (the context allocator) is in zstd's
 * experimental section; libzstd.so.1 exports it, unchanged since 1.0 */
#define ZSTD_STATIC_LINKING_ONLY 1
#include <zstd.h>
#include <zstd_errors.h>

#include "transport/decode.h"

/* ------------------------------------------------------------------------
 * Content-Encoding parsing
 * ------------------------------------------------------------------------ */

/* A minimal bounds-checked reader over a byte range (file-local until lib/core
 * grows a shared one). Every access goes through rd_peek/rd_skip. */
typedef struct rd {
  const uint8_t *p;
  size_t len;
  size_t pos;
} rd;

static int rd_eof(const rd *r) { return r->pos >= r->len; }

/* Next byte, or -1 at the end. */
static int rd_peek(const rd *r) {
  return r->pos < r->len ? (int)r->p[r->pos] : -1;
}

static void rd_skip(rd *r) {
  if (r->pos < r->len)
    r->pos++;
}

/* OWS = *( SP / HTAB ), RFC 9110 5.6.3. */
static void rd_skip_ows(rd *r) {
  for (;;) {
    int c = rd_peek(r);
    if (c != ' ' && c != '\t')
      return;
    rd_skip(r);
  }
}

/* tchar, RFC 9110 5.6.2 (ASCII only, no locale). */
static int is_tchar(int c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  switch (c) {
  case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
  case '+': case '-': case '.': case '^': case '_': case '`': case '|':
  case '~':
    return 1;
  default:
    return 0;
  }
}

/* token = 1*tchar; *tok points into the reader's buffer. */
static size_t rd_token(rd *r, const uint8_t **tok) {
  size_t start = r->pos;
  while (!rd_eof(r) && is_tchar(rd_peek(r)))
    rd_skip(r);
  *tok = r->p + start;
  return r->pos - start;
}

static uint8_t ascii_lower(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? (uint8_t)(c - 'A' + 'a') : c;
}

/* Case-insensitive comparison with a lowercase literal (RFC 9110 8.4.1:
 * content-coding values are case-insensitive). */
static int token_is(const uint8_t *tok, size_t len, const char *lit) {
  size_t i;
  size_t n = strlen(lit);
  if (len != n)
    return 0;
  for (i = 0; i < n; i++) {
    if (ascii_lower(tok[i]) != (uint8_t)lit[i])
      return 0;
  }
  return 1;
}

/* Registered codings we decode, RFC 9110 8.4.1 and 18.6 (br: RFC 7932). */
static ns_coding coding_from_token(const uint8_t *tok, size_t len) {
  if (token_is(tok, len, "gzip") || token_is(tok, len, "x-gzip"))
    return NS_CODING_GZIP; /* x-gzip: RFC 9110 8.4.1.3 */
  if (token_is(tok, len, "deflate"))
    return NS_CODING_DEFLATE;
  if (token_is(tok, len, "br"))
    return NS_CODING_BR;
  if (token_is(tok, len, "zstd"))
    return NS_CODING_ZSTD;
  if (token_is(tok, len, "identity"))
    return NS_CODING_IDENTITY; /* RFC 9110 12.5.3: "no encoding" */
  return NS_CODING_UNKNOWN;
}

/*
 * Content-Encoding = #content-coding (RFC 9110 8.4), content-coding = token.
 * List syntax, RFC 9110 5.6.1:  #element => [ element ] *( OWS "," OWS
 * [ element ] ); a recipient ignores empty elements (5.6.1.2). The codings are
 * listed in the order they were applied (8.4).
 */
int ns_coding_parse(const char *value, size_t len,
                    ns_coding out[NS_DECODE_MAX_LAYERS]) {
  rd r;
  int n = 0;

  if (!out || (!value && len > 0))
    return -1;
  r.p = (const uint8_t *)value;
  r.len = value ? len : 0;
  r.pos = 0;

  for (;;) {
    const uint8_t *tok;
    size_t tlen;
    ns_coding c;
    int ch;

    rd_skip_ows(&r);
    tlen = rd_token(&r, &tok);
    rd_skip_ows(&r);
    ch = rd_peek(&r);
    if (ch != ',' && ch != -1)
      return -1; /* not a token: parameters, spaces inside, controls, NUL */
    if (tlen > 0) {
      c = coding_from_token(tok, tlen);
      if (c == NS_CODING_UNKNOWN)
        return -1;
      if (c != NS_CODING_IDENTITY) {
        if (n >= NS_DECODE_MAX_LAYERS)
          return -1;
        out[n++] = c;
      }
    }
    if (ch == -1)
      break;
    rd_skip(&r); /* the ',' */
  }
  return n;
}

const char *ns_coding_name(ns_coding c) {
  switch (c) {
  case NS_CODING_IDENTITY:
    return "identity";
  case NS_CODING_GZIP:
    return "gzip";
  case NS_CODING_DEFLATE:
    return "deflate";
  case NS_CODING_BR:
    return "br";
  case NS_CODING_ZSTD:
    return "zstd";
  case NS_CODING_UNKNOWN:
  default:
    return "unknown";
  }
}

/* ------------------------------------------------------------------------
 * Decoder
 * ------------------------------------------------------------------------ */

typedef struct layer {
  ns_coding coding;
  bool seen_input; /* at least one coded byte arrived */
  bool done;       /* end of the coded stream reached */
  /* zlib (gzip, deflate) */
  bool zs_init;
  bool sniffed;    /* deflate: zlib-vs-raw decided */
  uint8_t hdr[2];  /* deflate: first bytes, until sniffed */
  size_t hdr_len;
  z_stream zs;
  /* br */
  BrotliDecoderState *br;
  /* zstd: done is "at a frame boundary" (more frames may follow); zin:
   * inside a frame; zmagic: the next frame's first bytes, until checked */
  ZSTD_DCtx *zd;
  bool zin;
  uint8_t zmagic[4];
  size_t zmagic_len;
  uint8_t *out; /* NS_DECODE_CHUNK bytes, inside ns_decoder.bufs */
} layer;

struct ns_decoder {
  ns_mem mem; /* copied: zlib/brotli keep a pointer to it as opaque */
  int n;      /* layers in use */
  layer layers[NS_DECODE_MAX_LAYERS]; /* [0] is undone first */
  uint8_t *bufs;
  uint64_t max_out;
  uint64_t total_out;
  netstash_error err; /* sticky */
  bool finished;
  ns_decoder_sink sink; /* valid during one write call */
  void *sink_ud;
};

static voidpf zlib_alloc(voidpf opaque, uInt items, uInt size) {
  const ns_mem *mem = opaque;
  size_t n;
  if (!ns_mul_size(items, size, &n))
    return Z_NULL;
  return ns_malloc(mem, n);
}

static void zlib_free(voidpf opaque, voidpf p) { ns_free(opaque, p); }

static void *br_alloc(void *opaque, size_t size) {
  return ns_malloc(opaque, size);
}

static void br_free(void *opaque, void *p) { ns_free(opaque, p); }

static void *zstd_alloc(void *opaque, size_t size) {
  return ns_malloc(opaque, size);
}

static void zstd_free(void *opaque, void *p) {
  ns_free(opaque, p);
}

/* RFC 9659 §3: windows up to 8 MiB */
#define ZSTD_WINDOW_LOG_MAX 23

static netstash_error zlib_error(int rc) {
  switch (rc) {
  case Z_MEM_ERROR:
    return NETSTASH_E_NOMEM;
  case Z_DATA_ERROR:
  case Z_NEED_DICT: /* no preset dictionary in HTTP */
    return NETSTASH_E_DECODE;
  default:
    return NETSTASH_E_INTERNAL;
  }
}

static netstash_error br_error(BrotliDecoderErrorCode code) {
  if (code <= BROTLI_DECODER_ERROR_ALLOC_CONTEXT_MODES &&
      code >= BROTLI_DECODER_ERROR_ALLOC_BLOCK_TYPE_TREES)
    return NETSTASH_E_NOMEM;
  if (code == BROTLI_DECODER_ERROR_UNREACHABLE ||
      code == BROTLI_DECODER_ERROR_INVALID_ARGUMENTS)
    return NETSTASH_E_INTERNAL;
  return NETSTASH_E_DECODE;
}

/* Hands decoded bytes to the sink, never more than max_out in total. On
 * overflow the sink still gets the bytes that fit, so what it has seen is
 * exactly the first max_out bytes whatever the chunking. */
static netstash_error emit(ns_decoder *d, const uint8_t *p, size_t len) {
  uint64_t room = d->max_out - d->total_out; /* total_out <= max_out */
  netstash_error rv;

  if (len == 0)
    return NETSTASH_OK;
  if ((uint64_t)len > room) {
    if (room > 0) {
      d->total_out += room;
      rv = d->sink(p, (size_t)room, d->sink_ud);
      if (rv != NETSTASH_OK)
        return rv;
    }
    return NETSTASH_E_TOO_LARGE;
  }
  d->total_out += len;
  return d->sink(p, len, d->sink_ud);
}

static netstash_error feed(ns_decoder *d, int i, const uint8_t *in, size_t len);

/* Runs in through layer i's inflate stream, pushing every full (or final)
 * output buffer to layer i + 1. */
static netstash_error zlib_run(ns_decoder *d, int i, const uint8_t *in,
                               size_t len) {
  layer *l = &d->layers[i];
  z_stream *zs = &l->zs;
  netstash_error rv;

  while (len > 0) {
    /* avail_in is a uInt: feed at most UINT_MAX bytes per round. */
    uInt chunk = (uInt)NS_MIN(len, (size_t)UINT_MAX);
    zs->next_in = in;
    zs->avail_in = chunk;
    in += chunk;
    len -= chunk;
    for (;;) {
      int rc;
      size_t produced;
      zs->next_out = l->out;
      zs->avail_out = NS_DECODE_CHUNK;
      rc = inflate(zs, Z_NO_FLUSH);
      produced = NS_DECODE_CHUNK - zs->avail_out;
      if (produced > 0) {
        rv = feed(d, i + 1, l->out, produced);
        if (rv != NETSTASH_OK)
          return rv;
      }
      if (rc == Z_STREAM_END) {
        l->done = true;
        /* RFC 1952 2.2 allows further members; we refuse them (see top). */
        return (zs->avail_in > 0 || len > 0) ? NETSTASH_E_DECODE : NETSTASH_OK;
      }
      if (rc == Z_BUF_ERROR) {
        /* No progress possible: the input is used up (the output buffer is
         * never full on entry). */
        if (zs->avail_in != 0)
          return NETSTASH_E_INTERNAL;
        break;
      }
      if (rc != Z_OK)
        return zlib_error(rc);
      /* A full output buffer may hide more pending output. */
      if (zs->avail_out != 0 && zs->avail_in == 0)
        break;
    }
  }
  return NETSTASH_OK;
}

/* RFC 1950 2.2: CM = 8 (deflate), CINFO <= 7 (window <= 32K), FCHECK makes
 * CMF*256 + FLG a multiple of 31, FDICT clear (HTTP has no dictionary). */
static int zlib_header_ok(const uint8_t h[2]) {
  unsigned cmf = h[0];
  unsigned flg = h[1];
  return (cmf & 0x0f) == 8 && (cmf >> 4) <= 7 && ((cmf << 8) | flg) % 31 == 0 &&
         (flg & 0x20) == 0;
}

static netstash_error zlib_feed(ns_decoder *d, int i, const uint8_t *in,
                                size_t len) {
  layer *l = &d->layers[i];
  netstash_error rv;

  if (l->coding == NS_CODING_DEFLATE && !l->sniffed) {
    size_t take = NS_MIN(len, sizeof(l->hdr) - l->hdr_len);
    memcpy(l->hdr + l->hdr_len, in, take);
    l->hdr_len += take;
    in += take;
    len -= take;
    if (l->hdr_len < sizeof(l->hdr))
      return NETSTASH_OK;
    l->sniffed = true;
    if (!zlib_header_ok(l->hdr)) {
      int rc = inflateReset2(&l->zs, -MAX_WBITS); /* raw deflate */
      if (rc != Z_OK)
        return zlib_error(rc);
    }
    rv = zlib_run(d, i, l->hdr, sizeof(l->hdr));
    if (rv != NETSTASH_OK)
      return rv;
    if (len > 0 && l->done)
      return NETSTASH_E_DECODE;
  }
  return zlib_run(d, i, in, len);
}

static netstash_error br_feed(ns_decoder *d, int i, const uint8_t *in,
                              size_t len) {
  layer *l = &d->layers[i];
  size_t avail_in = len;
  const uint8_t *next_in = in;
  netstash_error rv;

  for (;;) {
    uint8_t *next_out = l->out;
    size_t avail_out = NS_DECODE_CHUNK;
    size_t produced;
    BrotliDecoderResult r = BrotliDecoderDecompressStream(
        l->br, &avail_in, &next_in, &avail_out, &next_out, NULL);
    produced = NS_DECODE_CHUNK - avail_out;
    if (produced > 0) {
      rv = feed(d, i + 1, l->out, produced);
      if (rv != NETSTASH_OK)
        return rv;
    }
    switch (r) {
    case BROTLI_DECODER_RESULT_SUCCESS:
      l->done = true;
      return avail_in > 0 ? NETSTASH_E_DECODE : NETSTASH_OK;
    case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
      return NETSTASH_OK; /* all input consumed, all output flushed */
    case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
      break;
    case BROTLI_DECODER_RESULT_ERROR:
    default:
      return br_error(BrotliDecoderGetErrorCode(l->br));
    }
  }
}

/* zstd frames: RFC 8878's (magic number 0xFD2FB528) and skippable ones
 * (0x184D2A5?). libzstd also decodes the legacy formats of its 0.x
 * releases, which are no HTTP coding and which it decodes differently
 * depending on how the input is cut (found by fuzz/decode.c): every frame's
 * magic number is checked here first. */
static int zstd_magic_ok(const uint8_t m[4]) {
  uint32_t v = (uint32_t)m[0] | (uint32_t)m[1] << 8 | (uint32_t)m[2] << 16 | (uint32_t)m[3] << 24;
  return v == 0xFD2FB528u || (v & 0xFFFFFFF0u) == 0x184D2A50u;
}

/* Decodes ib until it is used up or the frame ends (then l->zin is cleared
 * and l->done set: the input so far ends on a frame boundary). */
static netstash_error zstd_run(ns_decoder *d, int i, ZSTD_inBuffer *ib) {
  layer *l = &d->layers[i];
  netstash_error rv;

  for (;;) {
    ZSTD_outBuffer ob = {l->out, NS_DECODE_CHUNK, 0};
    size_t r = ZSTD_decompressStream(l->zd, &ob, ib);
    if (ZSTD_isError(r))
      return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? NETSTASH_E_NOMEM
                                                                  : NETSTASH_E_DECODE;
    if (ob.pos > 0) {
      rv = feed(d, i + 1, l->out, ob.pos);
      if (rv != NETSTASH_OK)
        return rv;
    }
    if (r == 0) { /* the frame is decoded and flushed */
      l->zin = false;
      l->done = true;
      return NETSTASH_OK;
    }
    if (ib->pos == ib->size && ob.pos < ob.size)
      return NETSTASH_OK; /* all input taken, nothing more comes out */
  }
}

/* zstd: frame after frame (RFC 8878 §3.1: a stream is one or more frames,
 * skippable ones ignored); between frames, the next one's magic number is
 * collected and checked before libzstd sees it. */
static netstash_error zstd_feed(ns_decoder *d, int i, const uint8_t *in, size_t len) {
  layer *l = &d->layers[i];
  ZSTD_inBuffer ib = {in, len, 0};
  netstash_error rv;

  while (ib.pos < ib.size) {
    if (!l->zin) {
      size_t take = NS_MIN(sizeof(l->zmagic) - l->zmagic_len, ib.size - ib.pos);
      memcpy(l->zmagic + l->zmagic_len, in + ib.pos, take);
      l->zmagic_len += take;
      ib.pos += take;
      l->done = false;
      if (l->zmagic_len < sizeof(l->zmagic))
        return NETSTASH_OK;
      if (!zstd_magic_ok(l->zmagic))
        return NETSTASH_E_DECODE;
      l->zmagic_len = 0;
      l->zin = true;
      {
        ZSTD_inBuffer mb = {l->zmagic, sizeof(l->zmagic), 0};
        rv = zstd_run(d, i, &mb);
        if (rv != NETSTASH_OK)
          return rv;
      }
      continue;
    }
    rv = zstd_run(d, i, &ib);
    if (rv != NETSTASH_OK)
      return rv;
  }
  return NETSTASH_OK;
}

/* Pushes bytes into layer i (i == d->n: the sink). */
static netstash_error feed(ns_decoder *d, int i, const uint8_t *in, size_t len) {
  layer *l;

  if (i == d->n)
    return emit(d, in, len);
  if (len == 0)
    return NETSTASH_OK;
  l = &d->layers[i];
  l->seen_input = true;
  if (l->coding == NS_CODING_ZSTD)
    return zstd_feed(d, i, in, len);
  if (l->done)
    return NETSTASH_E_DECODE; /* data after the end of the coded stream */
  if (l->coding == NS_CODING_BR)
    return br_feed(d, i, in, len);
  return zlib_feed(d, i, in, len);
}

static netstash_error layer_init(ns_decoder *d, layer *l, ns_coding c) {
  int rc;

  l->coding = c;
  switch (c) {
  case NS_CODING_GZIP:
  case NS_CODING_DEFLATE:
    l->zs.zalloc = zlib_alloc;
    l->zs.zfree = zlib_free;
    l->zs.opaque = &d->mem;
    /* 16 + 15: gzip wrapper only (RFC 1952); 15: zlib wrapper (RFC 1950),
     * possibly switched to raw by zlib_feed. 32K window either way. */
    rc = inflateInit2(&l->zs, c == NS_CODING_GZIP ? 16 + MAX_WBITS : MAX_WBITS);
    if (rc != Z_OK)
      return zlib_error(rc);
    l->zs_init = true;
    return NETSTASH_OK;
  case NS_CODING_BR:
    l->br = BrotliDecoderCreateInstance(br_alloc, br_free, &d->mem);
    return l->br ? NETSTASH_OK : NETSTASH_E_NOMEM;
  case NS_CODING_ZSTD: {
    ZSTD_customMem cm = {zstd_alloc, zstd_free, &d->mem};
    l->zd = ZSTD_createDCtx_advanced(cm);
    if (!l->zd)
      return NETSTASH_E_NOMEM;
    if (ZSTD_isError(ZSTD_DCtx_setParameter(l->zd, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX)))
      return NETSTASH_E_INTERNAL;
    return NETSTASH_OK;
  }
  case NS_CODING_IDENTITY:
  case NS_CODING_UNKNOWN:
  default:
    return NETSTASH_E_INTERNAL;
  }
}

netstash_error ns_decoder_new(const ns_mem *mem, const ns_coding *codings, int n,
                              uint64_t max_out, ns_decoder **out) {
  ns_decoder *d = NULL;
  ns_coding order[NS_DECODE_MAX_LAYERS];
  int nl = 0;
  int i;
  size_t bufsize;
  netstash_error rv;

  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!mem || n < 0 || n > NS_DECODE_MAX_LAYERS || (n > 0 && !codings))
    return NETSTASH_E_INVALID_ARGUMENT;
  /* Undo in reverse order of application (RFC 9110 8.4). */
  for (i = n - 1; i >= 0; i--) {
    if (codings[i] == NS_CODING_IDENTITY)
      continue;
    if (codings[i] != NS_CODING_GZIP && codings[i] != NS_CODING_DEFLATE &&
        codings[i] != NS_CODING_BR && codings[i] != NS_CODING_ZSTD)
      return NETSTASH_E_UNSUPPORTED;
    order[nl++] = codings[i];
  }

  d = ns_calloc(mem, 1, sizeof(*d));
  if (!d)
    return NETSTASH_E_NOMEM;
  d->mem = *mem;
  d->max_out = max_out;
  if (nl > 0) {
    if (!ns_mul_size((size_t)nl, NS_DECODE_CHUNK, &bufsize)) {
      rv = NETSTASH_E_INTERNAL;
      goto fail;
    }
    d->bufs = ns_malloc(&d->mem, bufsize);
    if (!d->bufs) {
      rv = NETSTASH_E_NOMEM;
      goto fail;
    }
  }
  for (i = 0; i < nl; i++) {
    d->layers[i].out = d->bufs + (size_t)i * NS_DECODE_CHUNK;
    rv = layer_init(d, &d->layers[i], order[i]);
    d->n = i + 1; /* so that del cleans up what was set up */
    if (rv != NETSTASH_OK)
      goto fail;
  }
  d->n = nl;
  *out = d;
  return NETSTASH_OK;

fail:
  ns_decoder_del(d);
  return rv;
}

void ns_decoder_del(ns_decoder *d) {
  int i;
  ns_mem mem;

  if (!d)
    return;
  for (i = 0; i < d->n; i++) {
    layer *l = &d->layers[i];
    if (l->zs_init)
      inflateEnd(&l->zs);
    if (l->br)
      BrotliDecoderDestroyInstance(l->br);
    if (l->zd)
      ZSTD_freeDCtx(l->zd);
  }
  mem = d->mem;
  ns_free(&mem, d->bufs);
  ns_free(&mem, d);
}

netstash_error ns_decoder_write(ns_decoder *d, const uint8_t *in, size_t len,
                                ns_decoder_sink sink, void *user_data) {
  netstash_error rv;

  if (!d || !sink || (!in && len > 0))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (d->err != NETSTASH_OK)
    return d->err;
  if (d->finished)
    return NETSTASH_E_ILLEGAL_STATE;
  d->sink = sink;
  d->sink_ud = user_data;
  rv = feed(d, 0, in, len);
  d->sink = NULL;
  d->sink_ud = NULL;
  d->err = rv;
  return rv;
}

netstash_error ns_decoder_finish(ns_decoder *d, ns_decoder_sink sink,
                                 void *user_data) {
  int i;

  NS_UNUSED(sink); /* every write already flushes all output it can */
  NS_UNUSED(user_data);
  if (!d)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (d->err != NETSTASH_OK || d->finished)
    return d->err;
  d->finished = true;
  for (i = 0; i < d->n; i++) {
    const layer *l = &d->layers[i];
    /* An empty coded stream decodes to nothing (see the top of the file). */
    if (l->seen_input && !l->done) {
      d->err = NETSTASH_E_TRUNCATED;
      break;
    }
  }
  return d->err;
}

uint64_t ns_decoder_total_out(const ns_decoder *d) { return d ? d->total_out : 0; }
