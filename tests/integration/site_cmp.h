/*
 * site_cmp.h — a fetched body against the fixture site's file
 * (nst_site()/NAME), for the integration tests that fetch from it
 * (fetch_test, h3_test, netd_test).
 */
#ifndef NST_SITE_CMP_H
#define NST_SITE_CMP_H

#include <stddef.h>

#include <netstash/netstash.h>

/* nst_site()/name, whole (malloc'd, one spare byte); *len is its size.
 * Fails the test when it cannot be read. */
unsigned char *site_cmp_read(const char *name, size_t *len);

/* Fails the test unless f's collected body is nst_site()/name, byte for
 * byte. */
void site_cmp_expect(netstash_fetch *f, const char *name);

/* 1 if f's collected body is nst_site()/name, byte for byte, else 0 (also
 * when the file cannot be read). Asserts nothing: for child processes and
 * threads. */
int site_cmp_matches(netstash_fetch *f, const char *name);

#endif
