#!/usr/bin/env bash
# Copied from the lab recipes (../shared/lab/ceph-rgw.sh, "Real registries, clients and proxies on one machine"),
# unchanged but for this note, so CI has it without ../shared. test/support/ceph.ts drives it.
# One-node Ceph (Debian 12: Pacific 16.2) with the RADOS Gateway serving S3 on 127.0.0.1, all state under DIR.
#   ceph-rgw.sh start DIR PORT   create the cluster in a fresh DIR, or (re)start whichever daemon of DIR is not running;
#                                prints the `export ...` line for S3 clients. PORT is fixed when DIR is created.
#   ceph-rgw.sh stop DIR         stop exactly the daemons it started (PIDs in DIR/run/*.pid0); run it after a failed start too
#   ceph-rgw.sh status DIR       pids, RSS, and `ceph -s`
# Needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common   (no ceph-mgr: RGW works without)
# Ports: PORT = S3 (beast), PORT+1 = monitor (msgr v2 only), PORT+2..PORT+9 = OSD (it binds 4 of them).
# Env: CEPH_STORE=memstore (default: data in the OSD's RAM) | bluestore (sparse file DIR/osd.0/block)
#      CEPH_SIZE_GB=4 (store capacity: at 95% full every write and delete hangs), S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET.
# cephx is off (auth none); S3 requests are still signed and checked (SigV2/SigV4).
set -euo pipefail
cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start DIR PORT | stop DIR | status DIR" >&2; exit 2; }
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
AK=${S3_ACCESS_KEY:-BERTHTESTACCESSKEY01}; SK=${S3_SECRET_KEY:-berth-test-secret-key-0123456789abcdef}
BUCKET=${S3_BUCKET:-berth}; STORE=${CEPH_STORE:-memstore}; GB=${CEPH_SIZE_GB:-4}
export CEPH_CONF=$DIR/ceph.conf
DAEMONS=(mon.a osd.0 rgw.a)

alive() { local f=$DIR/run/$1.pid0 p; [ -f "$f" ] && p=$(cat "$f") && kill -0 "$p" 2>/dev/null &&
          tr '\0' ' ' </proc/"$p"/cmdline | grep -qF -- "$CEPH_CONF"; }     # our PID, not a reused one
gone() { local st; st=$(awk '/^State:/{print $2}' /proc/"$1"/status 2>/dev/null) || true
         [ -z "$st" ] || [ "$st" = Z ]; }                           # exited; a zombie counts (PID 1 here reaps ~1-2 s late)
launch() { local n=$1; shift; alive "$n" && return 0               # run a daemon in the foreground (-f), record its PID
           nohup "$@" -f -c "$CEPH_CONF" >>"$DIR/log/$n.out" 2>&1 & echo $! >"$DIR/run/$n.pid0"; }
waitfor() { local what=$1 secs=$2; shift 2                         # waitfor WHAT SECONDS CMD... : poll CMD every 0.2 s
            for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
            echo "timeout: $what (logs in $DIR/log)" >&2; return 1; }
s3() { curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AK:$SK" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"; }
osd_up() { ceph osd stat -f json | grep -q '"num_up_osds":1'; }
rgw_up() { curl -sf -o /dev/null "http://127.0.0.1:$(cat "$DIR/port")/"; }

write_conf() { local P=$1 FSID; FSID=$(uuidgen)
  if [ "$STORE" = bluestore ]; then
    STORE_CONF="osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((GB << 30))
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096"
  else
    STORE_CONF="osd objectstore = memstore
memstore device bytes = $((GB << 30))
osd fast shutdown = false                  # umount on SIGTERM, so memstore saves its data to disk"
  fi
  cat >"$CEPH_CONF" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$((P + 1))]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = $((P + 2))
ms bind port max = $((P + 9))
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc                   # radosgw defaults to "secure", which auth none cannot do
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon cluster log file = $DIR/log/cluster.\$channel.log
mon data = $DIR/\$name
osd data = $DIR/\$name
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon mgr mkfs grace = 31536000              # no ceph-mgr here: keep MGR_DOWN out of ceph health
mon data avail warn = 1
mon data avail crit = 0                    # never shut the mon down for a nearly full disk
paxos propose interval = 0.1               # default 1 s per map change: first start 18 s -> 3 s
paxos min wait = 0.01
[osd]
$STORE_CONF
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$P
rgw data = $DIR/rgw
rgw thread pool size = 64                  # default 512 threads
rgw gc obj min wait = 30                   # free deleted objects' data after 30 s, not 2 h
rgw gc processor period = 30
EOF
}

