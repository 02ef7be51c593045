/*
 * make.c — manifests from build output and from Workbox precache manifests
 * (see make.h). The output is built with jansson, printed with two-space
 * indentation in a fixed field order, and linted with ns_manifest_parse
 * before it is returned.
 */
#include "ns_setup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "core/buf.h"
#include "core/reader.h"
#include "core/url.h"
#include "preload/make.h"
#include "preload/manifest.h"
#include "preload/sign.h"

#define PATH_BUF_MAX ((size_t)PATH_MAX * 4)
#define IO_CHUNK ((size_t)64 << 10)
/* URLs named in one error message. */
#define LIST_MAX 3

/* ------------------------------------------------------------ helpers */

static const struct {
  const char *ext;
  const char *type;
} content_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css"},
    {"js", "text/javascript"},
    {"mjs", "text/javascript"},
    {"json", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"txt", "text/plain; charset=utf-8"},
    {"xml", "application/xml"},
    {"wasm", "application/wasm"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"mp3", "audio/mpeg"},
    {"pdf", "application/pdf"},
};

/* The extension of the last path component ("" when none). */
static const char *extension(const char *path) {
  const char *name = strrchr(path, '/'), *dot;
  name = name ? name + 1 : path;
  dot = strrchr(name, '.');
  return dot && dot != name ? dot + 1 : "";
}

const char *ns_make_content_type(const char *name) {
  const char *ext = extension(name);
  size_t i;
  for (i = 0; i < NS_ARRAY_LEN(content_types); i++)
    if (!ns_ascii_casecmp(ext, content_types[i].ext))
      return content_types[i].type;
  return "application/octet-stream";
}

int ns_make_glob_match(const char *glob, const char *s) {
  const char *star = NULL, *resume = NULL;
  while (*s) {
    if (*glob == '*') {
      star = glob++;
      resume = s;
    } else if (*glob && (*glob == '?' || *glob == *s)) {
      glob++;
      s++;
    } else if (star) {
      glob = star + 1;
      s = ++resume;
    } else {
      return 0;
    }
  }
  while (*glob == '*')
    glob++;
  return *glob == '\0';
}

static int unreserved(unsigned char c) {
  return ns_is_alpha(c) || ns_is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

netstash_error ns_make_pct_encode(ns_buf *out, const char *path, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)path[i];
    netstash_error e;
    if (unreserved(c) || c == '/') {
      e = ns_buf_append(out, &path[i], 1);
    } else {
      char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
      e = ns_buf_append(out, esc, 3);
    }
    if (e != NETSTASH_OK)
      return e;
  }
  return NETSTASH_OK;
}

