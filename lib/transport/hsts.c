#include "ns_setup.h"

#include <stdio.h>

#include "core/reader.h"
#include "store/store.h"
#include "transport/hsts.h"

#define HSTS_PREFIX "hsts "
#define HSTS_REC_VERSION 1

int ns_sts_parse(const char *value, size_t len, int64_t *max_age_s, int *include_subdomains) {
  ns_reader r;
  int have_max_age = 0, have_sub = 0;
  *max_age_s = 0;
  *include_subdomains = 0;
  ns_reader_init(&r, value, len);
  for (;;) {
    ns_span name, v;
    int quoted = 0;
    ns_reader_skip_ows(&r);
    if (ns_reader_eof(&r))
      break;
    if (ns_reader_skip_char(&r, ';'))
      continue; /* empty directive */
    if (!ns_reader_token(&r, &name))
      return 0;
    ns_reader_skip_ows(&r);
    if (ns_reader_skip_char(&r, '=')) {
      ns_reader_skip_ows(&r);
      if (!ns_reader_token_or_quoted(&r, &v, &quoted))
        return 0;
      if (ns_span_eq_ci(name, "max-age")) {
        int64_t secs;
        if (have_max_age++ || !ns_delta_seconds_parse(v, &secs))
          return 0;
        *max_age_s = secs;
      } else if (ns_span_eq_ci(name, "includesubdomains")) {
        return 0; /* takes no value */
      }
    } else if (ns_span_eq_ci(name, "includesubdomains")) {
      if (have_sub++)
        return 0;
      *include_subdomains = 1;
    } else if (ns_span_eq_ci(name, "max-age")) {
      return 0;
    }
    ns_reader_skip_ows(&r);
    if (!ns_reader_eof(&r) && !ns_reader_skip_char(&r, ';'))
      return 0;
  }
  return have_max_age;
}

static int make_key(const char *host, char *key, size_t cap) {
  int n = snprintf(key, cap, HSTS_PREFIX "%s", host);
  return n > 0 && (size_t)n < cap;
}

netstash_error ns_hsts_save(ns_store *store, const char *host, int64_t now_ms, int64_t max_age_s,
                            int include_subdomains) {
  char key[300];
  uint8_t v[10];
  uint64_t exp;
  netstash_error rv;
  if (!make_key(host, key, sizeof(key)))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (max_age_s <= 0) {
    rv = ns_store_del(store, NS_STORE_HTTP, key, strlen(key));
    return rv == NETSTASH_E_NOT_FOUND ? NETSTASH_OK : rv;
  }
  if (max_age_s > (int64_t)400 * 86400)
    max_age_s = (int64_t)400 * 86400; /* as Chromium caps it */
  exp = (uint64_t)(now_ms + max_age_s * 1000);
  v[0] = HSTS_REC_VERSION;
  v[1] = include_subdomains ? 1 : 0;
  for (int i = 0; i < 8; i++)
    v[2 + i] = (uint8_t)(exp >> (56 - 8 * i));
  return ns_store_put(store, NS_STORE_HTTP, key, strlen(key), v, sizeof(v), NULL,
                      NS_STORE_REC_PINNED);
}

typedef struct load_ctx {
  ns_hsts_entry *out;
  size_t max, n;
  int64_t now_ms;
} load_ctx;

static int load_one(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  load_ctx *lc = ud;
  size_t hl = keylen - (sizeof(HSTS_PREFIX) - 1);
  uint64_t exp = 0;
  if (lc->n >= lc->max)
    return 1;
  if (rec->value_len != 10 || rec->value[0] != HSTS_REC_VERSION || hl == 0 ||
      hl >= sizeof(lc->out[0].host))
    return 0; /* not ours or damaged: skip */
  for (int i = 0; i < 8; i++)
    exp = (exp << 8) | rec->value[2 + i];
  if ((int64_t)exp <= lc->now_ms)
    return 0;
  memcpy(lc->out[lc->n].host, key + sizeof(HSTS_PREFIX) - 1, hl);
  lc->out[lc->n].host[hl] = 0;
  lc->out[lc->n].expires_ms = (int64_t)exp;
  lc->out[lc->n].include_subdomains = rec->value[1] != 0;
  lc->n++;
  return 0;
}

netstash_error ns_hsts_load(ns_store *store, const ns_mem *mem, int64_t now_ms,
                            ns_hsts_entry *out, size_t max, size_t *n) {
  ns_store_reader *r = NULL;
  load_ctx lc = {out, max, 0, now_ms};
  netstash_error rv;
  (void)mem;
  *n = 0;
  rv = ns_store_reader_new(store, &r);
  if (rv != NETSTASH_OK)
    return rv;
  rv = ns_store_read_begin(r);
  if (rv == NETSTASH_OK) {
    rv = ns_store_iterate(r, NS_STORE_HTTP, HSTS_PREFIX, sizeof(HSTS_PREFIX) - 1, load_one, &lc);
    ns_store_read_end(r);
  }
  ns_store_reader_del(r);
  *n = lc.n;
  return rv;
}
