/*
 * manifest.c — preload manifest parsing and validation (see manifest.h and
 * manifests/schema/manifest.schema.json).
 */
#include "ns_setup.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "core/reader.h"
#include "core/url.h"
#include "preload/manifest.h"
#include "preload/sign.h"

typedef struct pctx {
  const ns_mem *mem;
  ns_manifest *m;
  ns_manifest_diags *diags;
  netstash_error first; /* code of the first violation */
  int nomem;
} pctx;

static void report(pctx *c, netstash_error code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(pctx *c, netstash_error code, const char *path, const char *fmt, ...) {
  va_list ap;
  if (c->first == NETSTASH_OK)
    c->first = code;
  if (!c->diags)
    return;
  if (c->diags->n >= NS_MANIFEST_MAX_DIAGS) {
    c->diags->dropped++;
    return;
  }
  {
    ns_manifest_diag *d = &c->diags->d[c->diags->n++];
    int n;
    d->code = code;
    snprintf(d->path, sizeof(d->path), "%s", path);
    n = snprintf(d->msg, sizeof(d->msg), "%s: ", *path ? path : "(root)");
    if (n < 0 || (size_t)n >= sizeof(d->msg))
      return;
    va_start(ap, fmt);
    vsnprintf(d->msg + n, sizeof(d->msg) - (size_t)n, fmt, ap);
    va_end(ap);
  }
}

#define INVALID(c, path, ...) report((c), NETSTASH_E_MANIFEST_INVALID, (path), __VA_ARGS__)

static const char *type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "an array";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
    return "an integer";
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  default:
    return "null";
  }
}

static void join(char *out, size_t n, const char *base, const char *key) {
  snprintf(out, n, "%s%s%s", base, *base ? "." : "", key);
}

static void join_idx(char *out, size_t n, const char *base, size_t i) {
  char idx[32];
  size_t bl = strlen(base), il;
  snprintf(idx, sizeof(idx), "[%zu]", i);
  il = strlen(idx);
  if (bl + il + 1 > n)
    bl = n > il ? n - il - 1 : 0;
  memcpy(out, base, bl);
  memcpy(out + bl, idx, NS_MIN(il + 1, n - bl));
  out[n - 1] = '\0';
}

/* Reports every member of obj not in allowed (NULL-terminated). */
static void check_keys(pctx *c, const char *path, json_t *obj, const char *const *allowed) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    size_t i;
    int ok = 0;
    for (i = 0; allowed[i]; i++)
      if (!strcmp(key, allowed[i]))
        ok = 1;
    if (!ok) {
      char p[200];
      join(p, sizeof(p), path, key);
      INVALID(c, p, "unknown field (not in the manifest format)");
    }
  }
}

/* The member if present and of the wanted type; reports otherwise. */
static json_t *get(pctx *c, const char *path, json_t *obj, const char *key, json_type type,
                   int required) {
  json_t *v = json_object_get(obj, key);
  char p[200];
  join(p, sizeof(p), path, key);
  if (!v) {
    if (required)
      INVALID(c, p, "required field missing");
    return NULL;
  }
  if (json_typeof(v) != type && !(type == JSON_TRUE && json_is_boolean(v))) {
    INVALID(c, p, "must be %s, not %s",
            type == JSON_OBJECT    ? "an object"
            : type == JSON_ARRAY   ? "an array"
            : type == JSON_STRING  ? "a string"
            : type == JSON_INTEGER ? "an integer"
                                   : "a boolean",
            type_name(v));
    return NULL;
  }
  return v;
}

