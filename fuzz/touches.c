/*
 * fuzz/touches.c — the store's shared ring of access notes
 * (lib/store/touches.c), read back from DIR/store/touches, a file every
 * process of the profile writes: damaged on disk or left half written by a
 * process killed mid-note, it must only ever yield well-formed notes or
 * none, and keep working.
 *
 * Input: the file, its 4 KiB header compacted: bytes 0-135 are the header's
 * used part (magic, dimensions, head at 64, tail at 128), the rest goes from
 * the first slot on (offset 4096); an input of 136 bytes or fewer is the
 * whole file (cut short: the ring extends it).
 *
 * Checked beyond "no crash, no leak, no UB":
 *  - every note taken has 1..NS_STORE_KEY_MAX key bytes;
 *  - once the ring is emptied, notes written afterwards come back whole, in
 *    order, and nothing else with them.
 */
#include "ns_setup.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/touches.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      abort();                                                                                     \
  } while (0)

#define TAKE 1100     /* more than the ring's slots */
#define HEAD_USED 136 /* the header's bytes in use (touches.c) */

static char dir[64];
static ns_touch taken[TAKE];

static void cleanup(void) {
  char path[96];
  snprintf(path, sizeof(path), "%s/touches", dir);
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[96];
  ns_touches *t;
  size_t n;
  int fd;
  if (!dir[0]) {
    snprintf(dir, sizeof(dir), "/tmp/nst-fuzz-touches-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    atexit(cleanup);
  }
  snprintf(path, sizeof(path), "%s/touches", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(fd >= 0);
  CHECK(pwrite(fd, data, size < HEAD_USED ? size : HEAD_USED, 0) >= 0);
  if (size > HEAD_USED)
    CHECK(pwrite(fd, data + HEAD_USED, size - HEAD_USED, 4096) == (ssize_t)(size - HEAD_USED));
  close(fd);

  t = ns_touches_open(ns_mem_default(), dir, 0);
  CHECK(t != NULL);
  CHECK(ns_touches_shared(t));
  /* what the file held */
  do {
    n = ns_touches_take(t, taken, TAKE);
    for (size_t i = 0; i < n; i++)
      CHECK(taken[i].len >= 1 && taken[i].len <= NS_STORE_KEY_MAX);
  } while (n == TAKE);
  /* then the ring works: three notes in, the same three out */
  {
    static const char *const keys[] = {"1 https://a.example/", "x", "2 https://b.example/?q"};
    for (unsigned i = 0; i < 3; i++)
      ns_touches_note(t, i, keys[i], strlen(keys[i]), 1000 + i);
    n = ns_touches_take(t, taken, TAKE);
    CHECK(n == 3);
    for (unsigned i = 0; i < 3; i++)
      CHECK(taken[i].db == i && taken[i].ms == 1000 + i && taken[i].len == strlen(keys[i]) &&
            memcmp(taken[i].key, keys[i], taken[i].len) == 0);
    CHECK(ns_touches_take(t, taken, TAKE) == 0);
  }
  ns_touches_close(t);
  return 0;
}
