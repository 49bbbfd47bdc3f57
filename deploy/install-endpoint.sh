#!/usr/bin/env bash
# Install the MHD scoring endpoint "mhd-gpu" on a GPU host (e.g. a DGX).
#
# 1. a virtual environment (--env) with mhd-focus and its CuPy extra, from the
#    package source you name (--source, --index-url, --find-links): nothing else
#    is downloaded;
# 2. the Globus Compute endpoint configuration ~/.globus_compute/NAME/ for N GPUs
#    (the layout globus-compute-endpoint 4.x starts), rendered and checked by
#    the project's configure command (python -m mhd.endpoint configure); an
#    identical one is left alone, a different one is replaced only with --force;
# 3. optionally (--register) the score_tiles function registered with Globus
#    Compute; its UUID is printed and written into allowed_functions;
# 4. this documentation into ENV/share/doc/mhd-focus/ (the systemd unit's
#    Documentation=).
#
# Run it as the non-root account the endpoint will run as (recommended; see
# deploy/systemd/), or as root with --email and --identity-mapping. Run it
# from anywhere, the clone's root included. Running it again with the same
# options changes nothing. --dry-run prints each step and renders the
# configuration into a staging folder only (with a temporary environment
# when mhd-focus is not installed yet).
#
# Example:
#   deploy/install-endpoint.sh --gpus 8 --env /opt/mhd/venv \
#       --find-links /srv/wheelhouse --data-root /data/mhd
#   globus-compute-endpoint start mhd-gpu       # once, to log in and get its UUID
#   deploy/install-endpoint.sh --gpus 8 --env /opt/mhd/venv \
#       --find-links /srv/wheelhouse --data-root /data/mhd --register --force
set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly UUID_RE='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'

GPUS=""
ENV_DIR=/opt/mhd/venv
NAME=mhd-gpu
SOURCE=mhd-focus
INDEX_URL=""
FIND_LINKS=""
CUDA=12
PYTHON=python3
DATA_ROOT=""
FUNCTION_IDS=()
REGISTER=0
ENDPOINT_ID=""
RENDER_PYTHON=""
EMAIL=""
ID_MAPPING=""
STAGE=""
FORCE=0
DRY_RUN=0
CONFIGURE_EXTRA=()

usage() {
    cat <<EOF
Usage: $PROG --gpus N [options] [-- configure options]

Install the MHD scoring Globus Compute endpoint on this GPU host.

Options:
  --gpus N            GPUs on this host, one worker each (required)
  --env PATH          virtual environment to create or reuse  [$ENV_DIR]
  --name NAME         endpoint name (~/.globus_compute/NAME)  [$NAME]
  --source SPEC       what pip installs: a wheel, a source folder, or a
                      requirement such as mhd-focus==0.1.0  [$SOURCE]
  --index-url URL     package index for pip (only this index is used)
  --find-links DIR    folder of wheels; without --index-url no index is used
  --cuda 12|13|none   CuPy build: 12 -> extra gpu (cupy-cuda12x),
                      13 -> extra gpu-cuda13 (cupy-cuda13x), none -> CPU only  [$CUDA]
  --python EXE        interpreter that creates the environment  [$PYTHON]
  --data-root DIR     workers' MHD_DATA_ROOT (tile paths are relative to it;
                      omit for inline tiles only)
  --function-id UUID  registered score_tiles UUID for allowed_functions
                      (repeatable; default: the one stored by 'client register')
  --register          register score_tiles now ('client register'), print its
                      UUID and allow it (needs a Globus login in this terminal)
  --endpoint UUID     endpoint UUID for --register  [read from
                      ~/.globus_compute/NAME/endpoint.json after the first start]
  --email ADDRESS     contact address shown to users; required when run as root
  --identity-mapping FILE
                      run as root only: identity mapping JSON (Globus
                      identities -> local accounts; tasks run as those accounts)
  --stage DIR         folder where the configuration is rendered before it is
                      installed (must not exist)  [a temporary folder; kept with --dry-run]
  --force             replace an existing configuration that differs
  --dry-run           print the steps; install nothing, render the
                      configuration into the staging folder only
  -h, --help          show this help
  -- ARGS             passed on to 'python -m mhd.endpoint configure', e.g.
                      -- --provider slurm --partition gpu --max-blocks 4

