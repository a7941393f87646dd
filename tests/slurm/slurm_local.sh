#!/usr/bin/env bash
# Vendored into megadlm from the project's shared tools (../shared/tools/slurm_local.sh): the test suite
# starts its own Slurm cluster with it (tests/slurm/conftest.py).
# slurm_local.sh - bring up a throw-away Slurm cluster on THIS machine, without systemd.
#
# Tested on Debian 12 (bookworm), Slurm 22.05.8 (Debian slurm-wlm 22.05.8-4+deb12u3),
# munge 0.5.15, running as root with no systemd / no cgroup delegation (container or microVM).
#
# Usage:
#   slurm_local.sh [start] [DIR] [options]   install if missing, write config, start daemons, wait for idle
#   slurm_local.sh stop    [DIR]             cancel jobs, stop the daemons this script started (by PID)
#   slurm_local.sh status  [DIR]             show daemons / sinfo
#   slurm_local.sh env     [DIR]             print the export line for SLURM_CONF
#
#   DIR defaults to /tmp/slurm-local. Config goes to DIR/etc/slurm.conf; state, spool, logs
#   and pid files go under DIR. Clients need SLURM_CONF=DIR/etc/slurm.conf (or --link-etc).
#
# Options for start:
#   --nodes N        number of compute nodes, all on this host (one slurmd each; Debian's build
#                    has MULTIPLE_SLURMD). Default 1. With N>1 nodes are called node1..nodeN.
#   --cpus N         CPUs advertised per node (may exceed real cores). Default max(nproc, 8).
#   --mem MB         RealMemory per node. Default 90% of MemTotal.
#   --gpus N         fake GPUs (gres/gpu) per node, backed by symlinks to /dev/null, so that
#                    --gpus/--gres=gpu:N jobs are accepted and CUDA_VISIBLE_DEVICES is set. Default 0.
#   --accounting     also install MariaDB + slurmdbd and start them, so that sacct/sacctmgr work
#                    (measured: ~40 s extra apt install the first time, 4-10 s extra start).
#   --keep-state     keep slurmctld state (jobs, job ids) and the accounting DB from a previous
#                    run. Default: clean start (job ids restart at 1, accounting DB dropped).
#   --link-etc       symlink /etc/slurm/slurm.conf -> DIR/etc/slurm.conf so SLURM_CONF is optional
#                    (only if /etc/slurm/slurm.conf does not exist or is already such a symlink).
#   --no-install     never run apt-get; fail if Slurm/munge binaries are missing.
#   --no-etc-hosts   with --nodes>1, do not append "127.0.0.1 node1 ..." to /etc/hosts
#                    (by default that line is appended if the names do not resolve; stop keeps it).
#   --node-prefix P  node name prefix for --nodes>1 (default "node").
#   --port P         slurmctld port (default 6817); slurmd ports P+100.., slurmdbd P+2.
#   --timeout S      seconds to wait for all nodes to become idle (default 60).
#   --debug          SlurmctldDebug/SlurmdDebug=debug instead of info.
#
# Re-running "start" with the same options while the cluster is up is a no-op (it only waits
# for idle). With different options it stops the running cluster and starts a new one.
set -euo pipefail

log() { printf '[slurm_local %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; [[ $CMD == start ]] && log "clean up with: $0 stop ${DIR:-}"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

CMD=start
case "${1:-}" in start|stop|status|env) CMD=$1; shift;; esac
DIR=/tmp/slurm-local
if [[ $# -gt 0 && "$1" != --* ]]; then DIR=$1; shift; fi

NODES=1
CPUS=""
MEM=""
GPUS=0
ACCOUNTING=0
KEEP_STATE=0
LINK_ETC=0
NO_INSTALL=0
ETC_HOSTS=1
NODE_PREFIX=node
PORT=6817
TIMEOUT=60
DEBUG_LEVEL=info
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES=$2; shift 2;;
    --cpus) CPUS=$2; shift 2;;
    --mem) MEM=$2; shift 2;;
    --gpus) GPUS=$2; shift 2;;
    --accounting) ACCOUNTING=1; shift;;
    --keep-state) KEEP_STATE=1; shift;;
    --link-etc) LINK_ETC=1; shift;;
    --no-install) NO_INSTALL=1; shift;;
    --no-etc-hosts) ETC_HOSTS=0; shift;;
    --node-prefix) NODE_PREFIX=$2; shift 2;;
    --port) PORT=$2; shift 2;;
    --timeout) TIMEOUT=$2; shift 2;;
    --debug) DEBUG_LEVEL=debug; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0;;
    *) die "unknown argument: $1";;
  esac