/* An https URL, normalised into *out (allocated). 0 ok, -1 reported. */
static int https_url(pctx *c, const char *path, const char *s, ns_url *u) {
  char detail[160] = "";
  netstash_error e;
  memset(u, 0, sizeof(*u));
  e = ns_url_parse(c->mem, s, u, detail, sizeof(detail));
  if (e == NETSTASH_E_NOMEM) {
    c->nomem = 1;
    return -1;
  }
  if (e != NETSTASH_OK) {
    INVALID(c, path, "not a valid URL \"%.80s\"%s%s", s, *detail ? ": " : "", detail);
    return -1;
  }
  if (strcmp(u->scheme, "https") != 0) {
    INVALID(c, path, "not an https URL \"%.80s\" (manifests preload https only)", s);
    ns_url_free(c->mem, u);
    return -1;
  }
  if (ns_url_canonical_authority(u->url) != 0) {
    INVALID(c, path, "URL \"%.80s\" carries credentials", s);
    ns_url_free(c->mem, u);
    return -1;
  }
  if (strchr(u->url, '#')) {
    INVALID(c, path, "URL \"%.80s\" has a fragment", s);
    ns_url_free(c->mem, u);
    return -1;
  }
  return 0;
}

/* The path+query part of a normalised absolute URL. */
static const char *url_path(const char *url) {
  const char *p = strstr(url, "://");
  p = p ? strchr(p + 3, '/') : NULL;
  return p ? p : "/";
}

static int in_scope(const ns_manifest *m, const ns_url *u) {
  size_t i;
  for (i = 0; i < m->n_scope; i++) {
    const char *sp = url_path(m->scope[i]), *up = url_path(u->url);
    size_t origin_len = (size_t)(sp - m->scope[i]), plen = strlen(sp);
    if (strncmp(m->scope[i], u->url, origin_len) != 0 ||
        (u->url[origin_len] != '/' && u->url[origin_len] != '\0'))
      continue;
    if (strncmp(sp, up, plen) == 0 &&
        (sp[plen - 1] == '/' || up[plen] == '\0' || up[plen] == '/' || up[plen] == '?'))
      return 1;
  }
  return 0;
}

static char *steal_url(ns_url *u) {
  char *s = u->url;
  u->url = NULL;
  return s;
}

/* ---- RFC 3339 §5.6 date-time */
static int digits(const char *s, size_t len, size_t at, size_t n, int *out) {
  size_t i;
  int v = 0;
  if (at + n > len)
    return 0;
  for (i = 0; i < n; i++) {
    if (!ns_is_digit((unsigned char)s[at + i]))
      return 0;
    v = v * 10 + (s[at + i] - '0');
  }
  *out = v;
  return 1;
}

int ns_rfc3339_parse(const char *s, size_t len, int64_t *out_s) {
  static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int Y, M, D, h, mi, sec, oh = 0, om = 0, sign = 0;
  size_t at = 19;
  if (!digits(s, len, 0, 4, &Y) || len < 20 || s[4] != '-' || !digits(s, len, 5, 2, &M) ||
      s[7] != '-' || !digits(s, len, 8, 2, &D) || (s[10] != 'T' && s[10] != 't') ||
      !digits(s, len, 11, 2, &h) || s[13] != ':' || !digits(s, len, 14, 2, &mi) || s[16] != ':' ||
      !digits(s, len, 17, 2, &sec))
    return -1;
  if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || mi > 59 || sec > 60)
    return -1;
  if (M == 2 && D == 29 && !((Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0))
    return -1;
  if (s[at] == '.') {
    at++;
    if (at >= len || !ns_is_digit((unsigned char)s[at]))
      return -1;
    while (at < len && ns_is_digit((unsigned char)s[at]))
      at++;
  }
  if (at < len && (s[at] == 'Z' || s[at] == 'z')) {
    at++;
  } else if (at < len && (s[at] == '+' || s[at] == '-')) {
    sign = s[at] == '-' ? -1 : 1;
    if (!digits(s, len, at + 1, 2, &oh) || at + 3 >= len || s[at + 3] != ':' ||
        !digits(s, len, at + 4, 2, &om) || oh > 23 || om > 59)
      return -1;
    at += 6;
  } else {
    return -1;
  }
  if (at != len)
    return -1;
  *out_s =
      ns_days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + sec - sign * (oh * 3600 + om * 60);
  return 0;
}

