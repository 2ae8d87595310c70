#!/usr/bin/env bash
# The four-region Unitas network on this machine, without Docker (examples/four-regions/README.md):
#   eu (DK NO SE FI DE GB FR, on PostgreSQL), am (US CA MX BR), ap (AU NZ JP SG) and af (ZA KE NG
#   GH) on SQLite; client APIs on http://127.0.0.1:8001-8004, federation on https://127.0.0.1:
#   8441-8444, the registry DHT on 127.0.0.1:4001-4004 (eu is the others' bootstrap peer).
#
# Usage: examples/four-regions.sh [--check] [WORK_DIR]
#   WORK_DIR   where configs, keys, records, data and logs go (new or empty; kept afterwards).
#              Default: a temp dir, removed at the end unless something failed or
#              FOUR_REGIONS_KEEP=1.
#   --check    (or FOUR_REGIONS_CHECK=1) a smoke test instead of waiting: a DK user registers on
#              the eu node, @x:dk... is refused on the am node with ORG.UNITAS.WRONG_TERRITORY
#              naming the eu node, a US user on am joins the DK user's room over federation;
#              then everything stops; exit status 0 when all passed, 1 otherwise.
# Environment: UNITAS_BIN=path/to/unitas skips the build (default: cargo build --release -p unitas).
#
# Steps: a throwaway PostgreSQL cluster (unix socket only) for eu; the registry authority's key;
# the configs from examples/four-regions/*.toml; each node's ID (`unitas registry node-record`);
# the 19 territory records signed by the authority; the four nodes; the records published into
# the DHT (`unitas registry publish`); wait until every node routes all 19 territories. Ctrl-C
# stops the nodes and PostgreSQL.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
templates="$root/examples/four-regions"
nodes=(eu am ap af)

log() { printf '[four-regions] %s\n' "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

check=${FOUR_REGIONS_CHECK:-0}
[ "$check" = 0 ] || check=1
work_arg=""
for arg in "$@"; do
    case $arg in
        --check) check=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $arg (see --help)" ;;
        *)
            [ -z "$work_arg" ] || die "one work directory only (see --help)"
            work_arg=$arg
            ;;
    esac
done
command -v curl >/dev/null || die "curl is not installed"

# --- The binary ------------------------------------------------------------------------------
if [ -n "${UNITAS_BIN:-}" ]; then
    bin=$UNITAS_BIN
else
    log "building unitas (cargo build --release -p unitas; set UNITAS_BIN to skip)"
    (cd "$root" && cargo build --release -p unitas) || die "cargo build"
    bin="$root/target/release/unitas"
