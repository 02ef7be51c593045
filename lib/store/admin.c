/*
 * admin.c — public store maintenance for tools: verify, purge.
 */
#include "ns_setup.h"

#include "core/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"
#include "cache/httpcache.h"


netstash_error netstash_store_verify(const char *dir, char *detail, size_t dlen) {
  ns_store_params p;
  ns_store *s = NULL;
  netstash_error rv;
  if (!dir)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (detail && dlen)
    detail[0] = 0;
  ns_store_params_init(&p);
  p.dir = dir;
  p.read_only = 1;
  rv = ns_store_open(&p, &s, detail, dlen);
  if (rv != NETSTASH_OK)
    return rv;
  rv = ns_store_verify(s, detail, dlen);
  /* and the records a cache lookup decodes (damage there is a clear error
   * at lookup time too, never a silent miss) */
  if (rv == NETSTASH_OK)
    rv = ns_httpcache_check(s, p.mem, detail, dlen);
  ns_store_close(s);
  return rv;
}

netstash_error netstash_store_purge(const char *dir, char *detail, size_t dlen) {
  static const char *const files[] = {"data.mdb", "lock.mdb", "write.lock", "touches"};
  char path[4096], lockpath[4200];
  struct stat st;
  int fd, n;
  size_t i;
  netstash_error rv = NETSTASH_OK;
  if (!dir)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (detail && dlen)
    detail[0] = 0;
  n = snprintf(path, sizeof(path), "%s/store", dir);
  if (n < 0 || (size_t)n >= sizeof(path))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (stat(path, &st) != 0) {
    ns_detailf(detail, dlen, "no store in %s", dir);
    return errno == ENOENT ? NETSTASH_E_NOT_FOUND : NETSTASH_E_IO;
  }
  snprintf(lockpath, sizeof(lockpath), "%s/write.lock", path);
  /* Hold the writers' lock while deleting: no writer is half way through. */
  fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    ns_detailf(detail, dlen, "cannot open %s: %s", lockpath, strerror(errno));
    return NETSTASH_E_IO;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ns_detailf(detail, dlen, "a process is writing to %s; stop it (netd?) and retry", path);
    close(fd);
    return NETSTASH_E_STORE_BUSY;
  }
  for (i = 0; i < NS_ARRAY_LEN(files); i++) {
    char f[4200];
    snprintf(f, sizeof(f), "%s/%s", path, files[i]);
    if (unlink(f) != 0 && errno != ENOENT && rv == NETSTASH_OK) {
      ns_detailf(detail, dlen, "cannot delete %s: %s", f, strerror(errno));
      rv = NETSTASH_E_IO;
    }
  }
  close(fd);
  if (rv == NETSTASH_OK && rmdir(path) != 0 && errno != ENOTEMPTY && errno != ENOENT) {
    ns_detailf(detail, dlen, "cannot remove %s: %s", path, strerror(errno));
    rv = NETSTASH_E_IO;
  }
  return rv;
}