static int hexval(int c) {
  if (ns_is_digit(c))
    return c - '0';
  c = ns_ascii_lower((char)c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes s[0..len) into out. -1 on a malformed escape, an
 * escaped NUL or (*e set) a buffer error. */
static int pct_decode(ns_buf *out, const char *s, size_t len, netstash_error *e) {
  size_t i;
  *e = NETSTASH_OK;
  for (i = 0; i < len; i++) {
    char c = s[i];
    if (c == '%') {
      int hi, lo;
      if (len - i < 3)
        return -1;
      hi = hexval((unsigned char)s[i + 1]);
      lo = hexval((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return -1;
      c = (char)(hi << 4 | lo);
      i += 2;
    }
    if ((*e = ns_buf_append(out, &c, 1)) != NETSTASH_OK)
      return -1;
  }
  return 0;
}

static void buf_truncate(ns_buf *b, size_t len) {
  b->len = len;
  if (b->data)
    b->data[len] = '\0';
}

static void base64(const uint8_t *in, size_t len, char *out) {
  EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* ------------------------------------------------------------ context */

typedef struct file_hash {
  uint64_t size;
  int64_t mtime; /* seconds since the epoch; 0: unknown */
  uint8_t sha256[32];
  uint8_t sha384[48];
  uint8_t sha512[64];
} file_hash;

typedef struct mk {
  const ns_mem *mem;
  const ns_make_opts *o;
  char *detail;
  size_t detail_len;
  char *base; /* normalised, ends in '/' */
  size_t base_len;
  char **entries; /* normalised entry pages */
  size_t n_entries;
  char **scopes; /* normalised extra scopes */
  size_t n_scopes;
  char *fallback;
  json_t *resources;
  uint8_t *io; /* IO_CHUNK bytes */
  EVP_MD_CTX *md[3];
  /* the walk */
  char root[PATH_MAX]; /* realpath of the directory read */
  size_t root_len;
  struct {
    dev_t dev;
    ino_t ino;
  } stack[NS_MAKE_MAX_DEPTH + 1];
  size_t depth;
} mk;

static void warnf(mk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void warnf(mk *k, const char *fmt, ...) {
  char msg[PATH_MAX + 256];
  va_list ap;
  if (!k->o->warn)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  k->o->warn(msg, k->o->user_data);
}

static void free_list(const ns_mem *mem, char **v, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    ns_free(mem, v[i]);
  ns_free(mem, v);
}

static void mk_free(mk *k) {
  size_t i;
  ns_free(k->mem, k->base);
  free_list(k->mem, k->entries, k->n_entries);
  free_list(k->mem, k->scopes, k->n_scopes);
  ns_free(k->mem, k->fallback);
  json_decref(k->resources);
  ns_free(k->mem, k->io);
  for (i = 0; i < NS_ARRAY_LEN(k->md); i++)
    EVP_MD_CTX_free(k->md[i]);
}

/* ref resolved against base (NULL: ref is absolute) into a normalised https
 * URL without credentials, fragment or non-ASCII bytes (*out allocated).
 * what names the option for the detail. */
static netstash_error https_url(mk *k, const char *what, const char *base, const char *ref,
                                int allow_query, char **out) {
  char why[160] = "";
  ns_url u;
  netstash_error e;
  const char *p;
  *out = NULL;
  e = base ? ns_url_resolve(k->mem, base, ref, &u, why, sizeof(why))
           : ns_url_parse(k->mem, ref, &u, why, sizeof(why));
  if (e == NETSTASH_E_NOMEM)
    return e;
  if (e != NETSTASH_OK) {
    ns_detailf(k->detail, k->detail_len, "%s \"%s\": not a valid URL", what, ref);
    return NETSTASH_E_INVALID_ARGUMENT;
  }
  e = NETSTASH_E_INVALID_ARGUMENT;
  if (strcmp(u.scheme, "https") != 0) {
    ns_detailf(k->detail, k->detail_len,
               "%s \"%s\": not an https URL (manifests preload https only)", what, ref);
    goto done;
  }
  if (ns_url_canonical_authority(u.url) != 0) {
    ns_detailf(k->detail, k->detail_len, "%s \"%s\": a URL with credentials", what, ref);
    goto done;
  }
  if (strchr(u.url, '#') || (!allow_query && strchr(u.url, '?'))) {
    ns_detailf(k->detail, k->detail_len, "%s \"%s\": %s", what, ref,
               allow_query ? "a URL with a fragment" : "has a query or fragment");
    goto done;
  }
  for (p = u.url; *p; p++)
    if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
      ns_detailf(k->detail, k->detail_len, "%s \"%s\": percent-encode its non-ASCII characters",
                 what, ref);
      goto done;
    }
  *out = u.url;
  u.url = NULL;
  e = NETSTASH_OK;
done:
  ns_url_free(k->mem, &u);
  return e;
}

static int valid_id(const char *s) {
  size_t n = 0;
  for (; *s; s++, n++)
    if (!(ns_is_alpha((unsigned char)*s) || ns_is_digit((unsigned char)*s) || *s == '.' ||
          *s == '_' || *s == '-'))
      return 0;
  return n >= 1 && n <= 128;
}

static int valid_param(const char *s) {
  if (!*s)
    return 0;
  for (; *s; s++)
    if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e || *s == '&' || *s == '=' || *s == '#')
      return 0;
  return 1;
}

#define BADOPT(...)                                                                                \
  do {                                                                                             \
    ns_detailf(k->detail, k->detail_len, __VA_ARGS__);                                             \
    return NETSTASH_E_INVALID_ARGUMENT;                                                            \
  } while (0)

/* Checks the options and normalises base, entries, scopes and fallback. */
static netstash_error mk_init(mk *k, const ns_mem *mem, const ns_make_opts *o, char *detail,
                              size_t detail_len) {
  netstash_error e;
  int64_t exp_s;
  size_t i;
  memset(k, 0, sizeof(*k));
  k->mem = mem;
  k->o = o;
  k->detail = detail;
  k->detail_len = detail_len;
  if (!o->base)
    BADOPT("--base URL is required");
  if (!o->id || !valid_id(o->id))
    BADOPT("--id \"%s\": 1 to 128 of A-Z a-z 0-9 . _ -", o->id ? o->id : "");
  if (o->version < 1 || o->version > (uint64_t)INT64_MAX)
    BADOPT("--version: a positive integer");
  if (!o->expires || ns_rfc3339_parse(o->expires, strlen(o->expires), &exp_s) != 0)
    BADOPT("--expires \"%s\": not an RFC 3339 date-time (2026-12-31T23:59:59Z)",
           o->expires ? o->expires : "");
  if (exp_s <= o->now_s)
    BADOPT("--expires %s is not in the future", o->expires);
  if (o->max_bytes > (uint64_t)INT64_MAX)
    BADOPT("--max-bytes: too large");
  for (i = 0; i < o->n_ignore; i++)
    if (!valid_param(o->ignore[i]))
      BADOPT("--ignore-param \"%s\": a query parameter name (printable ASCII, no & = #)",
             o->ignore[i]);
  if ((e = https_url(k, "--base", NULL, o->base, 0, &k->base)) != NETSTASH_OK)
    return e;
  k->base_len = strlen(k->base);
  if (k->base[k->base_len - 1] != '/') {
    char *b = ns_malloc(mem, k->base_len + 2);
    if (!b)
      return NETSTASH_E_NOMEM;
    memcpy(b, k->base, k->base_len);
    b[k->base_len++] = '/';
    b[k->base_len] = '\0';
    ns_free(mem, k->base);
    k->base = b;
  }
  if (o->fallback &&
      (e = https_url(k, "--fallback", NULL, o->fallback, 1, &k->fallback)) != NETSTASH_OK)
    return e;
  if (!(k->entries = ns_calloc(mem, NS_MAX(o->n_entries, (size_t)1), sizeof(char *))) ||
      !(k->scopes = ns_calloc(mem, o->n_scopes, sizeof(char *))))
    return NETSTASH_E_NOMEM;
  if (o->n_entries == 0) {
    if (!(k->entries[0] = ns_strdup(mem, k->base)))
      return NETSTASH_E_NOMEM;
    k->n_entries = 1;
  }
  for (i = 0; i < o->n_entries; i++, k->n_entries++)
    if ((e = https_url(k, "--entry", k->base, o->entries[i], 1, &k->entries[i])) != NETSTASH_OK)
      return e;
  for (i = 0; i < o->n_scopes; i++, k->n_scopes++)
    if ((e = https_url(k, "--scope", NULL, o->scopes[i], 0, &k->scopes[i])) != NETSTASH_OK)
      return e;
  if (!(k->resources = json_array()) || !(k->io = ns_malloc(mem, IO_CHUNK)))
    return NETSTASH_E_NOMEM;
  for (i = 0; i < NS_ARRAY_LEN(k->md); i++)
    if (!(k->md[i] = EVP_MD_CTX_new()))
      return NETSTASH_E_NOMEM;
  return NETSTASH_OK;
}

static int is_entry(const mk *k, const char *url) {
  size_t i;
  for (i = 0; i < k->n_entries; i++)
    if (!strcmp(k->entries[i], url))
      return 1;
  return 0;
}

/* rel: the file's path relative to the root ("css/app.css"). */
static ns_manifest_priority pick_priority(const mk *k, const char *rel, const char *url) {
  static const char *const high[] = {"css", "js", "mjs", "woff", "woff2", "ttf", "otf"};
  const char *name = strrchr(rel, '/'), *ext;
  size_t i;
  name = name ? name + 1 : rel;
  for (i = 0; i < k->o->n_rules; i++) {
    const ns_make_rule *r = &k->o->rules[i];
    if (ns_make_glob_match(r->glob, strchr(r->glob, '/') ? rel : name))
      return r->priority;
  }
  if (is_entry(k, url))
    return NS_MANIFEST_PRIO_CRITICAL;
  ext = extension(rel);
  for (i = 0; i < NS_ARRAY_LEN(high); i++)
    if (!ns_ascii_casecmp(ext, high[i]))
      return NS_MANIFEST_PRIO_HIGH;
  return NS_MANIFEST_PRIO_LOW;
}

static const char *prio_name(ns_manifest_priority p) {
  return p == NS_MANIFEST_PRIO_CRITICAL ? "critical" : p == NS_MANIFEST_PRIO_HIGH ? "high" : "low";
}

/* Hashes the regular file at path: size and SHA-256, plus SHA-384/512 when
 * all is set. */
static netstash_error hash_file(mk *k, const char *path, int all, file_hash *h) {
  const EVP_MD *algs[3];
  size_t n_algs = all ? 3 : 1, i;
  netstash_error rv = NETSTASH_E_IO;
  int fd;
  algs[0] = EVP_sha256();
  algs[1] = EVP_sha384();
  algs[2] = EVP_sha512();
  memset(h, 0, sizeof(*h));
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
    ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
    return NETSTASH_E_IO;
  }
  {
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_mtime > 0)
      h->mtime = (int64_t)st.st_mtime;
  }
  for (i = 0; i < n_algs; i++)
    if (EVP_DigestInit_ex(k->md[i], algs[i], NULL) != 1) {
      rv = NETSTASH_E_INTERNAL;
      goto done;
    }
  for (;;) {
    ssize_t got = read(fd, k->io, IO_CHUNK);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0) {
      ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
      goto done;
    }
    if (got == 0)
      break;
    h->size += (uint64_t)got;
    for (i = 0; i < n_algs; i++)
      if (EVP_DigestUpdate(k->md[i], k->io, (size_t)got) != 1) {
        rv = NETSTASH_E_INTERNAL;
        goto done;
      }
  }
  if (EVP_DigestFinal_ex(k->md[0], h->sha256, NULL) != 1 ||
      (all && (EVP_DigestFinal_ex(k->md[1], h->sha384, NULL) != 1 ||
               EVP_DigestFinal_ex(k->md[2], h->sha512, NULL) != 1))) {
    rv = NETSTASH_E_INTERNAL;
    goto done;
  }
  rv = NETSTASH_OK;
done:
  close(fd);
  return rv;
}

/* Appends one resource. integrity NULL: the file's sha256. */
static netstash_error add_resource(mk *k, const char *url, const char *rel, const char *integrity,
                                   const file_hash *h) {
  char sri[8 + 45] = "sha256-";
  json_t *r, *q, *names;
  size_t i;
  if (!integrity) {
    base64(h->sha256, sizeof(h->sha256), sri + 7);
    integrity = sri;
  }
  if (h->size > (uint64_t)INT64_MAX)
    return NETSTASH_E_TOO_LARGE;
  r = json_pack("{s:s, s:s, s:I, s:s, s:s}", "url", url, "integrity", integrity, "size",
                (json_int_t)h->size, "content_type", ns_make_content_type(rel), "priority",
                prio_name(pick_priority(k, rel, url)));
  if (!r)
    return NETSTASH_E_NOMEM;
  if (k->o->n_headers || (!k->o->no_last_modified && h->mtime > 0)) {
    const char *name = strrchr(rel, '/');
    json_t *hs = NULL;
    name = name ? name + 1 : rel;
    for (i = 0; i < k->o->n_headers; i++) {
      const ns_make_header *hr = &k->o->headers[i];
      if (!ns_make_glob_match(hr->glob, strchr(hr->glob, '/') ? rel : name))
        continue;
      if (!hs && (!(hs = json_object()) || json_object_set_new(r, "headers", hs) != 0)) {
        json_decref(r);
        return NETSTASH_E_NOMEM;
      }
      if (json_object_get(hs, hr->name))
        continue; /* first matching rule wins */
      if (json_object_set_new(hs, hr->name, json_string(hr->value)) != 0) {
        json_decref(r);
        return NETSTASH_E_NOMEM;
      }
    }
    /* What a static file server sends for the file (nginx, caddy: its
     * mtime), so that a browser caching the preloaded answer gets the same
     * validator and heuristic freshness as from the origin */
    if (!k->o->no_last_modified && h->mtime > 0) {
      char date[NS_HTTP_DATE_LEN];
      const char *key;
      json_t *v;
      int set = 0;
      if (hs) {
        json_object_foreach(hs, key, v) {
          set |= strcasecmp(key, "last-modified") == 0;
        }
      }
      ns_http_date_format(h->mtime, date);
      if (!set && ((!hs && (!(hs = json_object()) || json_object_set_new(r, "headers", hs) != 0)) ||
                   json_object_set_new(hs, "last-modified", json_string(date)) != 0)) {
        json_decref(r);
        return NETSTASH_E_NOMEM;
      }
    }
  }
  if (k->o->n_ignore) {
    if (!(names = json_array()) || !(q = json_pack("{s:o}", "ignore", names)) ||
        json_object_set_new(r, "query", q) != 0) {
      json_decref(r);
      return NETSTASH_E_NOMEM;
    }
    for (i = 0; i < k->o->n_ignore; i++)
      if (json_array_append_new(names, json_string(k->o->ignore[i])) != 0) {
        json_decref(r);
        return NETSTASH_E_NOMEM;
      }
  }
  return json_array_append_new(k->resources, r) == 0 ? NETSTASH_OK : NETSTASH_E_NOMEM;
}

/* The URL of the file at rel (raw bytes): base + rel percent-encoded; an
 * index.html stands for its directory. */
static netstash_error file_url(mk *k, const char *rel, ns_buf *url) {
  size_t len = strlen(rel);
  netstash_error e;
  if (len >= 10 && !strcmp(rel + len - 10, "index.html") && (len == 10 || rel[len - 11] == '/'))
    len -= 10;
  buf_truncate(url, 0);
  if ((e = ns_buf_append(url, k->base, k->base_len)) != NETSTASH_OK)
    return e;
  return ns_make_pct_encode(url, rel, len);
}

/* Builds the document around k->resources, prints it and lints it. */
static netstash_error finish(mk *k, char **out, size_t *out_len) {
  json_t *root = NULL, *scope = NULL, *entries = NULL;
  ns_manifest_diags *diags = NULL;
  ns_manifest_check ck;
  ns_manifest *m = NULL;
  char *text = NULL;
  netstash_error rv = NETSTASH_E_NOMEM;
  size_t i, len;
  for (i = 0; i < k->n_entries; i++) {
    size_t r;
    int found = 0;
    for (r = 0; r < json_array_size(k->resources); r++)
      if (!strcmp(json_string_value(json_object_get(json_array_get(k->resources, r), "url")),
                  k->entries[i]))
        found = 1;
    if (!found) {
      ns_detailf(k->detail, k->detail_len,
                 k->o->n_entries ? "entry page \"%s\" (--entry) is not among the resources"
                 : k->o->dir     ? "no entry page: \"%s\" (an index.html at the root of --base) "
                                   "is not among the Workbox entries; name the entry pages "
                                   "with --entry URL"
                                 : "no entry page: there is no index.html at the root (it "
                                   "would be \"%s\"); name the entry pages with --entry URL",
                 k->entries[i]);
      return NETSTASH_E_INVALID_ARGUMENT;
    }
  }
  if (!(scope = json_array()) || !(entries = json_array()))
    goto done;
  if (json_array_append_new(scope, json_string(k->base)) != 0)
    goto done;
  for (i = 0; i < k->n_scopes; i++)
    if (strcmp(k->scopes[i], k->base) != 0 &&
        json_array_append_new(scope, json_string(k->scopes[i])) != 0)
      goto done;
  for (i = 0; i < k->n_entries; i++)
    if (json_array_append_new(entries, json_string(k->entries[i])) != 0)
      goto done;
  root = json_pack("{s:s, s:I, s:o, s:o, s:s, s:O}", "id", k->o->id, "version",
                   (json_int_t)k->o->version, "scope", scope, "entry_pages", entries, "expires",
                   k->o->expires, "resources", k->resources);
  scope = entries = NULL; /* stolen by json_pack, also on failure */
  if (!root)
    goto done;
  if (k->o->max_bytes &&
      json_object_set_new(root, "budgets",
                          json_pack("{s:I}", "max_bytes", (json_int_t)k->o->max_bytes)) != 0)
    goto done;
  if (k->fallback && json_object_set_new(root, "fallback", json_string(k->fallback)) != 0)
    goto done;
  if (!(text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER)))
    goto done;
  len = strlen(text);
  if (!(*out = ns_malloc(k->mem, len + 2)))
    goto done;
  memcpy(*out, text, len);
  (*out)[len++] = '\n';
  (*out)[len] = '\0';
  *out_len = len;

  /* what we hand out must lint */
  if (!(diags = ns_calloc(k->mem, 1, sizeof(*diags)))) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  ck.now_s = k->o->now_s;
  ck.installed_version = 0;
  ck.max_len = 0;
  rv = ns_manifest_parse(k->mem, (const uint8_t *)*out, len, &ck, &m, diags);
  if (rv != NETSTASH_OK && rv != NETSTASH_E_NOMEM)
    ns_detailf(k->detail, k->detail_len, "the manifest would not be valid: %s%s",
               diags->n ? diags->d[0].msg : netstash_strerror(rv),
               diags->n + diags->dropped > 1 ? " (and more)" : "");
done:
  if (rv != NETSTASH_OK && *out) {
    ns_free(k->mem, *out);
    *out = NULL;
    *out_len = 0;
  }
  ns_manifest_del(m);
  ns_free(k->mem, diags);
  free(text); /* jansson's default allocator */
  json_decref(scope);
  json_decref(entries);
  json_decref(root);
  return rv;
}

