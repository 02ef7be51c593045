/*
 * reader.h — a bounds-checked reader for HTTP field syntax (RFC 9110 §5.6),
 * plus HTTP-date (RFC 9110 §5.6.7). Internal.
 *
 * Every parser of header field values in lib/ (Cache-Control, Vary, Range,
 * No-Vary-Search, Set-Cookie, Alt-Svc, ...) reads through an ns_reader: a
 * cursor over a borrowed byte range that never reads outside it. No locale,
 * no <ctype.h>, no strtol: character classes and numbers are ASCII only.
 *
 *   ns_reader r;
 *   ns_span name, value;
 *   ns_reader_init(&r, field, field_len);
 *   while (ns_reader_list_next(&r)) {        // "a, b=1, , c" → a, b=1, c
 *     if (!ns_reader_token(&r, &name)) { ns_reader_list_skip(&r); continue; }
 *     ...
 *   }
 */
#ifndef NS_CORE_READER_H
#define NS_CORE_READER_H

#include "ns_setup.h"

#include "core/buf.h"

/* A borrowed byte range (not NUL-terminated). */
typedef struct ns_span {
  const char *p;
  size_t len;
} ns_span;

typedef struct ns_reader {
  const char *p;
  size_t len;
  size_t pos; /* 0..len */
} ns_reader;

/* ---- character classes (ASCII, RFC 9110 §5.6.2, RFC 5234 B.1) */
extern const unsigned char ns_tchar_table[256];
/* tchar (RFC 9110 §5.6.2): a table lookup, as it runs per byte of every
 * field name. c is a byte value (0..255) or EOF-like negative (not one). */
static inline int ns_is_tchar(int c) {
  return c >= 0 && c < 256 && ns_tchar_table[c];
}
static inline int ns_is_digit(int c) { return c >= '0' && c <= '9'; }
static inline int ns_is_alpha(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static inline int ns_is_ows(int c) { return c == ' ' || c == '\t'; }
/* field-vchar / obs-text / SP / HTAB: what a field value may contain
 * (RFC 9110 §5.5); excludes CTLs, in particular NUL, CR and LF. */
static inline int ns_is_field_char(int c) {
  return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f && c <= 0xff);
}

/* ---- spans */
static inline ns_span ns_span_make(const char *p, size_t len) {
  ns_span s;
  s.p = p;
  s.len = len;
  return s;
}
/* Case-insensitive (ASCII) comparison with a NUL-terminated literal. */
int ns_span_eq_ci(ns_span s, const char *lit);
/* Exact comparison. */
int ns_span_eq(ns_span a, ns_span b);
/* Strips leading and trailing OWS. */
ns_span ns_span_trim(ns_span s);

/* ---- the reader */
void ns_reader_init(ns_reader *r, const void *p, size_t len);
static inline size_t ns_reader_left(const ns_reader *r) { return r->len - r->pos; }
static inline int ns_reader_eof(const ns_reader *r) { return r->pos >= r->len; }
/* The next byte (0..255) without consuming it, or -1 at the end. */
int ns_reader_peek(const ns_reader *r);
/* Consumes c if it is next: 1, else 0. */
int ns_reader_skip_char(ns_reader *r, int c);
/* Consumes the literal if it is next, compared case-insensitively. */
int ns_reader_skip_lit_ci(ns_reader *r, const char *lit);
void ns_reader_skip_ows(ns_reader *r);
/* The rest of the input (consumed). */
ns_span ns_reader_rest(ns_reader *r);

/* token = 1*tchar (RFC 9110 §5.6.2). 1 and *out set, or 0 (nothing consumed). */
int ns_reader_token(ns_reader *r, ns_span *out);
/* 1*DIGIT as an unsigned number; values above max saturate to max (and
 * *saturated, if not NULL, is set). 0 when no digit is next. */
int ns_reader_uint(ns_reader *r, uint64_t max, uint64_t *out, int *saturated);
/* quoted-string (RFC 9110 §5.6.4). On success *raw (if not NULL) is the
 * content between the quotes with escapes still in place and, if unescaped is
 * not NULL, the unescaped content is appended to it. Returns NETSTASH_OK,
 * NETSTASH_E_PROTOCOL (not a well-formed quoted-string; the reader does not
 * move) or the ns_buf errors. */
netstash_error ns_reader_quoted(ns_reader *r, ns_span *raw, ns_buf *unescaped);
/* A token or a quoted-string, as used by parameter and directive values.
 * For a quoted-string *out is the raw content (escapes in place) and *quoted
 * is set. 0 when neither is next. */
int ns_reader_token_or_quoted(ns_reader *r, ns_span *out, int *quoted);

/* Comma-separated lists, #rule (RFC 9110 §5.6.1): skips OWS and empty
 * elements. Returns 1 when an element starts at the cursor, 0 at the end. */
int ns_reader_list_next(ns_reader *r);
/* Skips the rest of the current element up to (not including) the next
 * top-level comma, stepping over quoted-strings. */
void ns_reader_list_skip(ns_reader *r);
/* Parameters (RFC 9110 §5.6.6): parameters = *( OWS ";" OWS [ parameter ] ).
 * Reads the next one: 1 with name and value (value empty and *has_value 0 for
 * a bare name, a leniency shared with Cache-Control style directives), 0 when
 * no ';' follows (the reader is left at the OWS before whatever is next),
 * -1 on a syntax error. */
int ns_reader_param(ns_reader *r, ns_span *name, ns_span *value, int *has_value,
                    int *quoted);

/* ---- numbers used by HTTP caching */
/* delta-seconds (RFC 9111 §1.2.2): 1*DIGIT; a value too large saturates to
 * 2147483648 (2^31). The whole span must be digits: 0 otherwise. */
#define NS_DELTA_SECONDS_MAX INT64_C(2147483648)
int ns_delta_seconds_parse(ns_span s, int64_t *out);

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil); shared by the HTTP-date, cookie-date and RFC 3339
 * parsers. */
int64_t ns_days_from_civil(int64_t y, unsigned m, unsigned d);

/* ---- HTTP-date (RFC 9110 §5.6.7)
 * Accepts IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the obsolete RFC 850
 * form ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37
 * 1994"), with surrounding OWS. The day name must be a valid one but is not
 * checked against the date (as browsers). A two-digit RFC 850 year is put in
 * the century that makes it not more than 50 years after now_s (RFC 9110
 * §5.6.7). Seconds may be 60 (a leap second, counted into the next minute).
 * Returns NETSTASH_OK and *out_s (seconds since the epoch) or
 * NETSTASH_E_PROTOCOL for anything else (e.g. "0", "-1", a bad day of month)
 * — the caller decides what an invalid date means (for Expires: already
 * expired, RFC 9111 §5.3). */
netstash_error ns_http_date_parse(const char *s, size_t len, int64_t now_s,
                                  int64_t *out_s);
/* Formats t as IMF-fixdate into out (at least NS_HTTP_DATE_LEN bytes, NUL
 * included). Years outside 0..9999 are clamped. */
#define NS_HTTP_DATE_LEN 30
void ns_http_date_format(int64_t t, char *out);

#endif /* NS_CORE_READER_H */
