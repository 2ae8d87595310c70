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
#              naming DK's client URL, a US user on am and a NO user on eu join the DK user's
#              room and exchange messages; then DK moves to a fifth node, dk (SQLite, client
#              127.0.0.1:8005, federation 8445, DHT 4005, from examples/four-regions/dk.toml):
#              `unitas territory export` on eu (read-only), `territory import` on dk, record
#              version 2 signed and published; the DK user is sent from eu to dk, logs in there
#              with the same ID, finds the room and its history, and messages flow between dk,
#              am and eu; then everything stops; exit status 0 when all passed, 1 otherwise.
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
declare -A client_port fed_url dht_port territories territory_url
# --check also starts the fifth node, dk, to move territory DK to (it lists no territory).
extra_nodes=()
[ "$check" = 0 ] || extra_nodes=(dk)
for node in "${nodes[@]}" "${extra_nodes[@]}"; do
    t="$templates/$node.toml"
    [ -f "$t" ] || die "missing template $t"
    listen=$(conf_value "$t" listen)
    client_port[$node]=${listen##*:}
    fed_url[$node]=$(conf_value "$t" federation_url)
    dht=$(sed -n 's/^listen = \["\(.*\)"\]$/\1/p' "$t")
    dht_port[$node]=${dht##*/}
    # "CODE=server.name ..." in config order.
    territories[$node]=$(awk -F'"' '/^code = /{c=$2} /^server_name = /{printf "%s=%s ", c, $2}' "$t")
    # Each territory's own client URL (client_base_url), by code.
    for pair in $(awk -F'"' '/^code = /{c=$2} /^client_base_url = /{printf "%s=%s ", c, $2}' "$t"); do
        territory_url[${pair%%=*}]=${pair#*=}
    done
done
client_url() { printf 'http://127.0.0.1:%s' "${client_port[$1]}"; }
first_territory() { local t=${territories[$1]%% *}; printf '%s' "${t#*=}"; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for node in "${nodes[@]}" "${extra_nodes[@]}"; do
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
# json_number KEY: the first number value of KEY in $body.
json_number() { printf '%s' "$body" | grep -o "\"$1\": *[0-9][0-9]*" | head -n 1 | sed 's/.*[^0-9]//' || true; }
failures=0
pass() { log "check passed: $*"; }
fail() {
    log "CHECK FAILED: $*"
    failures=$((failures + 1))
}
# poll SECONDS COMMAND...: like wait_for, but a time-out is returned (1), not fatal.
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        nodes_alive
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
# server_name_of CODE: the territory's server name, from the templates.
server_name_of() {
    local node pair
    for node in "${nodes[@]}"; do
        for pair in ${territories[$node]}; do
            [ "${pair%%=*}" != "$1" ] || { printf '%s' "${pair#*=}"; return 0; }
        done
    done
    die "no territory $1 in the templates"
}
dk_name=$(server_name_of DK)
no_name=$(server_name_of NO)
us_name=$(server_name_of US)
login_body='{"type":"m.login.password","identifier":{"type":"m.id.user","user":"@alice:'$dk_name'"},"password":"correct horse"}'

api POST eu "$dk_name" /_matrix/client/v3/register \
    '{"username":"alice","password":"correct horse","auth":{"type":"m.login.dummy"}}'
alice_token=$(json_string access_token)
if [ "$code" = 200 ] && [ "$(json_string user_id)" = "@alice:$dk_name" ] && [ -n "$alice_token" ]; then
    pass "@alice:$dk_name registered on the eu node"
else
    fail "registering alice on eu with Host $dk_name: $code $body"
fi

# Sent home: to DK's own client URL (its client_base_url, in the eu node's record).
dk_url_eu=${territory_url[DK]:-$(client_url eu)}
api POST am "$us_name" /_matrix/client/v3/register \
    "{\"username\":\"@x:$dk_name\",\"password\":\"correct horse\",\"auth\":{\"type\":\"m.login.dummy\"}}"
if [ "$code" = 403 ] && [ "$(json_string errcode)" = ORG.UNITAS.WRONG_TERRITORY ] \
    && [ "$(json_string territory)" = DK ] && [ "$(json_string home_client_url)" = "$dk_url_eu" ]; then
    pass "@x:$dk_name on the am node: 403 ORG.UNITAS.WRONG_TERRITORY, home_client_url $dk_url_eu"
else
    fail "registering @x:$dk_name on am: expected 403 ORG.UNITAS.WRONG_TERRITORY naming $dk_url_eu, got $code $body"
fi

# Federation through the registry (no DNS): a US user on am joins a DK room on eu.
room=""
if [ -n "$alice_token" ]; then
    api POST eu "$dk_name" /_matrix/client/v3/createRoom '{"preset":"public_chat","name":"Four regions"}' "$alice_token"
    room=$(json_string room_id)
    [ "$code" = 200 ] && [ -n "$room" ] || fail "createRoom on eu: $code $body"
fi
api POST am "$us_name" /_matrix/client/v3/register \
    '{"username":"bob","password":"correct horse","auth":{"type":"m.login.dummy"}}'
bob_token=$(json_string access_token)
[ "$code" = 200 ] && [ -n "$bob_token" ] || fail "registering bob on am with Host $us_name: $code $body"
room_path=$(printf '%s' "$room" | sed 's/!/%21/g; s/:/%3A/g')
if [ -n "$room" ] && [ -n "$bob_token" ]; then
    api POST am "$us_name" "/_matrix/client/v3/join/$room_path?server_name=$dk_name" '{}' "$bob_token"
    if [ "$code" = 200 ]; then
        pass "@bob:$us_name (am) joined $room on $dk_name (eu) over federation"
    else
        fail "@bob:$us_name joining $room via $dk_name: $code $body"
    fi
fi
# The migration below needs the room with alice and bob in it.
[ "$failures" = 0 ] || die "four-regions check: $failures check(s) failed before the migration"

# A NO user on eu in the same room: eu stays in the room after DK moves away.
api POST eu "$no_name" /_matrix/client/v3/register \
    '{"username":"carol","password":"correct horse","auth":{"type":"m.login.dummy"}}'
carol_token=$(json_string access_token)
[ "$code" = 200 ] && [ -n "$carol_token" ] || die "registering carol on eu with Host $no_name: $code $body"
api POST eu "$no_name" "/_matrix/client/v3/join/$room_path" '{}' "$carol_token"
[ "$code" = 200 ] || die "@carol:$no_name joining $room on eu: $code $body"
pass "@carol:$no_name (eu) joined $room"

# --- Messages: sent, then seen by every member's node --------------------------------------
msg_prefix="four-regions message"
sent=""
sent_count=0
txn=0
# send_message NODE HOST TOKEN WHO: one message in the room; sets code and body.
send_message() {
    txn=$((txn + 1))
    msg_body="$msg_prefix $((sent_count + 1)) from $4"
    api PUT "$1" "$2" "/_matrix/client/v3/rooms/$room_path/send/m.room.message/four-regions-$$-$txn" \
        "{\"msgtype\":\"m.text\",\"body\":\"$msg_body\"}" "$3"
}
# say NODE HOST TOKEN WHO: send_message that must succeed; counted in $sent.
say() {
    send_message "$@"
    [ "$code" = 200 ] || die "$4 sending a message on $1: $code $body"
    sent+="$msg_body"$'\n'
    sent_count=$((sent_count + 1))
}
# seen_messages NODE HOST TOKEN: the room's messages there (the last 100): sets seen (the
# bodies of this check's messages, sorted) and seen_count; fails when the request does.
seen_messages() {
    seen=""
    seen_count=0
    api GET "$1" "$2" "/_matrix/client/v3/rooms/$room_path/messages?dir=b&limit=100" "" "$3"
    [ "$code" = 200 ] || return 1
    seen=$(printf '%s' "$body" | grep -o "\"body\": *\"$msg_prefix [^\"]*\"" \
        | sed 's/^"body": *"//; s/"$//' | sort -u || true)
    seen_count=$(printf '%s' "$seen" | grep -c . || true)
}
# sees_all NODE HOST TOKEN: whether the node shows exactly the messages sent so far.
sees_all() {
    seen_messages "$@" || return 1
    [ "$seen" = "$(printf '%s' "$sent" | sort)" ]
}
# members_see WHAT "NODE HOST TOKEN USER"...: each member's node shows every message sent so far
# (within 60 s: federation delivers in the background); one check line with the counts.
members_see() {
    local what=$1 view node host token user counts="" ok=1
    shift
    for view in "$@"; do
        read -r node host token user <<<"$view"
        if poll 60 sees_all "$node" "$host" "$token"; then
            counts+="$node ($user) $seen_count, "
        else
            ok=0
            fail "$what: $user on $node shows $seen_count of the $sent_count messages sent (/messages: $code): $(printf '%s' "$seen" | tr '\n' ';')"
        fi
    done
    [ "$ok" = 0 ] || pass "$what: all $sent_count messages on every node: ${counts%, }"
}
alice_eu="eu $dk_name $alice_token @alice:$dk_name"
bob_am="am $us_name $bob_token @bob:$us_name"
carol_eu="eu $no_name $carol_token @carol:$no_name"

for round in 1 2 3; do
    say eu "$dk_name" "$alice_token" "@alice:$dk_name"
    say am "$us_name" "$bob_token" "@bob:$us_name"
done
members_see "before the move ($sent_count messages)" "$alice_eu" "$bob_am" "$carol_eu"
sent_before=$sent_count

# --- Moving DK from eu to the fifth node, dk (the operator's steps, README.md) ---------------
dk_url="http://$dk_name:${client_port[dk]}"
export_dir="$work/export-DK"
log "moving DK to the dk node: unitas territory export DK --out $export_dir --config eu.toml"
"$bin" territory export DK --out "$export_dir" --config "$work/eu.toml" >"$work/logs/export.log" 2>&1 \
    || { cat "$work/logs/export.log" >&2; die "unitas territory export DK"; }
sed 's/^/[four-regions]   /' "$work/logs/export.log" >&2

api GET eu "127.0.0.1:${client_port[eu]}" /_unitas/client/v1/territories/DK
if [ "$code" = 200 ] && [ "$(json_string state)" = read_only ]; then
    pass "eu reports DK read_only after the export"
else
    fail "territories/DK on eu after the export: expected state read_only, got $code $body"
fi
send_message eu "$dk_name" "$alice_token" "@alice:$dk_name (read-only)"
if [ "$code" = 403 ] && [ "$(json_string errcode)" = ORG.UNITAS.TERRITORY_READ_ONLY ]; then
    pass "@alice:$dk_name writing on eu while DK is read-only: 403 ORG.UNITAS.TERRITORY_READ_ONLY"
else
    fail "@alice:$dk_name writing on eu while DK is read-only: expected 403 ORG.UNITAS.TERRITORY_READ_ONLY, got $code $body"
fi
api GET eu "$dk_name" /_matrix/client/v3/joined_rooms "" "$alice_token"
if [ "$code" = 200 ] && printf '%s' "$body" | grep -qF "\"$room\""; then
    pass "@alice:$dk_name still reads on eu while DK is read-only (joined_rooms)"
else
    fail "@alice:$dk_name reading joined_rooms on eu while DK is read-only: $code $body"
fi

# The new node's config (no [[territory]]), then the import, before it ever starts.
text=$(<"$templates/dk.toml")
text=${text//@WORK@/"$work"}
text=${text//@AUTHORITY@/"$authority"}
printf '%s\n' "$text" >"$work/dk.toml"
"$bin" config check "$work/dk.toml" >/dev/null || die "config check $work/dk.toml"
log "unitas territory import $export_dir --config dk.toml"
"$bin" territory import "$export_dir" --config "$work/dk.toml" >"$work/logs/import.log" 2>&1 \
    || { cat "$work/logs/import.log" >&2; die "unitas territory import (log: $work/logs/import.log)"; }
sed 's/^/[four-regions]   /' "$work/logs/import.log" >&2
if grep -q 'validated:' "$work/logs/import.log"; then
    pass "import on dk: $(grep 'validated:' "$work/logs/import.log" | head -n 1)"
else
    fail "unitas territory import printed no 'validated:' line (log: $work/logs/import.log)"
fi
# The import appended DK's [[territory]] table at the end of dk.toml. DK keeps a client URL of
# its own on the new node, as it had on eu: its host name, on dk's port.
[ "$(grep '^\[' "$work/dk.toml" | tail -n 1)" = '[[territory]]' ] \
    && grep -q '^code = "DK"' "$work/dk.toml" || die "the import added no [[territory]] DK at the end of $work/dk.toml"
printf 'client_base_url = "%s"\n' "$dk_url" >>"$work/dk.toml"
"$bin" config check "$work/dk.toml" >/dev/null || die "config check $work/dk.toml (with DK)"
if "$bin" territory validate "$export_dir" --config "$work/dk.toml" >"$work/logs/validate.log" 2>&1; then
    pass "unitas territory validate on dk: $(grep 'validated:' "$work/logs/validate.log" | head -n 1)"
else
    fail "unitas territory validate on dk (log: $work/logs/validate.log): $(tail -n 3 "$work/logs/validate.log")"
fi

record="$work/records/nodes/dk.json"
"$bin" registry node-record --config "$work/dk.toml" >"$record" || die "unitas registry node-record (dk)"
node_id[dk]=$(grep -o '"node_id": *"[^"]*"' "$record" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true)
[ -n "${node_id[dk]}" ] || die "no node_id in $record"
log "node dk: DK -> node ID ${node_id[dk]}"

"$bin" run --config "$work/dk.toml" >"$work/logs/dk.log" 2>&1 &
pids[dk]=$!
wait_for 60 "the dk client API" client_answers dk
log "started dk (log $work/logs/dk.log)"

file="$work/records/territories/DK-v2.json"
"$bin" registry sign --key "$work/authority.key" --code DK --server-name "$dk_name" \
    --node-id "${node_id[dk]}" --record-version 2 >"$file" || die "unitas registry sign DK version 2"
"$bin" registry publish "$file" --peer "/ip4/127.0.0.1/tcp/${dht_port[eu]}" \
    --config "$work/dk.toml" >"$work/logs/publish-DK-v2.log" 2>&1 \
    || { cat "$work/logs/publish-DK-v2.log" >&2; die "unitas registry publish (DK version 2)"; }
log "$(grep '^published' "$work/logs/publish-DK-v2.log" | head -n 1)"

# Every node routes DK to dk: version 2, dk's node ID, DK's client URL there.
routes_dk_to_dk() {
    api GET "$1" "127.0.0.1:${client_port[$1]}" /_unitas/client/v1/territories/DK
    [ "$code" = 200 ] && [ "$(json_number version)" = 2 ] && [ "$(json_string node_id)" = "${node_id[dk]}" ] \
        && [ "$(json_string client_url)" = "$dk_url" ]
}
routed=""
for node in "${nodes[@]}" dk; do
    if poll 120 routes_dk_to_dk "$node"; then
        routed+="$node "
    else
        fail "territories/DK on $node: expected version 2, node ${node_id[dk]}, client_url $dk_url; got $code $body"
    fi
done
[ "$routed" != "eu am ap af dk " ] || pass "all five nodes route DK version 2 to dk (client_url $dk_url)"
api GET eu "127.0.0.1:${client_port[eu]}" /_unitas/client/v1/territories/DK
[ "$(json_string state)" = moved ] && pass "eu reports DK moved" || fail "territories/DK on eu: expected state moved, got $code $body"
api GET dk "127.0.0.1:${client_port[dk]}" /_unitas/client/v1/territories/DK
[ "$(json_string state)" = serving ] && pass "dk reports DK serving" || fail "territories/DK on dk: expected state serving, got $code $body"

# eu sends DK users to dk: an old token, a login.
api GET eu "$dk_name" /_matrix/client/v3/account/whoami "" "$alice_token"
if [ "$code" = 403 ] && [ "$(json_string errcode)" = ORG.UNITAS.WRONG_TERRITORY ] \
    && [ "$(json_string home_client_url)" = "$dk_url" ]; then
    pass "eu answers @alice:$dk_name's old token: 403 ORG.UNITAS.WRONG_TERRITORY, home_client_url $dk_url"
else
    fail "@alice:$dk_name's old token on eu: expected 403 ORG.UNITAS.WRONG_TERRITORY naming $dk_url (DK's client URL, as territories/DK gives it), got $code $body"
fi
api POST eu "$dk_name" /_matrix/client/v3/login "$login_body"
if [ "$code" = 403 ] && [ "$(json_string errcode)" = ORG.UNITAS.WRONG_TERRITORY ] \
    && [ "$(json_string home_client_url)" = "$dk_url" ]; then
    pass "eu answers @alice:$dk_name's login: 403 ORG.UNITAS.WRONG_TERRITORY, home_client_url $dk_url"
else
    fail "@alice:$dk_name logging in on eu: expected 403 ORG.UNITAS.WRONG_TERRITORY naming $dk_url (DK's client URL, as territories/DK gives it), got $code $body"
fi

# On dk: the exported token still works; a login with the same password and user ID.
api GET dk "$dk_name" /_matrix/client/v3/account/whoami "" "$alice_token"
if [ "$code" = 200 ] && [ "$(json_string user_id)" = "@alice:$dk_name" ]; then
    pass "dk accepts @alice:$dk_name's old token (whoami)"
else
    fail "@alice:$dk_name's old token on dk: expected 200 whoami, got $code $body"
fi
api POST dk "$dk_name" /_matrix/client/v3/login "$login_body"
alice_dk_token=$(json_string access_token)
if [ "$code" = 200 ] && [ "$(json_string user_id)" = "@alice:$dk_name" ] && [ -n "$alice_dk_token" ]; then
    pass "@alice:$dk_name logged in on dk with the same user ID and password"
else
    die "@alice:$dk_name logging in on dk: $code $body"
fi
alice_dk="dk $dk_name $alice_dk_token @alice:$dk_name"
api GET dk "$dk_name" /_matrix/client/v3/joined_rooms "" "$alice_dk_token"
if [ "$code" = 200 ] && printf '%s' "$body" | grep -qF "\"$room\""; then
    pass "@alice:$dk_name on dk is still joined to $room"
else
    fail "joined_rooms of @alice:$dk_name on dk: expected $room, got $code $body"
fi
members_see "history on dk ($sent_before messages sent before the move)" "$alice_dk"

# Federation with DK on its new node, both ways; eu (carol) stays in the room.
say am "$us_name" "$bob_token" "@bob:$us_name"
say dk "$dk_name" "$alice_dk_token" "@alice:$dk_name on dk"
members_see "after the move (+2 messages: am and dk)" "$alice_dk" "$bob_am" "$carol_eu"

if [ "$failures" = 0 ]; then
    log "four-regions check: all passed"
    exit 0
fi
die "four-regions check: $failures check(s) failed"
