/* pgcommit.c - the durable-write floor on PostgreSQL: one single-row commit per operation.
 *
 * usage: pgcommit CONNINFO N
 * Connects with libpq (CONNINFO as secretfs takes it, e.g. "host=DIR port=P user=postgres
 * dbname=D", so over the same Unix socket), creates the table pgcommit_bench shaped like the
 * store's secrets, then times 3 rounds of N autocommit upserts of one small row each (every one
 * its own transaction, waiting for its WAL flush: synchronous_commit=on, as secretfs sets it).
 * Prints the median round as commits/s and us/commit, in commitbench's format, then drops the
 * table. Then times 3 rounds of N prepared `SELECT $1::bigint` (no transaction, no disk): one
 * bare round trip to the server, printed as us/roundtrip, to price the statements of a write.
 * build: gcc -O2 -Wall $(pkg-config --cflags libpq) pgcommit.c -o pgcommit -lpq
 */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "timing.h"

/* Runs one command that returns no rows; exits on error. */
static void exec_or_die(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "pgcommit: %s: %s", sql, PQerrorMessage(c));
		exit(1);
	}
	PQclear(r);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: pgcommit CONNINFO N\n");
		return 2;
	}
	int n = atoi(argv[2]);
	if (n <= 0) {
		fprintf(stderr, "pgcommit: N must be positive\n");
		return 2;
	}
	PGconn *c = PQconnectdb(argv[1]);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "pgcommit: cannot connect: %s", PQerrorMessage(c));
		return 1;
	}
	exec_or_die(c, "SET synchronous_commit = on; SET client_min_messages = warning");
	exec_or_die(c, "DROP TABLE IF EXISTS pgcommit_bench");
	exec_or_die(c, "CREATE TABLE pgcommit_bench (project_id bigint, name text, ciphertext bytea,"
		       " version bigint, PRIMARY KEY (project_id, name))");

	/* Prepared once, like the store's statements; each execution is one round trip. */
	PGresult *r = PQprepare(c, "upsert",
				"INSERT INTO pgcommit_bench VALUES (1, $1, $2, $3)"
				" ON CONFLICT (project_id, name) DO UPDATE"
				" SET ciphertext = EXCLUDED.ciphertext, version = EXCLUDED.version",
				3, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		fprintf(stderr, "pgcommit: prepare: %s", PQerrorMessage(c));
		return 1;
	}
	PQclear(r);

	/* A sealed 64-byte value is about this long (value, tag); sent as binary bytea. */
	char value[96];
	memset(value, 0x5a, sizeof(value));
	char name[32], version[24];
	const char *params[3] = { name, value, version };
	int lengths[3] = { 0, sizeof(value), 0 };
	int formats[3] = { 0, 1, 0 };
	long long v = 0;

	double secs[3];
	for (int round = 0; round < 3; round++) {
		double t = now();
		for (int i = 0; i < n; i++) {
			/* Round 1 inserts, later rounds update existing rows: both are one-row commits. */
			snprintf(name, sizeof(name), "SECRET_%06d", i);
			snprintf(version, sizeof(version), "%lld", ++v);
			r = PQexecPrepared(c, "upsert", 3, params, lengths, formats, 0);
			if (PQresultStatus(r) != PGRES_COMMAND_OK) {
				fprintf(stderr, "pgcommit: upsert: %s", PQerrorMessage(c));
				return 1;
			}
			PQclear(r);
		}
		secs[round] = now() - t;
	}
	exec_or_die(c, "DROP TABLE pgcommit_bench");
	qsort(secs, 3, sizeof(double), cmpd);
	double commit = secs[1];

	/* One bare round trip: a prepared statement that reads nothing. */
	r = PQprepare(c, "ping", "SELECT $1::bigint", 1, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		fprintf(stderr, "pgcommit: prepare: %s", PQerrorMessage(c));
		return 1;
	}
	PQclear(r);
	const char *ping[1] = { version };
	for (int round = 0; round < 3; round++) {
		double t = now();
		for (int i = 0; i < n; i++) {
			snprintf(version, sizeof(version), "%d", i);
			r = PQexecPrepared(c, "ping", 1, ping, NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_TUPLES_OK) {
				fprintf(stderr, "pgcommit: select: %s", PQerrorMessage(c));
				return 1;
			}
			PQclear(r);
		}
		secs[round] = now() - t;
	}
	PQfinish(c);
	qsort(secs, 3, sizeof(double), cmpd);

	printf("RESULT pgcommit N=%d median %.0f commits/s %.2f us/commit\n", n, n / commit, commit * 1e6 / n);
	printf("RESULT pgroundtrip N=%d median %.0f roundtrips/s %.2f us/roundtrip\n", n, n / secs[1], secs[1] * 1e6 / n);
	return 0;
}
