#include "ns_setup.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>

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