/* ---- integrity: SRI metadata (W3C SRI §3.1), sha256/384/512, no options */
static void parse_integrity(pctx *c, const char *path, const char *s, ns_manifest_resource *r) {
  ns_reader rd;
  size_t n = 0, cap = 0;
  ns_manifest_hash *hs = NULL;
  ns_reader_init(&rd, s, strlen(s));
  for (;;) {
    ns_span tok;
    const char *dash;
    ns_sri_alg alg;
    size_t alen, dlen;
    uint8_t dig[67];
    while (!ns_reader_eof(&rd) && ns_is_ows(ns_reader_peek(&rd)))
      rd.pos++;
    if (ns_reader_eof(&rd))
      break;
    tok.p = rd.p + rd.pos;
    while (!ns_reader_eof(&rd) && !ns_is_ows(ns_reader_peek(&rd)))
      rd.pos++;
    tok.len = (size_t)(rd.p + rd.pos - tok.p);
    dash = memchr(tok.p, '-', tok.len);
    alen = dash ? (size_t)(dash - tok.p) : tok.len;
    if (alen == 6 && !memcmp(tok.p, "sha256", 6))
      alg = NS_SRI_SHA256;
    else if (alen == 6 && !memcmp(tok.p, "sha384", 6))
      alg = NS_SRI_SHA384;
    else if (alen == 6 && !memcmp(tok.p, "sha512", 6))
      alg = NS_SRI_SHA512;
    else {
      INVALID(c, path, "unknown algorithm \"%.*s\" (sha256, sha384 or sha512)",
              (int)NS_MIN(alen, (size_t)32), tok.p);
      continue;
    }
    if (!dash) {
      INVALID(c, path, "\"%.*s\" has no digest (ALG-BASE64)", (int)NS_MIN(tok.len, (size_t)32),
              tok.p);
      continue;
    }
    if (memchr(dash, '?', tok.len - alen)) {
      INVALID(c, path, "integrity options (\"?...\") are not supported");
      continue;
    }
    if (ns_b64_decode(dash + 1, tok.len - alen - 1, dig, sizeof(dig), &dlen) != 0 ||
        dlen != (size_t)alg) {
      INVALID(c, path, "%.*s digest is not %d bytes of base64", (int)alen, tok.p, (int)alg);
      continue;
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 2, bytes;
      ns_manifest_hash *nh;
      if (!ns_mul_size(ncap, sizeof(*hs), &bytes) || !(nh = ns_realloc(c->mem, hs, bytes))) {
        c->nomem = 1;
        break;
      }
      hs = nh;
      cap = ncap;
    }
    hs[n].alg = alg;
    memcpy(hs[n].digest, dig, (size_t)alg);
    n++;
  }
  if (n == 0 && !c->nomem && ns_reader_left(&rd) == 0 && strspn(s, " \t") == strlen(s))
    INVALID(c, path, "no hash (expected e.g. \"sha256-BASE64\")");
  r->hashes = hs;
  r->n_hashes = n;
}

/* A version range: space-separated comparators OP VERSION, OP one of
 * >= > <= < = and VERSION 1 to 4 dot-separated numbers ("=1.2", ">=1 <2"). */
static int valid_range(const char *s) {
  int n = 0;
  while (*s) {
    int parts = 0;
    if (*s == ' ') {
      s++;
      continue;
    }
    if (*s == '>' || *s == '<')
      s += s[1] == '=' ? 2 : 1;
    else if (*s == '=')
      s++;
    else
      return 0;
    for (;;) {
      if (!ns_is_digit((unsigned char)*s))
        return 0;
      while (ns_is_digit((unsigned char)*s))
        s++;
      if (++parts > 4)
        return 0;
      if (*s != '.')
        break;
      s++;
    }
    if (*s && *s != ' ')
      return 0;
    n++;
  }
  return n > 0;
}

static int valid_id(const char *s) {
  size_t n = 0;
  for (; *s; s++, n++)
    if (!(ns_is_alpha((unsigned char)*s) || ns_is_digit((unsigned char)*s) || *s == '.' ||
          *s == '_' || *s == '-'))
      return 0;
  return n >= 1 && n <= 128;
}

