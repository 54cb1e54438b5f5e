/* parallelwrite DIR PROCS N: PROCS processes at once, each creating, writing
 * (64 bytes) and closing N files of its own in DIR, each close checked (a
 * secretfs close returns once the value is durable). Prints the wall time
 * and the rate of all writes together, for scripts/bench-fs's group-commit
 * phase:
 *   RESULT parallel procs=P n=N seconds S writes/s R
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

static int writer(const char *dir, int id, int n) {
    char path[4096], value[64];
    memset(value, 'v', sizeof value);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/P%02d_%06d", dir, id, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) { perror(path); return 1; }
        if (write(fd, value, sizeof value) != (ssize_t)sizeof value) { perror("write"); return 1; }
        if (close(fd) != 0) { perror("close"); return 1; }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: parallelwrite DIR PROCS N\n"); return 2; }
    const char *dir = argv[1];
    int procs = atoi(argv[2]), n = atoi(argv[3]);
    if (procs < 1 || n < 1) { fprintf(stderr, "parallelwrite: PROCS and N must be positive\n"); return 2; }
    double start = now();
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) _exit(writer(dir, p, n));
    }
    int failed = 0, status;
    while (wait(&status) > 0) if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
    double secs = now() - start;
    if (failed) { fprintf(stderr, "parallelwrite: a writer failed\n"); return 1; }
    printf("RESULT parallel procs=%d n=%d seconds %.6f writes/s %.1f\n", procs, n, secs, procs * n / secs);
    return 0;
}
