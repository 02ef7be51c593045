/*
 * url_corpus.h — URLs for the tests that compare libnetstash's allocation-free
 * split of normalised URLs (ns_url_split_canonical) with curl_url: forms it
 * takes and forms it must leave to curl (case, dot segments, escapes,
 * spaces, fragments, empty queries, numeric and IPv6 hosts, userinfo, ports,
 * IDN, schemes). Shared by tests/unit/core_test.c and cache_test.c.
 */
#ifndef NST_URL_CORPUS_H
#define NST_URL_CORPUS_H

static const char *const nst_url_corpus[] = {
      "https://example.com/", "http://example.com/a/b?c=d", "https://example.com:443/x",
      "http://example.com:80/x", "https://example.com:8443/x?y", "https://a-b.c-d.example/p;q=1",
      "https://EXAMPLE.com/A", "https://example.com", "https://example.com?q",
      "https://example.com/a/./b", "https://example.com/a/../b", "https://example.com/.well-known/x",
      "https://example.com/a%20b", "https://example.com/a b", "https://example.com/a#frag",
      "https://example.com/?", "https://example.com/p?", "https://127.0.0.1:8443/r/1.bin",
      "https://127.1/x", "https://0x7f.1/x", "https://[::1]:443/x", "https://user:pw@example.com/x",
      "https://example.com:0443/x", "https://example.com:65536/x", "https://example.com:/x",
      "https://example..com/x", "https://.example.com/x", "https://example.com./x",
      "https://xn--bcher-kva.example/x", "https://b\xc3\xbc" "cher.example/x", "https://example.com/a\\b",
      "https://example.com/~user/_x-y.z!$&'()*+,;=:@", "https://example.com/q?a=1&b=2?c/d",
      "http://localhost:3000/api", "https://ex.test/" , "https://e.com/" "%2e%2e/x",
      "ftp://example.com/x", "https://-bad.example/x", "https://bad-.example/x", "https://9.example/x",
      "https://example.9/x", "http://10.0.0.1/x", "http://10.0.0.256/x", "http://10.00.0.1/x",
      "http://10.0.0/x", "http://10.0.0.1.2/x", "http://10.0.0.1./x", "http://0.0.0.0:1/x",
      "http://1.2.3.04/x", "http://255.255.255.255/", "http://1.2.3.4a/x", "http://a.1.2.3/x",
    "http://a.b1/x", "https://x.test:65535/",
};

#endif
