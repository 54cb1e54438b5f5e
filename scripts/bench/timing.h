/* timing.h: what this project's benchmark clients share (parallelwrite,
 * pgcommit, propagation, spawntime): a monotonic clock in seconds, and a
 * qsort comparator for doubles, for medians of rounds and latencies. */
#ifndef SECRETFS_BENCH_TIMING_H
#define SECRETFS_BENCH_TIMING_H

#include <time.h>

static inline double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline int cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

#endif
