/*
 * cache.c — RFC 9111 private-cache rules as pure functions (see cache.h).
 */
#include "ns_setup.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "cache/cache.h"
#include "cookie/parse.h"
#include "core/url.h"

/* ------------------------------------------------------------ small helpers */

static int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}
static int64_t sat_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r))
    return b < 0 ? INT64_MAX : INT64_MIN;
  return r;
}
static int64_t sat_mul1000(int64_t s) {
  int64_t r;
  if (__builtin_mul_overflow(s, 1000, &r))
    return s > 0 ? INT64_MAX : INT64_MIN;
  return r;
}
/* floor division of ms to s */
static int64_t ms_to_s(int64_t ms) { return ms >= 0 ? ms / 1000 : -((-(ms + 1)) / 1000) - 1; }

static const ns_cache_policy *policy(const ns_cache_policy *p, ns_cache_policy *tmp) {
  if (p)
    return p;
  ns_cache_policy_init(tmp);
  return tmp;
}

void ns_cache_policy_init(ns_cache_policy *p) {
  p->psl = NULL;
  p->partition = 1;
  p->heuristic_percent = 10;
  p->heuristic_max_s = 7 * 86400;
  p->permanent_heuristic_s = 7 * 86400;
}

/* A header date: 1 valid (*out), 0 absent, -1 invalid. Several lines with
 * different values count as invalid (RFC 9111 §4.2.1 allows "consider
 * stale"); identical duplicates are fine. An HTTP-date first; what is not
 * one is read as RFC 6265's cookie-date algorithm reads a date (RFC 9110
 * §5.6.7 asks recipients to be robust; Chromium parses as leniently): a
 * missing comma, dashes, a month in capitals, a zone other than GMT (taken
 * as GMT), a two-digit year. What neither reads ("0", "-1") stays invalid:
 * a time in the past (RFC 9111 §5.3). */
static int header_date(const ns_headers *h, const char *name, int64_t now_s, int64_t *out) {
  size_t it = 0;
  const ns_header_field *f;
  int64_t first = 0, v;
  int seen = 0;
  while ((f = ns_headers_next(h, &it, name)) != NULL) {
    if (ns_http_date_parse(f->value, f->value_len, now_s, &v) != NETSTASH_OK &&
        !ns_cookie_date_parse(f->value, f->value_len, &v))
      return -1;
    if (seen && v != first)
      return -1;
    first = v;
    seen = 1;
  }
  if (!seen)
    return 0;
  *out = first;
  return 1;
}

/* ------------------------------------------------------------ Cache-Control */

void ns_cache_control_init(ns_cache_control *cc) { memset(cc, 0, sizeof(*cc)); }

/* A directive's delta-seconds argument (RFC 9111 §1.2.2, §5.2: token or
 * quoted-string forms both accepted). */
static int arg_seconds(int has_value, ns_span v, int64_t *out) {
  return has_value && ns_delta_seconds_parse(v, out);
}

static void set_min(ns_cache_control *cc, uint32_t flag, int64_t *field, int64_t v) {
  if (!(cc->flags & flag) || v < *field)
    *field = v;
  cc->flags |= flag;
}

void ns_cache_control_parse(ns_cache_control *cc, const char *value, size_t len,
                            int is_request) {
  ns_reader r;
  ns_reader_init(&r, value, len);
  /* Cache-Control = #cache-directive; cache-directive = token [ "=" ( token
   * / quoted-string ) ]; names compared case-insensitively (RFC 9111 §5.2) */
  while (ns_reader_list_next(&r)) {
    ns_span name, arg = ns_span_make("", 0);
    int has_value = 0, quoted = 0, ok = 1;
    int64_t s;
    if (!ns_reader_token(&r, &name)) {
      ns_reader_list_skip(&r);
      continue;
    }
    ns_reader_skip_ows(&r); /* leniency: OWS around "=" */
    if (ns_reader_skip_char(&r, '=')) {
      ns_reader_skip_ows(&r);
      if (ns_reader_token_or_quoted(&r, &arg, &quoted))
        has_value = 1;
      else
        ok = 0;
    }
    ns_reader_skip_ows(&r);
    if (!ns_reader_eof(&r) && ns_reader_peek(&r) != ',') {
      ok = 0; /* trailing garbage: the directive is malformed */
      ns_reader_list_skip(&r);
    }

    if (ns_span_eq_ci(name, "max-age")) {
      if (is_request) {
        /* most restrictive of duplicates; an invalid one is ignored */
        if (ok && arg_seconds(has_value, arg, &s))
          set_min(cc, NS_CC_MAX_AGE, &cc->max_age_s, s);
      } else if (!ok || !arg_seconds(has_value, arg, &s)) {
        cc->flags |= NS_CC_MAX_AGE_INVALID; /* RFC 9111 §4.2.1: stale */
      } else if ((cc->flags & NS_CC_MAX_AGE) && cc->max_age_s != s) {
        cc->flags |= NS_CC_MAX_AGE_INVALID; /* conflicting duplicates: stale */
      } else {
        cc->flags |= NS_CC_MAX_AGE;
        cc->max_age_s = s;
      }
    } else if (ns_span_eq_ci(name, "s-maxage")) {
      if (ok && arg_seconds(has_value, arg, &s))
        set_min(cc, NS_CC_S_MAXAGE, &cc->s_maxage_s, s);
    } else if (ns_span_eq_ci(name, "no-store")) {
      cc->flags |= NS_CC_NO_STORE;
    } else if (ns_span_eq_ci(name, "no-cache")) {
      /* RFC 9111 §5.2.2.4: a response's qualified form no-cache="a, b"
       * leaves the response reusable without the listed fields — never
       * stored (ns_cache_prepare_for_storage, ns_cache_merge_304); the
       * usual case is no-cache="Set-Cookie", which Chromium honours the
       * same way. One that lists nothing readable counts as unqualified. */
      if (has_value && !is_request && ok && arg.len > 0)
        cc->flags |= NS_CC_NO_CACHE_FIELDS;
      else
        cc->flags |= NS_CC_NO_CACHE;
    } else if (ns_span_eq_ci(name, "must-revalidate")) {
      cc->flags |= NS_CC_MUST_REVALIDATE;
    } else if (ns_span_eq_ci(name, "proxy-revalidate")) {
      cc->flags |= NS_CC_PROXY_REVALIDATE;
    } else if (ns_span_eq_ci(name, "private")) {
      cc->flags |= NS_CC_PRIVATE;
    } else if (ns_span_eq_ci(name, "public")) {
      cc->flags |= NS_CC_PUBLIC;
    } else if (ns_span_eq_ci(name, "immutable")) {
      cc->flags |= NS_CC_IMMUTABLE;
    } else if (ns_span_eq_ci(name, "stale-while-revalidate")) {
      if (ok && arg_seconds(has_value, arg, &s))
        set_min(cc, NS_CC_SWR, &cc->swr_s, s);
    } else if (ns_span_eq_ci(name, "stale-if-error")) {
      if (ok && arg_seconds(has_value, arg, &s))
        set_min(cc, NS_CC_SIE, &cc->sie_s, s);
    } else if (ns_span_eq_ci(name, "no-transform")) {
      cc->flags |= NS_CC_NO_TRANSFORM;
    } else if (ns_span_eq_ci(name, "must-understand")) {
      cc->flags |= NS_CC_MUST_UNDERSTAND;
    } else if (is_request && ns_span_eq_ci(name, "max-stale")) {
      /* RFC 9111 §5.2.1.2: no value = any staleness */
      if (ok && !has_value)
        cc->flags |= NS_CC_MAX_STALE | NS_CC_MAX_STALE_ANY;
      else if (ok && arg_seconds(has_value, arg, &s))
        set_min(cc, NS_CC_MAX_STALE, &cc->max_stale_s, s);
    } else if (is_request && ns_span_eq_ci(name, "min-fresh")) {
      if (ok && arg_seconds(has_value, arg, &s)) {
        if (!(cc->flags & NS_CC_MIN_FRESH) || s > cc->min_fresh_s)
          cc->min_fresh_s = s;
        cc->flags |= NS_CC_MIN_FRESH;
      }
    } else if (is_request && ns_span_eq_ci(name, "only-if-cached")) {
      cc->flags |= NS_CC_ONLY_IF_CACHED;
    }
    /* anything else: an extension we do not understand, ignored (§5.2.3) */
  }
}

void ns_cache_control_from_headers(ns_cache_control *cc, const ns_headers *h,
                                   int is_request) {
  size_t it = 0;
  const ns_header_field *f;
  int seen = 0;
  ns_cache_control_init(cc);
  if (!h)
    return;
  while ((f = ns_headers_next(h, &it, "Cache-Control")) != NULL) {
    ns_cache_control_parse(cc, f->value, f->value_len, is_request);
    seen = 1;
  }
  if (is_request && !seen) {
    /* RFC 9111 §5.4: Pragma: no-cache when Cache-Control is absent */
    it = 0;
    while ((f = ns_headers_next(h, &it, "Pragma")) != NULL) {
      ns_reader r;
      ns_span tok;
      ns_reader_init(&r, f->value, f->value_len);
      while (ns_reader_list_next(&r)) {
        if (ns_reader_token(&r, &tok) && ns_span_eq_ci(tok, "no-cache")) {
          ns_reader_skip_ows(&r);
          if (ns_reader_eof(&r) || ns_reader_peek(&r) == ',')
            cc->flags |= NS_CC_NO_CACHE | NS_CC_PRAGMA_NO_CACHE;
        }
        ns_reader_list_skip(&r);
      }
    }
  }
}

/* ------------------------------------------------------------------ storage */

int ns_cache_status_heuristic(int status) {
  switch (status) {
  case 200: case 203: case 204: case 206: case 300: case 301: case 308:
  case 404: case 405: case 410: case 414: case 501:
    return 1;
  default:
    return 0;
  }
}

/* Final status codes this cache understands (for must-understand, RFC 9111
 * §5.2.2.3): the heuristically cacheable ones plus redirects. */
static int status_understood(int status) {
  return ns_cache_status_heuristic(status) || status == 302 || status == 303 ||
         status == 307;
}

static int vary_has_star(const ns_headers *resp);

