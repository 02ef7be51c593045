/*
 * parse.c — Set-Cookie parsing (RFC 6265bis §5.6), cookie-date (§5.1.1),
 * default-path and path-match (§5.1.4), domain-match (§5.1.3).
 */
#include "ns_setup.h"

#include "cookie/parse.h"
#include "core/url.h"

/* ------------------------------------------------------------ helpers */

/* Consumes bytes while pred holds (or, with until >= 0, up to that byte) and
 * returns them as a span. Bounds-checked through the reader. */
static ns_span read_until(ns_reader *r, int until) {
  size_t start = r->pos;
  int c;
  while ((c = ns_reader_peek(r)) >= 0 && c != until)
    ns_reader_skip_char(r, c);
  return ns_span_make(r->p + start, r->pos - start);
}

/* Splits s at the first '=': 1 when there is one. */
static int split_eq(ns_span s, ns_span *left, ns_span *right) {
  ns_reader r;
  ns_reader_init(&r, s.p, s.len);
  *left = read_until(&r, '=');
  if (!ns_reader_skip_char(&r, '=')) {
    *right = ns_span_make(s.p + s.len, 0);
    return 0;
  }
  *right = ns_reader_rest(&r);
  return 1;
}

static int64_t add_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

static int64_t mul_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    return (a > 0) == (b > 0) ? INT64_MAX : INT64_MIN;
  return r;
}

/* ------------------------------------------------------------ §5.1.1 dates */

/* delimiter = %x09 / %x20-2F / %x3B-40 / %x5B-60 / %x7B-7E */
static int is_delim(int c) {
  return c == 0x09 || (c >= 0x20 && c <= 0x2f) || (c >= 0x3b && c <= 0x40) ||
         (c >= 0x5b && c <= 0x60) || (c >= 0x7b && c <= 0x7e);
}

/* Reads 1..max digits at the cursor; the byte after them (if any) must be a
 * non-digit (guaranteed since at most max are taken and the next is checked). */
static int digits(ns_reader *r, unsigned min, unsigned max, unsigned *out) {
  unsigned n = 0, v = 0;
  int c;
  while ((c = ns_reader_peek(r)) >= 0 && ns_is_digit(c)) {
    if (n == max)
      return 0; /* one digit too many */
    v = v * 10 + (unsigned)(c - '0');
    n++;
    ns_reader_skip_char(r, c);
  }
  if (n < min)
    return 0;
  *out = v;
  return 1;
}

/* time = hms-time [ non-digit *OCTET ]
 * hms-time = time-field ":" time-field ":" time-field; time-field = 1*2DIGIT */
static int tok_time(ns_span t, unsigned *h, unsigned *m, unsigned *s) {
  ns_reader r;
  ns_reader_init(&r, t.p, t.len);
  return digits(&r, 1, 2, h) && ns_reader_skip_char(&r, ':') && digits(&r, 1, 2, m) &&
         ns_reader_skip_char(&r, ':') && digits(&r, 1, 2, s);
}

/* day-of-month = 1*2DIGIT [ non-digit *OCTET ]; year = 2*4DIGIT [...] */
static int tok_num(ns_span t, unsigned min, unsigned max, unsigned *v) {
  ns_reader r;
  ns_reader_init(&r, t.p, t.len);
  return digits(&r, min, max, v);
}

/* month = ( "jan" / "feb" / ... ) *OCTET, case-insensitive */
static int tok_month(ns_span t, unsigned *mon) {
  static const char *const k[12] = {"jan", "feb", "mar", "apr", "may", "jun",
                                    "jul", "aug", "sep", "oct", "nov", "dec"};
  unsigned i;
  for (i = 0; i < 12; i++) {
    ns_reader r;
    ns_reader_init(&r, t.p, t.len);
    if (ns_reader_skip_lit_ci(&r, k[i])) {
      *mon = i + 1;
      return 1;
    }
  }
  return 0;
}

