/*
 * fuzz/cache_control.c — lib/cache/cache.c (Cache-Control and the other
 * caching fields, the decision, validation, 304 merge, Vary, ranges,
 * No-Vary-Search) under libFuzzer.
 *
 * Input layout:
 *   bytes 0-3   status (uint16, mod 600) and two time offsets (int8, seconds,
 *               used for the request time and for "now")
 *   bytes 4..   text: response header lines, a line "--", request header
 *               lines (lines that are not valid fields are skipped). The
 *               whole text is also parsed as one Cache-Control value in both
 *               request and response mode.
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - the verdict is one of the enum values; the reason is a non-empty string;
 *    lifetime and age are never negative; FRESH for a stale response only
 *    with request max-stale; stale_if_error only with REVALIDATE;
 *  - a non-storable response's must-understand / no-store logic agrees with
 *    the parsed flags (no-store without must-understand → not storable);
 *  - 304 merge never changes Content-Length / Content-Type and is idempotent;
 *  - storage never drops the fields the cache rests on (unless Connection
 *    names them) and always drops Set-Cookie;
 *  - range answers stay inside the body; 206 has first <= last < len; a
 *    stored piece (a 206's Content-Range) answers only ranges inside it;
 *    a response's If-Range validator matches that response;
 *  - No-Vary-Search: a URL is always equivalent to itself;
 *  - cache keys and ns_url_parse: the allocation-free split of normalised
 *    URLs gives the same key / fields (or the same error) as curl_url.
 */
#include "ns_setup.h"

#include <stdlib.h>

#include "cache/cache.h"
#include "core/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

#define T0 INT64_C(1700000000000)

static void add_lines(ns_headers *h, const char *p, size_t len) {
  size_t i, start = 0;
  for (i = 0; i <= len; i++) {
    if (i == len || p[i] == '\n') {
      (void)ns_headers_add_line(h, p + start, i - start);
      start = i + 1;
    }
  }
}

