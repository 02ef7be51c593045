/*
 * measure — run a command REPS times and report its median wall time, median
 * CPU time (user+sys, children included via wait4) and peak RSS.
 *
 *   measure REPS -- CMD [ARGS...]
 *
 * Prints one line: "wall_ms=... cpu_ms=... maxrss_kb=... ok=1".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int reps, i, ok = 1;
  double *wall, *cpu;
  long maxrss = 0;
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: measure REPS -- CMD [ARGS...]\n");
    return 2;
  }
  reps = atoi(argv[1]);
  if (reps < 1)
    reps = 1;
  wall = calloc((size_t)reps, sizeof(double));
  cpu = calloc((size_t)reps, sizeof(double));
  for (i = 0; i < reps; i++) {
    struct timespec t0, t1;
    struct rusage ru;
    int status;
    pid_t pid;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid = fork();
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) {
        dup2(devnull, 1);
        if (!getenv("MEASURE_STDERR"))
          dup2(devnull, 2);
        close(devnull);
      }
      execvp(argv[3], argv + 3);
      _exit(127);
    }
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) {
      perror("measure");
      return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      ok = 0;
    wall[i] = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    cpu[i] = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
             (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
    if (ru.ru_maxrss > maxrss)
      maxrss = ru.ru_maxrss;
  }
  qsort(wall, (size_t)reps, sizeof(double), cmp);
  qsort(cpu, (size_t)reps, sizeof(double), cmp);
  printf("wall_ms=%.2f cpu_ms=%.2f maxrss_kb=%ld ok=%d\n", wall[reps / 2], cpu[reps / 2],
         maxrss, ok);
  free(wall);
  free(cpu);
  return ok ? 0 : 1;
}