static unsigned days_in_month(unsigned y, unsigned m) {
  static const unsigned k[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : k[m - 1];
}

int ns_cookie_date_parse(const char *s, size_t len, int64_t *out_s) {
  ns_reader r;
  int found_time = 0, found_day = 0, found_month = 0, found_year = 0;
  unsigned h = 0, mi = 0, sec = 0, day = 0, mon = 0, year = 0;

  ns_reader_init(&r, s, len);
  for (;;) {
    size_t start;
    int c;
    ns_span tok;
    /* step 1: date-token-list = date-token *( 1*delimiter date-token ) */
    while ((c = ns_reader_peek(&r)) >= 0 && is_delim(c))
      ns_reader_skip_char(&r, c);
    if (ns_reader_eof(&r))
      break;
    start = r.pos;
    while ((c = ns_reader_peek(&r)) >= 0 && !is_delim(c))
      ns_reader_skip_char(&r, c);
    tok = ns_span_make(r.p + start, r.pos - start);
    /* step 2: the first production that matches takes the token */
    if (!found_time && tok_time(tok, &h, &mi, &sec))
      found_time = 1;
    else if (!found_day && tok_num(tok, 1, 2, &day))
      found_day = 1;
    else if (!found_month && tok_month(tok, &mon))
      found_month = 1;
    else if (!found_year && tok_num(tok, 2, 4, &year))
      found_year = 1;
  }
  /* steps 3-4: two-digit years */
  if (found_year && year >= 70 && year <= 99)
    year += 1900;
  else if (found_year && year <= 69)
    year += 2000;
  /* step 5 */
  if (!found_time || !found_day || !found_month || !found_year)
    return 0;
  if (day < 1 || day > 31 || year < 1601 || h > 23 || mi > 59 || sec > 59)
    return 0;
  /* step 6: the date must exist */
  if (day > days_in_month(year, mon))
    return 0;
  *out_s = ns_days_from_civil(year, mon, day) * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec;
  return 1;
}

/* ------------------------------------------------------------ §5.6 */

int ns_cookie_parse(const char *line, size_t len, int64_t now_ms, ns_cookie_parsed *out) {
  ns_reader r;
  ns_span nv, name, value;
  size_t i;
  int have_max_age = 0, have_expires = 0;
  int64_t max_age_exp = 0, expires_exp = 0;
  int64_t limit = add_sat(now_ms, NS_COOKIE_MAX_AGE_MS);

  memset(out, 0, sizeof(*out));
  /* step 1: CTLs other than HTAB anywhere: ignore the whole line */
  ns_reader_init(&r, line, len);
  for (i = 0; i < r.len; i++)
    if (ns_cookie_ctl((unsigned char)r.p[i]))
      return 0;
  /* step 2: name-value-pair up to the first ';' */
  nv = read_until(&r, ';');
  /* step 3: no '=': the name is empty and all of it is the value */
  if (!split_eq(nv, &name, &value)) {
    value = name;
    name = ns_span_make(nv.p, 0);
  }
  /* step 4 */
  out->name = ns_span_trim(name);
  out->value = ns_span_trim(value);
  /* step 5 and §5.7 step 2 */
  if (out->name.len + out->value.len > NS_COOKIE_MAX_NAME_VALUE)
    return 0;
  if (out->name.len == 0 && out->value.len == 0)
    return 0;

  /* §5.6 unparsed-attributes */
  while (ns_reader_skip_char(&r, ';')) {
    ns_span av = read_until(&r, ';'), an, aval;
    split_eq(av, &an, &aval);
    an = ns_span_trim(an);
    aval = ns_span_trim(aval);
    if (aval.len > NS_COOKIE_MAX_ATTR_VALUE)
      continue; /* step 6 */
    if (ns_span_eq_ci(an, "expires")) {
      /* §5.6.1 */
      int64_t t;
      if (!ns_cookie_date_parse(aval.p, aval.len, &t))
        continue;
      t = mul_sat(t, 1000);
      have_expires = 1;
      expires_exp = t > limit ? limit : t;
    } else if (ns_span_eq_ci(an, "max-age")) {
      /* §5.6.2: 1*DIGIT or "-" 1*DIGIT, anything else ignores the attribute */
      ns_reader vr;
      int neg;
      uint64_t secs;
      ns_reader_init(&vr, aval.p, aval.len);
      neg = ns_reader_skip_char(&vr, '-');
      if (!ns_reader_uint(&vr, UINT64_MAX / 2, &secs, NULL) || !ns_reader_eof(&vr))
        continue;
      have_max_age = 1;
      if (neg || secs == 0)
        max_age_exp = NS_COOKIE_EXPIRY_EARLIEST;
      else if (secs > (uint64_t)(NS_COOKIE_MAX_AGE_MS / 1000))
        max_age_exp = limit;
      else
        max_age_exp = add_sat(now_ms, (int64_t)secs * 1000);
    } else if (ns_span_eq_ci(an, "domain")) {
      /* §5.6.3: empty value ignored; a leading dot is dropped */
      ns_span d = aval;
      if (d.len && d.p[0] == '.') {
        d.p++;
        d.len--;
      }
      if (aval.len == 0)
        continue;
      out->has_domain = 1;
      out->domain = d; /* "Domain=.": empty, host-only (§5.7 step 9) */
    } else if (ns_span_eq_ci(an, "path")) {
      /* §5.6.4 */
      out->has_path = 1;
      if (aval.len == 0 || aval.p[0] != '/')
        out->path = ns_span_make(aval.p, 0);
      else
        out->path = aval;
    } else if (ns_span_eq_ci(an, "secure")) {
      out->secure = 1; /* §5.6.5 */
    } else if (ns_span_eq_ci(an, "httponly")) {
      out->http_only = 1; /* §5.6.6 */
    } else if (ns_span_eq_ci(an, "samesite")) {
      /* §5.6.7: an unknown value means "Default" */
      if (ns_span_eq_ci(aval, "none"))
        out->same_site = NS_COOKIE_SS_NONE;
      else if (ns_span_eq_ci(aval, "strict"))
        out->same_site = NS_COOKIE_SS_STRICT;
      else if (ns_span_eq_ci(aval, "lax"))
        out->same_site = NS_COOKIE_SS_LAX;
      else
        out->same_site = NS_COOKIE_SS_UNSET;
    } else if (ns_span_eq_ci(an, "partitioned")) {
      out->partitioned = 1; /* CHIPS (draft-cutler-httpbis-partitioned-cookies) */
    }
  }
  /* §5.7 step 6: Max-Age has precedence over Expires */
  if (have_max_age) {
    out->persistent = 1;
    out->expiry_ms = max_age_exp;
  } else if (have_expires) {
    out->persistent = 1;
    out->expiry_ms = expires_exp;
  } else {
    out->expiry_ms = NS_COOKIE_EXPIRY_SESSION;
  }
  return 1;
}

/* ------------------------------------------------------------ matching */

ns_span ns_cookie_default_path(ns_span p) {
  size_t i, last = 0;
  /* §5.1.4 steps 2-4 */
  if (p.len == 0 || p.p[0] != '/')
    return ns_span_make("/", 1);
  for (i = 0; i < p.len; i++)
    if (p.p[i] == '/')
      last = i;
  if (last == 0)
    return ns_span_make("/", 1);
  return ns_span_make(p.p, last);
}

int ns_cookie_path_match(ns_span rp, const char *cp, size_t cl) {
  if (cl > rp.len || memcmp(rp.p, cp, cl) != 0)
    return 0;
  if (cl == rp.len)
    return 1; /* identical */
  if (cl && cp[cl - 1] == '/')
    return 1;
  return rp.p[cl] == '/';
}

int ns_cookie_domain_match(const char *host, size_t hl, int host_is_ip, const char *d,
                           size_t dl) {
  if (hl == dl)
    return memcmp(host, d, dl) == 0;
  if (host_is_ip || dl == 0 || dl > hl)
    return 0;
  return host[hl - dl - 1] == '.' && memcmp(host + hl - dl, d, dl) == 0;
}