int ns_cache_storable(const ns_cache_request *req, int status, const ns_headers *resp,
                      const char **reason) {
  ns_cache_control rq, rs;
  const char *why = NULL;
  ns_cache_control_from_headers(&rq, req ? req->headers : NULL, 1);
  ns_cache_control_from_headers(&rs, resp, 0);
  if (!req || !req->method || strcmp(req->method, "GET") != 0)
    why = "not stored: only GET responses are stored";
  else if (status < 200 || status > 599)
    why = "not stored: not a final status";
  else if (status == 206 && !ns_cache_piece(resp, NULL, NULL, NULL))
    why = "not stored: partial content without one byte range of a known length "
          "(RFC 9111 §3.3)";
  else if (status == 206 && ns_headers_count(resp, "Content-Encoding") &&
           ns_ascii_casecmp(ns_headers_get(resp, "Content-Encoding"), "identity") != 0)
    why = "not stored: partial content in a content coding (coded bytes alone)";
  else if (status == 304)
    why = "not stored: 304 only updates a stored response";
  else if (rq.flags & NS_CC_NO_STORE)
    why = "not stored: request no-store (RFC 9111 §5.2.1.5)";
  else if ((rs.flags & NS_CC_NO_STORE) &&
           !((rs.flags & NS_CC_MUST_UNDERSTAND) && status_understood(status)))
    /* RFC 9111 §5.2.2.3: must-understand overrides no-store for a cache that
     * understands the status code */
    why = "not stored: response no-store (RFC 9111 §5.2.2.5)";
  else if (vary_has_star(resp))
    why = "not stored: Vary: * never matches (RFC 9111 §4.1)";
  else if ((rs.flags & NS_CC_MUST_UNDERSTAND) && !status_understood(status))
    why = "not stored: must-understand with a status not understood (RFC 9111 §5.2.2.3)";
  else if (!(rs.flags & (NS_CC_MAX_AGE | NS_CC_MAX_AGE_INVALID | NS_CC_PUBLIC |
                         NS_CC_PRIVATE)) &&
           ns_headers_count(resp, "Expires") == 0 && !ns_cache_status_heuristic(status))
    why = "not stored: no explicit freshness and status not heuristically cacheable "
          "(RFC 9111 §3)";
  if (reason)
    *reason = why ? why : "storable";
  return why == NULL;
}

static int hop_by_hop(const char *name) {
  static const char *const k[] = {"Connection", "Keep-Alive", "Proxy-Connection", "TE",
                                  "Transfer-Encoding", "Upgrade", "Trailer"};
  size_t i;
  for (i = 0; i < NS_ARRAY_LEN(k); i++)
    if (ns_ascii_casecmp(name, k[i]) == 0)
      return 1;
  return 0;
}

/* Is name listed in one of h's Connection fields (RFC 9110 §7.6.1)? */
static int connection_nominated(const ns_headers *h, const char *name, size_t nl) {
  size_t it = 0;
  const ns_header_field *f;
  while ((f = ns_headers_next(h, &it, "Connection")) != NULL) {
    ns_reader r;
    ns_span t;
    ns_reader_init(&r, f->value, f->value_len);
    while (ns_reader_list_next(&r)) {
      if (ns_reader_token(&r, &t) && t.len == nl && ns_ascii_casecmp_n(t.p, name, nl) == 0)
        return 1;
      ns_reader_list_skip(&r);
    }
  }
  return 0;
}

static int is_set_cookie(const char *name) {
  return ns_ascii_casecmp(name, "Set-Cookie") == 0 ||
         ns_ascii_casecmp(name, "Set-Cookie2") == 0;
}

/* Is name listed in a qualified no-cache="..." of h's Cache-Control (RFC
 * 9111 §5.2.2.4)? Such a field is not stored: a stored response is reused
 * without it, and one revalidated is answered with the 304's fields. With
 * name NULL: does a qualified no-cache list anything at all? */
static int no_cache_listed(const ns_headers *h, const char *name, size_t nl) {
  size_t it = 0;
  const ns_header_field *f;
  while ((f = ns_headers_next(h, &it, "Cache-Control")) != NULL) {
    ns_reader r;
    ns_reader_init(&r, f->value, f->value_len);
    while (ns_reader_list_next(&r)) {
      ns_span dname, dval;
      /* a directive as ns_cache_control_parse reads it */
      if (ns_reader_token(&r, &dname) && ns_span_eq_ci(dname, "no-cache")) {
        ns_reader_skip_ows(&r);
        if (ns_reader_skip_char(&r, '=')) {
          ns_reader_skip_ows(&r);
          if (ns_reader_token_or_quoted(&r, &dval, NULL)) {
            ns_reader lr;
            ns_span t;
            ns_reader_init(&lr, dval.p, dval.len);
            while (ns_reader_list_next(&lr)) {
              if (ns_reader_token(&lr, &t) &&
                  (!name || (t.len == nl && ns_ascii_casecmp_n(t.p, name, nl) == 0)))
                return 1;
              ns_reader_list_skip(&lr);
            }
          }
        }
      }
      ns_reader_list_skip(&r);
    }
  }
  return 0;
}

/* A field a qualified no-cache lists that is dropped from a stored head:
 * any but those the cache itself rests on — freshness, variant selection,
 * the stored bytes' description, validators. (no-cache="Cache-Control"
 * made a merge strip its own directives and not be idempotent; listing
 * Content-Encoding would have left gzip bytes described as identity;
 * found by fuzz/cache_control.) */
static int no_cache_strips(const ns_headers *h, const char *name, size_t nl) {
  static const char *const kept[] = {
      "Cache-Control",  "Expires",          "Date",         "Age",           "Vary",
      "Content-Length", "Content-Encoding", "Content-Type", "Content-Range", "ETag",
      "Last-Modified",  "No-Vary-Search"};
  size_t i;
  for (i = 0; i < NS_ARRAY_LEN(kept); i++)
    if (ns_ascii_casecmp(name, kept[i]) == 0)
      return 0;
  return no_cache_listed(h, name, nl);
}

/* After a 304's merge: the fields the merged Cache-Control lists in a
 * qualified no-cache (it may be the 304's, naming fields stored before). */
static netstash_error merged_strip(ns_headers *h) {
  ns_headers tmp;
  size_t i;
  netstash_error rv = NETSTASH_OK;
  if (!no_cache_listed(h, NULL, 0))
    return NETSTASH_OK; /* the usual case: nothing listed, nothing copied */
  ns_headers_init(&tmp, h->mem);
  for (i = 0; i < h->len && rv == NETSTASH_OK; i++)
    if (!no_cache_strips(h, h->f[i].name, h->f[i].name_len))
      rv = ns_headers_add(&tmp, h->f[i].name, h->f[i].name_len, h->f[i].value, h->f[i].value_len);
  if (rv != NETSTASH_OK) {
    ns_headers_free(&tmp);
    return rv;
  }
  ns_headers_free(h);
  *h = tmp;
  return NETSTASH_OK;
}

netstash_error ns_cache_prepare_for_storage(ns_headers *resp, int64_t response_time_ms) {
  ns_headers tmp;
  size_t i;
  netstash_error rv = NETSTASH_OK;
  int listing = no_cache_listed(resp, NULL, 0); /* rare: the per-field look only then */
  ns_headers_init(&tmp, resp->mem);
  for (i = 0; i < resp->len; i++) {
    const ns_header_field *f = &resp->f[i];
    if (hop_by_hop(f->name) || is_set_cookie(f->name) ||
        connection_nominated(resp, f->name, f->name_len) ||
        (listing && no_cache_strips(resp, f->name, f->name_len)))
      continue; /* the merge of a 304 drops them as well (merged_strip) */
    if ((rv = ns_headers_add(&tmp, f->name, f->name_len, f->value, f->value_len)) !=
        NETSTASH_OK)
      goto fail;
  }
  if (ns_headers_count(&tmp, "Date") == 0) {
    char d[NS_HTTP_DATE_LEN];
    ns_http_date_format(ms_to_s(response_time_ms), d);
    if ((rv = ns_headers_add_str(&tmp, "Date", d)) != NETSTASH_OK)
      goto fail;
  }
  ns_headers_free(resp);
  *resp = tmp;
  return NETSTASH_OK;
fail:
  ns_headers_free(&tmp);
  return rv;
}

/* ------------------------------------------------------------------ Vary */

/* Calls fn for each field name in resp's Vary; returns 1 if Vary has "*". */
typedef int (*vary_fn)(ns_span name, void *ud);

static int vary_each(const ns_headers *resp, vary_fn fn, void *ud) {
  size_t it = 0;
  const ns_header_field *f;
  while ((f = ns_headers_next(resp, &it, "Vary")) != NULL) {
    ns_reader r;
    ns_span t;
    ns_reader_init(&r, f->value, f->value_len);
    while (ns_reader_list_next(&r)) {
      if (ns_reader_token(&r, &t)) {
        if (t.len == 1 && t.p[0] == '*')
          return 1;
        if (fn && fn(t, ud))
          return 0; /* stopped */
      }
      ns_reader_list_skip(&r);
    }
  }
  return 0;
}

static int vary_has_star(const ns_headers *resp) {
  return resp ? vary_each(resp, NULL, NULL) : 0;
}

/* Iterates the normalised list members of a field over all its lines. */
typedef struct elem_it {
  const ns_headers *h;
  char name[256];
  size_t iter;
  ns_reader r;
  int active;
} elem_it;

static int elem_next(elem_it *it, ns_span *out) {
  for (;;) {
    if (it->active) {
      if (ns_reader_list_next(&it->r)) {
        size_t start = it->r.pos;
        ns_reader_list_skip(&it->r);
        *out = ns_span_trim(ns_span_make(it->r.p + start, it->r.pos - start));
        return 1;
      }
      it->active = 0;
    }
    {
      const ns_header_field *f = it->h ? ns_headers_next(it->h, &it->iter, it->name) : NULL;
      if (!f)
        return 0;
      ns_reader_init(&it->r, f->value, f->value_len);
      it->active = 1;
    }
  }
}

typedef struct vary_cmp {
  const ns_headers *a, *b;
  int mismatch;
} vary_cmp;

static int field_equal(const ns_headers *a, const ns_headers *b, ns_span name) {
  elem_it ia, ib;
  ns_span ea, eb;
  /* members that are case-insensitive tokens (RFC 4647 §2 language ranges,
   * RFC 9110 §8.4.1 codings, §12.5 parameters and qvalues): en-US is en-us */
  int ci = ns_span_eq_ci(name, "accept-language") || ns_span_eq_ci(name, "accept-encoding") ||
           ns_span_eq_ci(name, "accept-charset");
  if (name.len >= sizeof(ia.name))
    return 0; /* absurd field name: never matches */
  memset(&ia, 0, sizeof(ia));
  memset(&ib, 0, sizeof(ib));
  memcpy(ia.name, name.p, name.len);
  memcpy(ib.name, name.p, name.len);
  ia.h = a;
  ib.h = b;
  /* absent only matches absent (RFC 9111 §4.1) */
  if ((a && ns_headers_count(a, ia.name) > 0) != (b && ns_headers_count(b, ib.name) > 0))
    return 0;
  for (;;) {
    int ha = elem_next(&ia, &ea), hb = elem_next(&ib, &eb);
    if (ha != hb)
      return 0;
    if (!ha)
      return 1;
    if (ci ? ea.len != eb.len || ns_ascii_casecmp_n(ea.p, eb.p, ea.len) != 0 : !ns_span_eq(ea, eb))
      return 0;
  }
}

static int vary_cmp_fn(ns_span name, void *ud) {
  vary_cmp *c = ud;
  if (!field_equal(c->a, c->b, name)) {
    c->mismatch = 1;
    return 1;
  }
  return 0;
}

int ns_cache_vary_matches(const ns_headers *stored_resp, const ns_headers *vary_req,
                          const ns_headers *req) {
  vary_cmp c;
  if (!stored_resp)
    return 1;
  c.a = vary_req;
  c.b = req;
  c.mismatch = 0;
  if (vary_each(stored_resp, vary_cmp_fn, &c))
    return 0; /* Vary: * */
  return !c.mismatch;
}