create() {                                                         # fresh DIR: config, monmap, mon store
  local P=$1 p n
  for n in "${DAEMONS[@]}"; do alive "$n" && { echo "$DIR has a half-made cluster running: stop it first" >&2; exit 1; }; done
  for p in $(seq "$P" $((P + 9))); do
    ! ss -Hltn "sport = :$p" | grep -q . || { echo "port $p is in use (need $P..$((P + 9)))" >&2; exit 1; }; done
  rm -rf "$DIR"/{mon.a,osd.0,rgw}; mkdir -p "$DIR"/{log,run,crash,rgw,mon.a,osd.0}; echo "$P" >"$DIR/port"
  write_conf "$P"
  monmaptool --create --fsid "$(ceph-conf --lookup fsid)" --addv a "[v2:127.0.0.1:$((P + 1))]" "$DIR/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$DIR/monmap" -c "$CEPH_CONF"
}

run_daemons() {                                                    # start whichever daemon is not running
  local P; P=$(cat "$DIR/port")
  launch mon.a ceph-mon -i a
  waitfor "monitor" 20 timeout 5 ceph mon stat
  if [ ! -f "$DIR/osd.0/ready" ]; then                            # register osd.0 and make its store
    local U; U=$(uuidgen); ceph osd new "$U" 0 >/dev/null
    ceph-osd -i 0 --mkfs --osd-uuid "$U" -c "$CEPH_CONF" 2>>"$DIR/log/osd.0.out"
  fi
  launch osd.0 ceph-osd -i 0
  waitfor "osd.0 up" 30 osd_up
  launch rgw.a radosgw -n client.rgw.a
  waitfor "radosgw on 127.0.0.1:$P" 60 rgw_up                     # first start creates 4 pools
}

start() {
  local t0=$SECONDS
  [ -f "$DIR/ready" ] || create "${1:?usage: $0 start DIR PORT}"
  alive mon.a && alive osd.0 && alive rgw.a && rgw_up || run_daemons
  if [ ! -f "$DIR/ready" ]; then                                   # S3 user with fixed keys, and the bucket
    radosgw-admin user info --uid=berth >/dev/null 2>&1 ||
      radosgw-admin user create --uid=berth --display-name=berth --access-key="$AK" --secret-key="$SK" >"$DIR/user.json"
    waitfor "bucket $BUCKET" 30 s3 -X PUT "http://127.0.0.1:$(cat "$DIR/port")/$BUCKET"   # makes 2 more pools
    touch "$DIR/ready"
  fi
  echo "# ceph-rgw up in $((SECONDS - t0)) s ($(ceph-conf -n osd.0 --lookup osd_objectstore)), bucket $BUCKET" >&2
  echo "export AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=us-east-1 S3_ENDPOINT=http://127.0.0.1:$(cat "$DIR/port") S3_BUCKET=$BUCKET"
}

halt() {                                     # halt NAME... : SIGTERM, 20 s grace, then SIGKILL (recorded PIDs only)
  local n p l=()
  for n in "$@"; do alive "$n" && { p=$(cat "$DIR/run/$n.pid0"); kill "$p"; l+=("$n=$p"); }; rm -f "$DIR/run/$n.pid0"; done
  for n in "${l[@]}"; do p=${n#*=}
    for _ in $(seq 100); do gone "$p" && break; sleep 0.2; done
    gone "$p" || { kill -9 "$p"; echo "${n%=*} ($p) needed SIGKILL" >&2; }; done
}
stop() { halt rgw.a; halt osd.0; halt mon.a; }          # in turn: radosgw hangs on exit if the OSD is gone first

status() {
  local n; for n in "${DAEMONS[@]}"; do
    if alive "$n"; then echo "$n pid $(cat "$DIR/run/$n.pid0") rss $(($(awk '/VmRSS/{print $2}' /proc/"$(cat "$DIR/run/$n.pid0")"/status) / 1024)) MB"
    else echo "$n down"; fi; done
  alive mon.a && timeout 10 ceph -s || true
}

case $cmd in start) start "${3:-}";; stop) stop;; status) status;; *) echo "unknown command $cmd" >&2; exit 2;; esac
