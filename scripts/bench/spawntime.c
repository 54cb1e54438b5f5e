/* Wall-clock time of whole processes, several commands alternated in one run.
 *
 *   spawntime REPS CMDFILE
 *
 * CMDFILE holds one command a line, its arguments separated by tabs. Each
 * repetition runs every command once, in order (round robin), with stdout
 * on /dev/null, and prints "INDEX MICROSECONDS" per process. A command that
 * exits non-zero stops the run. Used by scripts/bench-resolve: a tool, not
 * part of the product. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

extern char **environ;

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: spawntime REPS CMDFILE\n"); return 2; }
    int reps = atoi(argv[1]);
    FILE *f = fopen(argv[2], "r");
    if (!f) { perror(argv[2]); return 2; }
    char *cmds[64][64];
    int ncmd = 0;
    char line[8192];
    while (ncmd < 64 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        int n = 0;
        for (char *s = strtok(strdup(line), "\t"); s && n < 63; s = strtok(NULL, "\t")) cmds[ncmd][n++] = s;
        cmds[ncmd][n] = NULL;
        ncmd++;
    }
    fclose(f);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    for (int r = 0; r < reps; r++) {
        for (int c = 0; c < ncmd; c++) {
            pid_t pid;
            int st;
            double t = now();
            if (posix_spawn(&pid, cmds[c][0], &fa, NULL, cmds[c], environ) != 0) { perror(cmds[c][0]); return 1; }
            if (waitpid(pid, &st, 0) < 0) { perror("waitpid"); return 1; }
            double us = (now() - t) * 1e6;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "command %d failed (status %d)\n", c, st); return 1; }
            printf("%d %.1f\n", c, us);
        }
    }
    return 0;
}
