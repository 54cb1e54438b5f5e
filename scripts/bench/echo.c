/* The floor for the resolver daemon's throughput: a lock-step echo over a
 * Unix socket that exchanges the same request and reply sizes.
 *
 *   echo SOCKET REPLYFILE
 *
 * Listens on SOCKET; for every connection (one thread each) it reads a frame
 * (4-byte big-endian length, then that many bytes) and answers with the bytes
 * of REPLYFILE, a whole frame as the daemon sent it (captured by the
 * benchmark's client). No parsing, no work: what one connection costs in
 * syscalls and scheduling. Used by scripts/bench-resolve: a tool, not part of
 * the product. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static unsigned char *reply;
static size_t reply_n;

static int io(int fd, void *buf, size_t n, int rd) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = rd ? read(fd, (char *)buf + off, n - off) : write(fd, (char *)buf + off, n - off);
        if (k <= 0) return -1;
        off += (size_t)k;
    }
    return 0;
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    size_t cap = 1 << 16;
    unsigned char *buf = malloc(cap);
    for (;;) {
        unsigned char h[4];
        if (io(fd, h, 4, 1)) break;
        uint32_t n = (uint32_t)h[0] << 24 | h[1] << 16 | h[2] << 8 | h[3];
        if (n > cap) { cap = n; buf = realloc(buf, cap); }
        if (io(fd, buf, n, 1) || io(fd, reply, reply_n, 0)) break;
    }
    free(buf);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: echo SOCKET REPLYFILE\n"); return 2; }
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 2; }
    reply = malloc(1 << 20);
    reply_n = fread(reply, 1, 1 << 20, f);
    fclose(f);
    if (reply_n < 6) { fprintf(stderr, "reply file too short\n"); return 2; }
    int ls = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    unlink(argv[1]);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0) { perror("bind"); return 1; }
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t;
        pthread_create(&t, NULL, serve, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
}
