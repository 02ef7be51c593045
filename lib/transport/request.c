#include "ns_setup.h"

#include <stdio.h>

#include "core/url.h"
#include "transport/fetch.h"

#define REQ_MEM ns_mem_default()

/* RFC 9110 5.1 token characters, for header names and methods. */
static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
    return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_token(const char *s) {
  if (!*s)
    return 0;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s))
      return 0;
  return 1;
}

/* RFC 9110 5.5: no CR, LF or NUL in a field value. */
static int is_field_value(const char *s) {
  for (; *s; s++)
    if (*s == '\r' || *s == '\n')
      return 0;
  return 1;
}

netstash_error netstash_request_new(netstash_request **out, const char *url) {
  netstash_request *r;
  netstash_error rv;
  if (!out || !url)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  r = ns_calloc(REQ_MEM, 1, sizeof(*r));
  if (!r)
    return NETSTASH_E_NOMEM;
  rv = ns_url_parse(REQ_MEM, url, &r->url, NULL, 0);
  if (rv != NETSTASH_OK) {
    ns_free(REQ_MEM, r);
    return rv;
  }
  atomic_init(&r->refs, 1);
  atomic_init(&r->frozen, 0);
  r->priority = NETSTASH_PRIORITY_MEDIUM;
  *out = r;
  return NETSTASH_OK;
}

void ns_request_ref(netstash_request *req) { atomic_fetch_add(&req->refs, 1); }

static void free_strv(char **v, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    ns_free(REQ_MEM, v[i]);
  ns_free(REQ_MEM, v);
}

void ns_request_clear_fields(netstash_request *r) {
  for (size_t i = 0; i < r->nheaders; i++)
    ns_free(REQ_MEM, r->headers[i]);
  r->nheaders = 0;
  r->has_accept_encoding = r->has_cookie_header = r->has_range = 0;
  ns_url_free(REQ_MEM, &r->top_level_site);
}

void netstash_request_del(netstash_request *r) {
  if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
    return;
  ns_url_free(REQ_MEM, &r->url);
  ns_url_free(REQ_MEM, &r->top_level_site);
  ns_url_free(REQ_MEM, &r->site_for_cookies);
  ns_url_free(REQ_MEM, &r->initiator);
  ns_free(REQ_MEM, r->jar);
  ns_free(REQ_MEM, r->method);
  free_strv(r->headers, r->nheaders);
  free_strv(r->resolve, r->nresolve);
  ns_free(REQ_MEM, r->body);
  ns_free(REQ_MEM, r);
}

#define CHECK_MUTABLE(r)                                                       \
  do {                                                                         \
    if (!(r))                                                                  \
      return NETSTASH_E_INVALID_ARGUMENT;                                      \
    if (atomic_load(&(r)->frozen))                                             \
      return NETSTASH_E_ILLEGAL_STATE;                                         \
  } while (0)

netstash_error netstash_request_set_method(netstash_request *r, const char *method) {
  char *m;
  CHECK_MUTABLE(r);
  if (!method || !is_token(method) || strlen(method) > 32)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!(m = ns_strdup(REQ_MEM, method)))
    return NETSTASH_E_NOMEM;
  ns_free(REQ_MEM, r->method);
  r->method = m;
  return NETSTASH_OK;
}

static netstash_error push_str(char ***v, size_t *n, size_t *cap, char *s) {
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 8, bytes;
    char **nv;
    if (!ns_mul_size(ncap, sizeof(char *), &bytes))
      return NETSTASH_E_NOMEM;
    nv = ns_realloc(REQ_MEM, *v, bytes);
    if (!nv)
      return NETSTASH_E_NOMEM;
    *v = nv;
    *cap = ncap;
  }
  (*v)[(*n)++] = s;
  return NETSTASH_OK;
}