/* ------------------------------------------------------------ make DIR */

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted names in directory path, dotfiles left out. */
static netstash_error list_dir(mk *k, const char *path, char ***out, size_t *n_out) {
  DIR *d = opendir(path);
  struct dirent *de;
  char **v = NULL;
  size_t n = 0, cap = 0;
  netstash_error rv = NETSTASH_OK;
  *out = NULL;
  *n_out = 0;
  if (!d) {
    ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
    return NETSTASH_E_IO;
  }
  for (;;) {
    errno = 0;
    if (!(de = readdir(d))) {
      if (errno) {
        ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
        rv = NETSTASH_E_IO;
      }
      break;
    }
    if (de->d_name[0] == '.')
      continue;
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 16, bytes;
      char **nv;
      if (!ns_mul_size(ncap, sizeof(*v), &bytes) || !(nv = ns_realloc(k->mem, v, bytes))) {
        rv = NETSTASH_E_NOMEM;
        break;
      }
      v = nv;
      cap = ncap;
    }
    if (!(v[n] = ns_strdup(k->mem, de->d_name))) {
      rv = NETSTASH_E_NOMEM;
      break;
    }
    n++;
  }
  closedir(d);
  if (rv != NETSTASH_OK) {
    free_list(k->mem, v, n);
    return rv;
  }
  if (n)
    qsort(v, n, sizeof(*v), cmp_names);
  *out = v;
  *n_out = n;
  return NETSTASH_OK;
}

