/*
 * netstash load — load a page the way a browser's URL loader does, through
 * the resource-interceptor ABI only (include/netstash/interceptor.h): the
 * document, then every subresource a parser and a style engine would find,
 * with browser-like priorities and concurrency, each request first offered
 * to the synchronous fast path (netstash_intercept_lookup: preloaded, or
 * fresh in the HTTP cache) and then started as a job (netstash_job_start,
 * push callbacks).
 *
 * Discovery: HTML is parsed with Gumbo (a conforming HTML5 parser); CSS
 * (stylesheets, @import, <style>, style="") with the small tokenizer below,
 * which follows CSS Syntax Level 3 §4 for the tokens that carry URLs:
 * strings, url(), functions, at-keywords, comments and escapes.
 *
 * Threads: the main thread parses, schedules and starts requests; the job
 * callbacks run on the context's loop thread, fill their own resource and
 * hand it back through a mutex-guarded completion queue.
 *
 * The --json form is a contract for scripts: extend it, never change it
 * (fields documented in netstash-load(1)).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gumbo.h>
#include <jansson.h>

#include "cli.h"

static const char load_usage[] =
    "usage: netstash load URL [options]\n"
    "\n"
    "Loads URL as a browser would: the document, then the stylesheets, scripts,\n"
    "fonts, images and iframes it references (found by an HTML parser and a CSS\n"
    "tokenizer), render-blocking ones first, at most --concurrency at a time.\n"
    "Every request goes through the resource interceptor: preload cache, then\n"
    "the profile's HTTP cache, then the network. Prints a waterfall and totals.\n"
    "Exit 0 when the document loaded (failed subresources are counted in the\n"
    "totals), else the document's error code (see netstash --help).\n"
    "\n"
    "Options:\n"
    "      --profile DIR        profile directory (preload cache and HTTP cache)\n"
    "      --daemon SOCKET      through a running netd instead of a profile, as a\n"
    "                           kernel process in remote mode (its preload cache,\n"
    "                           HTTP cache, cookies and network)\n"
    "      --offline            no network at all: every request is answered from\n"
    "                           the preload cache or the HTTP cache, or fails\n"
    "      --cacert FILE        trust the CAs in FILE instead of the system store\n"
    "      --resolve H:P:ADDR   pin host H port P to ADDR (repeatable)\n"
    "      --concurrency N      requests in flight at most (default 16, 1..256)\n"
    "      --timeout MS         per-request timeout (default 0: none)\n"
    "      --repeat N           load the page N times in this process, one after\n"
    "                           the other on one context (default 1, 1..1000): a\n"
    "                           long-lived kernel's later loads; the report is the\n"
    "                           last load's, with every load's time\n"
    "      --json               one JSON object on stdout instead of the waterfall\n"
    "  -h, --help               this text\n";

/* ------------------------------------------------------------------ limits */

#define MAX_RESOURCES 4096         /* further references are counted, not loaded */
#define MAX_PARSE_BODY (16u << 20) /* HTML and CSS bodies kept for discovery */
#define MAX_FRAME_DEPTH 4          /* nested iframes loaded */
#define MAX_IMPORT_DEPTH 8         /* nested @import */
#define MAX_RESOLVES 64
#define VIEWPORT_W 1280 /* CSS px of the emulated window, DPR 1 */
#define BAR_W 32

/* ------------------------------------------------------------------ model */

enum parse_kind { PARSE_NONE = 0, PARSE_HTML = 1, PARSE_CSS = 2 };
enum res_state { ST_QUEUED = 0, ST_RUNNING = 1, ST_DONE = 2 };

/* Scheduling classes, lowest first: render-blocking (stylesheets, parser-
 * blocking scripts, fonts), then other scripts, frames and fetches, then
 * images, then what a browser loads last (icons, media-mismatched CSS). */
enum { CLASS_BLOCKING = 0, CLASS_HIGH = 1, CLASS_IMAGE = 2, CLASS_IDLE = 3, CLASS_N = 4 };

typedef struct load load;

typedef struct res {
  load *L;
  size_t id;   /* discovery order */
  char *url;   /* absolute, without fragment */
  long parent; /* id of the resource whose body referenced it, -1: none */
  size_t doc;  /* id of the document (page or iframe) it belongs to */
  netstash_destination dest;
  netstash_request_mode mode;
  netstash_credentials cred;
  int prio_override;
  netstash_priority prio;
  int klass;
  int parse;   /* enum parse_kind: the body is kept (set at discovery) */
  int applied; /* a style: referenced as a stylesheet, not only preloaded */
  int parsed;  /* its references were recorded */
  int depth;   /* iframe / @import nesting */
  int state;

  /* filled by the loop thread (or the fast path), read after completion */
  double start_ms, head_ms, end_ms; /* from the start of the load; -1: never */
  netstash_source source;
  int status;
  uint64_t bytes, wire_bytes;
  netstash_error err;
  char *detail, *effective_url, *content_type;
  char protocol[16];
  uint8_t *body;
  size_t body_len, body_cap;
  int body_over;
  netstash_job *job;
} res;

struct load {
  netstash_ctx *ctx;
  netstash_preload_hit *hit;
  res **v;
  size_t n, cap;
  size_t skipped; /* references past MAX_RESOURCES */
  size_t running, concurrency;
  const char *const *resolves;
  size_t nresolves;
  int offline;
  uint32_t timeout_ms;
  struct timespec t0;
  int oom;
  double parse_ms; /* the loader's own HTML and CSS parsing (discovery) */
  uint64_t conns0; /* connections opened before this load */
  uint32_t npasses;
  double (*passes)[3]; /* --repeat: load_ms, parse_ms, requests_ms of each load */

  pthread_mutex_t lock;
  pthread_cond_t cond;
  res **done; /* completion queue, guarded by lock */
  size_t ndone, done_cap;
};

static double now_ms(const load *L) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - L->t0.tv_sec) * 1e3 + (double)(t.tv_nsec - L->t0.tv_nsec) / 1e6;
}

static const char *dest_name(netstash_destination d) {
  switch (d) {
  case NETSTASH_DEST_EMPTY:
    return "empty";
  case NETSTASH_DEST_DOCUMENT:
    return "document";
  case NETSTASH_DEST_IFRAME:
    return "iframe";
  case NETSTASH_DEST_SCRIPT:
    return "script";
  case NETSTASH_DEST_STYLE:
    return "style";
  case NETSTASH_DEST_IMAGE:
    return "image";
  case NETSTASH_DEST_FONT:
    return "font";
  case NETSTASH_DEST_MEDIA:
    return "media";
  case NETSTASH_DEST_WORKER:
    return "worker";
  case NETSTASH_DEST_MANIFEST:
    return "manifest";
  case NETSTASH_DEST_OTHER:
    break;
  }
  return "other";
}

static int res_failed(const res *r) {
  return r->state != ST_DONE || r->err != NETSTASH_OK || r->status >= 400;
}

/* ------------------------------------------------------------------ ASCII helpers (no locale) */

static int is_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + 32 : c;
}
static int is_alpha(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static int is_digit(int c) {
  return c >= '0' && c <= '9';
}
static int is_hex(int c) {
  return is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'f');
}
static int hex_val(int c) {
  return is_digit(c) ? c - '0' : lower(c) - 'a' + 10;
}
static int ieq_n(const char *a, size_t alen, const char *b) {
  size_t i;
  for (i = 0; i < alen && b[i]; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
      return 0;
  return i == alen && b[i] == 0;
}
static int ieq(const char *a, const char *b) {
  return ieq_n(a, strlen(a), b);
}
/* Does the space-separated token list s hold token (ASCII case-insensitive)? */
static int has_token(const char *s, const char *token) {
  size_t i = 0, n = s ? strlen(s) : 0;
  while (i < n) {
    size_t st;
    while (i < n && is_space((unsigned char)s[i]))
      i++;
    st = i;
    while (i < n && !is_space((unsigned char)s[i]))
      i++;
    if (i > st && ieq_n(s + st, i - st, token))
      return 1;
  }
  return 0;
}
/* Case-insensitive substring search (ieq_n stops at hay's NUL). */
static int icontains(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; hay && *hay; hay++)
    if (ieq_n(hay, n, needle))
      return 1;
  return 0;
}

/* A growable byte buffer with a cap (for token values). */
typedef struct sbuf {
  char *p;
  size_t len, cap, max;
  int over;
} sbuf;