Example:
  $PROG --gpus 8 --env /opt/mhd/venv --find-links /srv/wheelhouse --data-root /data/mhd
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

say() {
    printf '==> %s\n' "$*"
}

# Print a command (shell-quoted), then run it unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ((DRY_RUN)); then
        return 0
    fi
    "$@"
}

need_value() {
    (($# >= 2)) && [[ -n $2 && $2 != --* ]] || die "$1 needs a value"
}

parse_args() {
    while (($#)); do
        case $1 in
            --gpus) need_value "$@"; GPUS=$2; shift 2 ;;
            --env) need_value "$@"; ENV_DIR=$2; shift 2 ;;
            --name) need_value "$@"; NAME=$2; shift 2 ;;
            --source) need_value "$@"; SOURCE=$2; shift 2 ;;
            --index-url) need_value "$@"; INDEX_URL=$2; shift 2 ;;
            --find-links) need_value "$@"; FIND_LINKS=$2; shift 2 ;;
            --cuda) need_value "$@"; CUDA=$2; shift 2 ;;
            --python) need_value "$@"; PYTHON=$2; shift 2 ;;
            --data-root) need_value "$@"; DATA_ROOT=$2; shift 2 ;;
            --function-id) need_value "$@"; FUNCTION_IDS+=("$2"); shift 2 ;;
            --register) REGISTER=1; shift ;;
            --endpoint) need_value "$@"; ENDPOINT_ID=$2; shift 2 ;;
            --email) need_value "$@"; EMAIL=$2; shift 2 ;;
            --identity-mapping) need_value "$@"; ID_MAPPING=$2; shift 2 ;;
            --stage) need_value "$@"; STAGE=$2; shift 2 ;;
            --force) FORCE=1; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h | --help) usage; exit 0 ;;
            --) shift; CONFIGURE_EXTRA=("$@"); break ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
    done
}