/* 1 when real (a resolved path) lies inside the root. */
static int inside_root(const mk *k, const char *real) {
  if (k->root_len == 1) /* "/" */
    return 1;
  return !strncmp(real, k->root, k->root_len) &&
         (real[k->root_len] == '/' || real[k->root_len] == '\0');
}

static netstash_error walk(mk *k, ns_buf *abs, ns_buf *rel, ns_buf *url);

/* One directory entry: abs and rel already name it. */
static netstash_error visit(mk *k, ns_buf *abs, ns_buf *rel, ns_buf *url) {
  const char *path = ns_buf_str(abs), *name = ns_buf_str(rel);
  struct stat st;
  size_t i;
  if (lstat(path, &st) != 0) {
    ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
    return NETSTASH_E_IO;
  }
  if (S_ISLNK(st.st_mode)) {
    char real[PATH_MAX];
    if (!realpath(path, real)) {
      warnf(k, "skipped %s: a symlink that does not resolve (%s)", name, strerror(errno));
      return NETSTASH_OK;
    }
    if (!inside_root(k, real)) {
      warnf(k, "skipped %s: a symlink to %s, outside the directory", name, real);
      return NETSTASH_OK;
    }
    if (stat(path, &st) != 0) {
      ns_detailf(k->detail, k->detail_len, "%s: %s", path, strerror(errno));
      return NETSTASH_E_IO;
    }
  }
  if (S_ISDIR(st.st_mode)) {
    netstash_error e;
    for (i = 0; i <= k->depth; i++)
      if (k->stack[i].dev == st.st_dev && k->stack[i].ino == st.st_ino) {
        warnf(k, "skipped %s: a symlink loop", name);
        return NETSTASH_OK;
      }
    if (k->depth == NS_MAKE_MAX_DEPTH) {
      ns_detailf(k->detail, k->detail_len, "%s: more than %d directories deep", path,
                 NS_MAKE_MAX_DEPTH);
      return NETSTASH_E_IO;
    }
    k->depth++;
    k->stack[k->depth].dev = st.st_dev;
    k->stack[k->depth].ino = st.st_ino;
    e = walk(k, abs, rel, url);
    k->depth--;
    return e;
  }
  if (S_ISREG(st.st_mode)) {
    file_hash h;
    netstash_error e;
    if ((e = hash_file(k, path, 0, &h)) != NETSTASH_OK ||
        (e = file_url(k, name, url)) != NETSTASH_OK)
      return e;
    return add_resource(k, ns_buf_str(url), name, NULL, &h);
  }
  warnf(k, "skipped %s: not a regular file or directory", name);
  return NETSTASH_OK;
}

