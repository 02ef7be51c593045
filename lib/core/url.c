#include "ns_setup.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "core/url.h"

int ns_ascii_casecmp_n(const char *a, const char *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    char ca = ns_ascii_lower(a[i]), cb = ns_ascii_lower(b[i]);
    if (ca != cb)
      return (unsigned char)ca - (unsigned char)cb;
    if (!ca)
      return 0;
  }
  return 0;
}

int ns_ascii_casecmp(const char *a, const char *b) {
  for (;; a++, b++) {
    char ca = ns_ascii_lower(*a), cb = ns_ascii_lower(*b);
    if (ca != cb)
      return (unsigned char)ca - (unsigned char)cb;
    if (!ca)
      return 0;
  }
}

int ns_host_is_ip(const char *host, int *is_v6) {
  unsigned char buf[16];
  if (is_v6)
    *is_v6 = 0;
  if (inet_pton(AF_INET, host, buf) == 1)
    return 1;
  if (inet_pton(AF_INET6, host, buf) == 1) {
    if (is_v6)
      *is_v6 = 1;
    return 1;
  }
  return 0;
}

static int fast_on = 1;
void ns_url_fast_set(int on) { fast_on = on; }
int ns_url_fast_enabled(void) { return fast_on; }

static int host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

/* Characters curl_url (7.88, no flags) leaves as they are in a path or a
 * query; not '%' or a backslash (curl may rewrite them), nor spaces and
 * controls (rejected). */
static int path_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("-._~!$&'()*+,;=:@/", c) != NULL);
}

/* h..he is four decimal octets <= 255 without leading zeros. */
static int dotted_quad(const char *h, const char *he) {
  int parts = 0;
  while (h < he) {
    const char *d = h;
    unsigned v = 0;
    for (; d < he && *d >= '0' && *d <= '9' && d - h < 4; d++)
      v = v * 10 + (unsigned)(*d - '0');
    if (d == h || d - h > 3 || v > 255 || (*h == '0' && d - h > 1) || ++parts > 4)
      return 0;
    if (d < he && *d != '.')
      return 0;
    h = d < he ? d + 1 : d;
    if (d < he && h == he)
      return 0; /* a trailing dot */
  }
  return parts == 4;
}

int ns_url_split_canonical(const char *url, ns_url_parts *p) {
  const char *h, *he, *last, *c;
  size_t sl;
  memset(p, 0, sizeof(*p));
  if (!url || !fast_on)
    return 0;
  if (!strncmp(url, "https://", 8))
    sl = 5;
  else if (!strncmp(url, "http://", 7))
    sl = 4;
  else
    return 0;
  h = url + sl + 3;
  for (he = h; host_char(*he); he++)
    ;
  if (he == h || h[0] == '.' || h[0] == '-' || he[-1] == '.' || he[-1] == '-')
    return 0;
  for (c = h; c + 1 < he; c++)
    if (c[0] == '.' && c[1] == '.')
      return 0;
  for (last = he; last > h && last[-1] != '.'; last--)
    ;
  if (*last >= '0' && *last <= '9' && !dotted_quad(h, he))
    return 0;
  p->scheme = url;
  p->scheme_len = sl;
  p->host = h;
  p->host_len = (size_t)(he - h);
  c = he;
  if (*c == ':') {
    const char *d = c + 1;
    unsigned long v = 0;
    for (; *d >= '0' && *d <= '9' && d - c <= 6; d++)
      v = v * 10 + (unsigned long)(*d - '0');
    if (d == c + 1 || d - c > 6 || c[1] == '0' || v > 65535)
      return 0;
    p->port = c + 1;
    p->port_len = (size_t)(d - c - 1);
    p->port_num = (unsigned)v;
    c = d;
  }
  if (*c != '/')
    return 0;
  p->path = c;
  for (; *c && *c != '?'; c++)
    if (!path_char(*c) || (c[0] == '/' && c[1] == '.'))
      return 0; /* a dot segment, or a name starting with a dot: curl's call */
  p->path_len = (size_t)(c - p->path);
  if (*c == '?') {
    p->query = ++c;
    for (; *c; c++)
      if (!path_char(*c) && *c != '?')
        return 0;
    p->query_len = (size_t)(c - p->query);
    if (!p->query_len)
      return 0; /* an empty query: curl's call */
  }
  return 1;
}

/* ns_url_parse without curl_url, for URLs ns_url_split_canonical takes:
 * 1 done (out filled, or *rv = E_NOMEM), 0 not taken. */
static int parse_fast(const ns_mem *mem, const char *url, ns_url *out, netstash_error *rv) {
  ns_url_parts p;
  if (!ns_url_split_canonical(url, &p))
    return 0;
  /* curl prints an explicit default port as given; ours would be the same,
   * but the default ports are left to curl_url so that nothing hinges on it */
  if (p.port_num == (p.scheme_len == 5 ? 443u : 80u))
    return 0;
  memset(out, 0, sizeof(*out));
  out->url = ns_strdup(mem, url);
  out->scheme = ns_strndup(mem, p.scheme, p.scheme_len);
  out->host = ns_strndup(mem, p.host, p.host_len);
  if (!out->url || !out->scheme || !out->host) {
    ns_url_free(mem, out);
    *rv = NETSTASH_E_NOMEM;
    return 1;
  }
  out->port = p.port_num ? (int)p.port_num : p.scheme_len == 5 ? 443 : 80;
  out->host_is_ip = ns_host_is_ip(out->host, &out->ipv6);
  *rv = NETSTASH_OK;
  return 1;
}

