# Sourced by scripts/test (not run on its own).
#
# A private PostgreSQL cluster for the tests, never the system one:
#   pg_cluster_start   a fresh cluster in /tmp/secretfs-pg-PID-XXXXXX (PID: the
#                      runner, $$), owned by the postgres user (the server
#                      refuses root), trust auth, listening on that directory's
#                      Unix socket and 127.0.0.1 on a free port; exports
#                      SECRETFS_TEST_PG_* (below) for the tests
#   pg_cluster_stop    stops it (fast, else immediate) and removes the
#                      directory; safe to call twice, or after a failed start
#   pg_sweep_orphans   stops and removes clusters of runs that are gone (a run
#                      killed with -9); pg_cluster_start calls it first
# Exported while a cluster runs:
#   SECRETFS_TEST_PG_CONNINFO  host=DIR port=PORT user=postgres dbname=postgres
#   SECRETFS_TEST_PG_HOST      DIR, the socket directory (mode 0755: other uids connect too)
#   SECRETFS_TEST_PG_PORT      PORT
#   SECRETFS_TEST_PG_DATA      DIR/data
#   SECRETFS_TEST_PG_BIN       the server's bin directory (pg_ctl, postgres, initdb)
#   SECRETFS_TEST_PG_OPTIONS   the exact `pg_ctl -o` string it was started with
#   SECRETFS_TEST_PG_LOG       DIR/log, the server log
#   SECRETFS_TEST_PG_CTL       scripts/lib/pg-ctl-test (absolute): stop-immediate, stop, start
# The functions check every step themselves: they work with or without set -e.

_secretfs_pg_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_secretfs_pg_dir=
_secretfs_pg_vars=(SECRETFS_TEST_PG_CONNINFO SECRETFS_TEST_PG_HOST SECRETFS_TEST_PG_PORT SECRETFS_TEST_PG_DATA
  SECRETFS_TEST_PG_BIN SECRETFS_TEST_PG_OPTIONS SECRETFS_TEST_PG_LOG SECRETFS_TEST_PG_CTL)

_pg_say() { printf 'secretfs: %s\n' "$*" >&2; }

# The installed server's bin directory (the newest, if several), not PATH.
_pg_bin() {
  local d best=
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] || continue
    if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)" = "$d" ]; then best=$d; fi
  done
  [ -n "$best" ] || { _pg_say "error: no PostgreSQL server in /usr/lib/postgresql/*/bin (scripts/install-deps installs it)"; return 1; }
  printf '%s\n' "$best"
}

# Runs a command as postgres, from / (postgres may not enter the caller's directory).
_pg_as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# Field 22 of /proc/PID/stat (start time): with the pid it names one process,
# not a later one that reuses the pid. Fails for a process that is gone or a zombie.
_pg_starttime() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  set -- $s
  [ "$1" != Z ] && [ "$1" != X ] || return 1
  printf '%s\n' "${20}"
}

# Whether the run that made cluster directory $1 is still alive. Unknown
# counts as alive: a directory whose owner cannot be told is left alone, and
# so is one made in another pid namespace (its pid means nothing here, and
# its pid file names no process of ours to signal).
_pg_owner_alive() {
  local d=$1 pid ns= start= now
  pid=$(head -n 1 "$d/runner.pid" 2>/dev/null) || pid=
  case "$pid" in ''|*[!0-9]*)
    # runner.pid is written just after mktemp: until then the name tells
    pid=$(printf '%s\n' "$d" | sed -n 's|^/tmp/secretfs-pg-\([0-9][0-9]*\)-[^/]*$|\1|p') ;;
  esac
  [ -n "$pid" ] || return 0
  if [ -f "$d/runner.id" ]; then
    read -r ns start <"$d/runner.id" || true
    [ -z "$ns" ] || [ "$ns" = "$(readlink /proc/self/ns/pid)" ] || return 0
  fi
  now=$(_pg_starttime "$pid") || return 1
  [ -z "$start" ] || [ "$start" = "$now" ]
}