static int same_values(const ns_headers *a, const ns_headers *b, const char *name) {
  size_t ia = 0, ib = 0;
  for (;;) {
    const ns_header_field *fa = ns_headers_next(a, &ia, name), *fb = ns_headers_next(b, &ib, name);
    if (!fa || !fb)
      return fa == fb;
    if (strcmp(fa->value, fb->value))
      return 0;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const ns_mem *mem = ns_mem_default();
  ns_headers resp, req, merged, merged2;
  ns_cache_control cc;
  ns_cache_stored st;
  ns_cache_request rq;
  ns_cache_decision d;
  ns_cache_range r;
  ns_cache_nvs nvs;
  const char *text, *sep, *why;
  size_t tlen, rlen;
  int status, eq, storable;
  int64_t now;

  if (size < 4)
    return 0;
  status = ((data[0] << 8) | data[1]) % 600;
  text = (const char *)data + 4;
  tlen = size - 4;

  /* one Cache-Control value, both modes */
  ns_cache_control_init(&cc);
  ns_cache_control_parse(&cc, text, tlen, 0);
  ns_cache_control_init(&cc);
  ns_cache_control_parse(&cc, text, tlen, 1);
  CHECK(cc.max_age_s >= 0 && cc.max_stale_s >= 0 && cc.min_fresh_s >= 0 && cc.swr_s >= 0 &&
        cc.sie_s >= 0);

  ns_headers_init(&resp, mem);
  ns_headers_init(&req, mem);
  ns_headers_init(&merged, mem);
  ns_headers_init(&merged2, mem);
  sep = memmem(text, tlen, "\n--\n", 4);
  rlen = sep ? (size_t)(sep - text) : tlen;
  add_lines(&resp, text, rlen);
  if (sep)
    add_lines(&req, sep + 4, tlen - rlen - 4);

  memset(&st, 0, sizeof(st));
  st.status = status;
  st.headers = &resp;
  st.vary_request = &req;
  st.response_time_ms = T0;
  st.request_time_ms = T0 + (int8_t)data[2] * INT64_C(1000);
  now = T0 + (int8_t)data[3] * INT64_C(10000);
  rq.method = (data[0] & 0x80) ? "HEAD" : "GET";
  rq.url = "https://example.com/p?a=1&b=2";
  rq.headers = &req;

  storable = ns_cache_storable(&rq, status, &resp, &why);
  CHECK(why != NULL);
  ns_cache_control_from_headers(&cc, &resp, 0);
  if ((cc.flags & NS_CC_NO_STORE) && !(cc.flags & NS_CC_MUST_UNDERSTAND))
    CHECK(!storable);

  ns_cache_decide(NULL, &rq, &st, now, &d);
  CHECK(d.verdict >= NS_CACHE_MISS && d.verdict <= NS_CACHE_GATEWAY_TIMEOUT);
  CHECK(d.reason[0] != 0 && memchr(d.reason, 0, sizeof(d.reason)) != NULL);
  CHECK(d.lifetime_ms >= 0 && d.age_ms >= 0);
  if (d.stale_if_error)
    CHECK(d.verdict == NS_CACHE_REVALIDATE);
  if (d.verdict == NS_CACHE_FRESH && d.stale) {
    ns_cache_control_from_headers(&cc, &req, 1);
    CHECK(cc.flags & NS_CC_MAX_STALE);
  }
  /* a decision on the stored side prepared once (kept entries) is the same
   * decision, when it is prepared and when it is reused at another time */
  {
    ns_cache_prepared prep;
    ns_cache_decision d1, d2, d3;
    int64_t later = now + (int8_t)data[2] * INT64_C(7000);
    memset(&prep, 0, sizeof(prep));
    st.prep = &prep;
    ns_cache_decide(NULL, &rq, &st, now, &d1);
    CHECK(prep.valid);
    ns_cache_decide(NULL, &rq, &st, later, &d2);
    st.prep = NULL;
    ns_cache_decide(NULL, &rq, &st, later, &d3);
    CHECK(memcmp(&d1, &d, sizeof(d)) == 0);
    CHECK(memcmp(&d2, &d3, sizeof(d3)) == 0);
  }
  ns_cache_decide(NULL, &rq, NULL, now, &d);
  CHECK(d.verdict == NS_CACHE_MISS || d.verdict == NS_CACHE_GATEWAY_TIMEOUT);

  /* validators */
  {
    ns_headers out;
    int added = -1;
    ns_headers_init(&out, mem);
    CHECK(ns_cache_add_validators(&st, &out, &added) == NETSTASH_OK);
    CHECK(added >= 0 && added <= 2 && (size_t)added == ns_headers_len(&out));
    ns_headers_free(&out);
  }

  /* 304: the request part plays the 304 */
  (void)ns_cache_304_matches(&st, &req);
  CHECK(ns_headers_copy(&merged, &resp) == NETSTASH_OK);
  CHECK(ns_cache_merge_304(&merged, &req) == NETSTASH_OK);
  CHECK(same_values(&merged, &resp, "Content-Length"));
  CHECK(same_values(&merged, &resp, "Content-Type"));
  CHECK(ns_headers_copy(&merged2, &merged) == NETSTASH_OK);
  CHECK(ns_cache_merge_304(&merged2, &req) == NETSTASH_OK);
  CHECK(merged.len == merged2.len);

  /* storage drops hop-by-hop fields, Set-Cookie and what a qualified
   * no-cache lists, never the fields the cache itself rests on */
  {
    static const char *const kept[] = {
        "Cache-Control", "Content-Encoding", "Content-Length", "Vary", "ETag", "Expires"};
    ns_headers stored;
    size_t k;
    ns_headers_init(&stored, mem);
    CHECK(ns_headers_copy(&stored, &resp) == NETSTASH_OK);
    CHECK(ns_cache_prepare_for_storage(&stored, now) == NETSTASH_OK);
    if (ns_headers_count(&resp, "Connection") == 0)
      for (k = 0; k < sizeof(kept) / sizeof(kept[0]); k++)
        CHECK(same_values(&stored, &resp, kept[k]));
    CHECK(ns_headers_count(&stored, "Set-Cookie") == 0);
    ns_headers_free(&stored);
  }

  /* Vary */
  {
    ns_headers snap;
    ns_headers_init(&snap, mem);
    CHECK(ns_cache_vary_snapshot(&resp, &req, &snap) == NETSTASH_OK);
    /* a request always matches its own snapshot unless Vary has "*" */
    if (ns_cache_vary_matches(&resp, &snap, &req) == 0) {
      size_t it = 0;
      const ns_header_field *f;
      int star = 0;
      while ((f = ns_headers_next(&resp, &it, "Vary")) != NULL)
        if (strchr(f->value, '*') || f->value_len >= 255)
          star = 1; /* "*", or a name too long to ever match */
      CHECK(star);
    }
    ns_headers_free(&snap);
  }

  /* ranges */
  {
    uint64_t len = (uint64_t)data[2] * 37;
    ns_cache_range_decide(&req, 200, &resp, len, &r);
    CHECK(r.status == 200 || r.status == 206 || r.status == 416);
    CHECK(r.reason != NULL);
    if (r.status == 206)
      CHECK(r.first <= r.last && r.last < len);
  }
  /* a stored piece: what it answers stays inside it; its validator is its
   * own */
  {
    uint64_t a, b, n;
    const char *v = ns_cache_if_range(&resp);
    if (status == 206 && storable)
      CHECK(ns_cache_piece(&resp, &a, &b, &n));
    if (ns_cache_piece(&resp, &a, &b, &n)) {
      CHECK(a <= b && b < n);
      ns_cache_range_decide(&req, 206, &resp, b - a + 1, &r);
      CHECK(r.status == 200 || r.status == 206 || r.status == 416);
      if (r.status == 206)
        CHECK(r.body_offset == a && a <= r.first && r.first <= r.last && r.last <= b);
    }
    CHECK(!v || ns_cache_same_validator(&resp, &resp));
  }

  /* keys for a store with a key-length limit */
  {
    ns_buf k;
    ns_buf_init(&k, mem, (size_t)1 << 24);
    CHECK(ns_cache_key_fit(text, tlen, 100, &k) == NETSTASH_OK);
    CHECK(k.len == (tlen <= 100 ? tlen : 100));
    ns_buf_free(&k);
  }

  /* cache keys: the fast split of normalised URLs and curl_url agree, for
   * the first line as a URL and as a path on a fixed origin */
  {
    char url[600];
    size_t l = 0;
    while (l < tlen && l < 300 && text[l] != '\n' && text[l] != 0)
      l++;
    for (int form = 0; form < 2; form++) {
      ns_buf kf, ks;
      netstash_error ef, es;
      snprintf(url, sizeof(url), "%s%.*s", form ? "https://fuzz.example:8443/" : "", (int)l, text);
      ns_buf_init(&kf, mem, (size_t)1 << 20);
      ns_buf_init(&ks, mem, (size_t)1 << 20);
      ef = ns_cache_key(NULL, form ? url : NULL, url, &kf);
      ns_url_fast_set(0);
      es = ns_cache_key(NULL, form ? url : NULL, url, &ks);
      ns_url_fast_set(1);
      CHECK(ef == es);
      CHECK(ef != NETSTASH_OK || strcmp(ns_buf_str(&kf), ns_buf_str(&ks)) == 0);
      ns_buf_free(&kf);
      ns_buf_free(&ks);
      { /* and ns_url_parse, which shares the split */
        ns_url ua, ub;
        ef = ns_url_parse(mem, url, &ua, NULL, 0);
        ns_url_fast_set(0);
        es = ns_url_parse(mem, url, &ub, NULL, 0);
        ns_url_fast_set(1);
        CHECK(ef == es);
        if (ef == NETSTASH_OK) {
          CHECK(!strcmp(ua.url, ub.url) && !strcmp(ua.scheme, ub.scheme) &&
                !strcmp(ua.host, ub.host) && ua.port == ub.port &&
                ua.host_is_ip == ub.host_is_ip && ua.ipv6 == ub.ipv6);
          ns_url_free(mem, &ua);
          ns_url_free(mem, &ub);
        }
      }
    }
  }

  /* No-Vary-Search */
  CHECK(ns_cache_nvs_parse(mem, &resp, &nvs) == NETSTASH_OK);
  CHECK(ns_cache_nvs_equivalent(mem, &nvs, rq.url, rq.url, &eq) == NETSTASH_OK && eq);
  {
    ns_buf q;
    netstash_error e;
    ns_buf_init(&q, mem, (size_t)1 << 24);
    e = ns_cache_nvs_canonical_query(mem, &nvs, text, tlen, &q);
    CHECK(e == NETSTASH_OK || e == NETSTASH_E_TOO_LARGE);
    ns_buf_free(&q);
  }
  ns_cache_nvs_free(mem, &nvs);

  ns_headers_free(&resp);
  ns_headers_free(&req);
  ns_headers_free(&merged);
  ns_headers_free(&merged2);
  return 0;
}