static netstash_error walk(mk *k, ns_buf *abs, ns_buf *rel, ns_buf *url) {
  char **names = NULL;
  size_t n = 0, i, abs_len = abs->len, rel_len = rel->len;
  netstash_error rv = list_dir(k, ns_buf_str(abs), &names, &n);
  for (i = 0; rv == NETSTASH_OK && i < n; i++) {
    if ((rv = ns_buf_printf(abs, "/%s", names[i])) != NETSTASH_OK ||
        (rv = ns_buf_printf(rel, "%s%s", rel_len ? "/" : "", names[i])) != NETSTASH_OK) {
      if (rv == NETSTASH_E_TOO_LARGE)
        ns_detailf(k->detail, k->detail_len, "%s/%s: path too long", ns_buf_str(abs), names[i]);
      break;
    }
    rv = visit(k, abs, rel, url);
    buf_truncate(abs, abs_len);
    buf_truncate(rel, rel_len);
  }
  free_list(k->mem, names, n);
  return rv;
}

netstash_error ns_manifest_make_dir(const ns_mem *mem, const char *dir, const ns_make_opts *o,
                                    char **out, size_t *out_len, char *detail, size_t detail_len) {
  mk k;
  ns_buf abs, rel, url;
  struct stat st;
  netstash_error rv;
  if (!mem || !dir || !o || !out || !out_len)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  *out_len = 0;
  ns_buf_init(&abs, mem, PATH_BUF_MAX);
  ns_buf_init(&rel, mem, PATH_BUF_MAX);
  ns_buf_init(&url, mem, PATH_BUF_MAX * 3);
  if ((rv = mk_init(&k, mem, o, detail, detail_len)) != NETSTASH_OK)
    goto done;
  if (!realpath(dir, k.root) || stat(k.root, &st) != 0) {
    ns_detailf(detail, detail_len, "%s: %s", dir, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  if (!S_ISDIR(st.st_mode)) {
    ns_detailf(detail, detail_len, "%s: not a directory", dir);
    rv = NETSTASH_E_IO;
    goto done;
  }
  k.root_len = strlen(k.root);
  k.stack[0].dev = st.st_dev;
  k.stack[0].ino = st.st_ino;
  if ((rv = ns_buf_append_str(&abs, k.root)) != NETSTASH_OK ||
      (rv = walk(&k, &abs, &rel, &url)) != NETSTASH_OK)
    goto done;
  if (json_array_size(k.resources) == 0) {
    ns_detailf(detail, detail_len, "%s: no files (dotfiles are skipped)", dir);
    rv = NETSTASH_E_INVALID_ARGUMENT;
    goto done;
  }
  rv = finish(&k, out, out_len);
done:
  ns_buf_free(&abs);
  ns_buf_free(&rel);
  ns_buf_free(&url);
  mk_free(&k);
  return rv;
}

/* ------------------------------------------------------------ Workbox */

/* The entries array of a Workbox manifest (a new reference), or NULL with
 * the reason in detail. */
static json_t *workbox_entries(const uint8_t *wb, size_t len, char *detail, size_t detail_len) {
  static const char marker[] = "__WB_MANIFEST";
  json_error_t jerr;
  json_t *root = json_loadb((const char *)wb, len, JSON_REJECT_DUPLICATES, &jerr), *a;
  const uint8_t *at;
  ns_reader r;
  if (root) {
    if (json_is_array(root))
      return root;
    if (json_is_object(root) && json_is_array(a = json_object_get(root, "manifestEntries"))) {
      json_incref(a);
      json_decref(root);
      return a;
    }
    json_decref(root);
    ns_detailf(detail, detail_len,
               "not a Workbox precache manifest: expected an array of {\"url\", \"revision\"} "
               "entries or an object with \"manifestEntries\"");
    return NULL;
  }
  /* a script: self.__WB_MANIFEST = [ ... ] */
  at = memmem(wb, len, marker, sizeof(marker) - 1);
  if (!at) {
    ns_detailf(detail, detail_len,
               "not a Workbox precache manifest: not JSON (%s, line %d) and no "
               "self.__WB_MANIFEST = [...] assignment",
               jerr.text, jerr.line);
    return NULL;
  }
  ns_reader_init(&r, at, len - (size_t)(at - wb));
  r.pos = sizeof(marker) - 1;
  while (ns_reader_skip_char(&r, ' ') || ns_reader_skip_char(&r, '\t') ||
         ns_reader_skip_char(&r, '\n') || ns_reader_skip_char(&r, '\r'))
    ;
  if (!ns_reader_skip_char(&r, '=')) {
    ns_detailf(detail, detail_len, "self.__WB_MANIFEST is not assigned an array (= [...])");
    return NULL;
  }
  while (ns_reader_skip_char(&r, ' ') || ns_reader_skip_char(&r, '\t') ||
         ns_reader_skip_char(&r, '\n') || ns_reader_skip_char(&r, '\r'))
    ;
  root = ns_reader_peek(&r) == '['
             ? json_loadb(r.p + r.pos, ns_reader_left(&r),
                          JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES, &jerr)
             : NULL;
  if (!root || !json_is_array(root)) {
    ns_detailf(detail, detail_len,
               "self.__WB_MANIFEST is not assigned a JSON array%s%s (quoted keys needed; use "
               "workbox-build's getManifest output otherwise)",
               root ? "" : ": ", root ? "" : jerr.text);
    json_decref(root);
    return NULL;
  }
  return root;
}

/* 1 when h matches integrity (the strongest algorithm listed decides, any
 * of its digests may match), 0 when not, -1 when integrity lists no digest
 * we can read (the lint then reports it). */
static int sri_matches(const char *integrity, const file_hash *h) {
  ns_reader r;
  int best = 0, match = 0;
  ns_reader_init(&r, integrity, strlen(integrity));
  for (;;) {
    ns_span tok;
    uint8_t dig[66];
    size_t dlen;
    const uint8_t *want;
    int alg;
    while (ns_reader_skip_char(&r, ' ') || ns_reader_skip_char(&r, '\t'))
      ;
    if (ns_reader_eof(&r))
      break;
    tok.p = r.p + r.pos;
    while (!ns_reader_eof(&r) && !ns_is_ows(ns_reader_peek(&r)))
      r.pos++;
    tok.len = (size_t)(r.p + r.pos - tok.p);
    if (tok.len < 7 || memcmp(tok.p, "sha", 3) != 0 || tok.p[6] != '-')
      continue;
    if (!memcmp(tok.p + 3, "256", 3))
      alg = 32, want = h->sha256;
    else if (!memcmp(tok.p + 3, "384", 3))
      alg = 48, want = h->sha384;
    else if (!memcmp(tok.p + 3, "512", 3))
      alg = 64, want = h->sha512;
    else
      continue;
    if (ns_b64_decode(tok.p + 7, tok.len - 7, dig, sizeof(dig), &dlen) != 0 || dlen != (size_t)alg)
      continue;
    if (alg > best) {
      best = alg;
      match = 0;
    }
    if (alg == best && !memcmp(dig, want, (size_t)alg))
      match = 1;
  }
  return best ? match : -1;
}

/* The file for url (normalised, below k->base): its path relative to the
 * root, decoded, "index.html" appended to a directory URL. -1 (detail set)
 * when url cannot name a file below the root. */
static int url_to_rel(mk *k, size_t i, const char *url, ns_buf *rel, netstash_error *e) {
  const char *path, *q;
  size_t plen, at;
  *e = NETSTASH_OK;
  buf_truncate(rel, 0);
  if (strncmp(url, k->base, k->base_len) != 0) {
    ns_detailf(k->detail, k->detail_len,
               "workbox[%zu] \"%s\" is not below --base %s: its file cannot be found in --dir", i,
               url, k->base);
    return -1;
  }
  path = url + k->base_len;
  q = strchr(path, '?');
  plen = q ? (size_t)(q - path) : strlen(path);
  if (pct_decode(rel, path, plen, e) != 0) {
    if (*e == NETSTASH_OK)
      ns_detailf(k->detail, k->detail_len, "workbox[%zu] \"%s\": a malformed %%-escape", i, url);
    return -1;
  }
  if (rel->len == 0 || rel->data[rel->len - 1] == '/')
    if ((*e = ns_buf_append_str(rel, "index.html")) != NETSTASH_OK)
      return -1;
  /* no empty, "." or ".." segment: the path stays below the root */
  for (at = 0; at < rel->len;) {
    const char *seg = (const char *)rel->data + at, *slash = strchr(seg, '/');
    size_t sl = slash ? (size_t)(slash - seg) : strlen(seg);
    if (sl == 0 || (sl == 1 && seg[0] == '.') || (sl == 2 && seg[0] == '.' && seg[1] == '.')) {
      ns_detailf(k->detail, k->detail_len,
                 "workbox[%zu] \"%s\": its path has an empty, \".\" or \"..\" segment", i, url);
      return -1;
    }
    at += sl + 1;
  }
  return 0;
}

/* Reads one entry: url (resolved) and integrity (NULL when only a
 * revision). */
static netstash_error entry_fields(mk *k, size_t i, json_t *e, char **url, const char **integrity) {
  const char *ref = NULL, *key;
  json_t *v;
  char what[64];
  *url = NULL;
  *integrity = NULL;
  if (json_is_string(e)) {
    ref = json_string_value(e);
  } else if (json_is_object(e)) {
    json_object_foreach(e, key, v) {
      if (!strcmp(key, "url") && json_is_string(v)) {
        ref = json_string_value(v);
      } else if (!strcmp(key, "integrity") && json_is_string(v)) {
        *integrity = json_string_value(v);
      } else if (!strcmp(key, "revision") && (json_is_string(v) || json_is_null(v))) {
      } else {
        ns_detailf(k->detail, k->detail_len,
                   "workbox[%zu].%s: %s (an entry has url, revision and integrity, all strings)", i,
                   key,
                   strcmp(key, "url") && strcmp(key, "integrity") && strcmp(key, "revision")
                       ? "unknown field"
                       : "wrong type");
        return NETSTASH_E_MANIFEST_INVALID;
      }
    }
  }
  if (!ref || !*ref) {
    ns_detailf(k->detail, k->detail_len,
               "workbox[%zu]: not an entry (a URL string or an object with a \"url\")", i);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  snprintf(what, sizeof(what), "workbox[%zu].url", i);
  return https_url(k, what, k->base, ref, 1, url);
}

/* The "N entries ..." error when there is no --dir. */
static netstash_error need_dir(mk *k, json_t *entries) {
  ns_buf names;
  size_t i, n_rev = 0;
  json_t *e;
  netstash_error rv;
  ns_buf_init(&names, k->mem, 4096);
  json_array_foreach(entries, i, e) {
    char *url = NULL;
    const char *integrity;
    if ((rv = entry_fields(k, i, e, &url, &integrity)) != NETSTASH_OK) {
      ns_buf_free(&names);
      return rv;
    }
    if (!integrity && ++n_rev <= LIST_MAX &&
        ns_buf_printf(&names, "%s\"%s\"", n_rev > 1 ? ", " : "", url) != NETSTASH_OK) {
      ns_free(k->mem, url);
      ns_buf_free(&names);
      return NETSTASH_E_NOMEM;
    }
    ns_free(k->mem, url);
  }
  if (n_rev)
    ns_detailf(k->detail, k->detail_len,
               "%zu Workbox entr%s only a revision, no integrity (%s%s): netstash needs each "
               "body's hash; pass --dir BUILD_DIR (the directory Workbox precached from) to "
               "hash them",
               n_rev, n_rev == 1 ? "y has" : "ies have", ns_buf_str(&names),
               n_rev > LIST_MAX ? ", ..." : "");
  else
    ns_detailf(k->detail, k->detail_len,
               "Workbox entries carry no size, which a netstash manifest needs (it is served as "
               "Content-Length and counted against budgets): pass --dir BUILD_DIR (the "
               "directory Workbox precached from)");
  ns_buf_free(&names);
  return NETSTASH_E_INVALID_ARGUMENT;
}

netstash_error ns_manifest_import_workbox(const ns_mem *mem, const uint8_t *wb, size_t wb_len,
                                          const ns_make_opts *o, char **out, size_t *out_len,
                                          char *detail, size_t detail_len) {
  mk k;
  json_t *entries = NULL, *e;
  ns_buf rel, abs;
  size_t i;
  netstash_error rv;
  if (!mem || (!wb && wb_len) || !o || !out || !out_len)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  *out_len = 0;
  ns_buf_init(&rel, mem, PATH_BUF_MAX);
  ns_buf_init(&abs, mem, PATH_BUF_MAX * 2);
  if ((rv = mk_init(&k, mem, o, detail, detail_len)) != NETSTASH_OK)
    goto done;
  if (!(entries = workbox_entries(wb ? wb : (const uint8_t *)"", wb_len, detail, detail_len))) {
    rv = NETSTASH_E_MANIFEST_INVALID;
    goto done;
  }
  if (json_array_size(entries) == 0) {
    ns_detailf(detail, detail_len, "the Workbox manifest lists no entries");
    rv = NETSTASH_E_MANIFEST_INVALID;
    goto done;
  }
  if (!o->dir) {
    rv = need_dir(&k, entries);
    goto done;
  }
  if (!realpath(o->dir, k.root)) {
    ns_detailf(detail, detail_len, "--dir %s: %s", o->dir, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  k.root_len = strlen(k.root);
  json_array_foreach(entries, i, e) {
    char *url = NULL, real[PATH_MAX];
    const char *integrity;
    file_hash h;
    struct stat st;
    size_t ulen;
    if ((rv = entry_fields(&k, i, e, &url, &integrity)) != NETSTASH_OK)
      goto done;
    if (url_to_rel(&k, i, url, &rel, &rv) != 0) {
      ns_free(mem, url);
      if (rv == NETSTASH_OK)
        rv = NETSTASH_E_INVALID_ARGUMENT;
      goto done;
    }
    buf_truncate(&abs, 0);
    if ((rv = ns_buf_printf(&abs, "%s/%s", k.root, ns_buf_str(&rel))) != NETSTASH_OK) {
      ns_free(mem, url);
      goto done;
    }
    if (!realpath(ns_buf_str(&abs), real)) {
      ns_detailf(detail, detail_len, "workbox[%zu] \"%s\": %s: %s%s", i, url, ns_buf_str(&abs),
                 strerror(errno),
                 errno == ENOENT ? " (is --dir the build output Workbox precached from?)" : "");
      ns_free(mem, url);
      rv = NETSTASH_E_IO;
      goto done;
    }
    if (!inside_root(&k, real) || stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
      ns_detailf(detail, detail_len, "workbox[%zu] \"%s\": %s is not a regular file inside --dir",
                 i, url, ns_buf_str(&abs));
      ns_free(mem, url);
      rv = NETSTASH_E_IO;
      goto done;
    }
    if ((rv = hash_file(&k, real, integrity != NULL, &h)) != NETSTASH_OK) {
      ns_free(mem, url);
      goto done;
    }
    if (integrity && sri_matches(integrity, &h) == 0) {
      ns_detailf(detail, detail_len,
                 "workbox[%zu] \"%s\": %s does not match the entry's integrity (is --dir the "
                 "build output Workbox precached from?)",
                 i, url, ns_buf_str(&abs));
      ns_free(mem, url);
      rv = NETSTASH_E_INTEGRITY;
      goto done;
    }
    /* an index.html is served at its directory's URL, as make does */
    ulen = strlen(url);
    if (ulen > 11 && !strcmp(url + ulen - 11, "/index.html"))
      url[ulen - 10] = '\0';
    rv = add_resource(&k, url, ns_buf_str(&rel), integrity, &h);
    ns_free(mem, url);
    if (rv != NETSTASH_OK)
      goto done;
  }
  rv = finish(&k, out, out_len);
done:
  json_decref(entries);
  ns_buf_free(&rel);
  ns_buf_free(&abs);
  mk_free(&k);
  return rv;
}
