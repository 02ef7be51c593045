/*
 * config.c — netd's configuration file: one JSON object (jansson), strict
 * (an unknown key is an error naming it), documented in netd(8).
 */
#include "ns_setup.h"

#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "netd/netd.h"

void netd_config_defaults(netd_config *c) {
  memset(c, 0, sizeof(*c));
  c->socket_mode = 0660;
  c->lookup_threads = -1; /* netd_lookup_threads() */
  c->hot_body_bytes = NETD_HOT_DEFAULT;
  c->log_level = NETSTASH_LOG_INFO;
}

void netd_config_free(netd_config *c) {
  free(c->profile);
  free(c->socket_path);
  free(c->proxy_host);
  free(c->gateway_host);
  free(c->upstream);
  free(c->gateway_h2_host);
  free(c->tls_cert);
  free(c->tls_key);
  free(c->metrics_host);
  free(c->ca_file);
  free(c->trusted_keys);
  free(c->resolve);
  for (size_t i = 0; i < c->nwarms; i++)
    free(c->warms[i].manifest);
  free(c->warms);
  memset(c, 0, sizeof(*c));
}

static int set_str(char **dst, const char *v) {
  char *n = strdup(v);
  if (!n)
    return -1;
  free(*dst);
  *dst = n;
  return 0;
}

/* Appends v to a '\n'-separated list. */
static int add_line(char **dst, const char *v) {
  size_t a = *dst ? strlen(*dst) : 0, b = strlen(v);
  char *n = realloc(*dst, a + b + 2);
  if (!n)
    return -1;
  if (a)
    n[a++] = '\n';
  memcpy(n + a, v, b + 1);
  *dst = n;
  return 0;
}

/* "HOST:PORT" or "[V6]:PORT" */
int netd_parse_hostport(const char *s, char **host, int *port) {
  const char *colon = strrchr(s, ':');
  char *end;
  long p;
  size_t hl;
  if (!colon || colon == s)
    return -1;
  p = strtol(colon + 1, &end, 10);
  if (*end || p < 1 || p > 65535)
    return -1;
  hl = (size_t)(colon - s);
  if (s[0] == '[') {
    if (hl < 3 || s[hl - 1] != ']')
      return -1;
    s++;
    hl -= 2;
  }
  free(*host);
  *host = strndup(s, hl);
  if (!*host)
    return -1;
  *port = (int)p;
  return 0;
}

static int level_of(const char *s, netstash_log_level *out) {
  static const struct {
    const char *n;
    netstash_log_level l;
  } t[] = {{"error", NETSTASH_LOG_ERROR},
           {"warn", NETSTASH_LOG_WARN},
           {"info", NETSTASH_LOG_INFO},
           {"debug", NETSTASH_LOG_DEBUG},
           {"trace", NETSTASH_LOG_TRACE}};
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
    if (strcmp(s, t[i].n) == 0) {
      *out = t[i].l;
      return 0;
    }
  return -1;
}

#define FAIL(...)                                                              \
  do {                                                                         \
    snprintf(err, errlen, __VA_ARGS__);                                        \
    goto out;                                                                  \
  } while (0)

static int str_list(json_t *v, char **dst, const char *key, char *err, size_t errlen) {
  size_t i;
  json_t *e;
  if (json_is_string(v))
    return add_line(dst, json_string_value(v));
  if (!json_is_array(v)) {
    snprintf(err, errlen, "%s: a string or an array of strings expected", key);
    return -1;
  }
  json_array_foreach(v, i, e) {
    if (!json_is_string(e)) {
      snprintf(err, errlen, "%s[%zu]: a string expected", key, i);
      return -1;
    }
    if (add_line(dst, json_string_value(e)) != 0) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
  }
  return 0;
}