done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
ETC=$DIR/etc
CONF=$ETC/slurm.conf
RUN=$DIR/run
LOGD=$DIR/log
export SLURM_CONF=$CONF

# ---------------------------------------------------------------------------------------------
# process helpers (everything is stopped by PID, and only if /proc/PID/comm is what we expect)
pid_alive() { # pidfile expected_comm
  local f=$1 comm=$2 p
  [[ -s $f ]] || return 1
  p=$(tr -dc '0-9' < "$f")
  [[ -n $p ]] && [[ -r /proc/$p/comm ]] && [[ "$(cat /proc/"$p"/comm)" == "$comm" ]] && ! proc_gone "$p"
}
proc_gone() { # pid: true if the process has exited. An exited daemon stays a zombie until PID 1
  # reaps it, and PID 1 in containers/microVMs is often not a real init, so Z counts as gone.
  [[ ! -d /proc/$1 ]] || [[ "$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null)" == Z ]]
}
stop_pidfile() { # pidfile expected_comm [timeout_s]
  local f=$1 comm=$2 t=${3:-20} p i
  if ! pid_alive "$f" "$comm"; then rm -f "$f"; return 0; fi
  p=$(tr -dc '0-9' < "$f")
  log "stopping $comm (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do
    proc_gone "$p" && break
    sleep 0.1
  done
  if ! proc_gone "$p" && [[ "$(cat /proc/"$p"/comm 2>/dev/null)" == "$comm" ]]; then
    log "$comm (pid $p) did not exit after ${t}s, sending SIGKILL"
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

node_names() { # prints one node name per line (reads the generated config)
  sed -n 's/^# slurm_local nodes: //p' "$CONF" 2>/dev/null | tr ' ' '\n' | sed '/^$/d'
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
do_stop() {
  [[ -f $CONF ]] || { log "no config at $CONF, nothing to stop"; return 0; }
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    local ids
    ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n "${ids// /}" ]]; then
      log "cancelling jobs: $ids"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do
        [[ -z "$(squeue -h -t PD,R,CG,S,CF,RQ -o %A 2>/dev/null)" ]] && break
        sleep 0.1
      done
    fi
  fi
  local n
  for n in $(node_names); do stop_pidfile "$RUN/slurmd-$n.pid" slurmd; done
  stop_pidfile "$RUN/slurmctld.pid" slurmctld
  stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
  # only daemons that this script started itself have a pid file under $RUN
  stop_pidfile "$RUN/mariadbd.pid" mariadbd 30
  stop_pidfile "$RUN/munged.pid" munged
  if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
  # job step daemons (slurmstepd) exit on their own once their job is gone; each live step of
  # THIS cluster has a unix socket NODE_JOBID.STEPID in our spool dir, so wait for those to vanish
  local left="" j
  for ((j = 0; j < 100; j++)); do
    left=$(find "$DIR/spool" -maxdepth 2 -type s -name '*_*.*' -printf '%f ' 2>/dev/null || true)
    [[ -z $left ]] && break
    sleep 0.1
  done
  [[ -n $left ]] && log "WARNING: job steps may still be alive (step sockets: $left); check: ps -C slurmstepd"
  log "stopped (config and logs kept in $DIR)"
}