check_args() {
    [[ -n $GPUS ]] || die "--gpus N is required (GPUs on this host)"
    [[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$GPUS'"
    [[ $ENV_DIR == /* ]] || die "--env must be an absolute path, got '$ENV_DIR'"
    [[ -z $DATA_ROOT || $DATA_ROOT == /* ]] || die "--data-root must be an absolute path, got '$DATA_ROOT'"
    case $CUDA in
        12) EXTRA=gpu ;;
        13) EXTRA=gpu-cuda13 ;;
        none) EXTRA="" ;;
        *) die "--cuda must be 12, 13 or none, got '$CUDA'" ;;
    esac
    local id
    for id in "${FUNCTION_IDS[@]}" ${ENDPOINT_ID:+"$ENDPOINT_ID"}; do
        [[ $id =~ $UUID_RE ]] || die "not a UUID: '$id'"
    done
    [[ -z $FIND_LINKS || -d $FIND_LINKS ]] || die "--find-links: no such folder: $FIND_LINKS. $(wheelhouse_hint)"
    [[ -z $FIND_LINKS ]] || FIND_LINKS=$(cd "$FIND_LINKS" && pwd)
    if [[ -n $ID_MAPPING ]]; then
        [[ -f $ID_MAPPING ]] || die "--identity-mapping: no such file: $ID_MAPPING"
        ID_MAPPING=$(cd "$(dirname "$ID_MAPPING")" && pwd)/$(basename "$ID_MAPPING")
    fi
    [[ -z $STAGE || ! -e $STAGE ]] || die "--stage $STAGE already exists; name a new folder"
    [[ -z $STAGE || $STAGE == /* ]] || STAGE=$PWD/$STAGE
    check_account
    # The endpoint reads GLOBUS_COMPUTE_USER_DIR instead of ~/.globus_compute;
    # the configure command writes under ~/.globus_compute only.
    if [[ -n ${GLOBUS_COMPUTE_USER_DIR:-} && $GLOBUS_COMPUTE_USER_DIR != "$HOME/.globus_compute" ]]; then
        die "GLOBUS_COMPUTE_USER_DIR is set to $GLOBUS_COMPUTE_USER_DIR; unset it (configuration goes to $HOME/.globus_compute)"
    fi
    ENDPOINT_DIR=$HOME/.globus_compute/$NAME
}

# What a wheelhouse (--find-links) must hold, and how to make one.
wheelhouse_hint() {
    printf '%s' "The folder must hold wheels of mhd-focus and of all its dependencies (with --cuda 12: cupy-cuda12x)" \
        " for this host's Python version ($("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "$PYTHON")" \
        ") and platform; make it on a machine with an index: pip wheel --wheel-dir wheelhouse '.[gpu]' from a clone" \
        " of this repository, then copy it here (deploy/README.md, 'No internet'); or use --index-url."
}

# Run as root, the endpoint is a multi-user endpoint: refuse early, before
# installing anything, unless it gets what that needs.
check_account() {
    local extra=" ${CONFIGURE_EXTRA[*]-} "
    if (($(id -u) == 0)) && [[ $extra != *" --single-user "* ]] && [[ -z $EMAIL || -z $ID_MAPPING ]]; then
        die "run as root, the endpoint runs tasks as the local accounts that Globus identities map to and needs --email ADDRESS and --identity-mapping FILE (docs/admin.md, 'Run as root'); or run this script as the non-root account that will run the endpoint (recommended): sudo -u mhd -H $0 ..."
    fi
}

# The pip requirement: SOURCE with the CuPy extra (a path keeps its form).
requirement() {
    local spec=$SOURCE
    if [[ -e $spec ]]; then
        spec=$(cd "$(dirname "$spec")" && pwd)/$(basename "$spec")
        printf '%s%s\n' "$spec" "${EXTRA:+[$EXTRA]}"
    elif [[ $spec =~ ^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$ ]]; then
        printf '%s%s%s\n' "${BASH_REMATCH[1]}" "${EXTRA:+[$EXTRA]}" "${BASH_REMATCH[2]}"
    else
        die "--source: not a file, folder or requirement: '$spec'"
    fi
}

make_env() {
    if [[ -x $ENV_DIR/bin/python ]]; then
        say "environment $ENV_DIR exists"
    else
        say "creating environment $ENV_DIR"
        run "$PYTHON" -m venv "$ENV_DIR"
    fi
}

install_package() {
    local args=(install --quiet --disable-pip-version-check)
    mapfile -t -O "${#args[@]}" args < <(pip_sources)
    say "installing $(requirement) into $ENV_DIR"
    if ! run "$ENV_DIR/bin/python" -m pip "${args[@]}" "$(requirement)"; then
        [[ -z $FIND_LINKS ]] || die "pip could not install $(requirement) from --find-links $FIND_LINKS. $(wheelhouse_hint)"
        die "pip could not install $(requirement) (messages above)"
    fi
    run "$ENV_DIR/bin/python" -I -c 'import mhd, mhd.endpoint, mhd.functions.worker.remote; print("mhd-focus", mhd.__version__)'
}

# The pip options that name where packages come from.
pip_sources() {
    if [[ -n $INDEX_URL ]]; then
        printf '%s\n' --index-url "$INDEX_URL"
    elif [[ -n $FIND_LINKS ]]; then
        printf '%s\n' --no-index
    fi
    [[ -z $FIND_LINKS ]] || printf '%s\n' --find-links "$FIND_LINKS"
}

# Warn when CuPy sees fewer GPUs than --gpus (a real run only).
check_gpus() {
    ((DRY_RUN)) && return 0
    [[ -n $EXTRA ]] || return 0
    local seen
    if ! seen=$("$ENV_DIR/bin/python" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null); then
        say "warning: CuPy cannot use a GPU here (driver or CUDA ${CUDA} runtime missing?); workers will fall back to NumPy"
    elif ((seen < GPUS)); then
        say "warning: CuPy sees $seen GPU(s), fewer than --gpus $GPUS"
    else
        say "CuPy sees $seen GPU(s)"
    fi
}

# The Python that renders the configuration: the environment's (a real run
# has just checked it imports mhd), or in a dry run, --python if the
# environment does not have mhd-focus yet but --python does; else none.
render_python() {
    if ((!DRY_RUN)); then
        printf '%s\n' "$ENV_DIR/bin/python"
    elif [[ -x $ENV_DIR/bin/python ]] && "$ENV_DIR/bin/python" -I -c 'import mhd.endpoint' 2>/dev/null; then
        printf '%s\n' "$ENV_DIR/bin/python"
    elif "$PYTHON" -I -c 'import mhd.endpoint' 2>/dev/null; then
        printf '%s\n' "$PYTHON"
    fi
}

# A dry run on a host without mhd-focus: install it (without the CuPy extra)
# from the same sources into a temporary environment under the staging
# folder, only to render the configuration; removed at exit. Sets RENDER_PYTHON.
render_env() {
    local tmp=$STAGE/render-venv base=$SOURCE
    say "dry run: mhd-focus is not installed yet; installing it into the temporary environment $tmp to render the configuration (removed afterwards)"
    if [[ -e $base ]]; then
        base=$(cd "$(dirname "$base")" && pwd)/$(basename "$base")
    fi
    local args=(install --quiet --disable-pip-version-check)
    mapfile -t -O "${#args[@]}" args < <(pip_sources)
    trap 'rm -rf -- "$STAGE/render-venv"' EXIT
    printf '+ %q -m venv %q && %q -m pip' "$PYTHON" "$tmp" "$tmp/bin/python"
    printf ' %q' "${args[@]}" "$base"
    printf '\n'
    if ! "$PYTHON" -m venv "$tmp" || ! "$tmp/bin/python" -m pip "${args[@]}" "$base"; then
        local where="pip's configured index"
        [[ -z $INDEX_URL ]] || where="--index-url $INDEX_URL"
        [[ -z $FIND_LINKS ]] || where="--find-links $FIND_LINKS"
        die "cannot render the configuration in a dry run: mhd-focus is installed neither in $ENV_DIR nor for $PYTHON, and pip could not install $base from $where into a temporary environment. $(wheelhouse_hint)"
    fi
    RENDER_PYTHON=$tmp/bin/python
}

endpoint_uuid() {
    if [[ -n $ENDPOINT_ID ]]; then
        printf '%s\n' "$ENDPOINT_ID"
    elif [[ -f $ENDPOINT_DIR/endpoint.json ]]; then
        "$1" -I -c 'import json, sys; print(json.load(open(sys.argv[1]))["endpoint_id"])' "$ENDPOINT_DIR/endpoint.json"
    fi
}

# Fill FUNCTION_IDS: --function-id, a new registration, or the stored one.
resolve_function() {
    local python=$1 endpoint out stored
    ((${#FUNCTION_IDS[@]} == 0)) || return 0
    if ((REGISTER)); then
        endpoint=$(endpoint_uuid "$python")
        [[ -n $endpoint ]] || die "--register needs the endpoint's UUID: start it once (globus-compute-endpoint start $NAME) or pass --endpoint UUID"
        say "registering score_tiles for endpoint $endpoint"
        run "$ENV_DIR/bin/client" register --endpoint "$endpoint"
        ((DRY_RUN)) && return 0
        out=$("$ENV_DIR/bin/client" config --json)
        stored=$(printf '%s' "$out" | "$python" -I -c 'import json, sys; print(json.load(sys.stdin)["function"]["value"] or "")')
        [[ $stored =~ $UUID_RE ]] || die "client register stored no function UUID"
        FUNCTION_IDS=("$stored")
    elif [[ -x $ENV_DIR/bin/client ]]; then
        out=$("$ENV_DIR/bin/client" config --json) || die "client config failed"
        stored=$(printf '%s' "$out" | "$python" -I -c 'import json, sys; print(json.load(sys.stdin)["function"]["value"] or "")')
        [[ -z $stored ]] || FUNCTION_IDS=("$stored")
    fi
}

configure_args() {
    CONF_ARGS=(--gpus "$GPUS" --env "$ENV_DIR" --name "$NAME")
    [[ -z $DATA_ROOT ]] || CONF_ARGS+=(--data-root "$DATA_ROOT")
    [[ -z $EMAIL ]] || CONF_ARGS+=(--email "$EMAIL")
    [[ -z $ID_MAPPING ]] || CONF_ARGS+=(--identity-mapping "$ID_MAPPING")
    local id
    for id in "${FUNCTION_IDS[@]}"; do
        CONF_ARGS+=(--function-id "$id")
    done
    CONF_ARGS+=("${CONFIGURE_EXTRA[@]}")
}

# How the staged configuration compares with the installed one:
# "new" (none of its files installed), "same", or "differs" (a unified diff,
# or the missing file's name, goes to stderr).
compare_staged() {
    local staged=$1 file installed status=same present=0 missing=()
    for file in "$staged"/*; do
        installed=$ENDPOINT_DIR/${file##*/}
        if [[ ! -e $installed ]]; then
            missing+=("$installed")
        else
            present=$((present + 1))
            if ! cmp -s "$installed" "$file"; then
                status=differs
                diff -u "$installed" "$file" >&2 || true
            fi
        fi
    done
    if ((present == 0)); then
        status=new
    elif ((${#missing[@]})); then
        status=differs
        printf 'not installed yet: %s\n' "${missing[@]}" >&2
    fi
    printf '%s\n' "$status"
}

configure_endpoint() {
    local python=$1 staged status
    configure_args
    say "rendering and checking the configuration in $STAGE/.globus_compute/$NAME"
    printf '+ %q -I -m mhd.endpoint configure --home %q' "$python" "$STAGE"
    printf ' %q' "${CONF_ARGS[@]}"
    printf '\n'
    "$python" -I -m mhd.endpoint configure --home "$STAGE" "${CONF_ARGS[@]}" >/dev/null
    staged=$STAGE/.globus_compute/$NAME
    status=$(compare_staged "$staged")
    case $status in
        same) say "configuration in $ENDPOINT_DIR is up to date" ;;
        new)
            say "installing the configuration into $ENDPOINT_DIR"
            run "$ENV_DIR/bin/python" -I -m mhd.endpoint configure "${CONF_ARGS[@]}"
            ;;
        differs)
            if ((FORCE)); then
                say "replacing the configuration in $ENDPOINT_DIR"
                run "$ENV_DIR/bin/python" -I -m mhd.endpoint configure --force "${CONF_ARGS[@]}"
            elif ((DRY_RUN)); then
                say "$ENDPOINT_DIR differs (diff above): a real run stops here unless --force"
            else
                die "$ENDPOINT_DIR differs from the rendered configuration (diff above); rerun with --force to replace it"
            fi
            ;;
    esac
}

# This documentation where the systemd unit's Documentation= points.
install_docs() {
    local doc=$ENV_DIR/share/doc/mhd-focus clone
    clone=$(cd "$SCRIPT_DIR/.." && pwd)
    [[ -f $clone/deploy/README.md && -f $clone/docs/admin.md ]] || return 0
    say "installing the documentation into $doc"
    run install -d "$doc"
    run install -m 0644 "$clone/docs/admin.md" "$clone/docs/troubleshooting.md" "$doc/"
    run install -m 0644 "$clone/deploy/README.md" "$doc/deploy-README.md"
}

summary() {
    if ((${#FUNCTION_IDS[@]})); then
        say "allowed function(s): ${FUNCTION_IDS[*]}"
        printf 'function %s\n' "${FUNCTION_IDS[@]}"
    else
        say "warning: no function UUID, so allowed_functions is unset; after the first start rerun with --register --force"
    fi
    if ((DRY_RUN)); then
        say "dry run: nothing installed; rendered configuration in $STAGE/.globus_compute/$NAME"
    fi
    say "start the endpoint:  $ENV_DIR/bin/globus-compute-endpoint start $NAME   (or the systemd unit in deploy/systemd/)"
}

main() {
    parse_args "$@"
    check_args
    if ((DRY_RUN)); then
        say "dry run: printing the steps, installing nothing"
    fi
    if [[ -z $STAGE ]]; then
        STAGE=$(mktemp -d "${TMPDIR:-/tmp}/mhd-endpoint-stage.XXXXXX")
        ((DRY_RUN)) || trap 'rm -rf -- "$STAGE"' EXIT
    fi
    make_env
    install_package
    check_gpus
    RENDER_PYTHON=$(render_python)
    [[ -n $RENDER_PYTHON ]] || render_env
    resolve_function "$RENDER_PYTHON"
    configure_endpoint "$RENDER_PYTHON"
    install_docs
    summary
}

main "$@"