static void parse_resource(pctx *c, const char *path, json_t *o, ns_manifest_resource *r) {
  static const char *const keys[] = {"url",     "integrity", "size",  "content_type",
                                     "headers", "priority",  "query", NULL};
  char p[200];
  json_t *v;
  ns_url u;
  if (!json_is_object(o)) {
    INVALID(c, path, "must be an object, not %s", type_name(o));
    return;
  }
  check_keys(c, path, o, keys);
  r->priority = NS_MANIFEST_PRIO_HIGH;
  if ((v = get(c, path, o, "url", JSON_STRING, 1))) {
    join(p, sizeof(p), path, "url");
    if (https_url(c, p, json_string_value(v), &u) == 0) {
      if (!in_scope(c->m, &u))
        INVALID(c, p, "\"%.80s\" is outside the manifest's scope", json_string_value(v));
      r->url = steal_url(&u);
      ns_url_free(c->mem, &u);
    }
  }
  if ((v = get(c, path, o, "integrity", JSON_STRING, 1))) {
    join(p, sizeof(p), path, "integrity");
    parse_integrity(c, p, json_string_value(v), r);
  }
  if ((v = get(c, path, o, "size", JSON_INTEGER, 1))) {
    if (json_integer_value(v) < 0) {
      join(p, sizeof(p), path, "size");
      INVALID(c, p, "must not be negative");
    } else {
      r->size = (uint64_t)json_integer_value(v);
    }
  }
  if ((v = get(c, path, o, "content_type", JSON_STRING, 1)))
    r->content_type = json_string_value(v);
  if ((v = get(c, path, o, "headers", JSON_OBJECT, 0))) {
    const char *name;
    json_t *hv;
    size_t i = 0;
    r->headers = ns_calloc(c->mem, json_object_size(v), sizeof(*r->headers));
    if (!r->headers) {
      c->nomem = 1;
      return;
    }
    json_object_foreach(v, name, hv) {
      const char *q;
      int ok = *name != '\0';
      snprintf(p, sizeof(p), "%s.headers.%s", path, name);
      for (q = name; *q; q++)
        if (!ns_is_tchar((unsigned char)*q))
          ok = 0;
      if (!ok) {
        INVALID(c, p, "not a valid header field name (RFC 9110 §5.1)");
        continue;
      }
      if (!json_is_string(hv)) {
        INVALID(c, p, "must be a string, not %s", type_name(hv));
        continue;
      }
      for (q = json_string_value(hv); *q; q++)
        if (!ns_is_field_char((unsigned char)*q))
          ok = 0;
      if (!ok || json_string_length(hv) != strlen(json_string_value(hv))) {
        INVALID(c, p, "not a valid header field value (control characters)");
        continue;
      }
      r->headers[i].name = name;
      r->headers[i].value = json_string_value(hv);
      i++;
    }
    r->n_headers = i;
  }
  if ((v = get(c, path, o, "priority", JSON_STRING, 0))) {
    const char *s = json_string_value(v);
    if (!strcmp(s, "critical"))
      r->priority = NS_MANIFEST_PRIO_CRITICAL;
    else if (!strcmp(s, "high"))
      r->priority = NS_MANIFEST_PRIO_HIGH;
    else if (!strcmp(s, "low"))
      r->priority = NS_MANIFEST_PRIO_LOW;
    else {
      join(p, sizeof(p), path, "priority");
      INVALID(c, p, "unknown priority \"%.40s\" (critical, high or low)", s);
    }
  }
  if ((v = json_object_get(o, "query"))) {
    join(p, sizeof(p), path, "query");
    if (json_is_string(v)) {
      if (strcmp(json_string_value(v), "exact") != 0)
        INVALID(c, p, "must be \"exact\" or {\"ignore\": [PARAM, ...]}");
    } else if (json_is_object(v)) {
      static const char *const qkeys[] = {"ignore", NULL};
      json_t *ig;
      check_keys(c, p, v, qkeys);
      if ((ig = get(c, p, v, "ignore", JSON_ARRAY, 1))) {
        size_t i;
        json_t *e;
        char pe[256];
        r->query_ignore = ns_calloc(c->mem, json_array_size(ig), sizeof(char *));
        if (!r->query_ignore) {
          c->nomem = 1;
          return;
        }
        if (json_array_size(ig) == 0) {
          join(pe, sizeof(pe), p, "ignore");
          INVALID(c, pe, "must list at least one parameter");
        }
        json_array_foreach(ig, i, e) {
          {
            char ip[230];
            join(ip, sizeof(ip), p, "ignore");
            join_idx(pe, sizeof(pe), ip, i);
          }
          if (!json_is_string(e) || json_string_length(e) == 0)
            INVALID(c, pe, "must be a non-empty string");
          else
            r->query_ignore[r->n_query_ignore++] = json_string_value(e);
        }
      }
    } else {
      INVALID(c, p, "must be \"exact\" or {\"ignore\": [PARAM, ...]}, not %s", type_name(v));
    }
  }
}