do_status() {
  local n
  for d in slurmctld slurmdbd mariadbd munged; do
    if pid_alive "$RUN/$d.pid" "$d"; then echo "$d: running (pid $(cat "$RUN/$d.pid"))"; fi
  done
  for n in $(node_names); do
    if pid_alive "$RUN/slurmd-$n.pid" slurmd; then echo "slurmd[$n]: running (pid $(cat "$RUN/slurmd-$n.pid"))"
    else echo "slurmd[$n]: not running"; fi
  done
  munge_ok && echo "munge: ok" || echo "munge: NOT working"
  sinfo -N -o '%N %T %c %m %G' 2>&1 || true
}

case "$CMD" in
  stop) do_stop; exit 0;;
  status) do_status; exit 0;;
  env) echo "export SLURM_CONF=$CONF"; exit 0;;
esac

# ---------------------------------------------------------------------------------------------
# start
T_START=$(now)
[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, runs munged/slurmd as system daemons)"

# 1. packages --------------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client munge)
need_bins=(slurmctld slurmd sbatch munged munge unmunge)
if [[ $ACCOUNTING == 1 ]]; then PKGS+=(slurmdbd mariadb-server); need_bins+=(slurmdbd mariadbd mariadb); fi
missing=0
for b in "${need_bins[@]}"; do command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing=1; done
if [[ $missing == 1 ]]; then
  [[ $NO_INSTALL == 1 ]] && die "Slurm/munge binaries missing and --no-install given"
  log "installing ${PKGS[*]} (apt-get)"
  T=$(now)
  # Without systemd, postinst would try to start the daemons through /etc/init.d (and may fail
  # because no slurm.conf exists yet). Block that with a temporary policy-rc.d unless one exists.
  made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  log "apt install done in $(elapsed "$T")s"
fi
export PATH=$PATH:/usr/sbin:/sbin

# 2. node layout -----------------------------------------------------------------------------
NPROC=$(nproc)
[[ -z $CPUS ]] && CPUS=$(( NPROC > 8 ? NPROC : 8 ))
MEMTOTAL_MB=$(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo)
[[ -z $MEM ]] && MEM=$(( MEMTOTAL_MB * 9 / 10 ))
HOST_SHORT=$(hostname -s 2>/dev/null || hostname)
HOST_SHORT=${HOST_SHORT%%.*}
if [[ $NODES -eq 1 ]]; then
  # Use the real short hostname when it resolves (jobs that run `hostname` or resolve
  # SLURM_JOB_NODELIST then agree with Slurm), else "localhost".
  if getent hosts "$HOST_SHORT" >/dev/null 2>&1; then NODE_LIST=("$HOST_SHORT"); else NODE_LIST=(localhost); fi
  NODE_EXPR=${NODE_LIST[0]}
else
  NODE_LIST=()
  for ((i = 1; i <= NODES; i++)); do NODE_LIST+=("${NODE_PREFIX}$i"); done
  NODE_EXPR="${NODE_PREFIX}[1-$NODES]"
fi
SLURMD_PORT0=$(( PORT + 100 ))
DBD_PORT=$(( PORT + 2 ))

# 3. config ----------------------------------------------------------------------------------
mkdir -p "$ETC" "$DIR/state" "$DIR/spool" "$RUN" "$LOGD" "$DIR/jobs"
for n in "${NODE_LIST[@]}"; do mkdir -p "$DIR/spool/slurmd-$n"; done

