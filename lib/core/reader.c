/*
 * reader.c — bounds-checked HTTP field syntax reader and HTTP-date.
 */
#include "ns_setup.h"

#include "core/reader.h"
#include "core/url.h"

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA   (RFC 9110 §5.6.2) */
#define T4(a, b, c, d) a, b, c, d
const unsigned char ns_tchar_table[256] = {
    /* 0x00-0x1f: CTLs */
    T4(0, 0, 0, 0), T4(0, 0, 0, 0), T4(0, 0, 0, 0), T4(0, 0, 0, 0), T4(0, 0, 0, 0), T4(0, 0, 0, 0),
    T4(0, 0, 0, 0), T4(0, 0, 0, 0),
    /* SP ! " # $ % & ' ( ) * + , - . / */
    T4(0, 1, 0, 1), T4(1, 1, 1, 1), T4(0, 0, 1, 1), T4(0, 1, 1, 0),
    /* 0-9 : ; < = > ? */
    T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 0, 0), T4(0, 0, 0, 0),
    /* @ A-O */
    T4(0, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 1),
    /* P-Z [ \ ] ^ _ */
    T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 0), T4(0, 0, 1, 1),
    /* ` a-o */
    T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 1),
    /* p-z { | } ~ DEL */
    T4(1, 1, 1, 1), T4(1, 1, 1, 1), T4(1, 1, 1, 0), T4(1, 0, 1, 0),
    /* 0x80-0xff: not ASCII */
};
#undef T4

int ns_span_eq_ci(ns_span s, const char *lit) {
  size_t n = strlen(lit);
  return s.len == n && ns_ascii_casecmp_n(s.p, lit, n) == 0;
}

int ns_span_eq(ns_span a, ns_span b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

ns_span ns_span_trim(ns_span s) {
  while (s.len && ns_is_ows((unsigned char)s.p[0])) {
    s.p++;
    s.len--;
  }
  while (s.len && ns_is_ows((unsigned char)s.p[s.len - 1]))
    s.len--;
  return s;
}

void ns_reader_init(ns_reader *r, const void *p, size_t len) {
  r->p = p ? p : "";
  r->len = p ? len : 0;
  r->pos = 0;
}

int ns_reader_peek(const ns_reader *r) {
  return r->pos < r->len ? (unsigned char)r->p[r->pos] : -1;
}

int ns_reader_skip_char(ns_reader *r, int c) {
  if (ns_reader_peek(r) == c) {
    r->pos++;
    return 1;
  }
  return 0;
}

int ns_reader_skip_lit_ci(ns_reader *r, const char *lit) {
  size_t n = strlen(lit);
  if (ns_reader_left(r) < n || ns_ascii_casecmp_n(r->p + r->pos, lit, n) != 0)
    return 0;
  r->pos += n;
  return 1;
}

void ns_reader_skip_ows(ns_reader *r) {
  while (r->pos < r->len && ns_is_ows((unsigned char)r->p[r->pos]))
    r->pos++;
}

ns_span ns_reader_rest(ns_reader *r) {
  ns_span s = ns_span_make(r->p + r->pos, r->len - r->pos);
  r->pos = r->len;
  return s;
}

int ns_reader_token(ns_reader *r, ns_span *out) {
  size_t start = r->pos;
  while (r->pos < r->len && ns_is_tchar((unsigned char)r->p[r->pos]))
    r->pos++;
  if (r->pos == start)
    return 0;
  if (out)
    *out = ns_span_make(r->p + start, r->pos - start);
  return 1;
}

int ns_reader_uint(ns_reader *r, uint64_t max, uint64_t *out, int *saturated) {
  uint64_t v = 0;
  int sat = 0;
  size_t start = r->pos;
  while (r->pos < r->len && ns_is_digit((unsigned char)r->p[r->pos])) {
    unsigned d = (unsigned)(r->p[r->pos] - '0');
    if (!sat && (v > (max - d) / 10))
      sat = 1;
    if (!sat)
      v = v * 10 + d;
    r->pos++;
  }
  if (r->pos == start)
    return 0;
  if (sat)
    v = max;
  if (out)
    *out = v;
  if (saturated)
    *saturated = sat;
  return 1;
}

/* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
 * qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
 * quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )      (RFC 9110 §5.6.4) */
netstash_error ns_reader_quoted(ns_reader *r, ns_span *raw, ns_buf *unescaped) {
  size_t i = r->pos, start;
  size_t ulen0 = unescaped ? unescaped->len : 0;
  netstash_error rv;
  if (ns_reader_peek(r) != '"')
    return NETSTASH_E_PROTOCOL;
  start = ++i;
  while (i < r->len) {
    int c = (unsigned char)r->p[i];
    if (c == '"') {
      if (raw)
        *raw = ns_span_make(r->p + start, i - start);
      r->pos = i + 1;
      return NETSTASH_OK;
    }
    if (c == '\\') {
      int e;
      if (i + 1 >= r->len)
        break;
      e = (unsigned char)r->p[i + 1];
      if (!(e == '\t' || e == ' ' || (e >= 0x21 && e != 0x7f)))
        break;
      if (unescaped && (rv = ns_buf_append(unescaped, &r->p[i + 1], 1)) != NETSTASH_OK)
        goto fail;
      i += 2;
      continue;
    }
    if (!(c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f)))
      break;
    if (unescaped && (rv = ns_buf_append(unescaped, &r->p[i], 1)) != NETSTASH_OK)
      goto fail;
    i++;
  }
  rv = NETSTASH_E_PROTOCOL;
fail:
  if (unescaped) {
    unescaped->len = ulen0;
    if (unescaped->data)
      unescaped->data[ulen0] = 0;
  }
  return rv;
}

