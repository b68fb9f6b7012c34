#!/usr/bin/env bash
# Copied from the lab's ../shared/lab/postgres.sh (the recipe verified in ../shared/lab/README.md, "S3 (Ceph RADOS
# Gateway) and PostgreSQL"), so CI has it: test/support/postgres.ts runs it. Keep the two in step.
# A throw-away PostgreSQL (Debian 12: 15) on 127.0.0.1:PORT, all state under DIR, run as the `postgres` user.
#   postgres.sh start DIR PORT   initdb (once) + start; prints the `export ...` line (PG* variables, DATABASE_URL)
#   postgres.sh stop DIR         fast shutdown of exactly the postmaster it started (PID in DIR/run/postgres.pid0)
#   postgres.sh status DIR
# Needs: apt-get install -y --no-install-recommends postgresql   (its postinst makes the `postgres` user; nothing starts)
# Auth: role+database `berth`, password PG_PASSWORD (default berth), scram-sha-256 over TCP; no unix socket.
# DIR and every folder above it must be searchable by `postgres` (mkdtemp makes 0700 folders: chmod 755 them).
set -euo pipefail
cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start DIR PORT | stop DIR | status DIR" >&2; exit 2; }
mkdir -p "$DIR"/{run,log}; DIR=$(cd "$DIR" && pwd); PGDATA=$DIR/data
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PASS=${PG_PASSWORD:-berth}; export PGPASSWORD=$PASS PGCONNECT_TIMEOUT=5
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }   # postgres refuses to run as root
gone() { local st; st=$(awk '/^State:/{print $2}' /proc/"$1"/status 2>/dev/null) || true
         [ -z "$st" ] || [ "$st" = Z ]; }                           # exited; a zombie counts (PID 1 here reaps ~1-2 s late)

alive() { local p; p=$(cat "$DIR/run/postgres.pid0" 2>/dev/null) && kill -0 "$p" 2>/dev/null &&
          tr '\0' ' ' </proc/"$p"/cmdline | grep -qF -- "$PGDATA"; }          # our postmaster, not a reused PID
env_line() { local P; P=$(cat "$DIR/port")
  echo "export PGHOST=127.0.0.1 PGPORT=$P PGUSER=berth PGPASSWORD=$PASS PGDATABASE=berth DATABASE_URL=postgres://berth:$PASS@127.0.0.1:$P/berth"; }

start() {
  local P=${1:?usage: $0 start DIR PORT} t0=$SECONDS
  if [ ! -f "$PGDATA/PG_VERSION" ]; then                            # once: initdb with our settings
    as_pg test -x "$DIR" || { echo "user postgres cannot reach $DIR (chmod 755 it and its parents)" >&2; exit 1; }
    ! ss -Hltn "sport = :$P" | grep -q . || { echo "port $P is in use" >&2; exit 1; }
    rm -rf "$PGDATA"; install -d -o postgres -g postgres -m 700 "$PGDATA"; chown postgres "$DIR/log"
    echo "$PASS" >"$DIR/run/pw"; chown postgres "$DIR/run/pw"
    as_pg "$BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$DIR/run/pw" --auth-local=reject --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$DIR/log/initdb.log"
    rm -f "$DIR/run/pw"; echo "$P" >"$DIR/port"
    cat >>"$PGDATA/postgresql.conf" <<EOF
# --- postgres.sh ---
listen_addresses = '127.0.0.1'
port = $P
unix_socket_directories = ''        # TCP only: no socket path-length limit, nothing in /var/run/postgresql
max_connections = 200
shared_buffers = 64MB
fsync = off                         # test server: a killed postmaster loses nothing, only an OS crash would
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  fi
  if ! alive; then
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -l "$DIR/log/postgres.log" -w -t 60 start >/dev/null
    head -1 "$PGDATA/postmaster.pid" >"$DIR/run/postgres.pid0"          # the postmaster's PID
  fi
  if [ ! -f "$DIR/ready" ]; then                                    # the berth role and database
    PGPASSWORD=$PASS "$BIN/psql" -qAt -h 127.0.0.1 -p "$(cat "$DIR/port")" -U postgres -d postgres -v ON_ERROR_STOP=1 <<EOF
SELECT 'CREATE ROLE berth LOGIN PASSWORD ''$PASS''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'berth')\gexec
SELECT 'CREATE DATABASE berth OWNER berth' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'berth')\gexec
EOF
    touch "$DIR/ready"
  fi
  echo "# postgres $("$BIN/postgres" -V | awk '{print $3}') up in $((SECONDS - t0)) s, pid $(cat "$DIR/run/postgres.pid0")" >&2
  env_line
}

stop() {                         # SIGINT = fast shutdown (disconnects clients); 30 s, then SIGQUIT, then SIGKILL
  alive || { rm -f "$DIR/run/postgres.pid0"; return 0; }
  local p s; p=$(cat "$DIR/run/postgres.pid0")
  for s in INT QUIT KILL; do kill -"$s" "$p" 2>/dev/null || true
    for _ in $(seq 150); do gone "$p" && break 2; sleep 0.2; done; echo "postmaster $p ignored SIG$s" >&2; done
  rm -f "$DIR/run/postgres.pid0"
}

status() {
  if alive; then local p; p=$(cat "$DIR/run/postgres.pid0")
    echo "postmaster pid $p; RSS of all its processes: $(ps -o rss= --ppid "$p" -p "$p" | awk '{s+=$1} END {print int(s/1024)}') MB"
    PGPASSWORD=$PASS "$BIN/psql" -qAt -h 127.0.0.1 -p "$(cat "$DIR/port")" -U berth -d berth -c 'select version()'
  else echo "postgres down"; fi
}

case $cmd in start) start "${3:-}";; stop) stop;; status) status;; *) echo "unknown command $cmd" >&2; exit 2;; esac