NEW_CONF=$(mktemp "$ETC/.slurm.conf.XXXXXX")
{
  echo "# generated by slurm_local.sh - throw-away local cluster"
  echo "# slurm_local nodes: ${NODE_LIST[*]}"
  echo "ClusterName=localcluster"
  # name(addr): no DNS lookup needed; name must equal \`hostname -s\` (or be localhost)
  echo "SlurmctldHost=${HOST_SHORT}(127.0.0.1)"
  echo "SlurmctldPort=$PORT"
  [[ $NODES -eq 1 ]] && echo "SlurmdPort=$SLURMD_PORT0"
  echo "SlurmUser=root"
  echo "SlurmdUser=root"
  echo "AuthType=auth/munge"
  echo "CredType=cred/munge"
  # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
  echo "AuthInfo=cred_expire=5"
  echo "StateSaveLocation=$DIR/state"
  echo "SlurmdSpoolDir=$DIR/spool/slurmd-%n"
  echo "SlurmctldPidFile=$RUN/slurmctld.pid"
  echo "SlurmdPidFile=$RUN/slurmd-%n.pid"
  echo "SlurmctldLogFile=$LOGD/slurmctld.log"
  echo "SlurmdLogFile=$LOGD/slurmd-%n.log"
  echo "SlurmctldDebug=$DEBUG_LEVEL"
  echo "SlurmdDebug=$DEBUG_LEVEL"
  # no cgroups: plain process tracking, no task binding/containment
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "MpiDefault=none"
  echo "SwitchType=switch/none"
  echo "MailProg=/bin/true"
  echo "ReturnToService=2"
  echo "JobRequeue=1"
  echo "KillWait=5"
  echo "OverTimeLimit=0"
  echo "MinJobAge=3600"
  # reject impossible requests (too many CPUs/nodes, unknown partition) at submit time instead of
  # leaving them PENDING forever with Reason=PartitionConfig
  echo "EnforcePartLimits=ALL"
  echo "SchedulerType=sched/backfill"
  # start jobs right after submission (default batch_sched_delay=3) and retry pending jobs often
  echo "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1"
  # cancel jobs whose dependency can never be satisfied instead of leaving them pending forever
  # (since 21.08 this lives in DependencyParameters; in SchedulerParameters it is silently ignored)
  echo "DependencyParameters=kill_invalid_depend"
  # trust the CPU/memory numbers below even if they exceed the hardware (oversubscription)
  echo "SlurmdParameters=config_overrides"
  echo "JobCompType=jobcomp/filetxt"
  echo "JobCompLoc=$LOGD/jobcomp.log"
  if [[ $ACCOUNTING == 1 ]]; then
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=127.0.0.1"
    echo "AccountingStoragePort=$DBD_PORT"
    echo "JobAcctGatherType=jobacct_gather/linux"
  else
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobAcctGatherType=jobacct_gather/none"
  fi
  GRES=""
  if [[ $GPUS -gt 0 ]]; then echo "GresTypes=gpu"; GRES=" Gres=gpu:$GPUS"; fi
  NODE_COMMON="NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM$GRES State=UNKNOWN"
  if [[ $NODES -eq 1 ]]; then
    echo "NodeName=${NODE_LIST[0]} $NODE_COMMON"
  else
    echo "NodeName=$NODE_EXPR NodeHostname=$HOST_SHORT Port=[$SLURMD_PORT0-$(( SLURMD_PORT0 + NODES - 1 ))] $NODE_COMMON"
  fi
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} > "$NEW_CONF"

if [[ $GPUS -gt 0 ]]; then
  # gres/gpu wants character devices; regular files are rejected ("not a valid character or
  # block device") and then CUDA_VISIBLE_DEVICES is not set. Symlinks to /dev/null work.
  mkdir -p "$DIR/fakegpu"
  for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$DIR/fakegpu/nvidia$g"; done
  echo "NodeName=$NODE_EXPR Name=gpu File=$DIR/fakegpu/nvidia[0-$(( GPUS - 1 ))]" > "$ETC/gres.conf.new"
else
  : > "$ETC/gres.conf.new"
fi