netstash_error netstash_request_add_header(netstash_request *r, const char *name,
                                           const char *value) {
  size_t nl, vl, total;
  char *line;
  netstash_error rv;
  CHECK_MUTABLE(r);
  if (!name || !value || !is_token(name) || !is_field_value(value))
    return NETSTASH_E_INVALID_ARGUMENT;
  nl = strlen(name);
  vl = strlen(value);
  if (nl + vl > 16384)
    return NETSTASH_E_TOO_LARGE;
  total = nl + vl + 3;
  line = ns_malloc(REQ_MEM, total);
  if (!line)
    return NETSTASH_E_NOMEM;
  /* "Name:" alone tells libcurl to remove a header it would add; an empty
   * value is sent as "Name;" which libcurl turns into "Name:". */
  memcpy(line, name, nl);
  if (vl) {
    line[nl] = ':';
    line[nl + 1] = ' ';
    memcpy(line + nl + 2, value, vl + 1);
  } else {
    line[nl] = ';';
    line[nl + 1] = 0;
  }
  rv = push_str(&r->headers, &r->nheaders, &r->headers_cap, line);
  if (rv != NETSTASH_OK) {
    ns_free(REQ_MEM, line);
    return rv;
  }
  if (ns_ascii_casecmp(name, "accept-encoding") == 0)
    r->has_accept_encoding = 1;
  if (ns_ascii_casecmp(name, "range") == 0)
    r->has_range = 1;
  if (ns_ascii_casecmp(name, "cookie") == 0)
    r->has_cookie_header = 1;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_body(netstash_request *r, const uint8_t *data,
                                         size_t len) {
  uint8_t *copy;
  CHECK_MUTABLE(r);
  if (!data && len)
    return NETSTASH_E_INVALID_ARGUMENT;
  copy = ns_malloc(REQ_MEM, len);
  if (!copy)
    return NETSTASH_E_NOMEM;
  if (len)
    memcpy(copy, data, len);
  ns_free(REQ_MEM, r->body);
  r->body = copy;
  r->body_len = len;
  r->has_body = 1;
  r->body_cb = NULL;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_body_reader(netstash_request *r,
                                                netstash_body_read_cb cb,
                                                uint64_t total_len, void *ud) {
  CHECK_MUTABLE(r);
  if (!cb)
    return NETSTASH_E_INVALID_ARGUMENT;
  ns_free(REQ_MEM, r->body);
  r->body = NULL;
  r->body_len = 0;
  r->has_body = 1;
  r->body_cb = cb;
  r->body_ud = ud;
  r->body_total = total_len;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_priority(netstash_request *r, netstash_priority p) {
  CHECK_MUTABLE(r);
  if ((int)p < NETSTASH_PRIORITY_IDLE || p > NETSTASH_PRIORITY_HIGHEST)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->priority = p;
  r->priority_set = 1;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_http_version(netstash_request *r,
                                                 netstash_http_version v) {
  CHECK_MUTABLE(r);
  if ((int)v < NETSTASH_HTTP_ANY || v > NETSTASH_HTTP_3)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->http_version = v;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_timeout_ms(netstash_request *r, uint32_t ms) {
  CHECK_MUTABLE(r);
  r->timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_connect_timeout_ms(netstash_request *r, uint32_t ms) {
  CHECK_MUTABLE(r);
  r->connect_timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_idle_timeout_ms(netstash_request *r, uint32_t ms) {
  CHECK_MUTABLE(r);
  r->idle_timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_raw_body(netstash_request *r, int raw) {
  CHECK_MUTABLE(r);
  r->raw = raw ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_max_body(netstash_request *r, uint64_t bytes) {
  CHECK_MUTABLE(r);
  if (!bytes)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->max_body = bytes;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_follow_redirects(netstash_request *r, uint32_t max) {
  CHECK_MUTABLE(r);
  if (max > 64)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->follow = max;
  return NETSTASH_OK;
}

netstash_error netstash_request_add_resolve(netstash_request *r, const char *entry) {
  const char *c1, *c2;
  char *copy;
  netstash_error rv;
  CHECK_MUTABLE(r);
  /* HOST:PORT:ADDR[,ADDR...]; IPv6 addresses in brackets. */
  if (!entry || !(c1 = strchr(entry, ':')) || c1 == entry ||
      !(c2 = strchr(c1 + 1, ':')) || c2 == c1 + 1 || !c2[1])
    return NETSTASH_E_INVALID_ARGUMENT;
  for (const char *p = c1 + 1; p < c2; p++)
    if (*p < '0' || *p > '9')
      return NETSTASH_E_INVALID_ARGUMENT;
  if (!(copy = ns_strdup(REQ_MEM, entry)))
    return NETSTASH_E_NOMEM;
  rv = push_str(&r->resolve, &r->nresolve, &r->resolve_cap, copy);
  if (rv != NETSTASH_OK)
    ns_free(REQ_MEM, copy);
  return rv;
}

netstash_error netstash_request_set_collect_body(netstash_request *r, uint64_t max) {
  CHECK_MUTABLE(r);
  if (!max)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->collect = 1;
  r->collect_max = max;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_cache_mode(netstash_request *r, netstash_cache_mode mode) {
  CHECK_MUTABLE(r);
  if ((int)mode < NETSTASH_CACHE_DEFAULT || mode > NETSTASH_CACHE_SKIP_VALIDATION)
    return NETSTASH_E_INVALID_ARGUMENT;
  r->cache_mode = mode;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_top_level_site(netstash_request *r, const char *url) {
  ns_url u;
  netstash_error rv;
  CHECK_MUTABLE(r);
  if (!url)
    return NETSTASH_E_INVALID_ARGUMENT;
  rv = ns_url_parse(REQ_MEM, url, &u, NULL, 0);
  if (rv != NETSTASH_OK)
    return rv;
  ns_url_free(REQ_MEM, &r->top_level_site);
  r->top_level_site = u;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_cookie_jar(netstash_request *r, const char *name) {
  char *c = NULL;
  CHECK_MUTABLE(r);
  if (name && (!*name || strlen(name) > 64))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (name && !(c = ns_strdup(REQ_MEM, name)))
    return NETSTASH_E_NOMEM;
  ns_free(REQ_MEM, r->jar);
  r->jar = c;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_cookies(netstash_request *r, int enable) {
  CHECK_MUTABLE(r);
  r->no_cookies = !enable;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_site_for_cookies(netstash_request *r, const char *url,
                                                     int top_level_navigation) {
  ns_url u;
  netstash_error rv;
  CHECK_MUTABLE(r);
  memset(&u, 0, sizeof(u));
  if (url && (rv = ns_url_parse(REQ_MEM, url, &u, NULL, 0)) != NETSTASH_OK)
    return rv;
  ns_url_free(REQ_MEM, &r->site_for_cookies);
  r->site_for_cookies = u;
  r->sfc_set = 1;
  r->top_level_navigation = top_level_navigation ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_initiator(netstash_request *r, const char *origin) {
  ns_url u;
  netstash_error rv;
  CHECK_MUTABLE(r);
  memset(&u, 0, sizeof(u));
  if (origin && (rv = ns_url_parse(REQ_MEM, origin, &u, NULL, 0)) != NETSTASH_OK)
    return rv;
  ns_url_free(REQ_MEM, &r->initiator);
  r->initiator = u;
  return NETSTASH_OK;
}

netstash_error ns_request_clone(const netstash_request *src, netstash_request **out) {
  netstash_request *r;
  netstash_error rv;
  size_t i;
  *out = NULL;
  rv = netstash_request_new(&r, src->url.url);
  if (rv != NETSTASH_OK)
    return rv;
  for (i = 0; rv == NETSTASH_OK && i < src->nheaders; i++) {
    char *c = ns_strdup(REQ_MEM, src->headers[i]);
    rv = c ? push_str(&r->headers, &r->nheaders, &r->headers_cap, c) : NETSTASH_E_NOMEM;
    if (rv != NETSTASH_OK)
      ns_free(REQ_MEM, c);
  }
  for (i = 0; rv == NETSTASH_OK && i < src->nresolve; i++) {
    char *c = ns_strdup(REQ_MEM, src->resolve[i]);
    rv = c ? push_str(&r->resolve, &r->nresolve, &r->resolve_cap, c) : NETSTASH_E_NOMEM;
    if (rv != NETSTASH_OK)
      ns_free(REQ_MEM, c);
  }
  if (rv == NETSTASH_OK && src->top_level_site.url)
    rv = netstash_request_set_top_level_site(r, src->top_level_site.url);
  if (rv == NETSTASH_OK && src->method)
    rv = netstash_request_set_method(r, src->method);
  if (rv != NETSTASH_OK) {
    netstash_request_del(r);
    return rv;
  }
  if (rv == NETSTASH_OK && src->jar)
    rv = netstash_request_set_cookie_jar(r, src->jar);
  if (rv == NETSTASH_OK && src->sfc_set)
    rv = netstash_request_set_site_for_cookies(r, src->site_for_cookies.url,
                                               src->top_level_navigation);
  if (rv == NETSTASH_OK && src->initiator.url)
    rv = netstash_request_set_initiator(r, src->initiator.url);
  if (rv != NETSTASH_OK) {
    netstash_request_del(r);
    return rv;
  }
  r->no_cookies = src->no_cookies;
  r->has_cookie_header = src->has_cookie_header;
  r->has_accept_encoding = src->has_accept_encoding;
  r->has_range = src->has_range;
  r->http_version = src->http_version;
  r->priority = src->priority;
  r->timeout_ms = src->timeout_ms ? src->timeout_ms : 30000;
  r->connect_timeout_ms = src->connect_timeout_ms;
  *out = r;
  return NETSTASH_OK;
}

const char *ns_request_accept_encoding(const netstash_request *req) {
  /* as Chromium: a range of coded bytes cannot be decoded alone, so a range
   * request asks for the identity coding */
  return req->has_range ? "identity" : "br, gzip, zstd";
}

netstash_error ns_request_cache_fields(const netstash_request *req, ns_headers *out) {
  netstash_error rv = NETSTASH_OK;
  for (size_t i = 0; rv == NETSTASH_OK && i < req->nheaders; i++) {
    const char *l = req->headers[i];
    size_t n = strlen(l);
    if (n && l[n - 1] == ';')
      continue; /* "Name;" = empty value: nothing to match on */
    rv = ns_headers_add_line(out, l, n);
  }
  if (rv == NETSTASH_OK && !req->has_accept_encoding)
    rv = ns_headers_add_str(out, "accept-encoding", ns_request_accept_encoding(req));
  return rv;
}