static void set_detail(char *d, size_t n, const char *what, CURLUcode uc) {
  if (d && n)
    snprintf(d, n, "%s: %s", what, curl_url_strerror(uc));
}

static netstash_error fill(const ns_mem *mem, CURLU *h, ns_url *out, char *detail,
                           size_t detail_len) {
  char *url = NULL, *scheme = NULL, *host = NULL, *port = NULL;
  netstash_error rv = NETSTASH_E_BAD_URL;
  CURLUcode uc;
  size_t hl;
  long p;

  memset(out, 0, sizeof(*out));
  if ((uc = curl_url_get(h, CURLUPART_SCHEME, &scheme, 0)) != CURLUE_OK) {
    set_detail(detail, detail_len, "scheme", uc);
    goto done;
  }
  if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
    if (detail && detail_len)
      snprintf(detail, detail_len, "unsupported scheme \"%s\" (http and https only)",
               scheme);
    goto done;
  }
  if ((uc = curl_url_get(h, CURLUPART_HOST, &host, 0)) != CURLUE_OK) {
    set_detail(detail, detail_len, "host", uc);
    goto done;
  }
  if ((uc = curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT)) != CURLUE_OK) {
    set_detail(detail, detail_len, "port", uc);
    goto done;
  }
  if ((uc = curl_url_get(h, CURLUPART_URL, &url, 0)) != CURLUE_OK) {
    set_detail(detail, detail_len, "url", uc);
    goto done;
  }
  p = strtol(port, NULL, 10);
  if (p <= 0 || p > 65535)
    goto done;
  hl = strlen(host);
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    out->host = ns_strndup(mem, host + 1, hl - 2);
  } else {
    out->host = ns_strdup(mem, host);
  }
  out->url = ns_strdup(mem, url);
  out->scheme = ns_strdup(mem, scheme);
  if (!out->host || !out->url || !out->scheme) {
    rv = NETSTASH_E_NOMEM;
    ns_url_free(mem, out);
    goto done;
  }
  out->port = (int)p;
  out->host_is_ip = ns_host_is_ip(out->host, &out->ipv6);
  rv = NETSTASH_OK;
done:
  curl_free(url);
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  return rv;
}

netstash_error ns_url_parse(const ns_mem *mem, const char *url, ns_url *out,
                            char *detail, size_t detail_len) {
  CURLU *h;
  CURLUcode uc;
  netstash_error rv;
  if (!url || !out)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (parse_fast(mem, url, out, &rv))
    return rv;
  h = curl_url();
  if (!h)
    return NETSTASH_E_NOMEM;
  uc = curl_url_set(h, CURLUPART_URL, url, 0);
  if (uc != CURLUE_OK) {
    set_detail(detail, detail_len, "bad URL", uc);
    curl_url_cleanup(h);
    memset(out, 0, sizeof(*out));
    return uc == CURLUE_OUT_OF_MEMORY ? NETSTASH_E_NOMEM : NETSTASH_E_BAD_URL;
  }
  rv = fill(mem, h, out, detail, detail_len);
  curl_url_cleanup(h);
  return rv;
}

netstash_error ns_url_resolve(const ns_mem *mem, const char *base, const char *ref,
                              ns_url *out, char *detail, size_t detail_len) {
  CURLU *h;
  CURLUcode uc;
  netstash_error rv;
  h = curl_url();
  if (!h)
    return NETSTASH_E_NOMEM;
  memset(out, 0, sizeof(*out));
  uc = curl_url_set(h, CURLUPART_URL, base, 0);
  if (uc == CURLUE_OK)
    uc = curl_url_set(h, CURLUPART_URL, ref, 0); /* relative to base */
  if (uc != CURLUE_OK) {
    set_detail(detail, detail_len, "bad redirect target", uc);
    curl_url_cleanup(h);
    return uc == CURLUE_OUT_OF_MEMORY ? NETSTASH_E_NOMEM : NETSTASH_E_BAD_URL;
  }
  rv = fill(mem, h, out, detail, detail_len);
  curl_url_cleanup(h);
  return rv;
}

netstash_error ns_url_copy(const ns_mem *mem, const ns_url *from, ns_url *out) {
  *out = *from;
  out->url = ns_strdup(mem, from->url);
  out->scheme = ns_strdup(mem, from->scheme);
  out->host = ns_strdup(mem, from->host);
  if (!out->url || !out->scheme || !out->host) {
    ns_url_free(mem, out);
    memset(out, 0, sizeof(*out));
    return NETSTASH_E_NOMEM;
  }
  return NETSTASH_OK;
}

void ns_url_free(const ns_mem *mem, ns_url *u) {
  ns_free(mem, u->url);
  ns_free(mem, u->scheme);
  ns_free(mem, u->host);
  memset(u, 0, sizeof(*u));
}

/* Canonical form of a normalised https URL's authority, in place: host in
 * lower case (RFC 3986 §6.2.2.1), the default port dropped (§6.2.3), so that
 * scope and duplicate checks compare strings. -1 when there is userinfo. */
int ns_url_canonical_authority(char *url) {
  char *a = strstr(url, "://"), *end;
  size_t alen;
  if (!a)
    return 0;
  a += 3;
  end = a + strcspn(a, "/?#");
  alen = (size_t)(end - a);
  if (memchr(a, '@', alen))
    return -1;
  for (char *q = a; q < end; q++)
    *q = ns_ascii_lower(*q);
  if (alen > 4 && !memcmp(end - 4, ":443", 4))
    memmove(end - 4, end, strlen(end) + 1);
  return 0;
}