int netd_config_load(netd_config *c, const char *file, char *err, size_t errlen) {
  json_error_t je;
  json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &je), *v;
  const char *key;
  int rc = -1;
  if (!root) {
    snprintf(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
    return -1;
  }
  if (!json_is_object(root))
    FAIL("%s: a JSON object expected", file);
  json_object_foreach(root, key, v) {
    if (!strcmp(key, "profile") || !strcmp(key, "socket") || !strcmp(key, "upstream") ||
        !strcmp(key, "ca_file") || !strcmp(key, "tls_cert") || !strcmp(key, "tls_key")) {
      char **dst = !strcmp(key, "profile")    ? &c->profile
                   : !strcmp(key, "socket")   ? &c->socket_path
                   : !strcmp(key, "upstream") ? &c->upstream
                   : !strcmp(key, "tls_cert") ? &c->tls_cert
                   : !strcmp(key, "tls_key")  ? &c->tls_key
                                              : &c->ca_file;
      if (!json_is_string(v))
        FAIL("%s: %s: a string expected", file, key);
      if (set_str(dst, json_string_value(v)) != 0)
        FAIL("out of memory");
    } else if (!strcmp(key, "socket_mode")) {
      char *end;
      long m;
      if (!json_is_string(v))
        FAIL("%s: socket_mode: an octal string like \"0660\" expected", file);
      m = strtol(json_string_value(v), &end, 8);
      if (*end || m < 0 || m > 0777)
        FAIL("%s: socket_mode: an octal string like \"0660\" expected", file);
      c->socket_mode = (uint32_t)m;
    } else if (!strcmp(key, "proxy") || !strcmp(key, "gateway") || !strcmp(key, "metrics") ||
               !strcmp(key, "gateway_h2")) {
      char **h = !strcmp(key, "proxy")        ? &c->proxy_host
                 : !strcmp(key, "gateway")    ? &c->gateway_host
                 : !strcmp(key, "gateway_h2") ? &c->gateway_h2_host
                                              : &c->metrics_host;
      int *p = !strcmp(key, "proxy")        ? &c->proxy_port
               : !strcmp(key, "gateway")    ? &c->gateway_port
               : !strcmp(key, "gateway_h2") ? &c->gateway_h2_port
                                            : &c->metrics_port;
      if (!json_is_string(v) || netd_parse_hostport(json_string_value(v), h, p) != 0)
        FAIL("%s: %s: \"HOST:PORT\" expected (e.g. \"127.0.0.1:8080\")", file, key);
    } else if (!strcmp(key, "proxy_allow_remote") || !strcmp(key, "allow_unsigned") ||
               !strcmp(key, "fast_hits") || !strcmp(key, "cache_recompress")) {
      if (!json_is_boolean(v))
        FAIL("%s: %s: true or false expected", file, key);
      if (!strcmp(key, "allow_unsigned"))
        c->allow_unsigned = json_is_true(v);
      else if (!strcmp(key, "cache_recompress"))
        c->cache_recompress = json_is_true(v);
      else if (!strcmp(key, "fast_hits"))
        c->no_fast_hits = !json_is_true(v);
      else
        c->proxy_allow_remote = json_is_true(v);
    } else if (!strcmp(key, "lookup_threads")) {
      if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 64)
        FAIL("%s: lookup_threads: an integer from 0 to 64 expected", file);
      c->lookup_threads = (int)json_integer_value(v);
    } else if (!strcmp(key, "cache_max_bytes")) {
      /* up to 2^53: a JSON number every parser reads exactly */
      if (!json_is_integer(v) || json_integer_value(v) < NETD_CACHE_MIN ||
          json_integer_value(v) > (json_int_t)1 << 53)
        FAIL("%s: cache_max_bytes: an integer of bytes from 1048576 (1 MiB) expected", file);
      c->cache_max_bytes = (uint64_t)json_integer_value(v);
    } else if (!strcmp(key, "hot_body_bytes")) {
      if (!json_is_integer(v) || json_integer_value(v) < 0 ||
          json_integer_value(v) > (json_int_t)1 << 40)
        FAIL("%s: hot_body_bytes: an integer of bytes from 0 (none) to 2^40 expected", file);
      c->hot_body_bytes = (uint64_t)json_integer_value(v);
    } else if (!strcmp(key, "trusted_keys")) {
      if (str_list(v, &c->trusted_keys, key, err, errlen) != 0)
        goto out;
    } else if (!strcmp(key, "resolve")) {
      if (str_list(v, &c->resolve, key, err, errlen) != 0)
        goto out;
    } else if (!strcmp(key, "log")) {
      const char *k2;
      json_t *v2;
      if (!json_is_object(v))
        FAIL("%s: log: an object expected ({\"format\": \"text|json\", \"level\": ...})", file);
      json_object_foreach(v, k2, v2) {
        if (!strcmp(k2, "format") && json_is_string(v2) &&
            (!strcmp(json_string_value(v2), "text") || !strcmp(json_string_value(v2), "json")))
          c->log_json = !strcmp(json_string_value(v2), "json");
        else if (!strcmp(k2, "level") && json_is_string(v2) &&
                 level_of(json_string_value(v2), &c->log_level) == 0)
          ;
        else
          FAIL("%s: log.%s: unknown key or bad value (format: text|json; level: "
               "error|warn|info|debug|trace)",
               file, k2);
      }
    } else if (!strcmp(key, "warm")) {
      size_t i;
      json_t *e;
      if (!json_is_array(v))
        FAIL("%s: warm: an array of {\"manifest\", \"interval_s\", \"jitter_pct\"} expected",
             file);
      c->warms = calloc(json_array_size(v) + 1, sizeof(*c->warms));
      if (!c->warms)
        FAIL("out of memory");
      json_array_foreach(v, i, e) {
        netd_warm_entry *w = &c->warms[c->nwarms];
        const char *k2;
        json_t *v2;
        w->interval_s = 3600;
        w->jitter_pct = 10;
        if (!json_is_object(e))
          FAIL("%s: warm[%zu]: an object expected", file, i);
        json_object_foreach(e, k2, v2) {
          if (!strcmp(k2, "manifest") && json_is_string(v2)) {
            if (set_str(&w->manifest, json_string_value(v2)) != 0)
              FAIL("out of memory");
          } else if (!strcmp(k2, "interval_s") && json_is_integer(v2) &&
                     json_integer_value(v2) >= 10 && json_integer_value(v2) <= 30 * 86400) {
            w->interval_s = (uint32_t)json_integer_value(v2);
          } else if (!strcmp(k2, "jitter_pct") && json_is_integer(v2) &&
                     json_integer_value(v2) >= 0 && json_integer_value(v2) <= 50) {
            w->jitter_pct = (uint32_t)json_integer_value(v2);
          } else {
            FAIL("%s: warm[%zu].%s: unknown key or bad value (manifest: string; interval_s: "
                 "10..2592000; jitter_pct: 0..50)",
                 file, i, k2);
          }
        }
        if (!w->manifest)
          FAIL("%s: warm[%zu]: \"manifest\" is required", file, i);
        c->nwarms++;
      }
    } else {
      FAIL("%s: unknown key \"%s\" (see netd(8) for the keys)", file, key);
    }
  }
  rc = 0;