static void sbuf_add(sbuf *b, const char *s, size_t n) {
  if (b->over || n > b->max - b->len) {
    b->over = 1;
    return;
  }
  if (b->len + n + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 64;
    char *np;
    while (nc < b->len + n + 1)
      nc *= 2;
    if (!(np = realloc(b->p, nc))) {
      b->over = 1;
      return;
    }
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

/* One byte: the common case of the CSS tokenizer, without a call to
 * sbuf_add when there is room. */
static inline void sbuf_add1(sbuf *b, char ch) {
  if (!b->over && b->len + 2 <= b->cap && b->len < b->max) {
    b->p[b->len++] = ch;
    b->p[b->len] = 0;
  } else {
    sbuf_add(b, &ch, 1);
  }
}

static void sbuf_reset(sbuf *b) {
  b->len = 0;
  b->over = 0;
  if (b->p)
    b->p[0] = 0;
}

static void sbuf_add_cp(sbuf *b, unsigned long cp) {
  char u[4];
  if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    cp = 0xfffd; /* CSS Syntax §4.3.7 */
  if (cp < 0x80) {
    u[0] = (char)cp;
    sbuf_add(b, u, 1);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    sbuf_add(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    sbuf_add(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f));
    sbuf_add(b, u, 4);
  }
}

/* ------------------------------------------------------------------ URLs (libcurl's URL API) */

/* Resolves ref against base as a browser does for a subresource: ASCII
 * whitespace trimmed, tabs and newlines removed (URL Standard), fragment
 * dropped, host lower-cased, default port dropped. NULL for an empty
 * reference, another scheme than http(s) (data:, javascript:, blob:...) or
 * one libcurl refuses. */
static char *resolve_url(const char *base, const char *ref) {
  size_t n, i, j, k;
  char *clean, *out = NULL, *host = NULL, *scheme = NULL;
  CURLU *h;
  if (!base || !ref)
    return NULL;
  while (is_space((unsigned char)*ref))
    ref++;
  n = strlen(ref);
  while (n && is_space((unsigned char)ref[n - 1]))
    n--;
  if (!n || !(clean = malloc(n + 1)))
    return NULL;
  for (i = j = 0; i < n; i++)
    if (ref[i] != '\t' && ref[i] != '\n' && ref[i] != '\r')
      clean[j++] = ref[i];
  clean[j] = 0;
  /* a scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":" (RFC 3986 §3.1) */
  for (k = 0; clean[k] && (is_alpha((unsigned char)clean[k]) ||
                           (k && (is_digit((unsigned char)clean[k]) || clean[k] == '+' ||
                                  clean[k] == '-' || clean[k] == '.')));
       k++)
    ;
  if (k && clean[k] == ':' && !ieq_n(clean, k, "http") && !ieq_n(clean, k, "https")) {
    free(clean);
    return NULL;
  }
  if (!j || !(h = curl_url())) {
    free(clean);
    return NULL;
  }
  if (curl_url_set(h, CURLUPART_URL, base, 0) == CURLUE_OK &&
      curl_url_set(h, CURLUPART_URL, clean, CURLU_URLENCODE | CURLU_ALLOW_SPACE) == CURLUE_OK &&
      curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      (ieq(scheme, "http") || ieq(scheme, "https")) &&
      curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    for (char *p = host; *p; p++)
      *p = (char)lower((unsigned char)*p);
    curl_url_set(h, CURLUPART_HOST, host, 0);
    curl_url_set(h, CURLUPART_FRAGMENT, NULL, 0);
    char *u = NULL;
    if (curl_url_get(h, CURLUPART_URL, &u, CURLU_NO_DEFAULT_PORT) == CURLUE_OK) {
      out = strdup(u);
      curl_free(u);
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(h);
  free(clean);
  return out;
}

/* "scheme://host[:port]" of an absolute URL (malloc'd), NULL on failure. */
static char *origin_of(const char *url) {
  CURLU *h = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
  if (!h)
    return NULL;
  if (curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    if (curl_url_get(h, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT) == CURLUE_OK && port) {
      if (asprintf(&out, "%s://%s:%s", scheme, host, port) < 0)
        out = NULL;
    } else if (asprintf(&out, "%s://%s", scheme, host) < 0) {
      out = NULL;
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(h);
  return out;
}

/* ------------------------------------------------------------------ media queries and sizes */

/* A small media query evaluator for a screen VIEWPORT_W px wide (Media
 * Queries 4): media types, "not"/"only", and min-width / max-width in px;
 * any other feature is taken as matching (a loader that cannot tell loads). */
static int media_query_matches(const char *q, size_t n) {
  size_t i = 0;
  int neg = 0, ok = 1;
  while (i < n && is_space((unsigned char)q[i]))
    i++;
  if (i == n)
    return 1;
  for (int pass = 0; pass < 2; pass++) {
    size_t st = i;
    while (i < n && (is_alpha((unsigned char)q[i]) || q[i] == '-'))
      i++;
    if (ieq_n(q + st, i - st, "not"))
      neg = 1;
    else if (!ieq_n(q + st, i - st, "only")) {
      i = st;
      break;
    }
    while (i < n && is_space((unsigned char)q[i]))
      i++;
  }
  if (i < n && q[i] != '(') {
    size_t st = i;
    while (i < n && (is_alpha((unsigned char)q[i]) || q[i] == '-'))
      i++;
    ok = ieq_n(q + st, i - st, "all") || ieq_n(q + st, i - st, "screen");
  }
  while (i < n) {
    if (q[i] == '(') {
      size_t st = ++i, nm;
      long v = 0;
      while (i < n && q[i] != ')')
        i++;
      nm = st;
      while (nm < i && (is_alpha((unsigned char)q[nm]) || q[nm] == '-'))
        nm++;
      {
        size_t p = nm;
        int minw = ieq_n(q + st, nm - st, "min-width"), maxw = ieq_n(q + st, nm - st, "max-width");
        while (p < i && (is_space((unsigned char)q[p]) || q[p] == ':'))
          p++;
        while (p < i && is_digit((unsigned char)q[p]) && v < 1000000)
          v = v * 10 + (q[p++] - '0');
        if (p + 2 <= i && ieq_n(q + p, 2, "px")) {
          if (minw && VIEWPORT_W < v)
            ok = 0;
          if (maxw && VIEWPORT_W > v)
            ok = 0;
        }
      }
    }
    if (i < n)
      i++;
  }
  return neg ? !ok : ok;
}

/* A media query list matches when any query does; empty matches. */
static int media_matches(const char *m) {
  size_t i = 0, n, st;
  if (!m)
    return 1;
  n = strlen(m);
  for (st = 0; i <= n; i++) {
    if (i == n || m[i] == ',') {
      if (media_query_matches(m + st, i - st))
        return 1;
      st = i + 1;
    }
  }
  return n == 0;
}

/* A CSS length of the sizes attribute in px (px, vw, or a bare 0), -1 if
 * not understood. */
static long size_px(const char *s, size_t n) {
  size_t i = 0;
  long v = 0;
  while (i < n && is_space((unsigned char)s[i]))
    i++;
  if (i == n || !is_digit((unsigned char)s[i]))
    return -1;
  while (i < n && is_digit((unsigned char)s[i]) && v < 1000000)
    v = v * 10 + (s[i++] - '0');
  if (i < n && s[i] == '.')
    for (i++; i < n && is_digit((unsigned char)s[i]); i++)
      ;
  if (i + 2 <= n && ieq_n(s + i, 2, "px"))
    return v;
  if (i + 2 <= n && ieq_n(s + i, 2, "vw"))
    return v * VIEWPORT_W / 100;
  return v == 0 ? 0 : -1;
}

/* The sizes attribute (HTML §4.8.4.3.10): the length of the first entry
 * whose media condition matches, the last entry having none. -1: not
 * understood. */
static long eval_sizes(const char *sizes) {
  size_t n, st = 0, i;
  if (!sizes)
    return -1;
  n = strlen(sizes);
  for (i = 0; i <= n; i++) {
    if (i == n || sizes[i] == ',') {
      size_t a = st, b = i, close;
      while (a < b && is_space((unsigned char)sizes[a]))
        a++;
      if (a < b && sizes[a] == '(') {
        int depth = 0;
        for (close = a; close < b; close++) {
          if (sizes[close] == '(')
            depth++;
          else if (sizes[close] == ')' && --depth == 0)
            break;
        }
        if (close < b && media_query_matches(sizes + a, close + 1 - a))
          return size_px(sizes + close + 1, b - close - 1);
      } else if (a < b) {
        return size_px(sizes + a, b - a);
      }
      st = i + 1;
    }
  }
  return -1;
}

/* ------------------------------------------------------------------ srcset */

typedef struct cand {
  char *url;
  long w;   /* width descriptor, 0: none */
  double x; /* density descriptor, 0: none */
} cand;

static void cands_free(cand *c, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(c[i].url);
  free(c);
}

/* Parses a srcset attribute (HTML §4.8.4.3.11, "parse a srcset attribute"). */
static cand *parse_srcset(const char *s, size_t *count) {
  size_t n = strlen(s), i = 0, nc = 0, cap = 0;
  cand *c = NULL;
  *count = 0;
  while (i < n) {
    size_t us, ue;
    long w = 0;
    double x = 0;
    int bad = 0;
    while (i < n && (is_space((unsigned char)s[i]) || s[i] == ','))
      i++;
    if (i >= n)
      break;
    us = i;
    while (i < n && !is_space((unsigned char)s[i]))
      i++;
    ue = i;
    if (ue > us && s[ue - 1] == ',') {
      while (ue > us && s[ue - 1] == ',')
        ue--;
    } else {
      /* descriptors up to a comma outside parentheses */
      int paren = 0;
      while (i < n) {
        size_t ds;
        while (i < n && is_space((unsigned char)s[i]))
          i++;
        if (i >= n)
          break;
        if (s[i] == ',') {
          i++;
          break;
        }
        ds = i;
        while (i < n && (paren || (!is_space((unsigned char)s[i]) && s[i] != ','))) {
          if (s[i] == '(')
            paren++;
          else if (s[i] == ')' && paren)
            paren--;
          i++;
        }
        if (i > ds) {
          char last = (char)lower((unsigned char)s[i - 1]);
          char *end;
          char num[32];
          size_t dl = i - ds - 1;
          if (dl == 0 || dl >= sizeof(num)) {
            bad = 1;
            continue;
          }
          memcpy(num, s + ds, dl);
          num[dl] = 0;
          if (last == 'w') {
            long v = strtol(num, &end, 10);
            if (*end || v <= 0 || w || x)
              bad = 1;
            else
              w = v;
          } else if (last == 'x') {
            double v = strtod(num, &end);
            if (*end || v <= 0 || w || x)
              bad = 1;
            else
              x = v;
          } /* h descriptors and unknown ones are ignored */
        }
      }
    }
    if (ue > us && !bad) {
      if (nc == cap) {
        cand *nb = realloc(c, (cap ? cap * 2 : 4) * sizeof(*c));
        if (!nb)
          break;
        c = nb;
        cap = cap ? cap * 2 : 4;
      }
      c[nc].url = strndup(s + us, ue - us);
      if (!c[nc].url)
        break;
      c[nc].w = w;
      c[nc].x = x;
      nc++;
    }
  }
  *count = nc;
  return c;
}

/* The candidate a 1x-DPR browser picks (malloc'd reference, NULL: none):
 * with width descriptors, the smallest width >= the slot width (sizes, else
 * the width attribute, else the viewport), else the largest; otherwise the
 * 1x candidate (src counts as 1x when the srcset has neither a 1x nor width
 * descriptors), else the first. */
static char *pick_srcset(const char *srcset, const char *sizes, const char *width_attr,
                         const char *src) {
  size_t n = 0, i, best = (size_t)-1;
  cand *c = srcset ? parse_srcset(srcset, &n) : NULL;
  int any_w = 0, any_1x = 0;
  char *out = NULL;
  for (i = 0; i < n; i++) {
    any_w |= c[i].w > 0;
    any_1x |= (!c[i].w && (c[i].x == 0 || c[i].x == 1.0));
  }
  if (any_w) {
    long slot = eval_sizes(sizes);
    if (slot < 0 && width_attr) {
      char *end;
      long v = strtol(width_attr, &end, 10);
      if (end != width_attr && v > 0)
        slot = v;
    }
    if (slot < 0)
      slot = VIEWPORT_W;
    for (i = 0; i < n; i++)
      if (c[i].w >= slot && (best == (size_t)-1 || c[i].w < c[best].w))
        best = i;
    if (best == (size_t)-1)
      for (i = 0; i < n; i++)
        if (c[i].w && (best == (size_t)-1 || c[i].w > c[best].w))
          best = i;
  } else if (any_1x) {
    for (i = 0; i < n && best == (size_t)-1; i++)
      if (c[i].x == 0 || c[i].x == 1.0)
        best = i;
  } else if (src && *src) {
    cands_free(c, n);
    return strdup(src);
  } else if (n) {
    best = 0;
  }
  if (best != (size_t)-1)
    out = strdup(c[best].url);
  cands_free(c, n);
  return out;
}

/* ------------------------------------------------------------------ resources */

typedef struct ref_opts {
  netstash_destination dest;
  netstash_request_mode mode;
  netstash_credentials cred;
  int klass;
  int parse;
  int prio_override;
  netstash_priority prio;
} ref_opts;

static res *find_res(load *L, const char *url) {
  for (size_t i = 0; i < L->n; i++)
    if (!strcmp(L->v[i]->url, url))
      return L->v[i];
  return NULL;
}

/* Records a reference found in resource from (NULL: the page itself):
 * resolved against base, deduplicated by URL (the first reference decides
 * destination and mode; a later one can only raise the priority class or
 * ask for the body to be parsed as a stylesheet). */
static void add_ref(load *L, const res *from, size_t doc, int depth, const char *base,
                    const char *ref, const ref_opts *o) {
  char *url = resolve_url(base, ref);
  res *r;
  if (!url)
    return;
  if ((r = find_res(L, url)) != NULL) {
    free(url);
    if (r->state == ST_QUEUED && o->klass < r->klass)
      r->klass = o->klass;
    if (o->parse == PARSE_CSS && r->parse == PARSE_CSS && !r->applied) {
      r->applied = 1; /* a preloaded style, now applied: run_load parses it */
      r->depth = depth;
    }
    return;
  }
  if (L->n >= MAX_RESOURCES) {
    L->skipped++;
    free(url);
    return;
  }
  if (L->n == L->cap) {
    size_t nc = L->cap ? L->cap * 2 : 64;
    res **nv = realloc(L->v, nc * sizeof(*nv));
    if (!nv) {
      L->oom = 1;
      free(url);
      return;
    }
    L->v = nv;
    L->cap = nc;
  }
  if (!(r = calloc(1, sizeof(*r)))) {
    L->oom = 1;
    free(url);
    return;
  }
  r->L = L;
  r->id = L->n;
  r->url = url;
  r->parent = from ? (long)from->id : -1;
  r->doc = from ? doc : 0;
  r->dest = o->dest;
  r->mode = o->mode;
  r->cred = o->cred;
  r->klass = o->klass;
  /* style bodies are kept even when only preloaded: a stylesheet link may
   * apply them later, and the loop thread reads parse while running */
  r->parse = o->dest == NETSTASH_DEST_STYLE ? PARSE_CSS : o->parse;
  r->applied = o->parse == PARSE_CSS;
  r->prio_override = o->prio_override;
  r->prio = o->prio;
  r->depth = depth;
  r->start_ms = r->head_ms = r->end_ms = -1;
  L->v[L->n++] = r;
}

/* ------------------------------------------------------------------ CSS tokenizer */

enum css_ctx { CTX_NONE = 0, CTX_URL, CTX_FORMAT, CTX_IMAGESET, CTX_OTHER };

typedef struct css_scan {
  load *L;
  const res *from;
  size_t doc;
  int depth;
  const char *base;
  const uint8_t *s;
  size_t n, i;
  sbuf tok;
  /* @import */
  int import_pending;
  /* @font-face */
  int ff_pending; /* @font-face seen, block not opened yet */
  int ff_depth;   /* brace depth of the open font-face block, 0: none */
  int in_src;     /* inside its src descriptor */
  char *src_url;  /* current candidate */
  char *src_format;
  int src_done; /* a candidate was taken */
  int brace;
  int last_ident_src; /* previous token was the ident "src" */
  /* image-set(): the candidates seen and the pick */
  int iset_depth;
  char *iset_first, *iset_1x, *iset_last;
  int iset_last_is_cand;
  /* function stack */
  int fn[32];
  int nfn;
} css_scan;

static int cpeek(const css_scan *c, size_t k) {
  return c->i + k < c->n ? c->s[c->i + k] : -1;
}

/* A valid escape: "\" not followed by a newline (CSS Syntax §4.3.8). */
static int is_escape_at(const css_scan *c, size_t k) {
  return cpeek(c, k) == '\\' && cpeek(c, k + 1) != '\n' && cpeek(c, k + 1) != -1;
}

/* Consumes an escape after the backslash (§4.3.7) into tok. */
static void css_escape(css_scan *c) {
  int ch = cpeek(c, 0);
  if (ch == -1) {
    sbuf_add_cp(&c->tok, 0xfffd);
    return;
  }
  if (is_hex(ch)) {
    unsigned long cp = 0;
    int k;
    for (k = 0; k < 6 && is_hex(cpeek(c, 0)); k++, c->i++)
      cp = cp * 16 + (unsigned long)hex_val(cpeek(c, 0));
    if (is_space(cpeek(c, 0)))
      c->i++;
    sbuf_add_cp(&c->tok, cp);
    return;
  }
  sbuf_add1(&c->tok, (char)ch);
  c->i++;
}

static int is_name_start(int ch) {
  return is_alpha(ch) || ch == '_' || ch >= 0x80;
}
static int is_name(int ch) {
  return is_name_start(ch) || is_digit(ch) || ch == '-';
}

/* Consumes a name (§4.3.11) into tok. */
static void css_name(css_scan *c) {
  sbuf_reset(&c->tok);
  for (;;) {
    size_t start = c->i;
    while (c->i < c->n && is_name(c->s[c->i]))
      c->i++; /* a run of name code points, appended at once */
    if (c->i > start)
      sbuf_add(&c->tok, (const char *)c->s + start, c->i - start);
    if (is_escape_at(c, 0)) {
      c->i++;
      css_escape(c);
    } else {
      return;
    }
  }
}

/* Would an identifier start here (§4.3.9)? */
static int ident_starts(const css_scan *c, size_t k) {
  int a = cpeek(c, k);
  if (a == '-') {
    int b = cpeek(c, k + 1);
    return (b != -1 && is_name_start(b)) || b == '-' || is_escape_at(c, k + 1);
  }
  if (a == '\\')
    return is_escape_at(c, k);
  return a != -1 && is_name_start(a);
}

/* Consumes a string token after its opening quote (§4.3.5) into tok;
 * 0 on a bad string (unescaped newline). */
static int css_string(css_scan *c, int quote) {
  sbuf_reset(&c->tok);
  for (;;) {
    int ch = cpeek(c, 0);
    if (ch == -1)
      return 1;
    c->i++;
    if (ch == quote)
      return 1;
    if (ch == '\n') {
      c->i--;
      return 0;
    }
    if (ch == '\\') {
      if (cpeek(c, 0) == -1)
        continue;
      if (cpeek(c, 0) == '\n') {
        c->i++;
        continue;
      }
      css_escape(c);
      continue;
    }
    {
      sbuf_add1(&c->tok, (char)ch);
    }
  }
}

/* Consumes an unquoted url token after "url(" and whitespace (§4.3.6) into
 * tok; 0 on a bad url. */
static int css_unquoted_url(css_scan *c) {
  sbuf_reset(&c->tok);
  for (;;) {
    int ch = cpeek(c, 0);
    if (ch == -1)
      return 1;
    c->i++;
    if (ch == ')')
      return 1;
    if (is_space(ch)) {
      while (is_space(cpeek(c, 0)))
        c->i++;
      if (cpeek(c, 0) == ')' || cpeek(c, 0) == -1) {
        if (cpeek(c, 0) == ')')
          c->i++;
        return 1;
      }
      break;
    }
    if (ch == '"' || ch == '\'' || ch == '(' || ch < 0x20 || ch == 0x7f)
      break;
    if (ch ==
        '\\') { /* the backslash is consumed: a valid escape unless a newline or EOF follows */
      if (cpeek(c, 0) != '\n' && cpeek(c, 0) != -1) {
        css_escape(c);
        continue;
      }
      break;
    }
    {
      sbuf_add1(&c->tok, (char)ch);
    }
  }
  /* bad url: consume the remnants (§4.3.14) */
  for (;;) {
    int ch = cpeek(c, 0);
    if (ch == -1)
      return 0;
    c->i++;
    if (ch == ')')
      return 0;
    if (ch == '\\' && cpeek(c, 0) != -1)
      c->i++;
  }
}

static const ref_opts css_image_ref = {NETSTASH_DEST_IMAGE,
                                       NETSTASH_MODE_NO_CORS,
                                       NETSTASH_CREDENTIALS_INCLUDE,
                                       CLASS_IMAGE,
                                       PARSE_NONE,
                                       0,
                                       NETSTASH_PRIORITY_MEDIUM};
static const ref_opts css_font_ref = {
    NETSTASH_DEST_FONT,      NETSTASH_MODE_CORS, NETSTASH_CREDENTIALS_SAME_ORIGIN,
    CLASS_BLOCKING,          PARSE_NONE,         0,
    NETSTASH_PRIORITY_MEDIUM};
static const ref_opts css_import_ref = {NETSTASH_DEST_STYLE,
                                        NETSTASH_MODE_NO_CORS,
                                        NETSTASH_CREDENTIALS_INCLUDE,
                                        CLASS_BLOCKING,
                                        PARSE_CSS,
                                        0,
                                        NETSTASH_PRIORITY_MEDIUM};

/* CSS Fonts 4 §4.3: the formats a browser loads. */
static int font_format_ok(const char *f) {
  static const char *const ok[] = {"woff2",
                                   "woff",
                                   "truetype",
                                   "opentype",
                                   "collection",
                                   "woff2-variations",
                                   "woff-variations",
                                   "truetype-variations",
                                   "opentype-variations"};
  if (!f)
    return 1;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
    if (ieq(f, ok[i]))
      return 1;
  return 0;
}

/* End of one src candidate: the first loadable one is the font's. */
static void ff_candidate_end(css_scan *c) {
  if (!c->src_done && c->src_url && font_format_ok(c->src_format)) {
    add_ref(c->L, c->from, c->doc, c->depth, c->base, c->src_url, &css_font_ref);
    c->src_done = 1;
  }
  free(c->src_url);
  free(c->src_format);
  c->src_url = c->src_format = NULL;
}

static void ff_src_end(css_scan *c) {
  if (c->in_src)
    ff_candidate_end(c);
  c->in_src = 0;
  c->src_done = 0;
}

static void iset_end(css_scan *c) {
  const char *pick = c->iset_1x ? c->iset_1x : c->iset_first;
  if (pick)
    add_ref(c->L, c->from, c->doc, c->depth, c->base, pick, &css_image_ref);
  free(c->iset_first);
  free(c->iset_1x);
  free(c->iset_last);
  c->iset_first = c->iset_1x = c->iset_last = NULL;
  c->iset_depth = 0;
}

/* A URL token (url() or a string in a URL position). */
static void css_url(css_scan *c, const char *u) {
  if (c->iset_depth) {
    if (!c->iset_first)
      c->iset_first = strdup(u);
    free(c->iset_last);
    c->iset_last = strdup(u);
    c->iset_last_is_cand = 1;
    return;
  }
  if (c->import_pending) {
    add_ref(c->L, c->from, c->doc, c->depth + 1, c->base, u, &css_import_ref);
    c->import_pending = 0;
    return;
  }
  if (c->in_src) {
    free(c->src_url);
    c->src_url = strdup(u);
    return;
  }
  add_ref(c->L, c->from, c->doc, c->depth, c->base, u, &css_image_ref);
}

static void css_push_fn(css_scan *c, int kind) {
  if (c->nfn < (int)(sizeof(c->fn) / sizeof(c->fn[0])))
    c->fn[c->nfn] = kind;
  c->nfn++;
}

static int css_top_fn(const css_scan *c) {
  if (!c->nfn)
    return CTX_NONE;
  return c->nfn <= (int)(sizeof(c->fn) / sizeof(c->fn[0])) ? c->fn[c->nfn - 1] : CTX_OTHER;
}

/* Scans a style sheet (or a style attribute's declarations) and records the
 * resources it references: @import (style, parsed in turn), the first
 * loadable src of each @font-face (font), every other url() (image). */
static void css_scan_refs(load *L, const res *from, size_t doc, int depth, const char *base,
                          const uint8_t *s, size_t n) {
  css_scan c;
  memset(&c, 0, sizeof(c));
  c.L = L;
  c.from = from;
  c.doc = doc;
  c.depth = depth;
  c.base = base;
  c.s = s;
  c.n = n;
  c.tok.max = 1u << 20;
  while (c.i < c.n) {
    int ch = cpeek(&c, 0);
    if (ch == '/' && cpeek(&c, 1) == '*') { /* comment (§4.3.2) */
      c.i += 2;
      while (c.i < c.n && !(cpeek(&c, 0) == '*' && cpeek(&c, 1) == '/'))
        c.i++;
      c.i = c.i + 2 < c.n ? c.i + 2 : c.n;
      continue;
    }
    if (is_space(ch)) {
      c.i++;
      continue;
    }
    if (ch == '"' || ch == '\'') {
      int top = css_top_fn(&c);
      c.i++;
      if (!css_string(&c, ch) || c.tok.over)
        continue;
      if (top == CTX_URL || top == CTX_IMAGESET ||
          (top == CTX_NONE && c.import_pending && c.brace == 0))
        css_url(&c, c.tok.p ? c.tok.p : "");
      else if (top == CTX_FORMAT && c.in_src && !c.src_format)
        c.src_format = strdup(c.tok.p ? c.tok.p : "");
      continue;
    }
    if (ch == '@' && ident_starts(&c, 1)) {
      c.i++;
      css_name(&c);
      if (c.tok.p && ieq(c.tok.p, "import") && c.brace == 0)
        c.import_pending = 1;
      else if (c.tok.p && ieq(c.tok.p, "font-face"))
        c.ff_pending = 1;
      continue;
    }
    if (is_digit(ch) || (ch == '.' && is_digit(cpeek(&c, 1))) ||
        ((ch == '+' || ch == '-') &&
         (is_digit(cpeek(&c, 1)) || (cpeek(&c, 1) == '.' && is_digit(cpeek(&c, 2)))))) {
      /* number, percentage or dimension (§4.3.3): image-set densities */
      double v;
      size_t st = c.i;
      char num[40];
      c.i++;
      while (is_digit(cpeek(&c, 0)) || cpeek(&c, 0) == '.')
        c.i++;
      snprintf(num, sizeof(num), "%.*s", (int)(c.i - st < 39 ? c.i - st : 39),
               (const char *)s + st);
      v = strtod(num, NULL);
      if (ident_starts(&c, 0)) {
        css_name(&c);
        /* "1x" after an image-set() candidate: that one is the pick */
        if (c.iset_depth && c.iset_last_is_cand && c.iset_last && !c.iset_1x && c.tok.p &&
            (ieq(c.tok.p, "x") || ieq(c.tok.p, "dppx")) && v == 1.0)
          c.iset_1x = strdup(c.iset_last);
      } else if (cpeek(&c, 0) == '%') {
        c.i++;
      }
      continue;
    }
    if (ident_starts(&c, 0)) {
      css_name(&c);
      if (cpeek(&c, 0) == '(') {
        const char *nm = c.tok.p ? c.tok.p : "";
        c.i++;
        if (ieq(nm, "url")) {
          while (is_space(cpeek(&c, 0)))
            c.i++;
          if (cpeek(&c, 0) == '"' || cpeek(&c, 0) == '\'') {
            css_push_fn(&c, CTX_URL); /* url( "string" ) is a function */
          } else if (css_unquoted_url(&c) && !c.tok.over) {
            css_url(&c, c.tok.p ? c.tok.p : "");
          }
        } else if (ieq(nm, "format") || ieq(nm, "tech")) {
          css_push_fn(&c, ieq(nm, "format") ? CTX_FORMAT : CTX_OTHER);
        } else if (ieq(nm, "image-set") || ieq(nm, "-webkit-image-set")) {
          css_push_fn(&c, CTX_IMAGESET);
          if (!c.iset_depth)
            c.iset_depth = c.nfn;
        } else {
          css_push_fn(&c, CTX_OTHER);
        }
        continue;
      }
      /* format(woff2): CSS Fonts 4 also takes keywords */
      if (css_top_fn(&c) == CTX_FORMAT && c.in_src && !c.src_format && c.tok.p)
        c.src_format = strdup(c.tok.p);
      c.last_ident_src = c.ff_depth && c.brace == c.ff_depth && c.tok.p && ieq(c.tok.p, "src");
      continue;
    }
    c.i++;
    switch (ch) {
    case ':':
      if (c.last_ident_src && !c.nfn) {
        ff_src_end(&c);
        c.in_src = 1;
      }
      break;
    case ',':
      if (c.in_src && c.nfn == 0)
        ff_candidate_end(&c);
      if (c.iset_depth && c.nfn == c.iset_depth)
        c.iset_last_is_cand = 0;
      break;
    case ';':
      if (c.nfn == 0) {
        ff_src_end(&c);
        c.import_pending = 0;
      }
      break;
    case '{':
      if (c.iset_depth) /* an unclosed image-set() */
        iset_end(&c);
      c.brace++;
      c.import_pending = 0;
      if (c.ff_pending) {
        c.ff_depth = c.brace;
        c.ff_pending = 0;
      }
      c.nfn = 0;
      break;
    case '}':
      ff_src_end(&c);
      if (c.iset_depth)
        iset_end(&c);
      if (c.ff_depth && c.brace == c.ff_depth)
        c.ff_depth = 0;
      if (c.brace)
        c.brace--;
      c.nfn = 0;
      break;
    case ')':
      if (c.nfn) {
        if (c.iset_depth == c.nfn)
          iset_end(&c);
        c.nfn--;
      }
      break;
    default:
      break;
    }
    if (ch != ':' && !is_space(ch))
      c.last_ident_src = 0;
  }
  ff_src_end(&c);
  if (c.iset_depth)
    iset_end(&c);
  free(c.tok.p);
}

/* ------------------------------------------------------------------ HTML discovery (Gumbo) */

typedef struct html_scan {
  load *L;
  const res *doc_res;
  size_t doc;
  int depth;
  char *base;
} html_scan;

static const char *attr(const GumboElement *e, const char *name) {
  const GumboAttribute *a = gumbo_get_attribute(&e->attributes, name);
  return a ? a->value : NULL;
}

/* Gumbo 0.10 has no tag for <picture>: compare the source's tag name. */
static int tag_is(const GumboElement *e, const char *name) {
  GumboStringPiece p = e->original_tag;
  if (e->tag != GUMBO_TAG_UNKNOWN)
    return ieq(gumbo_normalized_tagname(e->tag), name);
  if (!p.length)
    return 0;
  gumbo_tag_from_original_text(&p);
  return ieq_n(p.data, p.length, name);
}

/* crossorigin: CORS mode; "use-credentials" includes credentials, any other
 * value (anonymous, "") same-origin ones (HTML §2.5.4). */
static void cors_attr(const GumboElement *e, ref_opts *o) {
  const char *co = attr(e, "crossorigin");
  if (co) {
    o->mode = NETSTASH_MODE_CORS;
    o->cred = ieq(co, "use-credentials") ? NETSTASH_CREDENTIALS_INCLUDE
                                         : NETSTASH_CREDENTIALS_SAME_ORIGIN;
  }
}

/* fetchpriority=high|low moves a request one scheduling class and one
 * priority level (Priority Hints). */
static void fetchpriority_attr(const GumboElement *e, ref_opts *o) {
  const char *fp = attr(e, "fetchpriority");
  netstash_priority def = o->dest == NETSTASH_DEST_IMAGE || o->dest == NETSTASH_DEST_MEDIA
                              ? NETSTASH_PRIORITY_LOW
                          : (o->dest == NETSTASH_DEST_STYLE || o->dest == NETSTASH_DEST_FONT)
                              ? NETSTASH_PRIORITY_HIGHEST
                              : NETSTASH_PRIORITY_MEDIUM;
  if (!fp)
    return;
  if (ieq(fp, "high")) {
    if (o->klass > CLASS_BLOCKING)
      o->klass--;
    o->prio_override = 1;
    o->prio = def < NETSTASH_PRIORITY_HIGHEST ? def + 1 : def;
  } else if (ieq(fp, "low")) {
    if (o->klass < CLASS_IDLE)
      o->klass++;
    o->prio_override = 1;
    o->prio = def > NETSTASH_PRIORITY_LOWEST ? def - 1 : def;
  }
}

static ref_opts plain_ref(netstash_destination d, int klass) {
  ref_opts o;
  memset(&o, 0, sizeof(o));
  o.dest = d;
  o.mode = NETSTASH_MODE_NO_CORS;
  o.cred = NETSTASH_CREDENTIALS_INCLUDE;
  o.klass = klass;
  o.parse = PARSE_NONE;
  o.prio = NETSTASH_PRIORITY_MEDIUM;
  return o;
}

static void html_ref(html_scan *h, const char *ref, const ref_opts *o) {
  if (ref && *ref)
    add_ref(h->L, h->doc_res, h->doc, h->depth, h->base, ref, o);
}

/* Fetch's destination for <link rel=preload as=...> (HTML §4.6.7.13);
 * -1: not fetched (unknown or missing "as"). */
static int preload_dest(const char *as, int *klass) {
  static const struct {
    const char *as;
    netstash_destination d;
    int klass;
  } map[] = {{"style", NETSTASH_DEST_STYLE, CLASS_BLOCKING},
             {"font", NETSTASH_DEST_FONT, CLASS_BLOCKING},
             {"script", NETSTASH_DEST_SCRIPT, CLASS_HIGH},
             {"fetch", NETSTASH_DEST_EMPTY, CLASS_HIGH},
             {"image", NETSTASH_DEST_IMAGE, CLASS_IMAGE},
             {"audio", NETSTASH_DEST_MEDIA, CLASS_IMAGE},
             {"video", NETSTASH_DEST_MEDIA, CLASS_IMAGE},
             {"track", NETSTASH_DEST_MEDIA, CLASS_IMAGE},
             {"worker", NETSTASH_DEST_WORKER, CLASS_HIGH},
             {"sharedworker", NETSTASH_DEST_WORKER, CLASS_HIGH},
             {"manifest", NETSTASH_DEST_MANIFEST, CLASS_IDLE}};
  for (size_t i = 0; as && i < sizeof(map) / sizeof(map[0]); i++)
    if (ieq(as, map[i].as)) {
      *klass = map[i].klass;
      return (int)map[i].d;
    }
  return -1;
}

static void html_link(html_scan *h, const GumboElement *e) {
  const char *rel = attr(e, "rel"), *href = attr(e, "href");
  ref_opts o;
  if (!rel)
    return;
  if (has_token(rel, "stylesheet") && !has_token(rel, "alternate") && !attr(e, "disabled")) {
    o = plain_ref(NETSTASH_DEST_STYLE, CLASS_BLOCKING);
    o.parse = PARSE_CSS;
    cors_attr(e, &o);
    if (!media_matches(attr(e, "media"))) { /* loaded, not render-blocking */
      o.klass = CLASS_IDLE;
      o.prio_override = 1;
      o.prio = NETSTASH_PRIORITY_LOWEST;
    }
    fetchpriority_attr(e, &o);
    html_ref(h, href, &o);
  } else if (has_token(rel, "preload")) {
    int klass = CLASS_HIGH, d = preload_dest(attr(e, "as"), &klass);
    if (d < 0 || !media_matches(attr(e, "media")))
      return;
    o = plain_ref((netstash_destination)d, klass);
    if (d == NETSTASH_DEST_FONT) {
      o.mode = NETSTASH_MODE_CORS; /* fonts are always CORS requests */
      o.cred = NETSTASH_CREDENTIALS_SAME_ORIGIN;
    }
    cors_attr(e, &o);
    fetchpriority_attr(e, &o);
    if (d == NETSTASH_DEST_IMAGE && attr(e, "imagesrcset")) {
      char *pick = pick_srcset(attr(e, "imagesrcset"), attr(e, "imagesizes"), NULL, href);
      html_ref(h, pick, &o);
      free(pick);
    } else {
      html_ref(h, href, &o);
    }
  } else if (has_token(rel, "modulepreload")) {
    o = plain_ref(NETSTASH_DEST_SCRIPT, CLASS_HIGH);
    o.mode = NETSTASH_MODE_CORS;
    o.cred = NETSTASH_CREDENTIALS_SAME_ORIGIN;
    cors_attr(e, &o);
    html_ref(h, href, &o);
  } else if (has_token(rel, "icon")) {
    o = plain_ref(NETSTASH_DEST_IMAGE, CLASS_IDLE);
    o.prio_override = 1;
    o.prio = NETSTASH_PRIORITY_LOWEST;
    html_ref(h, href, &o);
  }
}

/* Classic scripts (no type, or a JavaScript MIME type) and module scripts
 * are fetched; data blocks (JSON-LD, templates) and nomodule are not. */
static void html_script(html_scan *h, const GumboElement *e) {
  const char *src = attr(e, "src"), *type = attr(e, "type");
  int module = 0;
  ref_opts o;
  if (!src || attr(e, "nomodule"))
    return;
  if (type && *type) {
    if (ieq(type, "module"))
      module = 1;
    else if (!icontains(type, "javascript") && !icontains(type, "ecmascript") &&
             !ieq(type, "text/jscript") && !ieq(type, "text/livescript"))
      return;
  }
  o = plain_ref(NETSTASH_DEST_SCRIPT,
                module || attr(e, "async") || attr(e, "defer") ? CLASS_HIGH : CLASS_BLOCKING);
  if (module) {
    o.mode = NETSTASH_MODE_CORS;
    o.cred = NETSTASH_CREDENTIALS_SAME_ORIGIN;
  }
  cors_attr(e, &o);
  fetchpriority_attr(e, &o);
  html_ref(h, src, &o);
}

static void html_img(html_scan *h, const GumboElement *img, const char *srcset, const char *sizes) {
  ref_opts o = plain_ref(NETSTASH_DEST_IMAGE, CLASS_IMAGE);
  char *pick;
  cors_attr(img, &o);
  fetchpriority_attr(img, &o);
  pick = pick_srcset(srcset, sizes, attr(img, "width"), attr(img, "src"));
  html_ref(h, pick, &o);
  free(pick);
}

/* Image types a browser decodes (for <source type> in <picture>). */
static int image_type_ok(const char *t) {
  static const char *const ok[] = {
      "image/webp", "image/avif",    "image/png", "image/jpeg",   "image/gif",
      "image/apng", "image/svg+xml", "image/bmp", "image/x-icon", "image/vnd.microsoft.icon"};
  if (!t || !*t)
    return 1;
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
    if (ieq(t, ok[i]))
      return 1;
  return 0;
}

/* <picture>: the first <source> whose type and media match supplies the
 * srcset (HTML §4.8.4.3.4, "select an image source"), else the <img>. */
static void html_picture(html_scan *h, const GumboElement *pic) {
  const GumboElement *img = NULL, *chosen = NULL;
  for (unsigned i = 0; i < pic->children.length; i++) {
    const GumboNode *ch = pic->children.data[i];
    if (ch->type == GUMBO_NODE_ELEMENT && ch->v.element.tag == GUMBO_TAG_IMG) {
      img = &ch->v.element;
      break;
    }
  }
  if (!img)
    return;
  for (unsigned i = 0; i < pic->children.length && !chosen; i++) {
    const GumboNode *ch = pic->children.data[i];
    const GumboElement *s;
    if (ch->type != GUMBO_NODE_ELEMENT)
      continue;
    s = &ch->v.element;
    if (s == img)
      break; /* sources after the img are not considered */
    if (s->tag != GUMBO_TAG_SOURCE || !attr(s, "srcset") || !image_type_ok(attr(s, "type")) ||
        !media_matches(attr(s, "media")))
      continue;
    chosen = s;
  }
  if (chosen)
    html_img(h, img, attr(chosen, "srcset"),
             attr(chosen, "sizes") ? attr(chosen, "sizes") : attr(img, "sizes"));
  else
    html_img(h, img, attr(img, "srcset"), attr(img, "sizes"));
}

static void html_style_text(html_scan *h, const GumboNode *style) {
  for (unsigned i = 0; i < style->v.element.children.length; i++) {
    const GumboNode *t = style->v.element.children.data[i];
    if (t->type == GUMBO_NODE_TEXT || t->type == GUMBO_NODE_WHITESPACE ||
        t->type == GUMBO_NODE_CDATA)
      css_scan_refs(h->L, h->doc_res, h->doc, 0, h->base, (const uint8_t *)t->v.text.text,
                    strlen(t->v.text.text));
  }
}

static void html_walk(html_scan *h, const GumboNode *node) {
  const GumboElement *e;
  const char *style;
  if (node->type != GUMBO_NODE_ELEMENT)
    return; /* template contents are inert; text has no references */
  e = &node->v.element;
  if (e->tag_namespace != GUMBO_NAMESPACE_HTML)
    return; /* inline SVG and MathML: not followed */
  if ((style = attr(e, "style")) != NULL)
    css_scan_refs(h->L, h->doc_res, h->doc, 0, h->base, (const uint8_t *)style, strlen(style));
  switch (e->tag) {
  case GUMBO_TAG_NOSCRIPT: /* scripting is on in the browser emulated */
    return;
  case GUMBO_TAG_LINK:
    html_link(h, e);
    break;
  case GUMBO_TAG_STYLE:
    html_style_text(h, node);
    return;
  case GUMBO_TAG_SCRIPT:
    html_script(h, e);
    return;
  case GUMBO_TAG_IMG:
    html_img(h, e, attr(e, "srcset"), attr(e, "sizes"));
    break;
  case GUMBO_TAG_VIDEO:
    if (attr(e, "poster")) {
      ref_opts o = plain_ref(NETSTASH_DEST_IMAGE, CLASS_IMAGE);
      html_ref(h, attr(e, "poster"), &o);
    }
    break;
  case GUMBO_TAG_IFRAME:
    if (h->depth < MAX_FRAME_DEPTH && attr(e, "src") && !attr(e, "srcdoc")) {
      ref_opts o = plain_ref(NETSTASH_DEST_IFRAME, CLASS_HIGH);
      o.mode = NETSTASH_MODE_NAVIGATE;
      o.parse = PARSE_HTML;
      add_ref(h->L, h->doc_res, h->doc, h->depth + 1, h->base, attr(e, "src"), &o);
    }
    break;
  default:
    if (e->tag == GUMBO_TAG_UNKNOWN && tag_is(e, "picture")) {
      html_picture(h, e);
      for (unsigned i = 0; i < e->children.length; i++) {
        const GumboNode *ch = e->children.data[i];
        if (ch->type == GUMBO_NODE_ELEMENT &&
            (ch->v.element.tag == GUMBO_TAG_IMG || ch->v.element.tag == GUMBO_TAG_SOURCE))
          continue;
        html_walk(h, ch);
      }
      return;
    }
    break;
  }
  for (unsigned i = 0; i < e->children.length; i++)
    html_walk(h, e->children.data[i]);
}

/* The first <base href> (HTML §4.2.3). */
static const char *find_base(const GumboNode *node) {
  if (node->type != GUMBO_NODE_ELEMENT)
    return NULL;
  if (node->v.element.tag == GUMBO_TAG_BASE && attr(&node->v.element, "href"))
    return attr(&node->v.element, "href");
  for (unsigned i = 0; i < node->v.element.children.length; i++) {
    const char *b = find_base(node->v.element.children.data[i]);
    if (b)
      return b;
  }
  return NULL;
}

static void parse_html(load *L, res *r) {
  GumboOptions opts = kGumboDefaultOptions;
  GumboOutput *out;
  html_scan h;
  const char *url = r->effective_url ? r->effective_url : r->url, *b;
  opts.max_errors = 0; /* parse errors are not reported: do not collect them */
  out = gumbo_parse_with_options(&opts, (const char *)r->body, r->body_len);
  if (!out)
    return;
  memset(&h, 0, sizeof(h));
  h.L = L;
  h.doc_res = r;
  h.doc = r->id;
  h.depth = r->depth;
  b = find_base(out->root);
  h.base = b ? resolve_url(url, b) : NULL;
  if (!h.base)
    h.base = strdup(url);
  if (h.base)
    html_walk(&h, out->root);
  free(h.base);
  gumbo_destroy_output(&opts, out);
}

/* ------------------------------------------------------------------ jobs */

static void push_done(res *r) {
  load *L = r->L;
  pthread_mutex_lock(&L->lock);
  if (L->ndone == L->done_cap) {
    size_t nc = L->done_cap ? L->done_cap * 2 : 64;
    res **nd = realloc(L->done, nc * sizeof(*nd));
    if (nd) {
      L->done = nd;
      L->done_cap = nc;
    }
  }
  if (L->ndone < L->done_cap)
    L->done[L->ndone++] = r;
  else
    L->oom = 1;
  pthread_mutex_unlock(&L->lock);
  pthread_cond_signal(&L->cond); /* after the unlock: the woken waiter needs the lock */
}

static void keep_body(res *r, const uint8_t *data, size_t len) {
  if (!r->parse || r->body_over)
    return;
  if (len > MAX_PARSE_BODY - r->body_len) {
    r->body_over = 1;
    return;
  }
  if (r->body_len + len > r->body_cap) {
    size_t nc = r->body_cap ? r->body_cap : 65536;
    uint8_t *nb;
    while (nc < r->body_len + len)
      nc *= 2;
    if (!(nb = realloc(r->body, nc))) {
      r->body_over = 1;
      return;
    }
    r->body = nb;
    r->body_cap = nc;
  }
  memcpy(r->body + r->body_len, data, len);
  r->body_len += len;
}

static void j_response(netstash_job *j, void *ud) {
  res *r = ud;
  (void)j;
  r->head_ms = now_ms(r->L);
}

static void j_data(netstash_job *j, const uint8_t *data, size_t len, void *ud) {
  res *r = ud;
  (void)j;
  r->bytes += len;
  keep_body(r, data, len);
}

/* Terminal callback (loop thread): everything the report needs is copied
 * here, while the fetch is certainly readable. */
static void j_complete(netstash_job *j, netstash_error err, void *ud) {
  res *r = ud;
  const netstash_fetch *f = netstash_job_fetch(j);
  const char *ct, *eff, *detail;
  r->end_ms = now_ms(r->L);
  r->err = err;
  r->status = netstash_job_status(j);
  r->source = err == NETSTASH_OK ? netstash_job_source(j) : NETSTASH_SOURCE_NONE;
  if (f) {
    r->bytes = netstash_fetch_body_bytes(f);
    r->wire_bytes = netstash_fetch_wire_bytes(f);
    snprintf(r->protocol, sizeof(r->protocol), "%s", netstash_fetch_protocol_name(f));
    if ((ct = netstash_fetch_header(f, "content-type")) != NULL)
      r->content_type = strdup(ct);
    if ((eff = netstash_fetch_effective_url(f)) != NULL && *eff)
      r->effective_url = strdup(eff);
    if ((detail = netstash_fetch_error_detail(f)) != NULL && *detail)
      r->detail = strdup(detail);
  }
  push_done(r);
}

static const netstash_job_callbacks job_cbs = {NULL, j_response, j_data, NULL, j_complete};

/* Referer under the default policy, strict-origin-when-cross-origin
 * (Referrer Policy §3, §8.3): the referrer's URL to its own origin, only its
 * origin to others, nothing from https to http. The referrer is the
 * stylesheet for what a stylesheet references (CSSOM), else the document. */
static netstash_error add_referer(const load *L, const res *r, netstash_request *q,
                                  const char *doc_url) {
  const res *from = r->parent >= 0 ? L->v[r->parent] : NULL;
  const char *ref_url = from && from->dest == NETSTASH_DEST_STYLE
                            ? (from->effective_url ? from->effective_url : from->url)
                            : doc_url;
  char *ref_origin = origin_of(ref_url), *target = origin_of(r->url), *value = NULL;
  netstash_error e = NETSTASH_OK;
  if (!ref_origin || !target) {
    e = NETSTASH_E_NOMEM;
  } else if (!strcmp(ref_origin, target)) {
    e = netstash_request_add_header(q, "Referer", ref_url);
  } else if (strncmp(ref_origin, "https:", 6) != 0 || strncmp(target, "https:", 6) == 0) {
    if (asprintf(&value, "%s/", ref_origin) < 0)
      value = NULL;
    e = value ? netstash_request_add_header(q, "Referer", value) : NETSTASH_E_NOMEM;
  }
  free(value);
  free(ref_origin);
  free(target);
  return e;
}

/* Builds the request a browser's loader would send for r. */
static netstash_error build_request(load *L, res *r, netstash_request **out) {
  netstash_request *q = NULL;
  netstash_error e = netstash_request_new(&q, r->url);
  const res *doc = L->v[r->doc], *top = L->v[0];
  const char *top_url = top->effective_url ? top->effective_url : top->url;
  const char *doc_url = doc->effective_url ? doc->effective_url : doc->url;
  size_t i;
  if (e != NETSTASH_OK)
    return e;
  for (i = 0; i < L->nresolves && e == NETSTASH_OK; i++)
    e = netstash_request_add_resolve(q, L->resolves[i]);
  if (e == NETSTASH_OK)
    e = netstash_request_set_destination(q, r->dest);
  if (e == NETSTASH_OK)
    e = netstash_request_set_mode(q, r->mode);
  if (e == NETSTASH_OK)
    e = netstash_request_set_credentials(q, r->cred);
  if (e == NETSTASH_OK && L->offline)
    e = netstash_request_set_load_flags(q, NETSTASH_LOAD_ONLY_FROM_CACHE);
  if (e == NETSTASH_OK && r->prio_override)
    e = netstash_request_set_priority(q, r->prio);
  if (e == NETSTASH_OK && L->timeout_ms)
    e = netstash_request_set_timeout_ms(q, L->timeout_ms);
  /* The page itself is a browser-initiated top-level navigation: no
   * initiator, and (unset) its own site for cookies and the cache
   * partition, which then follow its redirects. Everything else is a
   * subresource of the page: initiated by its document's origin, in the
   * page's cache partition, with the page as its site for cookies. */
  if (e == NETSTASH_OK && r->id != 0) {
    char *origin = origin_of(doc_url);
    e = netstash_request_set_initiator(q, origin);
    if (e == NETSTASH_OK)
      e = netstash_request_set_top_level_site(q, top_url);
    if (e == NETSTASH_OK)
      e = netstash_request_set_site_for_cookies(q, top_url, 0);
    if (e == NETSTASH_OK)
      e = add_referer(L, r, q, doc_url);
    free(origin);
  }
  if (e != NETSTASH_OK) {
    netstash_request_del(q);
    return e;
  }
  *out = q;
  return NETSTASH_OK;
}

/* The fast path answered r: status, body and headers are in L->hit. */
static void take_fast_hit(load *L, res *r) {
  size_t i, nh = netstash_preload_hit_header_count(L->hit);
  /* the body view is opened only for what is parsed (a kernel hands the
   * view on; opening it costs a store read) */
  uint32_t k, nc = r->parse ? netstash_preload_hit_chunk_count(L->hit) : 0;
  r->source = netstash_preload_hit_source(L->hit); /* preload, or a fresh HTTP-cache entry */
  r->status = netstash_preload_hit_status(L->hit);
  r->bytes = netstash_preload_hit_body_size(L->hit);
  r->head_ms = now_ms(L);
  for (i = 0; i < nh; i++) {
    const char *name, *value;
    size_t nl, vl;
    if (netstash_preload_hit_header_at(L->hit, i, &name, &nl, &value, &vl) == NETSTASH_OK &&
        ieq_n(name, nl, "content-type") && !r->content_type)
      r->content_type = strndup(value, vl);
  }
  for (k = 0; r->parse && k < nc; k++) {
    const uint8_t *d;
    size_t len;
    if (netstash_preload_hit_chunk(L->hit, k, &d, &len) == NETSTASH_OK)
      keep_body(r, d, len);
  }
  netstash_preload_hit_release(L->hit);
  r->end_ms = now_ms(L);
  r->err = NETSTASH_OK;
}

/* Starts r: the synchronous fast path first, then a job. A request that
 * ends at once (fast path, refused start) is queued as done. */
static void start_res(load *L, res *r) {
  netstash_request *q = NULL;
  netstash_error e;
  r->state = ST_RUNNING;
  L->running++;
  r->start_ms = now_ms(L);
  e = build_request(L, r, &q);
  if (e == NETSTASH_OK && L->hit && netstash_intercept_lookup(q, L->hit) == NETSTASH_OK) {
    take_fast_hit(L, r);
    netstash_request_del(q);
    push_done(r);
    return;
  }
  if (e == NETSTASH_OK)
    e = netstash_job_start(L->ctx, q, &job_cbs, r, &r->job);
  netstash_request_del(q);
  if (e != NETSTASH_OK) {
    r->err = e;
    r->end_ms = now_ms(L);
    push_done(r);
  }
}

/* The queued resource to start next: lowest class, then discovery order. */
static res *next_queued(load *L) {
  res *best = NULL;
  for (size_t i = 0; i < L->n; i++) {
    res *r = L->v[i];
    if (r->state == ST_QUEUED && (!best || r->klass < best->klass))
      best = r;
  }
  return best;
}

static int is_html(const res *r) {
  return !r->content_type || icontains(r->content_type, "html");
}

/* Records the references in a finished document or applied stylesheet,
 * then drops its body. A style only preloaded keeps it until applied. */
static void parse_res(load *L, res *r) {
  if (r->parsed || (r->parse == PARSE_CSS && !r->applied))
    return;
  r->parsed = 1;
  if (r->err == NETSTASH_OK && r->body) {
    double t = now_ms(L);
    if (r->parse == PARSE_HTML && is_html(r))
      parse_html(L, r);
    else if (r->parse == PARSE_CSS && r->status >= 200 && r->status < 300 &&
             r->depth <= MAX_IMPORT_DEPTH)
      css_scan_refs(L, r, r->doc, r->depth, r->effective_url ? r->effective_url : r->url, r->body,
                    r->body_len);
    L->parse_ms += now_ms(L) - t;
  }
  free(r->body);
  r->body = NULL;
  r->body_len = r->body_cap = 0;
}

/* A finished resource: its job released, its body searched for more. */
static void finish_res(load *L, res *r) {
  r->state = ST_DONE;
  L->running--;
  netstash_job_del(r->job);
  r->job = NULL;
  parse_res(L, r);
}

/* Runs the load to its end (or until interrupted). */
static void run_load(load *L) {
  for (;;) {
    res **batch = NULL;
    size_t nb = 0, i;
    if (!cli_interrupted()) {
      res *r;
      while (L->running < L->concurrency && (r = next_queued(L)) != NULL)
        start_res(L, r);
    }
    pthread_mutex_lock(&L->lock);
    while (!L->ndone && L->running) {
      struct timespec dl;
      clock_gettime(CLOCK_MONOTONIC, &dl);
      dl.tv_nsec += 100 * 1000000L;
      if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&L->cond, &L->lock, &dl);
      if (cli_interrupted())
        break;
    }
    if (L->ndone) {
      batch = L->done;
      nb = L->ndone;
      L->done = NULL;
      L->ndone = L->done_cap = 0;
    }
    pthread_mutex_unlock(&L->lock);
    if (cli_interrupted())
      for (i = 0; i < L->n; i++)
        if (L->v[i]->state == ST_RUNNING && L->v[i]->job)
          netstash_job_cancel(L->v[i]->job);
    for (i = 0; i < nb; i++)
      finish_res(L, batch[i]);
    free(batch);
    /* a stylesheet preloaded before it was applied: parse it now */
    for (i = 0; i < L->n; i++)
      if (L->v[i]->state == ST_DONE && L->v[i]->applied && !L->v[i]->parsed)
        parse_res(L, L->v[i]);
    if (!L->running && (cli_interrupted() || !next_queued(L)))
      break;
  }
}

/* ------------------------------------------------------------------ report */

typedef struct totals {
  size_t resources, preload, cache, revalidated, network, failures, requests, not_started;
  uint64_t bytes, wire_bytes;
  double load_ms;
  double requests_ms; /* the resources' durations, summed */
} totals;

static void count(const load *L, totals *t) {
  memset(t, 0, sizeof(*t));
  for (size_t i = 0; i < L->n; i++) {
    const res *r = L->v[i];
    t->resources++;
    if (r->state != ST_DONE) {
      t->not_started++;
      t->failures++;
      continue;
    }
    t->bytes += r->bytes;
    t->wire_bytes += r->wire_bytes;
    if (r->end_ms > t->load_ms)
      t->load_ms = r->end_ms;
    t->requests_ms += r->end_ms - r->start_ms;
    switch (r->source) {
    case NETSTASH_SOURCE_PRELOAD:
      t->preload++;
      break;
    case NETSTASH_SOURCE_CACHE:
      t->cache++;
      break;
    case NETSTASH_SOURCE_REVALIDATED:
      t->revalidated++;
      t->requests++;
      break;
    case NETSTASH_SOURCE_NETWORK:
      t->network++;
      t->requests++;
      break;
    case NETSTASH_SOURCE_NONE:
      /* a network failure was a request too; offline refusals were not */
      if (netstash_error_is_network(r->err) && r->err != NETSTASH_E_NOT_CACHED)
        t->requests++;
      break;
    }
    if (res_failed(r))
      t->failures++;
  }
}

/* Output order: by start time (the waterfall), never-started last. */
static int by_start(const void *a, const void *b) {
  const res *x = *(res *const *)a, *y = *(res *const *)b;
  double sx = x->state == ST_DONE ? x->start_ms : 1e300,
         sy = y->state == ST_DONE ? y->start_ms : 1e300;
  if (sx != sy)
    return sx < sy ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static void short_url(const char *u, char *out, size_t cap) {
  size_t n = strlen(u);
  if (n < cap) {
    memcpy(out, u, n + 1);
    return;
  }
  /* keep the start (origin) and the end (file name) */
  {
    size_t head = (cap - 4) / 3, tail = cap - 4 - head;
    snprintf(out, cap, "%.*s...%s", (int)head, u, u + n - tail);
  }
}

static void print_waterfall(const load *L, res **order, const totals *t, size_t *pos) {
  double total = t->load_ms > 0 ? t->load_ms : 1;
  const res *doc = L->v[0];
  char u[49];
  printf("%3s  %-11s %6s %10s %9s %9s  %-8s  %-48s  %s\n", "#", "source", "status", "bytes",
         "start ms", "time ms", "dest", "url", "waterfall");
  for (size_t i = 0; i < L->n; i++) {
    const res *r = order[i];
    char bar[BAR_W + 1], st[16];
    short_url(r->url, u, sizeof(u));
    memset(bar, ' ', BAR_W);
    bar[BAR_W] = 0;
    if (r->state == ST_DONE) {
      int a = (int)(r->start_ms / total * BAR_W), z = (int)(r->end_ms / total * BAR_W + 0.999);
      int hd = r->head_ms >= 0 ? (int)(r->head_ms / total * BAR_W) : a;
      if (a >= BAR_W)
        a = BAR_W - 1;
      if (z <= a)
        z = a + 1;
      if (z > BAR_W)
        z = BAR_W;
      for (int k = a; k < z; k++)
        bar[k] = r->err != NETSTASH_OK ? 'x' : k < hd ? '-' : '=';
      if (r->err != NETSTASH_OK)
        snprintf(st, sizeof(st), "ERR");
      else
        snprintf(st, sizeof(st), "%d", r->status);
      printf("%3zu  %-11s %6s %10llu %9.1f %9.1f  %-8s  %-48s  |%s|\n", pos[r->id],
             r->err != NETSTASH_OK ? "-" : cli_source_name(r->source), st,
             (unsigned long long)r->bytes, r->start_ms, r->end_ms - r->start_ms, dest_name(r->dest),
             u, bar);
      if (r->err != NETSTASH_OK)
        printf("     error: %s%s%s\n", netstash_error_name(r->err), r->detail ? ": " : "",
               r->detail ? r->detail : "");
    } else {
      printf("%3zu  %-11s %6s %10s %9s %9s  %-8s  %-48s  |%s|\n", pos[r->id], "-", "-", "-", "-",
             "-", dest_name(r->dest), u, bar);
    }
  }
  printf("\n%zu resources (%zu subresources), %llu bytes (%llu on the wire)\n", t->resources,
         t->resources ? t->resources - 1 : 0, (unsigned long long)t->bytes,
         (unsigned long long)t->wire_bytes);
  printf("sources: preload %zu, cache %zu, revalidated %zu, network %zu\n", t->preload, t->cache,
         t->revalidated, t->network);
  printf(
      "network requests %zu, new connections %llu, failures %zu", t->requests,
      (unsigned long long)(netstash_ctx_stat(L->ctx, NETSTASH_STAT_CONNECTIONS_OPENED) - L->conns0),
      t->failures);
  if (t->not_started)
    printf(" (%zu not started)", t->not_started);
  if (L->skipped)
    printf(", %zu references over the limit of %d not loaded", L->skipped, MAX_RESOURCES);
  printf("\n");
  if (doc->state == ST_DONE && doc->err == NETSTASH_OK)
    printf("document head %.1f ms, document %.1f ms, page load %.1f ms (parsing %.1f ms)\n",
           doc->head_ms, doc->end_ms, t->load_ms, L->parse_ms);
  else
    printf("page load %.1f ms\n", t->load_ms);
  if (L->npasses > 1) {
    printf("%u loads in this process (the report above is the last):", L->npasses);
    for (uint32_t k = 0; k < L->npasses; k++)
      printf(" %.1f", L->passes[k][0]);
    printf(" ms\n");
  }
}

static json_t *ms_json(double v) {
  return v >= 0 ? json_real((double)(long long)(v * 1000 + 0.5) / 1000) : json_null();
}

static void print_json(const load *L, res **order, const totals *t, size_t *pos) {
  const res *doc = L->v[0];
  json_t *o = json_object(), *list = json_array(), *tot;
  int doc_ok = doc->state == ST_DONE && doc->err == NETSTASH_OK;
  for (size_t i = 0; i < L->n; i++) {
    const res *r = order[i];
    json_t *e = json_object();
    int done = r->state == ST_DONE;
    json_object_set_new(e, "index", json_integer((json_int_t)pos[r->id]));
    json_object_set_new(e, "url", json_string(r->url));
    json_object_set_new(e, "destination", json_string(dest_name(r->dest)));
    json_object_set_new(
        e, "source",
        json_string(done && r->err == NETSTASH_OK ? cli_source_name(r->source) : "none"));
    json_object_set_new(e, "status", json_integer(done ? r->status : 0));
    json_object_set_new(e, "bytes", json_integer(done ? (json_int_t)r->bytes : 0));
    json_object_set_new(e, "start_ms", done ? ms_json(r->start_ms) : json_null());
    json_object_set_new(e, "duration_ms", done ? ms_json(r->end_ms - r->start_ms) : json_null());
    json_object_set_new(e, "ok", json_boolean(!res_failed(r)));
    if (!done)
      json_object_set_new(e, "error", json_string(netstash_error_name(NETSTASH_E_CANCELED)));
    else if (r->err != NETSTASH_OK)
      json_object_set_new(e, "error", json_string(netstash_error_name(r->err)));
    else
      json_object_set_new(e, "error", json_null());
    json_object_set_new(e, "message",
                        done && r->err != NETSTASH_OK
                            ? json_string(r->detail ? r->detail : netstash_strerror(r->err))
                            : json_null());
    json_object_set_new(e, "protocol", json_string(done ? r->protocol : ""));
    json_object_set_new(e, "wire_bytes", json_integer(done ? (json_int_t)r->wire_bytes : 0));
    json_object_set_new(e, "found_in",
                        r->parent >= 0 ? json_integer((json_int_t)pos[r->parent]) : json_null());
    json_array_append_new(list, e);
  }
  json_object_set_new(o, "url", json_string(doc->url));
  json_object_set_new(o, "effective_url",
                      json_string(doc->effective_url ? doc->effective_url : doc->url));
  json_object_set_new(o, "ok", json_boolean(doc_ok));
  json_object_set_new(o, "status", json_integer(doc->state == ST_DONE ? doc->status : 0));
  if (doc_ok) {
    json_object_set_new(o, "error", json_null());
    json_object_set_new(o, "message", json_null());
  } else {
    netstash_error de = doc->state == ST_DONE ? doc->err : NETSTASH_E_CANCELED;
    json_object_set_new(o, "error", json_string(netstash_error_name(de)));
    json_object_set_new(o, "message",
                        json_string(doc->detail ? doc->detail : netstash_strerror(de)));
  }
  json_object_set_new(o, "load_ms", ms_json(t->load_ms));
  json_object_set_new(o, "parse_ms", ms_json(L->parse_ms));
  json_object_set_new(o, "document_head_ms", doc_ok ? ms_json(doc->head_ms) : json_null());
  json_object_set_new(o, "document_ms", doc_ok ? ms_json(doc->end_ms) : json_null());
  json_object_set_new(o, "resources", list);
  tot = json_object();
  json_object_set_new(tot, "resources", json_integer((json_int_t)t->resources));
  json_object_set_new(tot, "subresources",
                      json_integer((json_int_t)(t->resources ? t->resources - 1 : 0)));
  json_object_set_new(tot, "bytes", json_integer((json_int_t)t->bytes));
  json_object_set_new(tot, "wire_bytes", json_integer((json_int_t)t->wire_bytes));
  json_object_set_new(tot, "preload", json_integer((json_int_t)t->preload));
  json_object_set_new(tot, "cache", json_integer((json_int_t)t->cache));
  json_object_set_new(tot, "revalidated", json_integer((json_int_t)t->revalidated));
  json_object_set_new(tot, "network", json_integer((json_int_t)t->network));
  json_object_set_new(tot, "network_requests", json_integer((json_int_t)t->requests));
  json_object_set_new(
      tot, "connections",
      json_integer(
          (json_int_t)(netstash_ctx_stat(L->ctx, NETSTASH_STAT_CONNECTIONS_OPENED) - L->conns0)));
  json_object_set_new(tot, "failures", json_integer((json_int_t)t->failures));
  json_object_set_new(tot, "not_started", json_integer((json_int_t)t->not_started));
  json_object_set_new(tot, "skipped", json_integer((json_int_t)L->skipped));
  json_object_set_new(o, "totals", tot);
  json_object_set_new(o, "repeat", json_integer((json_int_t)L->npasses));
  list = json_array();
  for (uint32_t k = 0; k < L->npasses; k++) {
    json_t *e = json_object();
    json_object_set_new(e, "load_ms", ms_json(L->passes[k][0]));
    json_object_set_new(e, "parse_ms", ms_json(L->passes[k][1]));
    json_object_set_new(e, "requests_ms", ms_json(L->passes[k][2]));
    json_array_append_new(list, e);
  }
  json_object_set_new(o, "passes", list);
  cli_print_json(o, JSON_REAL_PRECISION(12));
  fflush(stdout);
  json_decref(o);
}

/* ------------------------------------------------------------------ command */

enum {
  OPT_PROFILE = 256,
  OPT_OFFLINE,
  OPT_CACERT,
  OPT_RESOLVE,
  OPT_JSON,
  OPT_CONC,
  OPT_TIMEOUT,
  OPT_REPEAT,
  OPT_DAEMON
};

static const struct option load_opts[] = {{"profile", required_argument, NULL, OPT_PROFILE},
                                          {"offline", no_argument, NULL, OPT_OFFLINE},
                                          {"cacert", required_argument, NULL, OPT_CACERT},
                                          {"resolve", required_argument, NULL, OPT_RESOLVE},
                                          {"json", no_argument, NULL, OPT_JSON},
                                          {"concurrency", required_argument, NULL, OPT_CONC},
                                          {"timeout", required_argument, NULL, OPT_TIMEOUT},
                                          {"repeat", required_argument, NULL, OPT_REPEAT},
                                          {"daemon", required_argument, NULL, OPT_DAEMON},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

/* Frees the resources of a load (their jobs ended or canceled). */
static void clear_resources(load *L) {
  for (size_t i = 0; i < L->n; i++) {
    res *r = L->v[i];
    netstash_job_del(r->job);
    free(r->url);
    free(r->detail);
    free(r->effective_url);
    free(r->content_type);
    free(r->body);
    free(r);
  }
  L->n = 0;
}

static void free_load(load *L) {
  clear_resources(L);
  free(L->v);
  free(L->done);
  free(L->passes);
}

int cmd_load(int argc, char **argv) {
  const char *profile = NULL, *cacert = NULL, *daemon_sock = NULL, *resolves[MAX_RESOLVES];
  size_t nresolves = 0, i, *pos = NULL;
  int json = 0, c, rc = EXIT_INTERNAL, mutex_ok = 0, cond_ok = 0;
  uint32_t conc = 16, timeout = 0, repeat = 1, pass;
  char *defprofile = NULL;
  netstash_options *opts = NULL;
  netstash_error err;
  pthread_condattr_t ca;
  res **order = NULL;
  totals t;
  load L;
  ref_opts doc_opts;

  memset(&L, 0, sizeof(L));
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", load_opts, NULL)) != -1) {
    switch (c) {
    case OPT_PROFILE:
      profile = optarg;
      break;
    case OPT_OFFLINE:
      L.offline = 1;
      break;
    case OPT_CACERT:
      cacert = optarg;
      break;
    case OPT_RESOLVE:
      if (nresolves == MAX_RESOLVES) {
        cli_error("load", "too many --resolve options (at most %d)", MAX_RESOLVES);
        return EXIT_USAGE;
      }
      resolves[nresolves++] = optarg;
      break;
    case OPT_JSON:
      json = 1;
      break;
    case OPT_CONC:
      if (cli_parse_u32(optarg, &conc) || conc < 1 || conc > 256) {
        cli_error("load", "--concurrency takes 1..256, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_TIMEOUT:
      if (cli_parse_u32(optarg, &timeout)) {
        cli_error("load", "--timeout needs milliseconds, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_DAEMON:
      daemon_sock = optarg;
      break;
    case OPT_REPEAT:
      if (cli_parse_u32(optarg, &repeat) || repeat < 1 || repeat > 1000) {
        cli_error("load", "--repeat takes 1..1000, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case 'h':
      fputs(load_usage, stdout);
      return 0;
    default:
      fputs(load_usage, stderr);
      return EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    cli_error("load", optind >= argc ? "missing URL" : "exactly one URL expected");
    fputs(load_usage, stderr);
    return EXIT_USAGE;
  }
  {
    char *u = resolve_url("http://x.invalid/", argv[optind]);
    int absolute =
        u && (!strncmp(argv[optind], "http://", 7) || !strncmp(argv[optind], "https://", 8));
    if (!absolute) {
      free(u);
      cli_error("load", "bad URL \"%s\": an absolute http:// or https:// URL is needed",
                argv[optind]);
      return EXIT_BAD_URL;
    }
    free(u);
  }
  for (i = 0; i < nresolves; i++) { /* checked once here, not per request */
    netstash_request *q;
    if (netstash_request_new(&q, "https://x.invalid/") == NETSTASH_OK) {
      err = netstash_request_add_resolve(q, resolves[i]);
      netstash_request_del(q);
      if (err != NETSTASH_OK) {
        cli_error("load", "bad --resolve \"%s\": expected HOST:PORT:ADDR", resolves[i]);
        return EXIT_USAGE;
      }
    }
  }
  if (cacert && access(cacert, R_OK) != 0) {
    cli_error("load", "cannot read CA file \"%s\": %s", cacert, strerror(errno));
    return EXIT_USAGE;
  }
  if (daemon_sock && (profile || cacert || nresolves)) {
    cli_error("load", "--daemon: netd's profile, certificates and resolving are used; "
                      "drop --profile, --cacert and --resolve");
    return EXIT_USAGE;
  }

  if (pthread_mutex_init(&L.lock, NULL) != 0)
    goto done;
  mutex_ok = 1;
  if (pthread_condattr_init(&ca) != 0)
    goto done;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  cond_ok = pthread_cond_init(&L.cond, &ca) == 0;
  pthread_condattr_destroy(&ca);
  if (!cond_ok)
    goto done;

  if (netstash_options_new(&opts) != NETSTASH_OK)
    goto done;
  if (daemon_sock) {
    netstash_options_set_remote(opts, daemon_sock);
  } else {
    if (!profile)
      profile = defprofile = cli_default_profile();
    if (!profile)
      goto done;
    netstash_options_set_profile_dir(opts, profile);
  }
  if (cacert)
    netstash_options_set_ca_file(opts, cacert);
  if ((err = cli_ctx_new("load", opts, &L.ctx)) != NETSTASH_OK) {
    rc = cli_exit_code(err);
    goto done;
  }
  if (netstash_preload_hit_new(L.ctx, &L.hit) != NETSTASH_OK)
    L.hit = NULL; /* no fast path: every request is a job */
  L.resolves = resolves;
  L.nresolves = nresolves;
  L.concurrency = conc;
  L.timeout_ms = timeout;

  if (!(L.passes = calloc(repeat, sizeof(*L.passes))))
    goto done;

  cli_catch_signals();

  /* --repeat: each load after the first starts from nothing but the
   * context (its connections, caches and store maps stay warm) */
  for (pass = 0; pass < repeat; pass++) {
    if (pass)
      clear_resources(&L);
    L.skipped = 0;
    L.parse_ms = 0;
    L.conns0 = netstash_ctx_stat(L.ctx, NETSTASH_STAT_CONNECTIONS_OPENED);
    clock_gettime(CLOCK_MONOTONIC, &L.t0);
    doc_opts = plain_ref(NETSTASH_DEST_DOCUMENT, CLASS_BLOCKING);
    doc_opts.mode = NETSTASH_MODE_NAVIGATE;
    doc_opts.parse = PARSE_HTML;
    add_ref(&L, NULL, 0, 0, argv[optind], argv[optind], &doc_opts);
    if (L.n != 1)
      goto done;
    run_load(&L);
    if (L.oom) {
      cli_error("load", "out of memory");
      goto done;
    }
    count(&L, &t);
    L.passes[pass][0] = t.load_ms;
    L.passes[pass][1] = L.parse_ms;
    L.passes[pass][2] = t.requests_ms;
    L.npasses = pass + 1;
    if (cli_interrupted() || L.v[0]->state != ST_DONE || L.v[0]->err != NETSTASH_OK)
      break; /* the report says why */
  }

  /* report: the last load */
  order = malloc(L.n * sizeof(*order));
  pos = malloc(L.n * sizeof(*pos));
  if (!order || !pos)
    goto done;
  memcpy(order, L.v, L.n * sizeof(*order));
  qsort(order, L.n, sizeof(*order), by_start);
  for (i = 0; i < L.n; i++)
    pos[order[i]->id] = i;
  if (json)
    print_json(&L, order, &t, pos);
  else
    print_waterfall(&L, order, &t, pos);

  {
    const res *doc = L.v[0];
    if (doc->state != ST_DONE || cli_interrupted()) {
      cli_error("load", "interrupted");
      rc = EXIT_CANCELED;
    } else if (doc->err != NETSTASH_OK) {
      cli_error("load", "%s: %s%s%s", doc->url, netstash_strerror(doc->err),
                doc->detail ? ": " : "", doc->detail ? doc->detail : "");
      cli_print_hint(doc->err);
      rc = cli_exit_code(doc->err);
    } else {
      rc = 0;
    }
  }

done:
  for (i = 0; i < L.n; i++) { /* jobs left only on an early exit: canceled, no more callbacks */
    netstash_job_del(L.v[i]->job);
    L.v[i]->job = NULL;
  }
  if (L.ctx)
    netstash_ctx_drain(L.ctx, 30000); /* a stale-while-revalidate refresh is stored */
  free(order);
  free(pos);
  netstash_preload_hit_del(L.hit);
  netstash_ctx_del(L.ctx); /* joins the loop thread: no callback runs after this */
  free_load(&L);
  if (cond_ok)
    pthread_cond_destroy(&L.cond);
  if (mutex_ok)
    pthread_mutex_destroy(&L.lock);
  netstash_options_del(opts);
  free(defprofile);
  return rc;
}
