/*
 * fuzz/driver.c — runs a harness's LLVMFuzzerTestOneInput over files, without
 * libFuzzer: corpus regression under `make check`, valgrind or a debugger.
 *
 *   fuzz/NAME_regress PATH...   PATH is a file or a directory (its regular
 *                               files, one level, in name order)
 *
 * Exit status 0 when every input ran (a failing input aborts the process);
 * 1 when a path cannot be read or no input was found. Prints a final
 * "N passed, 0 failed" line.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path, unsigned long *count) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  int rc = -1;

  if (!f) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  for (;;) {
    size_t got;
    if (len == cap) {
      size_t ncap = cap ? cap * 2 : 4096;
      uint8_t *nb;
      if (ncap < cap)
        goto done;
      nb = realloc(buf, ncap);
      if (!nb)
        goto done;
      buf = nb;
      cap = ncap;
    }
    got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0)
      break;
  }
  if (ferror(f)) {
    fprintf(stderr, "%s: read error\n", path);
    goto done;
  }
  /* An exact-size copy, so ASan sees reads past the end of the input. */
  {
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact)
      goto done;
    memcpy(exact, buf, len);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
  }
  (*count)++;
  rc = 0;
done:
  free(buf);
  fclose(f);
  return rc;
}

static int only_files(const struct dirent *e) { return e->d_name[0] != '.'; }

static int run_path(const char *path, unsigned long *count) {
  struct stat st;
  struct dirent **names = NULL;
  int n, i, rc = 0;

  if (stat(path, &st) != 0) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode))
    return run_file(path, count);
  n = scandir(path, &names, only_files, alphasort);
  if (n < 0) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  for (i = 0; i < n; i++) {
    size_t plen = strlen(path) + 1 + strlen(names[i]->d_name) + 1;
    char *full = malloc(plen);
    if (!full) {
      rc = -1;
    } else {
      struct stat fst;
      snprintf(full, plen, "%s/%s", path, names[i]->d_name);
      if (stat(full, &fst) == 0 && S_ISREG(fst.st_mode) &&
          run_file(full, count) != 0)
        rc = -1;
      free(full);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  unsigned long count = 0;
  int i, rc = 0;

  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 1;
  }
  for (i = 1; i < argc; i++) {
    if (run_path(argv[i], &count) != 0)
      rc = 1;
  }
  if (count == 0) {
    fprintf(stderr, "no inputs found\n");
    rc = 1;
  }
  printf("%lu passed, %d failed\n", count, rc);
  return rc;
}