fi
[ -x "$bin" ] || die "no unitas binary at $bin"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# --- What the templates say: ports, URLs and territories of each node ------------------------
# conf_value FILE KEY: the first `KEY = "value"` of the file.
conf_value() { sed -n "s/^$2 = \"\\(.*\\)\"\$/\\1/p" "$1" | head -n 1; }
declare -A client_port fed_url dht_port territories
for node in "${nodes[@]}"; do
    t="$templates/$node.toml"
    [ -f "$t" ] || die "missing template $t"
    listen=$(conf_value "$t" listen)
    client_port[$node]=${listen##*:}
    fed_url[$node]=$(conf_value "$t" federation_url)
    dht=$(sed -n 's/^listen = \["\(.*\)"\]$/\1/p' "$t")
    dht_port[$node]=${dht##*/}
    # "CODE=server.name ..." in config order.
    territories[$node]=$(awk -F'"' '/^code = /{c=$2} /^server_name = /{printf "%s=%s ", c, $2}' "$t")
done
client_url() { printf 'http://127.0.0.1:%s' "${client_port[$1]}"; }
first_territory() { local t=${territories[$1]%% *}; printf '%s' "${t#*=}"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for node in "${nodes[@]}"; do
    fed_port=${fed_url[$node]##*:}
    for port in "${client_port[$node]}" "$fed_port" "${dht_port[$node]}"; do
        port_free "$port" || die "port $port (node $node) is in use on 127.0.0.1: is another network running?"
    done
done

# --- Work directory and clean-up ---------------------------------------------------------------
if [ -n "$work_arg" ]; then
    mkdir -p "$work_arg"
    [ -z "$(ls -A "$work_arg")" ] || die "$work_arg is not empty (each run makes a new network)"
    work=$(cd "$work_arg" && pwd)
    temp_work=0
else
    work=$(mktemp -d /tmp/unitas-four-regions.XXXXXX)
    temp_work=1
fi
mkdir -p "$work/logs" "$work/records/territories" "$work/records/nodes"

declare -A pids=()
pg_dir=""
pg_ctl_bin=""
run_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local node pid
    for node in "${!pids[@]}"; do
        kill -TERM "${pids[$node]}" 2>/dev/null || true
    done
    # Bounded: the nodes finish in-flight requests (server.shutdown_grace_secs), then go.
    local deadline=$((SECONDS + 30))
    for node in "${!pids[@]}"; do
        pid=${pids[$node]}
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "node $node did not stop within 30 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [ "${#pids[@]}" = 0 ] || log "nodes stopped"
    if [ -n "$pg_dir" ]; then
        if [ -f "$pg_dir/data/postmaster.pid" ]; then
            run_as_pg "$pg_ctl_bin" -D "$pg_dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
            log "PostgreSQL stopped"
        fi
        cp "$pg_dir/postgres.log" "$work/logs/postgres.log" 2>/dev/null || true
        rm -rf "$pg_dir"
    fi
    # A temp work dir goes unless something failed (Ctrl-C is no failure) or FOUR_REGIONS_KEEP=1.
    if [ "$temp_work" = 1 ] && [[ $rc =~ ^(0|130|143)$ ]] && [ "${FOUR_REGIONS_KEEP:-0}" = 0 ]; then
        rm -rf "$work"
    else
        log "configs, keys, records, data and logs are in $work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL for the eu node (unix socket only, no TCP port) -------------------------------
pg_bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bindir" ] && command -v pg_config >/dev/null; then pg_bindir=$(pg_config --bindir); fi
[ -n "$pg_bindir" ] && [ -x "$pg_bindir/initdb" ] \
    || die "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
pg_ctl_bin="$pg_bindir/pg_ctl"
# Its own short path in /tmp: the postgres user must reach it, and a socket path has a length limit.
pg_dir=$(mktemp -d /tmp/unitas-four-regions-pg.XXXXXX)
mkdir -p "$pg_dir/data" "$pg_dir/sock"
if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: the cluster belongs to the postgres user.
    id postgres >/dev/null 2>&1 || die "no postgres user to own the PostgreSQL cluster"
    chown postgres "$pg_dir" "$pg_dir/data" "$pg_dir/sock"
    chmod 755 "$pg_dir"
fi
log "starting PostgreSQL for eu ($pg_dir)"
run_as_pg "$pg_bindir/initdb" -D "$pg_dir/data" -U postgres -A trust -E UTF8 --no-locale \
    >"$work/logs/postgres-initdb.log" 2>&1 || die "initdb (see $work/logs/postgres-initdb.log)"
# A demo's database: fsync off for speed; nothing here outlives the script.
run_as_pg "$pg_ctl_bin" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses='' -k $pg_dir/sock -c fsync=off -c full_page_writes=off" start >/dev/null \
    || { cat "$pg_dir/postgres.log" >&2 || true; die "starting PostgreSQL"; }
"$pg_bindir/createuser" -h "$pg_dir/sock" -U postgres unitas || die "createuser unitas"
"$pg_bindir/createdb" -h "$pg_dir/sock" -U postgres -O unitas unitas || die "createdb unitas"

# --- The registry authority (in a real network its key stays offline with the operators) -----
authority=$("$bin" registry keygen --out "$work/authority.key") || die "unitas registry keygen"
case $authority in ed25519:*=*) ;; *) die "unexpected authority key: $authority" ;; esac
log "registry authority: $authority"

# --- Configs -------------------------------------------------------------------------------
for node in "${nodes[@]}"; do
    text=$(<"$templates/$node.toml")
    text=${text//@WORK@/"$work"}
    text=${text//@PGSOCK@/"$pg_dir/sock"}
    text=${text//@AUTHORITY@/"$authority"}
    printf '%s\n' "$text" >"$work/$node.toml"
    "$bin" config check "$work/$node.toml" >/dev/null || die "config check $work/$node.toml"
done

# --- Node IDs, then the authority signs a record per territory --------------------------------
declare -A node_id
for node in "${nodes[@]}"; do
    record="$work/records/nodes/$node.json"
    "$bin" registry node-record --federation-url "${fed_url[$node]}" --config "$work/$node.toml" \
        >"$record" || die "unitas registry node-record ($node)"
    node_id[$node]=$(grep -o '"node_id": *"[^"]*"' "$record" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true)
    [ -n "${node_id[$node]}" ] || die "no node_id in $record"
    log "node $node: $(echo "${territories[$node]}" | sed 's/=[^ ]*//g')-> node ID ${node_id[$node]}"
done
record_files=()
for node in "${nodes[@]}"; do
    for pair in ${territories[$node]}; do
        code=${pair%%=*}
        file="$work/records/territories/$code.json"
        "$bin" registry sign --key "$work/authority.key" --code "$code" --server-name "${pair#*=}" \
            --node-id "${node_id[$node]}" --record-version 1 >"$file" || die "unitas registry sign $code"
        record_files+=("$file")
    done
done
log "signed ${#record_files[@]} territory records"

# --- The nodes -------------------------------------------------------------------------------
for node in "${nodes[@]}"; do
    "$bin" run --config "$work/$node.toml" >"$work/logs/$node.log" 2>&1 &
    pids[$node]=$!
done
log "started eu am ap af (logs in $work/logs/)"

# Fails (with the end of its log) when a node has exited.
nodes_alive() {
    local node
    for node in "${!pids[@]}"; do
        if ! kill -0 "${pids[$node]}" 2>/dev/null; then
            tail -n 20 "$work/logs/$node.log" >&2 || true
            die "node $node exited (log: $work/logs/$node.log)"
        fi
    done
}
# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, at most SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        nodes_alive
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
        sleep 0.2
    done
}
client_answers() {
    curl -fsS -o /dev/null --max-time 2 "$(client_url "$1")/_matrix/client/versions" 2>/dev/null
}
for node in "${nodes[@]}"; do
    wait_for 60 "the $node client API" client_answers "$node"
done
log "all four client APIs answer"

# --- Publishing the records into the DHT, through the eu node ---------------------------------
log "publishing the territory records (unitas registry publish --peer /ip4/127.0.0.1/tcp/${dht_port[eu]})"
"$bin" registry publish "${record_files[@]}" --peer "/ip4/127.0.0.1/tcp/${dht_port[eu]}" \
    --config "$work/eu.toml" >"$work/logs/publish.log" 2>&1 \
    || { cat "$work/logs/publish.log" >&2; die "unitas registry publish"; }
log "$(grep -c '^published' "$work/logs/publish.log") records published"

# Every node routes all 19 territories, each with its node's client URL (the node record).
routes_all() {
    local body
    body=$(curl -fsS --max-time 5 "$(client_url "$1")/_unitas/client/v1/territories" 2>/dev/null) || return 1
    [ "$(printf '%s' "$body" | grep -o '"code":"[A-Za-z]*"' | wc -l)" -eq "${#record_files[@]}" ] \
        && ! printf '%s' "$body" | grep -q '"client_url":null'
}
for node in "${nodes[@]}"; do
    wait_for 120 "node $node to route all ${#record_files[@]} territories" routes_all "$node"
done
log "every node routes all ${#record_files[@]} territories"

# --- What the network looks like ----------------------------------------------------------
echo
echo "== unitas registry status --url $(client_url am)"
"$bin" registry status --url "$(client_url am)" --config "$work/am.toml" || die "unitas registry status"
echo
echo "== The four-region network"
for node in "${nodes[@]}"; do
    db="SQLite $work/$node/unitas.db"
    [ "$node" != eu ] || db="PostgreSQL (socket $pg_dir/sock, database unitas)"
    printf '%s  client %s  federation %s  DHT /ip4/127.0.0.1/tcp/%s  %s\n' \
        "$node" "$(client_url "$node")" "${fed_url[$node]}" "${dht_port[$node]}" "$db"
    for pair in ${territories[$node]}; do
        printf '      %s  @name:%s  http://%s:%s\n' "${pair%%=*}" "${pair#*=}" "${pair#*=}" "${client_port[$node]}"
    done
done
echo "Work directory: $work (configs, authority.key, records/, logs/)"
echo "Try:  curl -H 'Host: $(first_territory eu)' -d '{\"username\":\"alice\",\"password\":\"pw\",\"auth\":{\"type\":\"m.login.dummy\"}}' $(client_url eu)/_matrix/client/v3/register"
echo

if [ "$check" = 0 ]; then
    log "running; Ctrl-C stops the nodes and PostgreSQL"
    set +e
    wait -n "${pids[@]}"
    set -e
    nodes_alive
    die "a node stopped"
fi

# --- Smoke check ---------------------------------------------------------------------------
# api METHOD NODE HOST PATH [BODY] [TOKEN]: sets code and body.
api() {
    local method=$1 node=$2 host=$3 path=$4 data=${5:-} token=${6:-} out
    local args=(-sS -X "$method" --max-time 30 -H "Host: $host" -w '\n%{http_code}')
    [ -z "$data" ] || args+=(-H 'Content-Type: application/json' --data "$data")
    [ -z "$token" ] || args+=(-H "Authorization: Bearer $token")
    out=$(curl "${args[@]}" "$(client_url "$node")$path") || die "$method $path on $node: no answer"
    code=${out##*$'\n'}
    body=${out%$'\n'*}
}
# json_string KEY: the first string value of KEY in $body.
json_string() { printf '%s' "$body" | grep -o "\"$1\": *\"[^\"]*\"" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true; }
failures=0
pass() { log "check passed: $*"; }
fail() {
    log "CHECK FAILED: $*"
    failures=$((failures + 1))
}
dk=$(first_territory eu)
us=$(first_territory am)

api POST eu "$dk" /_matrix/client/v3/register \
    '{"username":"alice","password":"correct horse","auth":{"type":"m.login.dummy"}}'
alice_token=$(json_string access_token)
if [ "$code" = 200 ] && [ "$(json_string user_id)" = "@alice:$dk" ] && [ -n "$alice_token" ]; then
    pass "@alice:$dk registered on the eu node"
else
    fail "registering alice on eu with Host $dk: $code $body"
fi

api POST am "$us" /_matrix/client/v3/register \
    "{\"username\":\"@x:$dk\",\"password\":\"correct horse\",\"auth\":{\"type\":\"m.login.dummy\"}}"
if [ "$code" = 403 ] && [ "$(json_string errcode)" = ORG.UNITAS.WRONG_TERRITORY ] \
    && [ "$(json_string territory)" = DK ] && [ "$(json_string home_client_url)" = "$(client_url eu)" ]; then
    pass "@x:$dk on the am node: 403 ORG.UNITAS.WRONG_TERRITORY, home_client_url $(client_url eu)"
else
    fail "registering @x:$dk on am: expected 403 ORG.UNITAS.WRONG_TERRITORY naming $(client_url eu), got $code $body"
fi

# Federation through the registry (no DNS): a US user on am joins a DK room on eu.
room=""
if [ -n "$alice_token" ]; then
    api POST eu "$dk" /_matrix/client/v3/createRoom '{"preset":"public_chat","name":"Four regions"}' "$alice_token"
    room=$(json_string room_id)
    [ "$code" = 200 ] && [ -n "$room" ] || fail "createRoom on eu: $code $body"
fi
api POST am "$us" /_matrix/client/v3/register \
    '{"username":"bob","password":"correct horse","auth":{"type":"m.login.dummy"}}'
bob_token=$(json_string access_token)
[ "$code" = 200 ] && [ -n "$bob_token" ] || fail "registering bob on am with Host $us: $code $body"
if [ -n "$room" ] && [ -n "$bob_token" ]; then
    room_path=$(printf '%s' "$room" | sed 's/!/%21/g; s/:/%3A/g')
    api POST am "$us" "/_matrix/client/v3/join/$room_path?server_name=$dk" '{}' "$bob_token"
    if [ "$code" = 200 ]; then
        pass "@bob:$us (am) joined $room on $dk (eu) over federation"
    else
        fail "@bob:$us joining $room via $dk: $code $body"
    fi
fi

if [ "$failures" = 0 ]; then
    log "four-regions check: all passed"
    exit 0
fi
die "four-regions check: $failures check(s) failed"