int ns_reader_token_or_quoted(ns_reader *r, ns_span *out, int *quoted) {
  if (quoted)
    *quoted = 0;
  if (ns_reader_peek(r) == '"') {
    if (ns_reader_quoted(r, out, NULL) != NETSTASH_OK)
      return 0;
    if (quoted)
      *quoted = 1;
    return 1;
  }
  return ns_reader_token(r, out);
}

int ns_reader_list_next(ns_reader *r) {
  for (;;) {
    ns_reader_skip_ows(r);
    if (ns_reader_eof(r))
      return 0;
    if (!ns_reader_skip_char(r, ','))
      return 1;
  }
}

void ns_reader_list_skip(ns_reader *r) {
  while (r->pos < r->len) {
    int c = (unsigned char)r->p[r->pos];
    if (c == ',')
      return;
    if (c == '"') {
      if (ns_reader_quoted(r, NULL, NULL) == NETSTASH_OK)
        continue;
      /* an unterminated quote swallows the rest, as the list is broken */
      r->pos = r->len;
      return;
    }
    r->pos++;
  }
}

int ns_reader_param(ns_reader *r, ns_span *name, ns_span *value, int *has_value,
                    int *quoted) {
  size_t save;
  ns_reader_skip_ows(r);
  save = r->pos;
  if (!ns_reader_skip_char(r, ';')) {
    r->pos = save;
    return 0;
  }
  ns_reader_skip_ows(r);
  *has_value = 0;
  *quoted = 0;
  *value = ns_span_make(r->p + r->pos, 0);
  if (!ns_reader_token(r, name))
    return -1;
  /* RFC 9110 §5.6.6: no whitespace around "=" */
  if (ns_reader_skip_char(r, '=')) {
    if (!ns_reader_token_or_quoted(r, value, quoted))
      return -1;
    *has_value = 1;
  }
  return 1;
}

int ns_delta_seconds_parse(ns_span s, int64_t *out) {
  ns_reader r;
  uint64_t v;
  ns_reader_init(&r, s.p, s.len);
  if (!ns_reader_uint(&r, (uint64_t)NS_DELTA_SECONDS_MAX, &v, NULL) || !ns_reader_eof(&r))
    return 0;
  *out = (int64_t)v;
  return 1;
}

/* ------------------------------------------------------------ HTTP-date */

