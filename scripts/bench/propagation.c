/* propagation.c - change propagation latency between two mounts of one shared project.
 *
 * usage: propagation [-l] DIR_A DIR_B COUNT [TIMEOUT_S]
 * COUNT times: creates DIR_A/P<i> (O_CREAT|O_EXCL), writes a short value and closes it (the close
 * is the durable commit on host A), then polls DIR_B until P<i> is there: stat(DIR_B/P<i>), or
 * with -l a full readdir of DIR_B (what ls does). The latency is from close returning on A to
 * the name showing on B, on CLOCK_MONOTONIC. Between polls it sleeps POLL_US microseconds
 * (env, default 200) so the poller does not take a core from the mounts and the server.
 * Prints the median, p99 and max in ms, and the median time of the close on A; then removes
 * the files through DIR_A. Exits 1 if a name takes longer than TIMEOUT_S (default 10) to show.
 * build: gcc -O2 -Wall propagation.c -o propagation
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "timing.h"
#include <unistd.h>

/* Whether DIR lists NAME (one opendir/readdir pass, as ls does). */
static int listed(const char *dir, const char *name)
{
	DIR *d = opendir(dir);
	if (!d) {
		perror("propagation: opendir");
		exit(1);
	}
	struct dirent *e;
	int found = 0;
	while (!found && (e = readdir(d)) != NULL)
		found = strcmp(e->d_name, name) == 0;
	closedir(d);
	return found;
}

/* Of n sorted samples: the median, and the value at rank q (0..1, nearest rank). */
static double median(const double *v, int n)
{
	return (v[(n - 1) / 2] + v[n / 2]) / 2;
}
static double quantile(const double *v, int n, double q)
{
	int i = (int)(q * n + 0.999999) - 1;
	return v[i < 0 ? 0 : i];
}

int main(int argc, char **argv)
{
	int use_list = 0;
	if (argc > 1 && strcmp(argv[1], "-l") == 0) {
		use_list = 1;
		argv++;
		argc--;
	}
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: propagation [-l] DIR_A DIR_B COUNT [TIMEOUT_S]\n");
		return 2;
	}
	const char *a = argv[1], *b = argv[2];
	int count = atoi(argv[3]);
	double timeout = argc == 5 ? atof(argv[4]) : 10;
	const char *p = getenv("POLL_US");
	long poll_us = p ? atol(p) : 200;
	if (count <= 0) {
		fprintf(stderr, "propagation: COUNT must be positive\n");
		return 2;
	}
	double *lat = calloc(count, sizeof(double)), *closes = calloc(count, sizeof(double));
	if (!lat || !closes)
		return 1;
	struct timespec pause = { 0, poll_us * 1000 };
	char name[32], pa[4096], pb[4096], value[32];
	int polls = 0;

	for (int i = 0; i < count; i++) {
		snprintf(name, sizeof(name), "P%06d", i);
		snprintf(pa, sizeof(pa), "%s/%s", a, name);
		snprintf(pb, sizeof(pb), "%s/%s", b, name);
		int len = snprintf(value, sizeof(value), "value-%d\n", i);

		double t0 = now();
		int fd = open(pa, O_WRONLY | O_CREAT | O_EXCL, 0600);
		if (fd < 0 || write(fd, value, len) != len) {
			fprintf(stderr, "propagation: writing %s: %s\n", pa, strerror(errno));
			return 1;
		}
		if (close(fd) != 0) { /* the commit's error, if any */
			fprintf(stderr, "propagation: close %s: %s\n", pa, strerror(errno));
			return 1;
		}
		double t1 = now();
		closes[i] = t1 - t0;

		/* Poll B until the name shows there. */
		struct stat st;
		for (;;) {
			polls++;
			int there = use_list ? listed(b, name) : stat(pb, &st) == 0;
			double t = now();
			if (there) {
				lat[i] = t - t1;
				break;
			}
			if (!use_list && errno != ENOENT) {
				fprintf(stderr, "propagation: stat %s: %s\n", pb, strerror(errno));
				return 1;
			}
			if (t - t1 > timeout) {
				fprintf(stderr, "propagation: %s not on B after %.1f s\n", name, timeout);
				return 1;
			}
			nanosleep(&pause, NULL);
		}
	}
	/* Leave the project empty again. */
	for (int i = 0; i < count; i++) {
		snprintf(pa, sizeof(pa), "%s/P%06d", a, i);
		if (unlink(pa) != 0)
			fprintf(stderr, "propagation: unlink %s: %s\n", pa, strerror(errno));
	}

	qsort(lat, count, sizeof(double), cmpd);
	qsort(closes, count, sizeof(double), cmpd);
	printf("RESULT propagation N=%d via %s median %.2f ms p99 %.2f ms max %.2f ms"
	       " (close on A median %.2f ms; %.1f polls per change)\n",
	       count, use_list ? "readdir" : "stat", median(lat, count) * 1e3,
	       quantile(lat, count, 0.99) * 1e3, lat[count - 1] * 1e3, median(closes, count) * 1e3,
	       (double)polls / count);
	return 0;
}