# Stops the server of cluster directory $1 with pg_ctl from bin directory $2
# (may be empty), mode $3 (fast: fast, then immediate; immediate: immediate);
# if pg_ctl cannot, kills the postmaster named by the pid file, but only when
# that process really is the postmaster of this data directory.
_pg_stop_dir() {
  local data=$1/data bin=$2 mode=$3 pid
  [ -f "$data/postmaster.pid" ] || return 0
  if [ -n "$bin" ]; then
    if [ "$mode" = fast ]; then
      _pg_as_postgres "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 && return 0
    fi
    _pg_as_postgres "$bin/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 && return 0
  fi
  pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 0
  case "$pid" in ''|*[!0-9]*) return 0 ;; esac
  if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$data" ]; then
    kill -KILL "$pid" 2>/dev/null || true
    local i
    for i in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
  return 0
}

pg_sweep_orphans() {
  local d bin
  bin=$(_pg_bin 2>/dev/null) || bin=
  for d in /tmp/secretfs-pg-*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    [ "$d" != "$_secretfs_pg_dir" ] || continue
    _pg_owner_alive "$d" && continue
    _pg_say "removing the PostgreSQL test cluster of a run that is gone: $d"
    _pg_stop_dir "$d" "$bin" immediate
    rm -rf -- "$d"
  done
  return 0
}

# A port nothing listens on (TCP, v4 or v6), below the ephemeral range so no
# outgoing connection takes it meanwhile. The start retries on another port
# if it was taken anyway.
_pg_free_port() {
  local used=" " sl addr remote st rest port
  while read -r sl addr remote st rest; do
    [ "$st" = 0A ] && used+="$((16#${addr##*:})) "
  done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  while :; do
    port=$((20000 + RANDOM % 12000))
    case "$used" in *" $port "*) continue ;; esac
    printf '%s\n' "$port"
    return 0
  done
}

pg_cluster_start() {
  if [ -n "$_secretfs_pg_dir" ]; then _pg_say "error: a PostgreSQL test cluster already runs in $_secretfs_pg_dir"; return 1; fi
  local bin dir try port opts
  bin=$(_pg_bin) || return 1
  getent passwd postgres >/dev/null || { _pg_say "error: no postgres user (the Debian postgresql package creates it)"; return 1; }
  pg_sweep_orphans
  dir=$(mktemp -d "/tmp/secretfs-pg-$$-XXXXXX") || return 1
  _secretfs_pg_dir=$dir
  # The owner: its pid, and what tells it from a later process with that pid.
  if ! { printf '%s\n' "$$" >"$dir/runner.pid" &&
         printf '%s %s\n' "$(readlink /proc/self/ns/pid)" "$(_pg_starttime $$)" >"$dir/runner.id" &&
         chown postgres: "$dir" && chmod 0755 "$dir"; }; then
    pg_cluster_stop; return 1
  fi
  if ! _pg_as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-locale >"$dir/initdb.out" 2>&1; then
    cat "$dir/initdb.out" >&2
    _pg_say "error: initdb failed"
    pg_cluster_stop; return 1
  fi
  export SECRETFS_TEST_PG_HOST=$dir SECRETFS_TEST_PG_DATA=$dir/data SECRETFS_TEST_PG_BIN=$bin \
    SECRETFS_TEST_PG_LOG=$dir/log SECRETFS_TEST_PG_CTL=$_secretfs_pg_lib/pg-ctl-test
  for try in 1 2 3 4 5; do
    port=$(_pg_free_port)
    opts="-k $dir -p $port -c listen_addresses=127.0.0.1"
    export SECRETFS_TEST_PG_PORT=$port SECRETFS_TEST_PG_OPTIONS=$opts
    export SECRETFS_TEST_PG_CONNINFO="host=$dir port=$port user=postgres dbname=postgres"
    if "$SECRETFS_TEST_PG_CTL" start >"$dir/pg_ctl.out" 2>&1; then
      return 0
    fi
    # (most likely the port was taken after all) not half up, then another port
    _pg_stop_dir "$dir" "$bin" immediate
  done
  cat "$dir/pg_ctl.out" >&2
  tail -n 20 "$dir/log" >&2 2>/dev/null || true
  _pg_say "error: the PostgreSQL test cluster did not start (5 tries)"
  pg_cluster_stop
  return 1
}

pg_cluster_stop() {
  local dir=$_secretfs_pg_dir bin v
  [ -n "$dir" ] || return 0
  bin=${SECRETFS_TEST_PG_BIN:-}
  [ -n "$bin" ] || bin=$(_pg_bin 2>/dev/null) || bin=
  _pg_stop_dir "$dir" "$bin" fast
  rm -rf -- "$dir"
  _secretfs_pg_dir=
  for v in "${_secretfs_pg_vars[@]}"; do unset "$v"; done
  return 0
}