static int cmp_res_url(const void *a, const void *b) {
  const ns_manifest_resource *const *x = a, *const *y = b;
  return strcmp((*x)->url, (*y)->url);
}

static void check_duplicates(pctx *c) {
  ns_manifest *m = c->m;
  ns_manifest_resource **v;
  size_t i, n = 0;
  if (m->n_resources < 2)
    return;
  if (!(v = ns_calloc(c->mem, m->n_resources, sizeof(*v)))) {
    c->nomem = 1;
    return;
  }
  for (i = 0; i < m->n_resources; i++)
    if (m->resources[i].url)
      v[n++] = &m->resources[i];
  qsort(v, n, sizeof(*v), cmp_res_url);
  for (i = 1; i < n; i++)
    if (!strcmp(v[i - 1]->url, v[i]->url)) {
      char p[64];
      const ns_manifest_resource *later = v[i] > v[i - 1] ? v[i] : v[i - 1];
      const ns_manifest_resource *earlier = v[i] > v[i - 1] ? v[i - 1] : v[i];
      snprintf(p, sizeof(p), "resources[%zu].url", (size_t)(later - m->resources));
      INVALID(c, p, "duplicate URL \"%.80s\" (also resources[%zu])", later->url,
              (size_t)(earlier - m->resources));
    }
  ns_free(c->mem, v);
}

/* An array of https URLs into a normalised list. */
static void url_list(pctx *c, json_t *root, const char *key, int need_scope, char ***out,
                     size_t *n_out) {
  json_t *a = get(c, "", root, key, JSON_ARRAY, 1), *e;
  size_t i;
  char p[200];
  if (!a)
    return;
  if (json_array_size(a) == 0) {
    INVALID(c, key, "must not be empty");
    return;
  }
  if (!(*out = ns_calloc(c->mem, json_array_size(a), sizeof(char *)))) {
    c->nomem = 1;
    return;
  }
  json_array_foreach(a, i, e) {
    ns_url u;
    join_idx(p, sizeof(p), key, i);
    if (!json_is_string(e)) {
      INVALID(c, p, "must be a string, not %s", type_name(e));
      continue;
    }
    if (https_url(c, p, json_string_value(e), &u) != 0)
      continue;
    if (!need_scope && strchr(u.url, '?'))
      INVALID(c, p, "a scope has no query");
    else if (need_scope && !in_scope(c->m, &u))
      INVALID(c, p, "\"%.80s\" is outside the manifest's scope", json_string_value(e));
    (*out)[(*n_out)++] = steal_url(&u);
    ns_url_free(c->mem, &u);
  }
}

static void parse_rollout(pctx *c, json_t *o) {
  static const char *const keys[] = {"app_version", "kernel_version", "percent",
                                     "kill_switch", "pinned_version", NULL};
  ns_manifest_rollout *r = &c->m->rollout;
  json_t *v;
  check_keys(c, "rollout", o, keys);
  if ((v = get(c, "rollout", o, "app_version", JSON_STRING, 0))) {
    if (!valid_range(json_string_value(v)))
      INVALID(c, "rollout.app_version", "not a version range (e.g. \">=2.4 <3\")");
    r->app_version = json_string_value(v);
  }
  if ((v = get(c, "rollout", o, "kernel_version", JSON_STRING, 0))) {
    if (!valid_range(json_string_value(v)))
      INVALID(c, "rollout.kernel_version", "not a version range (e.g. \">=120.0\")");
    r->kernel_version = json_string_value(v);
  }
  if ((v = get(c, "rollout", o, "percent", JSON_INTEGER, 0))) {
    if (json_integer_value(v) < 0 || json_integer_value(v) > 100)
      INVALID(c, "rollout.percent", "must be 0..100");
    else
      r->percent = (int)json_integer_value(v);
  }
  if ((v = get(c, "rollout", o, "kill_switch", JSON_TRUE, 0)))
    r->kill_switch = json_is_true(v);
  if ((v = get(c, "rollout", o, "pinned_version", JSON_INTEGER, 0))) {
    if (json_integer_value(v) < 1 || (uint64_t)json_integer_value(v) > c->m->version)
      INVALID(c, "rollout.pinned_version", "must be 1..version");
    else
      r->pinned_version = (uint64_t)json_integer_value(v);
  }
}