typedef struct snap_ctx {
  const ns_headers *req;
  ns_headers *out;
  netstash_error rv;
} snap_ctx;

static int snap_fn(ns_span name, void *ud) {
  snap_ctx *s = ud;
  char nm[256];
  size_t it = 0;
  const ns_header_field *f;
  if (name.len >= sizeof(nm))
    return 0;
  memcpy(nm, name.p, name.len);
  nm[name.len] = 0;
  if (ns_headers_count(s->out, nm) > 0 || !s->req)
    return 0; /* listed twice */
  while ((f = ns_headers_next(s->req, &it, nm)) != NULL) {
    s->rv = ns_headers_add(s->out, f->name, f->name_len, f->value, f->value_len);
    if (s->rv != NETSTASH_OK)
      return 1;
  }
  return 0;
}

netstash_error ns_cache_vary_snapshot(const ns_headers *resp, const ns_headers *req,
                                      ns_headers *out) {
  snap_ctx s;
  ns_headers_free(out);
  s.req = req;
  s.out = out;
  s.rv = NETSTASH_OK;
  vary_each(resp, snap_fn, &s);
  if (s.rv != NETSTASH_OK)
    ns_headers_free(out);
  return s.rv;
}

static int64_t recency_ms(const ns_cache_stored *st) {
  int64_t d;
  if (header_date(st->headers, "Date", ms_to_s(st->response_time_ms), &d) == 1)
    return sat_mul1000(d);
  return st->response_time_ms;
}

int ns_cache_select_variant(const ns_cache_stored *const *variants, size_t n,
                            const ns_headers *req_headers, size_t *index) {
  size_t i, best = 0;
  int found = 0;
  int64_t best_date = 0, best_rt = 0;
  for (i = 0; i < n; i++) {
    const ns_cache_stored *v = variants[i];
    int64_t d, rt;
    if (!v || !ns_cache_vary_matches(v->headers, v->vary_request, req_headers))
      continue;
    d = recency_ms(v);
    rt = v->response_time_ms;
    if (!found || d > best_date || (d == best_date && rt > best_rt)) {
      best = i;
      best_date = d;
      best_rt = rt;
      found = 1;
    }
  }
  if (found && index)
    *index = best;
  return found;
}

/* ------------------------------------------------------- freshness and age */

/* The stored Date, parsed once for the lifetime and the age: header_date's
 * answer (1 valid, 0 absent, -1 invalid) and the value. */
typedef struct {
  int rd;
  int64_t date_s;
} stored_date;

static stored_date date_of(const ns_cache_stored *st) {
  stored_date d = {0, 0};
  d.rd = header_date(st->headers, "Date", ms_to_s(st->response_time_ms), &d.date_s);
  return d;
}

/* RFC 9111 §4.2.1 with the response's Cache-Control (cc) and Date (d)
 * already parsed. */
static int64_t lifetime_ms(const ns_cache_policy *pol_in, const ns_cache_stored *st,
                           const ns_cache_control *ccp, stored_date d,
                           ns_cache_fresh_source *source) {
  ns_cache_policy tmp;
  const ns_cache_policy *pol = policy(pol_in, &tmp);
  const ns_cache_control cc = *ccp;
  int64_t now_s = ms_to_s(st->response_time_ms), date_s = d.date_s, exp_s, lm_s;
  int re;
  ns_cache_fresh_source src = NS_CACHE_FRESH_NONE;
  int64_t life = 0;

  if (d.rd != 1)
    date_s = now_s; /* RFC 9110 §6.6.1: the time it was received */

  /* RFC 9111 §4.2.1; s-maxage is for shared caches only */
  if (cc.flags & NS_CC_MAX_AGE_INVALID) {
    src = NS_CACHE_FRESH_INVALID;
  } else if (cc.flags & NS_CC_MAX_AGE) {
    src = NS_CACHE_FRESH_MAX_AGE;
    life = sat_mul1000(cc.max_age_s);
  } else if ((re = header_date(st->headers, "Expires", now_s, &exp_s)) != 0) {
    if (re < 0) {
      src = NS_CACHE_FRESH_INVALID; /* RFC 9111 §5.3: invalid = already expired */
    } else {
      src = NS_CACHE_FRESH_EXPIRES;
      life = exp_s > date_s ? sat_mul1000(sat_sub(exp_s, date_s)) : 0;
    }
  } else if (ns_cache_status_heuristic(st->status) ||
             (cc.flags & (NS_CC_PUBLIC | NS_CC_PRIVATE))) {
    /* RFC 9111 §4.2.2: heuristics only without explicit expiration, and only
     * for heuristically cacheable statuses or responses marked cacheable. */
    if (header_date(st->headers, "Last-Modified", now_s, &lm_s) == 1 && lm_s <= date_s) {
      int64_t since = sat_sub(date_s, lm_s), h;
      int pct = pol->heuristic_percent < 0 ? 0 : pol->heuristic_percent;
      h = since / 100 * pct + since % 100 * pct / 100;
      if (pol->heuristic_max_s >= 0 && h > pol->heuristic_max_s)
        h = pol->heuristic_max_s;
      src = NS_CACHE_FRESH_HEURISTIC;
      life = sat_mul1000(h);
    } else if ((st->status == 301 || st->status == 308 || st->status == 410) &&
               pol->permanent_heuristic_s > 0) {
      src = NS_CACHE_FRESH_PERMANENT;
      life = sat_mul1000(pol->permanent_heuristic_s);
    }
  }
  if (source)
    *source = src;
  return life;
}

int64_t ns_cache_freshness_lifetime_ms(const ns_cache_policy *pol, const ns_cache_stored *st,
                                       ns_cache_fresh_source *source) {
  ns_cache_control cc;
  ns_cache_control_from_headers(&cc, st->headers, 0);
  return lifetime_ms(pol, st, &cc, date_of(st), source);
}

/* RFC 9111 §4.2.3's corrected_initial_age: what the age is when the
 * response was received. */
static int64_t initial_age_ms(const ns_cache_stored *st, stored_date d) {
  int64_t date_ms, apparent, age_value = 0, delay, corrected_age;
  size_t it = 0;
  const ns_header_field *f;
  if (d.rd == 1)
    date_ms = sat_mul1000(d.date_s);
  else
    date_ms = st->response_time_ms;
  apparent = sat_sub(st->response_time_ms, date_ms);
  if (apparent < 0)
    apparent = 0;
  /* Age: the first line's first member; an invalid one is ignored */
  if ((f = ns_headers_next(st->headers, &it, "Age")) != NULL) {
    ns_reader r;
    int64_t s;
    ns_span tok;
    ns_reader_init(&r, f->value, f->value_len);
    if (ns_reader_list_next(&r) && ns_reader_token(&r, &tok) && ns_delta_seconds_parse(tok, &s))
      age_value = sat_mul1000(s);
  }
  delay = sat_sub(st->response_time_ms, st->request_time_ms);
  if (delay < 0)
    delay = 0;
  corrected_age = sat_add(age_value, delay);
  return NS_MAX(apparent, corrected_age);
}

/* ... plus resident_time (RFC 9111 §4.2.3) */
static int64_t age_from(const ns_cache_stored *st, int64_t initial, int64_t now_ms) {
  int64_t resident = sat_sub(now_ms, st->response_time_ms);
  if (resident < 0)
    resident = 0; /* the clock went backwards */
  return sat_add(initial, resident);
}

static int64_t age_ms(const ns_cache_stored *st, stored_date d, int64_t now_ms) {
  return age_from(st, initial_age_ms(st, d), now_ms);
}

int64_t ns_cache_current_age_ms(const ns_cache_stored *st, int64_t now_ms) {
  return age_ms(st, date_of(st), now_ms);
}

/* ------------------------------------------------------------------ decide */

const char *ns_cache_verdict_name(ns_cache_verdict v) {
  switch (v) {
  case NS_CACHE_MISS: return "miss";
  case NS_CACHE_FRESH: return "fresh";
  case NS_CACHE_STALE_WHILE_REVALIDATE: return "stale-while-revalidate";
  case NS_CACHE_REVALIDATE: return "revalidate";
  case NS_CACHE_MUST_REVALIDATE: return "must-revalidate";
  case NS_CACHE_GATEWAY_TIMEOUT: return "gateway-timeout";
  }
  return "unknown";
}

/* Appends to the string in b (n bytes, NUL-terminated, truncating): the two
 * reasons every fresh hit formats, without printf's cost on that path. */
static void cat_str(char *b, size_t n, const char *s) {
  size_t l = strlen(b), k = strlen(s);
  if (l + 1 >= n)
    return;
  if (k > n - l - 1)
    k = n - l - 1;
  memcpy(b + l, s, k);
  b[l + k] = 0;
}