out:
  json_decref(root);
  return rc;
}

static int is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6);
  return strcmp(host, "localhost") == 0;
}

size_t netd_lookup_threads(const netd_config *c) {
  cpu_set_t set;
  if (c->lookup_threads >= 0)
    return (size_t)c->lookup_threads;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) < 2)
    return 0;
  return NETD_LOOKUP_THREADS;
}

int netd_config_check(const netd_config *c, char *err, size_t errlen) {
  if (!c->profile || !c->profile[0]) {
    snprintf(err, errlen, "a profile directory is required (--profile DIR or \"profile\")");
    return -1;
  }
  if ((c->gateway_port || c->gateway_h2_port) && !c->upstream) {
    snprintf(err, errlen, "the gateway needs an upstream (--upstream URL or \"upstream\")");
    return -1;
  }
  if (c->gateway_h2_port && (!c->tls_cert || !c->tls_key)) {
    snprintf(err, errlen,
             "the HTTP/2 gateway speaks TLS: it needs --tls-cert FILE and --tls-key FILE "
             "(or \"tls_cert\", \"tls_key\")");
    return -1;
  }
  if (c->upstream && strncmp(c->upstream, "http://", 7) != 0 &&
      strncmp(c->upstream, "https://", 8) != 0) {
    snprintf(err, errlen, "upstream \"%s\": an http:// or https:// URL expected", c->upstream);
    return -1;
  }
  if (!c->proxy_allow_remote) {
    if (c->proxy_port && !is_loopback(c->proxy_host)) {
      snprintf(err, errlen,
               "proxy on %s: not a loopback address (set \"proxy_allow_remote\": true to "
               "serve other hosts)",
               c->proxy_host);
      return -1;
    }
    if (c->gateway_port && !is_loopback(c->gateway_host)) {
      snprintf(err, errlen,
               "gateway on %s: not a loopback address (set \"proxy_allow_remote\": true to "
               "serve other hosts)",
               c->gateway_host);
      return -1;
    }
    if (c->gateway_h2_port && !is_loopback(c->gateway_h2_host)) {
      snprintf(err, errlen,
               "HTTP/2 gateway on %s: not a loopback address (set \"proxy_allow_remote\": "
               "true to serve other hosts)",
               c->gateway_h2_host);
      return -1;
    }
  }
  for (size_t i = 0; i < c->nwarms; i++)
    if (!c->warms[i].manifest) {
      snprintf(err, errlen, "warm[%zu]: no manifest", i);
      return -1;
    }
  return 0;
}

netstash_error netd_add_resolves(netstash_request *req, const char *list) {
  netstash_error e = NETSTASH_OK;
  const char *p = list;
  char line[512];
  while (p && *p && e == NETSTASH_OK) {
    size_t n = strcspn(p, "\n");
    if (n && n < sizeof(line)) {
      memcpy(line, p, n);
      line[n] = 0;
      e = netstash_request_add_resolve(req, line);
    }
    p += n;
    if (*p == '\n')
      p++;
  }
  return e;
}

netstash_error netd_relay_request(netstash_request *req, int has_accept_encoding) {
  netstash_error e = NETSTASH_OK;
  /* Without one the library would advertise "br, gzip, zstd" and, the body being
   * raw, hand the client a coding it never asked for. */
  if (!has_accept_encoding)
    e = netstash_request_add_header(req, "Accept-Encoding", "identity");
  /* Redirects are the client's business; bodies pass as sent (Content-
   * Encoding included), of any size (nothing is buffered: pull mode). */
  if (e == NETSTASH_OK)
    e = netstash_request_set_redirect_mode(req, NETSTASH_REDIRECT_MANUAL);
  if (e == NETSTASH_OK)
    e = netstash_request_set_raw_body(req, 1);
  if (e == NETSTASH_OK)
    e = netstash_request_set_max_body(req, UINT64_MAX);
  return e;
}