static void parse_root(pctx *c, json_t *root, const ns_manifest_check *check) {
  static const char *const keys[] = {"id",        "version", "scope",    "entry_pages", "expires",
                                     "resources", "budgets", "fallback", "rollout",     NULL};
  ns_manifest *m = c->m;
  json_t *v, *e;
  size_t i;
  check_keys(c, "", root, keys);
  if ((v = get(c, "", root, "id", JSON_STRING, 1))) {
    if (!valid_id(json_string_value(v)))
      INVALID(c, "id", "must be 1 to 128 of A-Z a-z 0-9 . _ -");
    m->id = json_string_value(v);
  }
  if ((v = get(c, "", root, "version", JSON_INTEGER, 1))) {
    if (json_integer_value(v) < 1)
      INVALID(c, "version", "must be a positive integer");
    else
      m->version = (uint64_t)json_integer_value(v);
  }
  url_list(c, root, "scope", 0, &m->scope, &m->n_scope);
  if ((v = get(c, "", root, "expires", JSON_STRING, 1)) &&
      ns_rfc3339_parse(json_string_value(v), json_string_length(v), &m->expires_s) != 0)
    INVALID(c, "expires", "not an RFC 3339 date-time (\"2026-12-31T23:59:59Z\")");
  if ((v = get(c, "", root, "resources", JSON_ARRAY, 1))) {
    if (json_array_size(v) == 0)
      INVALID(c, "resources", "must not be empty");
    m->resources = ns_calloc(c->mem, json_array_size(v), sizeof(*m->resources));
    if (!m->resources) {
      c->nomem = 1;
      return;
    }
    m->n_resources = json_array_size(v);
    json_array_foreach(v, i, e) {
      char p[64];
      join_idx(p, sizeof(p), "resources", i);
      parse_resource(c, p, e, &m->resources[i]);
      if (c->nomem)
        return;
      if (__builtin_add_overflow(m->total_bytes, m->resources[i].size, &m->total_bytes))
        m->total_bytes = UINT64_MAX;
    }
    check_duplicates(c);
  }
  url_list(c, root, "entry_pages", 1, &m->entry_pages, &m->n_entry_pages);
  for (i = 0; i < m->n_entry_pages; i++) {
    size_t k;
    int found = 0;
    for (k = 0; k < m->n_resources; k++)
      if (m->resources[k].url && !strcmp(m->resources[k].url, m->entry_pages[i]))
        found = 1;
    if (!found) {
      char p[64];
      join_idx(p, sizeof(p), "entry_pages", i);
      INVALID(c, p, "\"%.80s\" is not listed in resources", m->entry_pages[i]);
    }
  }
  if ((v = get(c, "", root, "budgets", JSON_OBJECT, 0))) {
    static const char *const bkeys[] = {"max_bytes", "network", NULL};
    check_keys(c, "budgets", v, bkeys);
    if ((e = get(c, "budgets", v, "max_bytes", JSON_INTEGER, 0))) {
      if (json_integer_value(e) < 1)
        INVALID(c, "budgets.max_bytes", "must be a positive integer");
      else
        m->max_bytes = (uint64_t)json_integer_value(e);
    }
    if ((e = get(c, "budgets", v, "network", JSON_STRING, 0))) {
      if (!strcmp(json_string_value(e), "unmetered"))
        m->network = NS_MANIFEST_NET_UNMETERED;
      else if (strcmp(json_string_value(e), "any") != 0)
        INVALID(c, "budgets.network", "unknown network \"%.40s\" (any or unmetered)",
                json_string_value(e));
    }
  }
  if ((v = get(c, "", root, "fallback", JSON_STRING, 0))) {
    ns_url u;
    if (https_url(c, "fallback", json_string_value(v), &u) == 0) {
      m->fallback = steal_url(&u);
      ns_url_free(c->mem, &u);
    }
  }
  m->rollout.percent = 100;
  if ((v = get(c, "", root, "rollout", JSON_OBJECT, 0)))
    parse_rollout(c, v);

  /* policy checks, after the structure */
  if (m->max_bytes && m->total_bytes > m->max_bytes)
    report(c, NETSTASH_E_TOO_LARGE, "budgets.max_bytes",
           "resources total %llu bytes, over the budget of %llu",
           (unsigned long long)m->total_bytes, (unsigned long long)m->max_bytes);
  if (m->expires_s && m->expires_s <= check->now_s)
    report(c, NETSTASH_E_MANIFEST_EXPIRED, "expires", "the manifest expired (%s)",
           json_string_value(json_object_get(root, "expires")));
  if (m->version && check->installed_version && m->version <= check->installed_version)
    report(c, NETSTASH_E_DOWNGRADE, "version", "%llu is not newer than the installed version %llu",
           (unsigned long long)m->version, (unsigned long long)check->installed_version);
}