static const char *const k_months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const k_days[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char *const k_days_long[7] = {"Monday", "Tuesday", "Wednesday", "Thursday",
                                           "Friday", "Saturday", "Sunday"};

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil). */
int64_t ns_days_from_civil(int64_t y, unsigned m, unsigned d) {
  int64_t era;
  unsigned yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = (unsigned)(y - era * 400);
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static int is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static unsigned days_in_month(int64_t y, unsigned m) {
  static const unsigned k[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : k[m - 1];
}

/* Exactly n digits. */
static int read_ndigits(ns_reader *r, unsigned n, unsigned *out) {
  unsigned v = 0, i;
  if (ns_reader_left(r) < n)
    return 0;
  for (i = 0; i < n; i++) {
    int c = (unsigned char)r->p[r->pos + i];
    if (!ns_is_digit(c))
      return 0;
    v = v * 10 + (unsigned)(c - '0');
  }
  r->pos += n;
  *out = v;
  return 1;
}

/* Case-sensitive, as the grammar's literals are (RFC 9110 §5.6.7: "HTTP-date
 * is case sensitive"). */
static int read_name(ns_reader *r, const char *const *names, size_t n, unsigned *idx) {
  size_t i;
  for (i = 0; i < n; i++) {
    size_t l = strlen(names[i]);
    if (ns_reader_left(r) >= l && memcmp(r->p + r->pos, names[i], l) == 0) {
      r->pos += l;
      *idx = (unsigned)i;
      return 1;
    }
  }
  return 0;
}

/* time-of-day = hour ":" minute ":" second */
static int read_time(ns_reader *r, unsigned *h, unsigned *mi, unsigned *s) {
  return read_ndigits(r, 2, h) && ns_reader_skip_char(r, ':') && read_ndigits(r, 2, mi) &&
         ns_reader_skip_char(r, ':') && read_ndigits(r, 2, s) && *h <= 23 && *mi <= 59 &&
         *s <= 60;
}

netstash_error ns_http_date_parse(const char *s, size_t len, int64_t now_s,
                                  int64_t *out_s) {
  ns_reader r;
  unsigned wd, day = 0, mon = 0, h = 0, mi = 0, sec = 0, y4 = 0;
  int64_t year;
  ns_span sp = ns_span_trim(ns_span_make(s ? s : "", s ? len : 0));

  ns_reader_init(&r, sp.p, sp.len);
  if (read_name(&r, k_days_long, 7, &wd)) {
    /* rfc850-date = day-name-l "," SP date2 SP time-of-day SP GMT
     * date2 = day "-" month "-" 2DIGIT */
    unsigned y2;
    int64_t now_year, cand;
    if (!ns_reader_skip_char(&r, ',') || !ns_reader_skip_char(&r, ' ') ||
        !read_ndigits(&r, 2, &day) || !ns_reader_skip_char(&r, '-') ||
        !read_name(&r, k_months, 12, &mon) || !ns_reader_skip_char(&r, '-') ||
        !read_ndigits(&r, 2, &y2) || !ns_reader_skip_char(&r, ' ') ||
        !read_time(&r, &h, &mi, &sec) || !ns_reader_skip_char(&r, ' ') ||
        !(r.pos + 3 == r.len && memcmp(r.p + r.pos, "GMT", 3) == 0))
      return NETSTASH_E_PROTOCOL;
    /* RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is
     * the most recent past year with the same last two digits. */
    now_year = 1970 + (now_s > 0 ? now_s / 31556952 : 0); /* mean Gregorian year */
    cand = now_year - now_year % 100 + y2;
    while (cand > now_year + 50)
      cand -= 100;
    while (cand <= now_year - 50)
      cand += 100;
    year = cand;
  } else if (read_name(&r, k_days, 7, &wd)) {
    if (ns_reader_skip_char(&r, ',')) {
      /* IMF-fixdate = day-name "," SP date1 SP time-of-day SP GMT
       * date1 = day SP month SP year */
      if (!ns_reader_skip_char(&r, ' ') || !read_ndigits(&r, 2, &day) ||
          !ns_reader_skip_char(&r, ' ') || !read_name(&r, k_months, 12, &mon) ||
          !ns_reader_skip_char(&r, ' ') || !read_ndigits(&r, 4, &y4) ||
          !ns_reader_skip_char(&r, ' ') || !read_time(&r, &h, &mi, &sec) ||
          !ns_reader_skip_char(&r, ' ') ||
          !(r.pos + 3 == r.len && memcmp(r.p + r.pos, "GMT", 3) == 0))
        return NETSTASH_E_PROTOCOL;
    } else {
      /* asctime-date = day-name SP date3 SP time-of-day SP year
       * date3 = month SP ( 2DIGIT / ( SP DIGIT )) */
      if (!ns_reader_skip_char(&r, ' ') || !read_name(&r, k_months, 12, &mon) ||
          !ns_reader_skip_char(&r, ' '))
        return NETSTASH_E_PROTOCOL;
      if (ns_reader_skip_char(&r, ' ')) {
        if (!read_ndigits(&r, 1, &day))
          return NETSTASH_E_PROTOCOL;
      } else if (!read_ndigits(&r, 2, &day)) {
        return NETSTASH_E_PROTOCOL;
      }
      if (!ns_reader_skip_char(&r, ' ') || !read_time(&r, &h, &mi, &sec) ||
          !ns_reader_skip_char(&r, ' ') || !read_ndigits(&r, 4, &y4) || !ns_reader_eof(&r))
        return NETSTASH_E_PROTOCOL;
    }
    year = y4;
  } else {
    return NETSTASH_E_PROTOCOL;
  }
  mon += 1;
  if (day < 1 || day > days_in_month(year, mon))
    return NETSTASH_E_PROTOCOL;
  *out_s = ns_days_from_civil(year, mon, day) * 86400 + (int64_t)h * 3600 +
           (int64_t)mi * 60 + sec;
  return NETSTASH_OK;
}

void ns_http_date_format(int64_t t, char *out) {
  /* civil_from_days (Hinnant) */
  int64_t days, z, era, y;
  unsigned doe, yoe, doy, mp, d, m, secs;
  static const int64_t lo = -62167219200LL;  /* 0000-01-01 */
  static const int64_t hi = 253402300799LL;  /* 9999-12-31 23:59:59 */
  if (t < lo)
    t = lo;
  if (t > hi)
    t = hi;
  days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
  secs = (unsigned)(t - days * 86400);
  z = days + 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = (unsigned)(z - era * 146097);
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = (int64_t)yoe + era * 400;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
  {
    /* 1970-01-01 was a Thursday (index 3 in k_days) */
    int64_t wd = (days % 7 + 7 + 3) % 7;
    unsigned yy = (unsigned)y, i = 0;
    const char *dn = k_days[wd], *mn = k_months[m - 1];
    char *o = out;
    o[i++] = dn[0]; o[i++] = dn[1]; o[i++] = dn[2]; o[i++] = ','; o[i++] = ' ';
    o[i++] = (char)('0' + d / 10); o[i++] = (char)('0' + d % 10); o[i++] = ' ';
    o[i++] = mn[0]; o[i++] = mn[1]; o[i++] = mn[2]; o[i++] = ' ';
    o[i++] = (char)('0' + yy / 1000 % 10); o[i++] = (char)('0' + yy / 100 % 10);
    o[i++] = (char)('0' + yy / 10 % 10); o[i++] = (char)('0' + yy % 10); o[i++] = ' ';
    o[i++] = (char)('0' + secs / 36000); o[i++] = (char)('0' + secs / 3600 % 10);
    o[i++] = ':';
    o[i++] = (char)('0' + secs % 3600 / 600); o[i++] = (char)('0' + secs % 3600 / 60 % 10);
    o[i++] = ':';
    o[i++] = (char)('0' + secs % 60 / 10); o[i++] = (char)('0' + secs % 10);
    o[i++] = ' '; o[i++] = 'G'; o[i++] = 'M'; o[i++] = 'T'; o[i] = 0;
  }
}