static void cat_i64(char *b, size_t n, int64_t v) {
  char d[22];
  d[0] = '-';
  ns_fmt_u64(d + 1, v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
  cat_str(b, n, v < 0 ? d : d + 1);
}

static void describe_source(char *b, size_t n, ns_cache_fresh_source src,
                            const ns_cache_control *cc, int64_t life_ms) {
  switch (src) {
  case NS_CACHE_FRESH_MAX_AGE:
    b[0] = 0;
    cat_str(b, n, "max-age=");
    cat_i64(b, n, cc->max_age_s);
    break;
  case NS_CACHE_FRESH_EXPIRES:
    snprintf(b, n, "Expires (lifetime %" PRId64 "s)", life_ms / 1000);
    break;
  case NS_CACHE_FRESH_HEURISTIC:
    snprintf(b, n, "heuristic from Last-Modified (lifetime %" PRId64 "s)", life_ms / 1000);
    break;
  case NS_CACHE_FRESH_PERMANENT:
    snprintf(b, n, "permanent-status heuristic (lifetime %" PRId64 "s)", life_ms / 1000);
    break;
  case NS_CACHE_FRESH_INVALID:
    snprintf(b, n, "invalid freshness information");
    break;
  case NS_CACHE_FRESH_NONE:
  default:
    snprintf(b, n, "no freshness information");
    break;
  }
}

/* Truncation is fine for a reason string (vsnprintf: no -Wformat-truncation
 * noise for the compiler's worst case of every int64 field). */
static void reason_set(ns_cache_decision *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void reason_set(ns_cache_decision *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
  va_end(ap);
}
#define REASON(...) reason_set(out, __VA_ARGS__)

/* The stored response's side of a decision, computed into p. */
static void prepare(const ns_cache_policy *pol, const ns_cache_stored *st, ns_cache_prepared *p) {
  stored_date date;
  ns_cache_fresh_source src;
  p->vary_star = vary_has_star(st->headers);
  ns_cache_control_from_headers(&p->rs, st->headers, 0);
  date = date_of(st);
  p->lifetime_ms = lifetime_ms(pol, st, &p->rs, date, &src);
  p->source = (int)src;
  p->initial_age_ms = initial_age_ms(st, date);
  describe_source(p->source_text, sizeof(p->source_text), src, &p->rs, p->lifetime_ms);
  p->policy = pol;
  p->valid = 1;
}

void ns_cache_decide(const ns_cache_policy *pol, const ns_cache_request *req,
                     const ns_cache_stored *st, int64_t now_ms, ns_cache_decision *out) {
  ns_cache_control rq, rs;
  ns_cache_prepared local, *prep;
  int64_t life, age, remaining, age_s;
  int fresh, client_constraint;
  const char *src;
  const ns_headers *rh = req ? req->headers : NULL;

  memset(out, 0, sizeof(*out));
  ns_cache_control_from_headers(&rq, rh, 1);
  out->verdict = NS_CACHE_MISS;

  if (!st || !st->headers) {
    REASON("miss: nothing stored");
    goto only_if_cached;
  }
  /* RFC 9111 §4: GET is served from a stored GET; HEAD too (§4.3.5 spirit) */
  if (!req || !req->method ||
      (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0)) {
    REASON("miss: method %.32s is not answered from the cache",
           req && req->method ? req->method : "(none)");
    goto only_if_cached;
  }
  if (rq.flags & NS_CC_NO_STORE) {
    /* as the Fetch standard's cache mode "no-store": bypass the cache */
    REASON("miss: request no-store");
    goto only_if_cached;
  }
  /* the stored side: computed once for a response decided on again */
  prep = st->prep ? st->prep : &local;
  if (prep == &local || !prep->valid || prep->policy != (const void *)pol)
    prepare(pol, st, prep);
  if (prep->vary_star) {
    REASON("miss: Vary: * never matches (RFC 9111 §4.1)");
    goto only_if_cached;
  }
  if (!ns_cache_vary_matches(st->headers, st->vary_request, rh)) {
    REASON("miss: Vary mismatch (RFC 9111 §4.1)");
    goto only_if_cached;
  }
  if (st->status == 206) {
    /* RFC 9111 §3.3: an incomplete response answers only a range request
     * wholly within it */
    ns_cache_range r;
    uint64_t a = 0, b = 0, n = 0;
    r.status = 0;
    if (ns_cache_piece(st->headers, &a, &b, &n) && strcmp(req->method, "GET") == 0)
      ns_cache_range_decide(rh, 206, st->headers, b - a + 1, &r);
    if (r.status != 206 && r.status != 416) {
      out->incomplete = 1;
      REASON("miss: the stored partial content (bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64
             ") does not hold what is asked (RFC 9111 §3.3)",
             a, b, n);
      goto only_if_cached;
    }
  }

  rs = prep->rs;
  life = prep->lifetime_ms;
  out->source = (ns_cache_fresh_source)prep->source;
  age = age_from(st, prep->initial_age_ms, now_ms);
  fresh = life > age; /* RFC 9111 §4.2: strictly greater */
  remaining = sat_sub(life, age);
  age_s = age / 1000;
  out->lifetime_ms = life;
  out->age_ms = age;
  out->stale = !fresh;
  src = prep->source_text;
  client_constraint = (rq.flags & (NS_CC_MAX_AGE | NS_CC_MIN_FRESH)) != 0;

  if (rq.flags & NS_CC_NO_CACHE) {
    /* RFC 9111 §5.2.1.4 (and Pragma, §5.4): validate, never serve stale */
    out->verdict = NS_CACHE_MUST_REVALIDATE;
    REASON("must-revalidate: request %s", (rq.flags & NS_CC_PRAGMA_NO_CACHE)
                                              ? "Pragma: no-cache"
                                              : "no-cache");
  } else if (rs.flags & NS_CC_NO_CACHE) {
    /* RFC 9111 §5.2.2.4 */
    out->verdict = NS_CACHE_MUST_REVALIDATE;
    REASON("must-revalidate: response no-cache, age %" PRId64 "s", age_s);
  } else if (fresh) {
    int too_old = (rq.flags & NS_CC_MAX_AGE) &&
                  (rq.max_age_s == 0 || age > sat_mul1000(rq.max_age_s));
    if (too_old && (rs.flags & NS_CC_IMMUTABLE)) {
      /* RFC 8246 §2: no conditional request during freshness on a reload */
      out->verdict = NS_CACHE_FRESH;
      out->immutable = 1;
      REASON("fresh: immutable, %s, age %" PRId64 "s (request max-age=%" PRId64 " ignored)",
             src, age_s, rq.max_age_s);
    } else if (too_old) {
      /* RFC 9111 §5.2.1.1; max-age=0 (a reload) always validates */
      out->verdict = NS_CACHE_REVALIDATE;
      REASON("revalidate: request max-age=%" PRId64 ", age %" PRId64 "s", rq.max_age_s, age_s);
    } else if ((rq.flags & NS_CC_MIN_FRESH) && remaining < sat_mul1000(rq.min_fresh_s)) {
      /* RFC 9111 §5.2.1.3 */
      out->verdict = NS_CACHE_REVALIDATE;
      REASON("revalidate: request min-fresh=%" PRId64 ", fresh for %" PRId64 "s more",
             rq.min_fresh_s, remaining / 1000);
    } else {
      out->verdict = NS_CACHE_FRESH;
      out->reason[0] = 0; /* "fresh: SRC, age Ns", as REASON would */
      cat_str(out->reason, sizeof(out->reason), "fresh: ");
      cat_str(out->reason, sizeof(out->reason), src);
      cat_str(out->reason, sizeof(out->reason), ", age ");
      cat_i64(out->reason, sizeof(out->reason), age_s);
      cat_str(out->reason, sizeof(out->reason), "s");
    }
  } else {
    int64_t staleness = sat_sub(age, life);
    if (rs.flags & NS_CC_MUST_REVALIDATE) {
      /* RFC 9111 §5.2.2.2 (proxy-revalidate binds shared caches only) */
      out->verdict = NS_CACHE_MUST_REVALIDATE;
      REASON("must-revalidate: stale (%s, age %" PRId64 "s) and must-revalidate", src, age_s);
    } else if ((rq.flags & NS_CC_MAX_STALE) &&
               ((rq.flags & NS_CC_MAX_STALE_ANY) ||
                staleness <= sat_mul1000(rq.max_stale_s)) &&
               !((rq.flags & NS_CC_MAX_AGE) && age > sat_mul1000(rq.max_age_s))) {
      /* RFC 9111 §5.2.1.2: the client accepts this much staleness */
      out->verdict = NS_CACHE_FRESH;
      REASON("fresh: stale by %" PRId64 "s, accepted by request max-stale", staleness / 1000);
    } else if ((rs.flags & NS_CC_SWR) && !client_constraint &&
               age < sat_add(life, sat_mul1000(rs.swr_s))) {
      /* RFC 5861 §3: serve stale, revalidate in the background */
      out->verdict = NS_CACHE_STALE_WHILE_REVALIDATE;
      REASON("stale-while-revalidate: stale by %" PRId64 "s, window %" PRId64 "s (%s)",
             staleness / 1000, rs.swr_s, src);
    } else {
      out->verdict = NS_CACHE_REVALIDATE;
      REASON("revalidate: stale, %s, age %" PRId64 "s", src, age_s);
    }
  }

  if (out->verdict == NS_CACHE_REVALIDATE && !client_constraint) {
    /* RFC 5861 §4 / RFC 9111 §4.2.4: stale on error only when the origin or
     * the client explicitly allows it, within the window */
    int64_t win = -1;
    if (rs.flags & NS_CC_SIE)
      win = rs.sie_s;
    if ((rq.flags & NS_CC_SIE) && rq.sie_s > win)
      win = rq.sie_s;
    if (win >= 0 && age < sat_add(life, sat_mul1000(win)))
      out->stale_if_error = 1;
  }

only_if_cached:
  if ((rq.flags & NS_CC_ONLY_IF_CACHED) && out->verdict != NS_CACHE_FRESH &&
      out->verdict != NS_CACHE_STALE_WHILE_REVALIDATE) {
    /* RFC 9111 §5.2.1.7: respond from the cache or with 504 */
    char prev[sizeof(out->reason)];
    memcpy(prev, out->reason, sizeof(prev));
    out->verdict = NS_CACHE_GATEWAY_TIMEOUT;
    out->stale_if_error = 0;
    REASON("gateway-timeout: only-if-cached (%.130s)", prev);
  }
}

/* -------------------------------------------------------------- validators */

/* entity-tag = [ weak ] opaque-tag; weak = %s"W/"; opaque-tag = DQUOTE
 * *etagc DQUOTE (RFC 9110 §8.8.3). *opaque includes the quotes. */
static int parse_etag(ns_span s, int *weak, ns_span *opaque) {
  size_t i;
  s = ns_span_trim(s);
  *weak = 0;
  if (s.len >= 2 && s.p[0] == 'W' && s.p[1] == '/') {
    *weak = 1;
    s.p += 2;
    s.len -= 2;
  }
  if (s.len < 2 || s.p[0] != '"' || s.p[s.len - 1] != '"')
    return 0;
  for (i = 1; i + 1 < s.len; i++) {
    unsigned char c = (unsigned char)s.p[i];
    /* etagc = %x21 / %x23-7E / obs-text */
    if (!(c == 0x21 || (c >= 0x23 && c != 0x7f)))
      return 0;
  }
  *opaque = s;
  return 1;
}

/* An ETag as servers send it: an entity-tag, or else one unquoted word
 * (`ETag: abc123` — not an entity-tag, but what some servers send), taken
 * as a strong validator to be echoed verbatim, as Chromium and Firefox do: a
 * server matches its own word, and without it such a response could only
 * be fetched again whole. Not with a '"', a comma (a list) or whitespace. */
static int lenient_etag(ns_span s, int *weak, ns_span *opaque) {
  size_t i;
  if (parse_etag(s, weak, opaque))
    return 1;
  s = ns_span_trim(s);
  if (s.len == 0)
    return 0;
  for (i = 0; i < s.len; i++) {
    unsigned char c = (unsigned char)s.p[i];
    if (c <= 0x20 || c == '"' || c == ',' || c == 0x7f)
      return 0;
  }
  *weak = 0;
  *opaque = s;
  return 1;
}

static int header_etag(const ns_headers *h, int *weak, ns_span *opaque) {
  const char *v = ns_headers_get(h, "ETag");
  return v && lenient_etag(ns_span_make(v, strlen(v)), weak, opaque);
}

netstash_error ns_cache_add_validators(const ns_cache_stored *st, ns_headers *req,
                                       int *added) {
  const char *etag = ns_headers_get(st->headers, "ETag");
  const char *lm = ns_headers_get(st->headers, "Last-Modified");
  int n = 0, weak;
  ns_span op;
  int64_t t;
  netstash_error rv;
  if (added)
    *added = 0;
  /* RFC 9111 §4.3.1: MUST send the entity tag if the stored response has one */
  if (etag && lenient_etag(ns_span_make(etag, strlen(etag)), &weak, &op)) {
    if ((rv = ns_headers_set_str(req, "If-None-Match", etag)) != NETSTASH_OK)
      return rv;
    n++;
  }
  /* SHOULD send Last-Modified in If-Modified-Since (RFC 9110 §13.1.3) */
  if (lm && ns_http_date_parse(lm, strlen(lm), ms_to_s(st->response_time_ms), &t) ==
                NETSTASH_OK) {
    if ((rv = ns_headers_set_str(req, "If-Modified-Since", lm)) != NETSTASH_OK)
      return rv;
    n++;
  } else if (n == 0) {
    /* no validator at all: Date as If-Modified-Since (RFC 9110 §13.1.3 allows
     * "the Date header field of the cached message") */
    const char *d = ns_headers_get(st->headers, "Date");
    if (d && ns_http_date_parse(d, strlen(d), ms_to_s(st->response_time_ms), &t) ==
                 NETSTASH_OK) {
      if ((rv = ns_headers_set_str(req, "If-Modified-Since", d)) != NETSTASH_OK)
        return rv;
      n++;
    }
  }
  if (added)
    *added = n;
  return NETSTASH_OK;
}

int ns_cache_304_matches(const ns_cache_stored *st, const ns_headers *r304) {
  int w304, wst;
  ns_span o304, ost;
  int64_t a, b;
  int64_t now_s = ms_to_s(st->response_time_ms);
  int has_etag = ns_headers_count(r304, "ETag") > 0;
  int has_lm = ns_headers_count(r304, "Last-Modified") > 0;
  if (has_etag) {
    if (!header_etag(r304, &w304, &o304) || !header_etag(st->headers, &wst, &ost))
      return 0;
    /* strong validators select by strong comparison, weak ones by weak
     * comparison (RFC 9111 §4.3.4, RFC 9110 §8.8.3.2) */
    if (!w304 && wst)
      return 0;
    return ns_span_eq(o304, ost);
  }
  if (has_lm) {
    return header_date(r304, "Last-Modified", now_s, &a) == 1 &&
           header_date(st->headers, "Last-Modified", now_s, &b) == 1 && a == b;
  }
  return 1; /* no validator: the stored response we validated */
}

/* Fields a 304 does not update (RFC 9111 §3.2): those that describe the
 * stored bytes themselves — their length, coding, range and digests — and,
 * as Chromium, Content-Type (a browser may have acted on the stored one). */
static int merge_excluded(const char *name, size_t nl, const ns_headers *r304) {
  static const char *const k[] = {"Content-Length", "Content-Encoding", "Content-Type",
                                  "Content-Range",  "Content-MD5",      "Content-Digest"};
  size_t i;
  if (hop_by_hop(name) || is_set_cookie(name) || connection_nominated(r304, name, nl))
    return 1;
  for (i = 0; i < NS_ARRAY_LEN(k); i++)
    if (ns_ascii_casecmp(name, k[i]) == 0)
      return 1;
  return 0;
}

netstash_error ns_cache_merge_304(ns_headers *stored, const ns_headers *r304) {
  ns_headers tmp;
  size_t i, j;
  netstash_error rv = NETSTASH_OK;
  ns_headers_init(&tmp, stored->mem);
  /* RFC 9111 §3.2: stored fields in place; a field the 304 carries replaces
   * every stored line of that name, at the first one's position */
  for (i = 0; i < stored->len; i++) {
    const ns_header_field *f = &stored->f[i];
    int replaced = !merge_excluded(f->name, f->name_len, r304) &&
                   ns_headers_count(r304, f->name) > 0;
    if (!replaced) {
      rv = ns_headers_add(&tmp, f->name, f->name_len, f->value, f->value_len);
    } else if (ns_headers_count(&tmp, f->name) == 0) {
      size_t it = 0;
      const ns_header_field *g;
      while (rv == NETSTASH_OK && (g = ns_headers_next(r304, &it, f->name)) != NULL)
        rv = ns_headers_add(&tmp, g->name, g->name_len, g->value, g->value_len);
    }
    if (rv != NETSTASH_OK)
      goto fail;
  }
  for (j = 0; j < r304->len; j++) {
    const ns_header_field *g = &r304->f[j];
    if (merge_excluded(g->name, g->name_len, r304) || ns_headers_count(stored, g->name) > 0)
      continue;
    if ((rv = ns_headers_add(&tmp, g->name, g->name_len, g->value, g->value_len)) !=
        NETSTASH_OK)
      goto fail;
  }
  if ((rv = merged_strip(&tmp)) != NETSTASH_OK)
    goto fail;
  ns_headers_free(stored);
  *stored = tmp;
  return NETSTASH_OK;
fail:
  ns_headers_free(&tmp);
  return rv;
}

/* -------------------------------------------------------------------- keys */

#define NORM_FAST_MAX 2048 /* URLs the fast path takes (NUL-separated copy) */

typedef struct norm_url {
  char *scheme, *host, *port, *path, *query;
  int owned;                /* curl_url's strings (norm_parse), else in buf */
  char buf[NORM_FAST_MAX]; /* the fast path's parts */
} norm_url;

static atomic_ulong norm_fast_taken; /* for the tests: the fast path was used */

unsigned long ns_cache_norm_fast_count(void) { return atomic_load(&norm_fast_taken); }

static void norm_free(norm_url *u) {
  if (u->owned) {
    curl_free(u->scheme);
    curl_free(u->host);
    curl_free(u->port);
    curl_free(u->path);
    curl_free(u->query);
  }
  u->scheme = u->host = u->port = u->path = u->query = NULL;
  u->owned = 0;
}

/* The parts of a URL already in curl_url's printed form (a request's URL
 * is: ns_url_parse keeps curl_url's output), split by ns_url_split_canonical
 * without parsing again and without allocating, copied into u->buf; the
 * default port dropped as CURLU_NO_DEFAULT_PORT does. 0: not such a URL
 * (norm_parse asks curl_url). tests/unit/cache_test and fuzz/cache_control
 * compare both paths. */
static int norm_fast(const char *url, norm_url *u) {
  ns_url_parts p;
  char *w = u->buf;
  size_t need;
  if (!ns_url_split_canonical(url, &p))
    return 0;
  if (p.port_num == (p.scheme_len == 5 ? 443u : 80u))
    p.port_len = 0; /* CURLU_NO_DEFAULT_PORT */
  need = p.scheme_len + p.host_len + p.port_len + p.path_len + p.query_len + 5;
  if (need > sizeof(u->buf))
    return 0;
#define NORM_PUT(field, from, len)                                             \
  do {                                                                         \
    u->field = w;                                                              \
    memcpy(w, (from), (len));                                                  \
    w += (len);                                                                \
    *w++ = 0;                                                                  \
  } while (0)
  NORM_PUT(scheme, p.scheme, p.scheme_len);
  NORM_PUT(host, p.host, p.host_len);
  if (p.port_len)
    NORM_PUT(port, p.port, p.port_len);
  NORM_PUT(path, p.path, p.path_len);
  if (p.query)
    NORM_PUT(query, p.query, p.query_len);
#undef NORM_PUT
  return 1;
}

static netstash_error norm_parse(const char *url, norm_url *u) {
  CURLU *h;
  CURLUcode uc;
  netstash_error rv = NETSTASH_E_BAD_URL;
  char *p;
  u->scheme = u->host = u->port = u->path = u->query = NULL;
  u->owned = 0;
  if (!url)
    return NETSTASH_E_BAD_URL;
  if (norm_fast(url, u)) {
    atomic_fetch_add_explicit(&norm_fast_taken, 1, memory_order_relaxed);
    return NETSTASH_OK;
  }
  u->scheme = u->host = u->port = u->path = u->query = NULL;
  u->owned = 1;
  if (!(h = curl_url()))
    return NETSTASH_E_NOMEM;
  uc = curl_url_set(h, CURLUPART_URL, url, 0);
  if (uc == CURLUE_OUT_OF_MEMORY)
    rv = NETSTASH_E_NOMEM;
  if (uc != CURLUE_OK)
    goto done;
  if (curl_url_get(h, CURLUPART_SCHEME, &u->scheme, 0) != CURLUE_OK ||
      (strcmp(u->scheme, "http") != 0 && strcmp(u->scheme, "https") != 0) ||
      curl_url_get(h, CURLUPART_HOST, &u->host, 0) != CURLUE_OK ||
      curl_url_get(h, CURLUPART_PATH, &u->path, 0) != CURLUE_OK)
    goto done;
  uc = curl_url_get(h, CURLUPART_PORT, &u->port, CURLU_NO_DEFAULT_PORT);
  if (uc != CURLUE_OK && uc != CURLUE_NO_PORT)
    goto done;
  uc = curl_url_get(h, CURLUPART_QUERY, &u->query, 0);
  if (uc != CURLUE_OK && uc != CURLUE_NO_QUERY)
    goto done;
  for (p = u->host; *p; p++)
    *p = ns_ascii_lower(*p);
  rv = NETSTASH_OK;
done:
  if (rv != NETSTASH_OK)
    norm_free(u);
  curl_url_cleanup(h);
  return rv;
}

static netstash_error norm_append(const norm_url *u, int with_query, ns_buf *out) {
  netstash_error rv;
  if ((rv = ns_buf_append_str(out, u->scheme)) != NETSTASH_OK ||
      (rv = ns_buf_append_str(out, "://")) != NETSTASH_OK ||
      (rv = ns_buf_append_str(out, u->host)) != NETSTASH_OK)
    return rv;
  if (u->port && ((rv = ns_buf_append_str(out, ":")) != NETSTASH_OK ||
                  (rv = ns_buf_append_str(out, u->port)) != NETSTASH_OK))
    return rv;
  if ((rv = ns_buf_append_str(out, u->path)) != NETSTASH_OK)
    return rv;
  if (with_query && u->query &&
      ((rv = ns_buf_append_str(out, "?")) != NETSTASH_OK ||
       (rv = ns_buf_append_str(out, u->query)) != NETSTASH_OK))
    return rv;
  return NETSTASH_OK;
}

static netstash_error site_append(const ns_cache_policy *pol, const norm_url *u, ns_buf *out) {
  const char *host = u->host, *reg = NULL;
  char bare[64];
  size_t hl = strlen(host);
  netstash_error rv;
  const psl_ctx_t *psl = pol->psl ? pol->psl : psl_builtin();
  int is_ip = 0;
  if (hl >= 2 && host[0] == '[')
    is_ip = 1; /* IPv6 literal */
  else if (hl < sizeof(bare)) {
    memcpy(bare, host, hl + 1);
    is_ip = ns_host_is_ip(bare, NULL);
  }
  if (!is_ip && psl)
    reg = psl_registrable_domain(psl, host);
  if ((rv = ns_buf_append_str(out, u->scheme)) != NETSTASH_OK ||
      (rv = ns_buf_append_str(out, "://")) != NETSTASH_OK)
    return rv;
  return ns_buf_append_str(out, reg ? reg : host);
}

netstash_error ns_cache_site(const ns_cache_policy *pol_in, const char *url, ns_buf *out) {
  ns_cache_policy tmp;
  norm_url u;
  netstash_error rv = norm_parse(url, &u);
  if (rv != NETSTASH_OK)
    return rv;
  rv = site_append(policy(pol_in, &tmp), &u, out);
  norm_free(&u);
  return rv;
}

static netstash_error make_key(const ns_cache_policy *pol_in, const char *prefix,
                               const char *top, const char *url, int with_query,
                               ns_buf *out) {
  ns_cache_policy tmp;
  const ns_cache_policy *pol = policy(pol_in, &tmp);
  norm_url u, t;
  size_t len0 = out->len;
  netstash_error rv = norm_parse(url, &u);
  if (rv != NETSTASH_OK)
    return rv;
  t.scheme = t.host = t.port = t.path = t.query = NULL;
  t.owned = 0;
  if ((rv = ns_buf_append_str(out, prefix)) != NETSTASH_OK ||
      (rv = ns_buf_append_str(out, " ")) != NETSTASH_OK)
    goto done;
  if (!pol->partition) {
    rv = ns_buf_append_str(out, "-");
  } else if (top) {
    if ((rv = norm_parse(top, &t)) == NETSTASH_OK)
      rv = site_append(pol, &t, out);
  } else {
    rv = site_append(pol, &u, out);
  }
  if (rv != NETSTASH_OK || (rv = ns_buf_append_str(out, " ")) != NETSTASH_OK)
    goto done;
  rv = norm_append(&u, with_query, out);
done:
  if (rv != NETSTASH_OK) {
    out->len = len0;
    if (out->data)
      out->data[len0] = 0;
  }
  norm_free(&u);
  norm_free(&t);
  return rv;
}

netstash_error ns_cache_key(const ns_cache_policy *pol, const char *top_level_url,
                            const char *url, ns_buf *out) {
  return make_key(pol, "1", top_level_url, url, 1, out);
}

netstash_error ns_cache_nvs_index_key(const ns_cache_policy *pol, const char *top_level_url,
                                      const char *url, ns_buf *out) {
  return make_key(pol, "1n", top_level_url, url, 0, out);
}

netstash_error ns_cache_key_fit(const char *key, size_t len, size_t max, ns_buf *out) {
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0, i;
  char tail[NS_CACHE_KEY_HASH_SUFFIX];
  size_t len0 = out->len;
  netstash_error rv;
  if (!key || max < NS_CACHE_KEY_HASH_SUFFIX)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (len <= max)
    return ns_buf_append(out, key, len);
  if (!EVP_Digest(key, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
    return NETSTASH_E_INTERNAL;
  tail[0] = '#';
  for (i = 0; i < 32; i++) {
    tail[1 + 2 * i] = hex[md[i] >> 4];
    tail[2 + 2 * i] = hex[md[i] & 15];
  }
  if ((rv = ns_buf_append(out, key, max - NS_CACHE_KEY_HASH_SUFFIX)) != NETSTASH_OK ||
      (rv = ns_buf_append(out, tail, sizeof(tail))) != NETSTASH_OK) {
    out->len = len0;
    if (out->data)
      out->data[len0] = 0;
  }
  return rv;
}

/* ------------------------------------------------------------ invalidation */

static int method_safe(const char *m) {
  /* RFC 9110 §9.2.1 */
  return !strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS") ||
         !strcmp(m, "TRACE");
}

static int same_origin(const norm_url *a, const norm_url *b) {
  const char *pa = a->port ? a->port : "", *pb = b->port ? b->port : "";
  return !strcmp(a->scheme, b->scheme) && !strcmp(a->host, b->host) && !strcmp(pa, pb);
}

void ns_cache_invalidation_free(const ns_mem *mem, ns_cache_invalidation *inv) {
  size_t i;
  if (!inv)
    return;
  for (i = 0; i < inv->n; i++) {
    ns_free(mem, inv->url[i]);
    ns_free(mem, inv->key[i]);
  }
  memset(inv, 0, sizeof(*inv));
}

static netstash_error inv_add(const ns_mem *mem, const ns_cache_policy *pol, const char *top,
                              const norm_url *u, ns_cache_invalidation *out) {
  ns_buf ub, kb;
  size_t i, l;
  netstash_error rv;
  ns_buf_init(&ub, mem, 1 << 20);
  ns_buf_init(&kb, mem, 1 << 20);
  if ((rv = norm_append(u, 1, &ub)) != NETSTASH_OK)
    goto done;
  for (i = 0; i < out->n; i++)
    if (!strcmp(out->url[i], ns_buf_str(&ub)))
      goto done; /* already listed */
  if ((rv = ns_cache_key(pol, top, ns_buf_str(&ub), &kb)) != NETSTASH_OK)
    goto done;
  out->url[out->n] = (char *)ns_buf_steal(&ub, &l);
  out->key[out->n] = (char *)ns_buf_steal(&kb, &l);
  if (!out->url[out->n] || !out->key[out->n]) {
    ns_free(mem, out->url[out->n]);
    ns_free(mem, out->key[out->n]);
    out->url[out->n] = out->key[out->n] = NULL;
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  out->n++;
done:
  ns_buf_free(&ub);
  ns_buf_free(&kb);
  return rv;
}

netstash_error ns_cache_invalidation_targets(const ns_mem *mem, const ns_cache_policy *pol,
                                             const char *top, const char *method,
                                             const char *url, int status,
                                             const ns_headers *resp,
                                             ns_cache_invalidation *out) {
  static const char *const k_loc[] = {"Location", "Content-Location"};
  norm_url target;
  size_t i;
  netstash_error rv;
  memset(out, 0, sizeof(*out));
  if (!method || !url)
    return NETSTASH_E_INVALID_ARGUMENT;
  /* RFC 9111 §4.4: non-error status to an unsafe method */
  if (method_safe(method) || status < 200 || status >= 400)
    return NETSTASH_OK;
  if ((rv = norm_parse(url, &target)) != NETSTASH_OK)
    return rv;
  if ((rv = inv_add(mem, pol, top, &target, out)) != NETSTASH_OK)
    goto fail;
  for (i = 0; resp && i < NS_ARRAY_LEN(k_loc); i++) {
    const char *v = ns_headers_get(resp, k_loc[i]);
    ns_url resolved;
    norm_url cand;
    if (!v)
      continue;
    rv = ns_url_resolve(mem, url, v, &resolved, NULL, 0);
    if (rv == NETSTASH_E_NOMEM)
      goto fail;
    if (rv != NETSTASH_OK)
      continue; /* an unusable reference is not a reason to fail */
    rv = norm_parse(resolved.url, &cand);
    ns_url_free(mem, &resolved);
    if (rv == NETSTASH_E_NOMEM)
      goto fail;
    if (rv != NETSTASH_OK)
      continue;
    /* "MUST NOT ... if the origin ... differs from that of the target URI" */
    if (same_origin(&cand, &target))
      rv = inv_add(mem, pol, top, &cand, out);
    norm_free(&cand);
    if (rv != NETSTASH_OK)
      goto fail;
  }
  norm_free(&target);
  return NETSTASH_OK;
fail:
  norm_free(&target);
  ns_cache_invalidation_free(mem, out);
  return rv;
}

/* ------------------------------------------------------------------ ranges */

#define MAX_RANGES 64

typedef struct brange {
  uint64_t first, last;
} brange;

/* RFC 9110 §14.1.1/§14.2:
 *   Range = ranges-specifier; ranges-specifier = range-unit "=" range-set
 *   range-set = 1#range-spec; range-spec = int-range / suffix-range / other
 *   int-range = first-pos "-" [ last-pos ]; suffix-range = "-" suffix-length
 * Returns 1 and the satisfiable ranges (clamped to len) in r[0..*n), with
 * *any_suffix set when a non-empty suffix-range was seen; 0 when the field is
 * to be ignored (not bytes, invalid, too many ranges). */
static int parse_range(ns_span v, uint64_t len, brange *r, size_t *n, int *nonempty_suffix) {
  ns_reader rd;
  ns_span unit;
  size_t count = 0, specs = 0;
  *n = 0;
  *nonempty_suffix = 0;
  ns_reader_init(&rd, v.p, v.len);
  ns_reader_skip_ows(&rd);
  if (!ns_reader_token(&rd, &unit) || !ns_span_eq_ci(unit, "bytes") ||
      !ns_reader_skip_char(&rd, '='))
    return 0;
  while (ns_reader_list_next(&rd)) {
    uint64_t a, b;
    if (++specs > MAX_RANGES)
      return 0;
    if (ns_reader_skip_char(&rd, '-')) {
      if (!ns_reader_uint(&rd, UINT64_MAX, &a, NULL))
        return 0;
      if (a > 0) {
        *nonempty_suffix = 1;
        if (len > 0) {
          r[count].first = len - (a < len ? a : len);
          r[count].last = len - 1;
          count++;
        }
      }
    } else {
      if (!ns_reader_uint(&rd, UINT64_MAX, &a, NULL) || !ns_reader_skip_char(&rd, '-'))
        return 0;
      if (ns_reader_uint(&rd, UINT64_MAX, &b, NULL)) {
        if (b < a)
          return 0; /* invalid int-range */
      } else {
        b = UINT64_MAX;
      }
      if (a < len) {
        r[count].first = a;
        r[count].last = b < len - 1 ? b : len - 1;
        count++;
      }
    }
    ns_reader_skip_ows(&rd);
    if (!ns_reader_eof(&rd) && ns_reader_peek(&rd) != ',')
      return 0;
  }
  if (specs == 0)
    return 0;
  *n = count;
  return 1;
}

/* RFC 9110 §13.1.5 */
static int if_range_matches(ns_span v, const ns_headers *resp) {
  int weak, sweak;
  ns_span op, sop;
  int64_t t, lm, date;
  v = ns_span_trim(v);
  if (v.len && (v.p[0] == '"' || v.p[0] == 'W')) {
    /* an entity-tag: strong comparison, a weak tag never matches */
    if (!parse_etag(v, &weak, &op) || weak)
      return 0;
    if (!header_etag(resp, &sweak, &sop) || sweak)
      return 0;
    return ns_span_eq(op, sop);
  }
  if (ns_http_date_parse(v.p, v.len, 0, &t) != NETSTASH_OK)
    return 0;
  /* exact match with a strong Last-Modified: for a cache, one at least 60 s
   * before the stored Date (RFC 9110 §8.8.2.2) */
  if (header_date(resp, "Last-Modified", 0, &lm) != 1 ||
      header_date(resp, "Date", 0, &date) != 1)
    return 0;
  return lm == t && date - lm >= 60;
}

const char *ns_cache_if_range(const ns_headers *stored) {
  const char *v = stored ? ns_headers_get(stored, "ETag") : NULL;
  int weak;
  ns_span op;
  int64_t lm, date;
  if (v) /* a strong entity-tag, quoted: the only tag If-Range can carry */
    return parse_etag(ns_span_trim(ns_span_make(v, strlen(v))), &weak, &op) && !weak ? v : NULL;
  /* a date If-Range can carry: an HTTP-date as sent (the lenient forms
   * header_date accepts would not compare equal at the origin) */
  v = ns_headers_get(stored, "Last-Modified");
  if (v && ns_http_date_parse(v, strlen(v), 0, &lm) == NETSTASH_OK &&
      header_date(stored, "Last-Modified", 0, &lm) == 1 &&
      header_date(stored, "Date", 0, &date) == 1 && date - lm >= 60)
    return v;
  return NULL;
}

int ns_cache_same_validator(const ns_headers *stored, const ns_headers *resp) {
  const char *v = ns_cache_if_range(stored);
  return v && if_range_matches(ns_span_make(v, strlen(v)), resp);
}

static void sort_ranges(brange *r, size_t n) {
  size_t i, j;
  for (i = 1; i < n; i++) {
    brange x = r[i];
    for (j = i; j > 0 && r[j - 1].first > x.first; j--)
      r[j] = r[j - 1];
    r[j] = x;
  }
}

int ns_cache_piece(const ns_headers *resp, uint64_t *first, uint64_t *last, uint64_t *complete) {
  const char *v = resp ? ns_headers_get(resp, "Content-Range") : NULL;
  ns_reader rd;
  ns_span unit;
  uint64_t a, b, n;
  if (!v || ns_headers_count(resp, "Content-Range") != 1)
    return 0;
  /* Content-Range = range-unit SP range-resp; range-resp = incl-range "/"
   * complete-length; incl-range = first-pos "-" last-pos */
  ns_reader_init(&rd, v, strlen(v));
  ns_reader_skip_ows(&rd);
  if (!ns_reader_token(&rd, &unit) || !ns_span_eq_ci(unit, "bytes") ||
      !ns_reader_skip_char(&rd, ' ') || !ns_reader_uint(&rd, UINT64_MAX, &a, NULL) ||
      !ns_reader_skip_char(&rd, '-') || !ns_reader_uint(&rd, UINT64_MAX, &b, NULL) ||
      !ns_reader_skip_char(&rd, '/') || !ns_reader_uint(&rd, UINT64_MAX, &n, NULL))
    return 0;
  ns_reader_skip_ows(&rd);
  if (!ns_reader_eof(&rd) || b < a || b >= n)
    return 0;
  if (first)
    *first = a;
  if (last)
    *last = b;
  if (complete)
    *complete = n;
  return 1;
}

void ns_cache_range_decide(const ns_headers *req, int stored_status,
                           const ns_headers *stored_resp, uint64_t body_len,
                           ns_cache_range *out) {
  brange r[MAX_RANGES];
  size_t n = 0, i, m;
  int nonempty_suffix;
  const char *rv, *ir;
  uint64_t off = 0, total = body_len, plast = 0, pn = 0;
  memset(out, 0, sizeof(*out));
  out->status = 200;
  rv = req ? ns_headers_get(req, "Range") : NULL;
  if (!rv) {
    out->reason = "no Range";
    return;
  }
  if (stored_status == 206) {
    /* a stored piece: positions are the complete representation's */
    if (!ns_cache_piece(stored_resp, &off, &plast, &pn) || plast - off + 1 != body_len) {
      out->reason = "Range ignored: the stored partial content is not what its Content-Range says";
      return;
    }
    total = pn;
  } else if (stored_status != 200) {
    out->reason = "Range ignored: stored status is not 200";
    return;
  }
  if (ns_headers_count(req, "Range") != 1 ||
      !parse_range(ns_span_make(rv, strlen(rv)), total, r, &n, &nonempty_suffix)) {
    out->reason = "Range ignored: not a valid bytes range";
    return;
  }
  ir = ns_headers_get(req, "If-Range");
  if (ir && !if_range_matches(ns_span_make(ir, strlen(ir)), stored_resp)) {
    out->reason = "Range ignored: If-Range does not match (RFC 9110 §13.1.5)";
    return;
  }
  if (n == 0) {
    if (total == 0 && nonempty_suffix) {
      out->reason = "Range ignored: empty representation";
      return;
    }
    out->status = 416; /* RFC 9110 §15.5.17 */
    snprintf(out->content_range, sizeof(out->content_range), "bytes */%" PRIu64, total);
    out->reason = "range not satisfiable";
    return;
  }
  sort_ranges(r, n);
  for (i = 1, m = 0; i < n; i++) {
    /* coalesce overlapping or adjacent ranges */
    if (r[i].first <= r[m].last || r[i].first - r[m].last == 1) {
      if (r[i].last > r[m].last)
        r[m].last = r[i].last;
    } else {
      r[++m] = r[i];
    }
  }
  if (m > 0) {
    out->reason = "several ranges: whole body served (no multipart/byteranges)";
    return;
  }
  if (stored_status == 206 && (r[0].first < off || r[0].last > plast)) {
    out->reason = "the range is not all in the stored partial content";
    return;
  }
  out->status = 206;
  out->first = r[0].first;
  out->last = r[0].last;
  out->body_offset = off;
  snprintf(out->content_range, sizeof(out->content_range), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64,
           out->first, out->last, total);
  out->reason = "partial content";
}

/* --------------------------------------------------------- No-Vary-Search */

/* RFC 8941 parsing, just enough for a dictionary: values are recorded for the
 * keys we know; everything else must still be well-formed. */
enum { SF_NONE = 0, SF_BOOL, SF_INNER, SF_OTHER };

typedef struct sf_val {
  int type;
  int boolean;
  size_t start, end; /* inner list: the span between the parentheses */
} sf_val;

static int sf_key(ns_reader *r, ns_span *key) {
  size_t start = r->pos;
  int c = ns_reader_peek(r);
  if (!((c >= 'a' && c <= 'z') || c == '*'))
    return 0;
  r->pos++;
  while ((c = ns_reader_peek(r)) >= 0 &&
         ((c >= 'a' && c <= 'z') || ns_is_digit(c) || c == '_' || c == '-' || c == '.' ||
          c == '*'))
    r->pos++;
  *key = ns_span_make(r->p + start, r->pos - start);
  return 1;
}

/* sf-string: the raw content (escapes in place) in *s. */
static int sf_string(ns_reader *r, ns_span *s) {
  size_t start;
  if (!ns_reader_skip_char(r, '"'))
    return 0;
  start = r->pos;
  for (;;) {
    int c = ns_reader_peek(r);
    if (c < 0)
      return 0;
    r->pos++;
    if (c == '"') {
      *s = ns_span_make(r->p + start, r->pos - 1 - start);
      return 1;
    }
    if (c == '\\') {
      c = ns_reader_peek(r);
      if (c != '"' && c != '\\')
        return 0;
      r->pos++;
    } else if (c < 0x20 || c > 0x7e) {
      return 0;
    }
  }
}

/* A bare item; *type SF_BOOL (with *b) or SF_OTHER; *is_string set with its
 * raw span for strings. */
static int sf_bare_item(ns_reader *r, int *type, int *b, int *is_string, ns_span *str) {
  int c = ns_reader_peek(r);
  *is_string = 0;
  *type = SF_OTHER;
  if (c == '"') {
    *is_string = 1;
    return sf_string(r, str);
  }
  if (c == '?') {
    r->pos++;
    c = ns_reader_peek(r);
    if (c != '0' && c != '1')
      return 0;
    r->pos++;
    *type = SF_BOOL;
    *b = c == '1';
    return 1;
  }
  if (c == '-' || ns_is_digit(c)) {
    /* integer or decimal (RFC 8941 §4.2.4) */
    size_t digits = 0, frac = 0;
    int dot = 0;
    if (c == '-')
      r->pos++;
    while ((c = ns_reader_peek(r)) >= 0 && (ns_is_digit(c) || (c == '.' && !dot))) {
      if (c == '.')
        dot = 1;
      else if (dot)
        frac++;
      else
        digits++;
      r->pos++;
    }
    if (digits == 0 || digits > 15 || (dot && (frac == 0 || frac > 3 || digits > 12)))
      return 0;
    return 1;
  }
  if (ns_is_alpha(c) || c == '*') {
    /* sf-token */
    r->pos++;
    while ((c = ns_reader_peek(r)) >= 0 && (ns_is_tchar(c) || c == ':' || c == '/'))
      r->pos++;
    return 1;
  }
  if (c == ':') {
    /* sf-binary */
    r->pos++;
    while ((c = ns_reader_peek(r)) >= 0 && c != ':') {
      if (!(ns_is_alpha(c) || ns_is_digit(c) || c == '+' || c == '/' || c == '='))
        return 0;
      r->pos++;
    }
    return ns_reader_skip_char(r, ':');
  }
  return 0;
}

static int sf_params(ns_reader *r) {
  while (ns_reader_skip_char(r, ';')) {
    ns_span k, s;
    int t, b, is;
    while (ns_reader_skip_char(r, ' '))
      ;
    if (!sf_key(r, &k))
      return 0;
    if (ns_reader_skip_char(r, '=') && !sf_bare_item(r, &t, &b, &is, &s))
      return 0;
  }
  return 1;
}

static int sf_inner_list(ns_reader *r, size_t *start, size_t *end) {
  if (!ns_reader_skip_char(r, '('))
    return 0;
  *start = r->pos;
  for (;;) {
    ns_span s;
    int t, b, is;
    while (ns_reader_skip_char(r, ' '))
      ;
    if (ns_reader_peek(r) == ')') {
      *end = r->pos;
      r->pos++;
      return sf_params(r);
    }
    if (!sf_bare_item(r, &t, &b, &is, &s) || !sf_params(r))
      return 0;
    {
      int c = ns_reader_peek(r);
      if (c != ' ' && c != ')')
        return 0;
    }
  }
}

static int sf_dictionary(ns_span in, sf_val *params, sf_val *except, sf_val *key_order) {
  ns_reader r;
  ns_reader_init(&r, in.p, in.len);
  while (ns_reader_skip_char(&r, ' '))
    ;
  if (ns_reader_eof(&r))
    return 0; /* empty: "no value" — the default variance */
  for (;;) {
    ns_span key;
    sf_val v;
    memset(&v, 0, sizeof(v));
    if (!sf_key(&r, &key))
      return 0;
    if (ns_reader_skip_char(&r, '=')) {
      if (ns_reader_peek(&r) == '(') {
        v.type = SF_INNER;
        if (!sf_inner_list(&r, &v.start, &v.end))
          return 0;
      } else {
        ns_span s;
        int is;
        if (!sf_bare_item(&r, &v.type, &v.boolean, &is, &s) || !sf_params(&r))
          return 0;
      }
    } else {
      v.type = SF_BOOL;
      v.boolean = 1;
      if (!sf_params(&r))
        return 0;
    }
    /* later duplicates overwrite earlier ones (RFC 8941 §3.2) */
    if (key.len == 6 && !memcmp(key.p, "params", 6))
      *params = v;
    else if (key.len == 6 && !memcmp(key.p, "except", 6))
      *except = v;
    else if (key.len == 9 && !memcmp(key.p, "key-order", 9))
      *key_order = v;
    ns_reader_skip_ows(&r);
    if (ns_reader_eof(&r))
      return 1;
    if (!ns_reader_skip_char(&r, ','))
      return 0;
    ns_reader_skip_ows(&r);
    if (ns_reader_eof(&r))
      return 0; /* trailing comma */
  }
}

static int hexval(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* application/x-www-form-urlencoded decoding of one name or value: '+' is a
 * space, %XX a byte, a bad escape stays literal (URL standard). */
static netstash_error form_decode(const char *p, size_t len, ns_buf *out) {
  size_t i;
  netstash_error rv = NETSTASH_OK;
  for (i = 0; i < len && rv == NETSTASH_OK; i++) {
    char c = p[i];
    if (c == '+') {
      rv = ns_buf_append(out, " ", 1);
    } else if (c == '%' && i + 2 < len && hexval((unsigned char)p[i + 1]) >= 0 &&
               hexval((unsigned char)p[i + 2]) >= 0) {
      char b = (char)(hexval((unsigned char)p[i + 1]) * 16 + hexval((unsigned char)p[i + 2]));
      rv = ns_buf_append(out, &b, 1);
      i += 2;
    } else {
      rv = ns_buf_append(out, &c, 1);
    }
  }
  return rv;
}

/* The strings of an inner list, sf-unescaped then form-decoded ("parse a
 * key"). 0 if an item is not a string. */
static netstash_error nvs_names(const ns_mem *mem, ns_span in, size_t start, size_t end,
                                ns_cache_nvs *out, int *ok) {
  ns_reader r;
  ns_buf tmp, dec;
  netstash_error rv = NETSTASH_OK;
  *ok = 0;
  ns_reader_init(&r, in.p + start, end - start);
  ns_buf_init(&tmp, mem, 1 << 16);
  ns_buf_init(&dec, mem, 1 << 16);
  for (;;) {
    ns_span s;
    size_t i, nbytes;
    ns_span *nn;
    while (ns_reader_skip_char(&r, ' '))
      ;
    if (ns_reader_eof(&r))
      break;
    if (ns_reader_peek(&r) != '"' || !sf_string(&r, &s) || !sf_params(&r))
      goto done; /* not a string: invalid (the inner list already parsed) */
    ns_buf_reset(&tmp);
    ns_buf_reset(&dec);
    for (i = 0; i < s.len && rv == NETSTASH_OK; i++) {
      if (s.p[i] == '\\')
        i++;
      rv = ns_buf_append(&tmp, &s.p[i], 1);
    }
    if (rv != NETSTASH_OK || (rv = form_decode((const char *)tmp.data, tmp.len, &dec)) !=
                                 NETSTASH_OK)
      goto done;
    if (!ns_mul_size(out->n + 1, sizeof(ns_span), &nbytes)) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    nn = ns_realloc(mem, out->names, nbytes);
    if (!nn) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    out->names = nn;
    nn[out->n].p = ns_strndup(mem, dec.data ? (const char *)dec.data : "", dec.len);
    if (!nn[out->n].p) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    nn[out->n].len = dec.len;
    out->n++;
  }
  *ok = 1;
done:
  ns_buf_free(&tmp);
  ns_buf_free(&dec);
  return rv;
}

void ns_cache_nvs_free(const ns_mem *mem, ns_cache_nvs *nvs) {
  size_t i;
  if (!nvs)
    return;
  for (i = 0; i < nvs->n; i++)
    ns_free(mem, (void *)nvs->names[i].p);
  ns_free(mem, nvs->names);
  memset(nvs, 0, sizeof(*nvs));
}

netstash_error ns_cache_nvs_parse(const ns_mem *mem, const ns_headers *resp,
                                  ns_cache_nvs *out) {
  ns_buf all;
  sf_val params, except, key_order;
  int present, ok = 0;
  ns_span in;
  netstash_error rv;
  memset(out, 0, sizeof(*out));
  memset(&params, 0, sizeof(params));
  memset(&except, 0, sizeof(except));
  memset(&key_order, 0, sizeof(key_order));
  ns_buf_init(&all, mem, 1 << 16);
  rv = ns_headers_combined(resp, "No-Vary-Search", &all, &present);
  if (rv == NETSTASH_E_TOO_LARGE) {
    rv = NETSTASH_OK; /* absurdly long: ignored, the default variance */
    goto done;
  }
  if (rv != NETSTASH_OK || !present)
    goto done;
  in = ns_span_make(ns_buf_str(&all), all.len);
  if (!sf_dictionary(in, &params, &except, &key_order))
    goto done;
  /* draft-ietf-httpbis-no-vary-search §4.2 "obtain a URL search variance" */
  if (key_order.type != SF_NONE) {
    if (key_order.type != SF_BOOL)
      goto done;
    out->key_order = key_order.boolean;
  }
  if (params.type == SF_BOOL) {
    out->params_all = params.boolean;
  } else if (params.type == SF_INNER) {
    if ((rv = nvs_names(mem, in, params.start, params.end, out, &ok)) != NETSTASH_OK || !ok)
      goto fail;
  } else if (params.type != SF_NONE) {
    goto fail;
  }
  if (except.type != SF_NONE) {
    if (!out->params_all || except.type != SF_INNER)
      goto fail;
    if ((rv = nvs_names(mem, in, except.start, except.end, out, &ok)) != NETSTASH_OK || !ok)
      goto fail;
  }
  out->present = 1;
  goto done;
fail:
  ns_cache_nvs_free(mem, out); /* the default variance */
done:
  ns_buf_free(&all);
  return rv;
}

#define NVS_MAX_PARAMS 1024

typedef struct qpair {
  size_t noff, nlen, voff, vlen; /* into the arena */
} qpair;

static int name_listed(const ns_cache_nvs *nvs, const char *p, size_t len) {
  size_t i;
  for (i = 0; i < nvs->n; i++)
    if (nvs->names[i].len == len && memcmp(nvs->names[i].p, p, len) == 0)
      return 1;
  return 0;
}

static int bytes_cmp(const char *a, size_t al, const char *b, size_t bl) {
  int c = memcmp(a, b, al < bl ? al : bl);
  if (c)
    return c;
  return al < bl ? -1 : al > bl;
}

static netstash_error form_encode(const char *p, size_t len, ns_buf *out) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i;
  netstash_error rv = NETSTASH_OK;
  for (i = 0; i < len && rv == NETSTASH_OK; i++) {
    unsigned char c = (unsigned char)p[i];
    if (ns_is_alpha(c) || ns_is_digit(c) || c == '*' || c == '-' || c == '.' || c == '_') {
      rv = ns_buf_append(out, &c, 1);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      rv = ns_buf_append(out, e, 3);
    }
  }
  return rv;
}

netstash_error ns_cache_nvs_canonical_query(const ns_mem *mem, const ns_cache_nvs *nvs,
                                            const char *query, size_t len, ns_buf *out) {
  ns_buf arena;
  qpair *pairs = NULL;
  size_t np = 0, i, j, pos = 0, bytes;
  const char *A;
  netstash_error rv = NETSTASH_OK;
  ns_buf_init(&arena, mem, (size_t)1 << 24);
  if (!ns_mul_size(NVS_MAX_PARAMS, sizeof(*pairs), &bytes))
    return NETSTASH_E_NOMEM;
  pairs = ns_malloc(mem, bytes);
  if (!pairs)
    return NETSTASH_E_NOMEM;
  /* URL standard, application/x-www-form-urlencoded parsing */
  while (pos < len) {
    size_t end = pos, eq;
    const char *seq;
    while (end < len && query[end] != '&')
      end++;
    seq = query + pos;
    if (end > pos) {
      qpair q;
      if (np == NVS_MAX_PARAMS) {
        rv = NETSTASH_E_TOO_LARGE;
        goto done;
      }
      for (eq = 0; eq < end - pos && seq[eq] != '='; eq++)
        ;
      q.noff = arena.len;
      if ((rv = form_decode(seq, eq, &arena)) != NETSTASH_OK)
        goto done;
      q.nlen = arena.len - q.noff;
      q.voff = arena.len;
      if (eq < end - pos &&
          (rv = form_decode(seq + eq + 1, end - pos - eq - 1, &arena)) != NETSTASH_OK)
        goto done;
      q.vlen = arena.len - q.voff;
      pairs[np++] = q;
    }
    pos = end + 1;
  }
  A = arena.data ? (const char *)arena.data : "";
  /* filter */
  for (i = 0, j = 0; i < np; i++) {
    const char *nm = A + pairs[i].noff;
    int listed = name_listed(nvs, nm, pairs[i].nlen);
    int keep = !nvs->present ? 1 : nvs->params_all ? listed : !listed;
    if (keep)
      pairs[j++] = pairs[i];
  }
  np = j;
  /* stable sort by name */
  if (nvs->present && nvs->key_order) {
    for (i = 1; i < np; i++) {
      qpair x = pairs[i];
      const char *xn = A + x.noff;
      for (j = i; j > 0 && bytes_cmp(A + pairs[j - 1].noff,
                                     pairs[j - 1].nlen, xn, x.nlen) > 0;
           j--)
        pairs[j] = pairs[j - 1];
      pairs[j] = x;
    }
  }
  for (i = 0; i < np && rv == NETSTASH_OK; i++) {
    if (i && (rv = ns_buf_append(out, "&", 1)) != NETSTASH_OK)
      break;
    if ((rv = form_encode(A + pairs[i].noff, pairs[i].nlen, out)) == NETSTASH_OK &&
        (rv = ns_buf_append(out, "=", 1)) == NETSTASH_OK)
      rv = form_encode(A + pairs[i].voff, pairs[i].vlen, out);
  }
done:
  ns_free(mem, pairs);
  ns_buf_free(&arena);
  return rv;
}

netstash_error ns_cache_nvs_equivalent(const ns_mem *mem, const ns_cache_nvs *nvs,
                                       const char *url_a, const char *url_b, int *equal) {
  norm_url a, b;
  ns_buf ba, bb, qa, qb;
  netstash_error rv;
  *equal = 0;
  if ((rv = norm_parse(url_a, &a)) != NETSTASH_OK)
    return rv;
  if ((rv = norm_parse(url_b, &b)) != NETSTASH_OK) {
    norm_free(&a);
    return rv;
  }
  ns_buf_init(&ba, mem, 1 << 20);
  ns_buf_init(&bb, mem, 1 << 20);
  ns_buf_init(&qa, mem, 1 << 20);
  ns_buf_init(&qb, mem, 1 << 20);
  if ((rv = norm_append(&a, 0, &ba)) != NETSTASH_OK ||
      (rv = norm_append(&b, 0, &bb)) != NETSTASH_OK)
    goto done;
  if (strcmp(ns_buf_str(&ba), ns_buf_str(&bb)) != 0)
    goto done;
  rv = ns_cache_nvs_canonical_query(mem, nvs, a.query ? a.query : "",
                                    a.query ? strlen(a.query) : 0, &qa);
  if (rv == NETSTASH_OK)
    rv = ns_cache_nvs_canonical_query(mem, nvs, b.query ? b.query : "",
                                      b.query ? strlen(b.query) : 0, &qb);
  if (rv == NETSTASH_E_TOO_LARGE) {
    rv = NETSTASH_OK; /* too many parameters: not equivalent */
    goto done;
  }
  if (rv != NETSTASH_OK)
    goto done;
  *equal = qa.len == qb.len && (qa.len == 0 || memcmp(qa.data, qb.data, qa.len) == 0);
done:
  ns_buf_free(&ba);
  ns_buf_free(&bb);
  ns_buf_free(&qa);
  ns_buf_free(&qb);
  norm_free(&a);
  norm_free(&b);
  return rv;
}
