/*
 * lookup_http.h — the synchronous preload lookup on netd's IPC socket:
 * HTTP/1.1 beside the IPC's HTTP/2.
 *
 * netstash_intercept_preloaded() (and netstash_preload_lookup()) on a
 * remote-mode context ask netd over a connection of the hit's own, from the
 * caller's thread: one request, one answer, no loop thread and no HTTP/2
 * framing — what a plain unix-socket ping-pong costs, plus netd's lookup and
 * an HTTP/1.1 head each way. netd tells the protocols apart by a
 * connection's first bytes, as HTTP servers that take h2c with prior
 * knowledge do: "PRI" opens the HTTP/2 client preface, anything else is
 * HTTP/1.1.
 *
 * Request: GET with the URL in absolute form, no body; other fields are
 * ignored ("GET https://app.test/a.js HTTP/1.1\r\nHost: netd\r\n\r\n").
 * Connections persist; requests may be pipelined.
 * With "X-Netstash-Lookup: cache" the lookup is netstash_intercept_cached's
 * instead: netd's HTTP cache, for the request made of the URL, every other
 * field of the lookup (Host and X-Netstash-* aside) and
 * X-Netstash-Top-Level-Site when present; a fresh stored answer comes as a
 * preloaded one does with "X-Netstash-Source: cache" (and its Age), no
 * preload id or version; anything else is the 502 NETSTASH_E_NOT_FOUND.
 * With "X-Netstash-Lookup: any" (netstash_intercept_lookup) netd answers
 * from its preload store as without the field and, when that has nothing,
 * from its HTTP cache as with "cache": one round trip for both checks.
 * Answer, from the preload store only:
 *  - preloaded: the stored status and fields, then Content-Length,
 *    X-Netstash-Source: preload, X-Netstash-Preload-Id and
 *    X-Netstash-Preload-Version; then the body (identity, as stored);
 *  - not (or not servable): 502 with X-Netstash-Error naming the library's
 *    error — NETSTASH_E_NOT_FOUND when nothing preloaded answers the URL —
 *    and no body: the IPC's convention for a failure before a response;
 *  - a request that is not such a GET: 400 (405 for another method), and
 *    the connection closes.
 */
#ifndef NS_PRELOAD_LOOKUP_HTTP_H
#define NS_PRELOAD_LOOKUP_HTTP_H

#define NS_LOOKUP_MAX_URL 8192u
/* Larger bodies are answered NETSTASH_E_TOO_LARGE: a job streams them. */
#define NS_LOOKUP_MAX_BODY (16u << 20)
#define NS_LOOKUP_MAX_HEAD (256u << 10)    /* an answer's head (the client's limit) */
#define NS_LOOKUP_MAX_REQ_HEAD (16u << 10) /* a request's head (netd's limit) */
#define NS_LOOKUP_MAX_FIELDS 64u           /* as a local hit keeps */

#endif /* NS_PRELOAD_LOOKUP_HTTP_H */