netstash_error ns_manifest_parse(const ns_mem *mem, const uint8_t *data, size_t len,
                                 const ns_manifest_check *check, ns_manifest **out,
                                 ns_manifest_diags *diags) {
  pctx c;
  json_error_t jerr;
  json_t *root = NULL;
  size_t max;
  netstash_error rv;

  if (!mem || (!data && len) || !check || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  memset(&c, 0, sizeof(c));
  c.mem = mem;
  c.diags = diags;
  if (diags) {
    diags->n = 0;
    diags->dropped = 0;
  }
  max = check->max_len ? check->max_len : NS_MANIFEST_MAX_LEN;
  if (len > max) {
    report(&c, NETSTASH_E_TOO_LARGE, "", "the manifest is %zu bytes, over the limit of %zu", len,
           max);
    return NETSTASH_E_TOO_LARGE;
  }
  root = json_loadb((const char *)(data ? data : (const uint8_t *)""), len, JSON_REJECT_DUPLICATES,
                    &jerr);
  if (!root) {
    report(&c, NETSTASH_E_MANIFEST_INVALID, "", "not valid JSON: %s (line %d, column %d)",
           jerr.text, jerr.line, jerr.column);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  if (!json_is_object(root)) {
    report(&c, NETSTASH_E_MANIFEST_INVALID, "", "must be an object, not %s", type_name(root));
    json_decref(root);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  if (!(c.m = ns_calloc(mem, 1, sizeof(*c.m)))) {
    json_decref(root);
    return NETSTASH_E_NOMEM;
  }
  c.m->mem = mem;
  c.m->root = root;
  parse_root(&c, root, check);
  rv = c.nomem ? NETSTASH_E_NOMEM : c.first;
  if (rv != NETSTASH_OK) {
    ns_manifest_del(c.m);
    return rv;
  }
  *out = c.m;
  return NETSTASH_OK;
}

static void free_list(const ns_mem *mem, char **v, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    ns_free(mem, v[i]);
  ns_free(mem, v);
}

void ns_manifest_del(ns_manifest *m) {
  size_t i;
  if (!m)
    return;
  for (i = 0; i < m->n_resources; i++) {
    ns_free(m->mem, m->resources[i].url);
    ns_free(m->mem, m->resources[i].hashes);
    ns_free(m->mem, m->resources[i].headers);
    ns_free(m->mem, (void *)m->resources[i].query_ignore);
  }
  ns_free(m->mem, m->resources);
  free_list(m->mem, m->scope, m->n_scope);
  free_list(m->mem, m->entry_pages, m->n_entry_pages);
  ns_free(m->mem, m->fallback);
  json_decref(m->root);
  ns_free(m->mem, m);
}