running=0
pid_alive "$RUN/slurmctld.pid" slurmctld && running=1
if [[ $running == 1 ]]; then
  if cmp -s "$NEW_CONF" "$CONF" && cmp -s "$ETC/gres.conf.new" "$ETC/gres.conf"; then
    log "cluster already running in $DIR with the same config"
    rm -f "$NEW_CONF" "$ETC/gres.conf.new"
  else
    log "config changed: restarting the running cluster"
    do_stop
    running=0
  fi
fi
if [[ $running == 0 ]]; then
  mv -f "$NEW_CONF" "$CONF"; chmod 644 "$CONF"
  mv -f "$ETC/gres.conf.new" "$ETC/gres.conf"; chmod 644 "$ETC/gres.conf"
  # cgroup.conf is not needed (no cgroup plugins); an empty plugstack.conf avoids reading /etc/slurm's
  : > "$ETC/plugstack.conf"
fi

if [[ $LINK_ETC == 1 ]]; then
  mkdir -p /etc/slurm
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  else
    log "WARNING: /etc/slurm/slurm.conf exists and is not a symlink; not touching it (--link-etc ignored)"
  fi
fi

if [[ $NODES -gt 1 && $ETC_HOSTS == 1 ]]; then
  unresolved=()
  for n in "${NODE_LIST[@]}"; do getent hosts "$n" >/dev/null 2>&1 || unresolved+=("$n"); done
  if [[ ${#unresolved[@]} -gt 0 ]]; then
    log "adding '127.0.0.1 ${unresolved[*]}' to /etc/hosts (so MASTER_ADDR=node1 etc. resolve)"
    # append, never rewrite: /etc/hosts is often a bind mount in containers (sed -i fails there)
    echo "127.0.0.1 ${unresolved[*]} # slurm_local.sh" >> /etc/hosts
  fi
fi

# 4. munge -----------------------------------------------------------------------------------
T=$(now)
if munge_ok; then
  log "munged already running and working"
else
  id munge >/dev/null 2>&1 || die "user 'munge' missing (package munge not installed correctly?)"
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
  chmod 700 /etc/munge /var/log/munge; chmod 600 /etc/munge/munge.key; chmod 711 /var/lib/munge; chmod 755 /run/munge
  rm -f /run/munge/munged.pid
  # munged refuses to run with a key/dirs owned by another user, so run it as 'munge'
  margs=(--pid-file=/run/munge/munged.pid)
  # if our own hostname does not resolve, munged encodes a null origin address and slurmctld
  # then logs "auth_p_get_host: Lookup failed for 0.0.0.0" for every RPC (harmless but noisy)
  getent hosts "$(hostname)" >/dev/null 2>&1 || margs+=(--origin=127.0.0.1)
  runuser -u munge -- /usr/sbin/munged "${margs[@]}"
  for ((i = 0; i < 100; i++)); do munge_ok && break; sleep 0.05; done
  munge_ok || die "munged did not come up; see /var/log/munge/munged.log"
  cp /run/munge/munged.pid "$RUN/munged.pid"   # marks it as started by us (stop will kill it)
  log "munged started (pid $(cat "$RUN/munged.pid")) in $(elapsed "$T")s"
fi

# 5. accounting (optional) -------------------------------------------------------------------
if [[ $ACCOUNTING == 1 ]]; then
  T=$(now)
  if mariadb -e 'select 1' >/dev/null 2>&1; then
    log "MariaDB already running"
  else
    [[ -d /var/lib/mysql/mysql ]] || { log "initialising MariaDB datadir"; mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null; }
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --skip-networking < /dev/null >> "$LOGD/mariadbd.log" 2>&1 &
    for ((i = 0; i < 300; i++)); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
    mariadb -e 'select 1' >/dev/null 2>&1 || die "MariaDB did not start; see $LOGD/mariadbd.log"
    cp /run/mysqld/mysqld.pid "$RUN/mariadbd.pid"
    log "MariaDB started (pid $(cat "$RUN/mariadbd.pid")) in $(elapsed "$T")s"
  fi
  # clean start = empty accounting DB too (job ids restart at 1 and would otherwise collide)
  if [[ $KEEP_STATE == 0 ]] && ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm_local';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'slurm_local';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  # slurmdbd has no -f option: it reads slurmdbd.conf from the directory of $SLURM_CONF.
  # The file must be owned by SlurmUser and mode 600, or slurmdbd refuses to start.
  cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=$DEBUG_LEVEL
LogFile=$LOGD/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm_local
EOF
  chown root:root "$ETC/slurmdbd.conf"; chmod 600 "$ETC/slurmdbd.conf"
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    T=$(now)
    slurmdbd
    for ((i = 0; i < 300; i++)); do sacctmgr -n -P show cluster >/dev/null 2>&1 && break; sleep 0.1; done
    sacctmgr -n -P show cluster >/dev/null 2>&1 || die "slurmdbd did not come up; see $LOGD/slurmdbd.log"
    log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid")) in $(elapsed "$T")s"
  fi
fi

# 6. slurmctld + slurmd ----------------------------------------------------------------------
T=$(now)
if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is already in use (another slurmctld? stop it or pass --port)"
  fi
  args=(-f "$CONF" -i)          # -i: ignore unreadable/garbled state files
  if [[ $KEEP_STATE == 0 ]]; then    # -c: clear old jobs/node state; job ids restart at 1
    rm -rf "${DIR:?}/state"/*; args+=(-c)
    [[ -s $LOGD/jobcomp.log ]] && mv -f "$LOGD/jobcomp.log" "$LOGD/jobcomp.log.old"
  fi
  slurmctld "${args[@]}" || die "slurmctld failed to start; see $LOGD/slurmctld.log"
  for ((i = 0; i < 50; i++)); do [[ -s $RUN/slurmctld.pid ]] && break; sleep 0.1; done
  log "slurmctld started (pid $(cat "$RUN/slurmctld.pid" 2>/dev/null || echo '?'))"
fi
for n in "${NODE_LIST[@]}"; do
  if ! pid_alive "$RUN/slurmd-$n.pid" slurmd; then
    slurmd -f "$CONF" -N "$n" || die "slurmd for $n failed to start; see $LOGD/slurmd-$n.log"
    for ((i = 0; i < 50; i++)); do [[ -s $RUN/slurmd-$n.pid ]] && break; sleep 0.1; done
    log "slurmd $n started (pid $(cat "$RUN/slurmd-$n.pid" 2>/dev/null || echo '?'))"
  fi
done

# 7. wait until every node is idle (or busy with jobs, when the cluster was already running) ---
ok=0
for ((i = 0; i < TIMEOUT * 10; i++)); do
  states=$(sinfo -h -N -o '%t' 2>/dev/null | sort -u) || states=""
  # %t prints e.g. "idle", "mix", "alloc"; a trailing * (not responding), "down", "drain" or
  # "inval" means trouble
  if [[ -n $states ]] && ! grep -qvxE 'idle|mix|alloc|comp' <<< "$states"; then ok=1; break; fi
  sleep 0.1
done
if [[ $ok != 1 ]]; then
  log "nodes not idle after ${TIMEOUT}s (states: $(echo "${states:-none}" | tr '\n' ' '))"
  sinfo -N -o '%N %T %E' 2>&1 | sed 's/^/  /' >&2 || true
  for f in "$LOGD"/slurmctld.log "$LOGD"/slurmd-*.log; do
    [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
fi
log "daemons up, all nodes idle in $(elapsed "$T")s (whole script: $(elapsed "$T_START")s)"
sinfo -N -o '%N %T %c %m %G' >&2

cat <<EOF
# Slurm is up ($(sinfo -V)). Use it with:
export SLURM_CONF=$CONF
# e.g.  sbatch --wrap 'hostname'   |  srun -N${NODES} -n2 hostname   |  squeue
# logs: $LOGD   job completion log (no slurmdbd needed): $LOGD/jobcomp.log
# stop: $0 stop $DIR
EOF
