#!/usr/bin/env bash
# Install the MHD scoring endpoint "mhd-gpu" on a GPU host (e.g. a DGX).
#
# 1. a virtual environment (--env) with mhd-focus and its CuPy extra, from the
#    package source you name (--source, --index-url, --find-links): nothing else
#    is downloaded;
# 2. the Globus Compute endpoint configuration ~/.globus_compute/NAME/ for N GPUs,
#    rendered and checked by the project's configure command
#    (python -m mhd.endpoint configure); an identical one is left alone, a
#    different one is replaced only with --force;
# 3. optionally (--register) the score_tiles function registered with Globus
#    Compute; its UUID is printed and written into allowed_functions.
#
# Run it as the user the endpoint will run as (see deploy/systemd/). Running it
# again with the same options changes nothing. --dry-run prints each step and
# renders the configuration into a staging folder only.
#
# Example:
#   deploy/install-endpoint.sh --gpus 8 --env /opt/mhd/venv \
#       --find-links /srv/wheelhouse --data-root /data/mhd
#   globus-compute-endpoint start mhd-gpu       # once, to log in and get its UUID
#   deploy/install-endpoint.sh --gpus 8 --env /opt/mhd/venv \
#       --find-links /srv/wheelhouse --data-root /data/mhd --register --force
set -euo pipefail

readonly PROG=${0##*/}
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
    [[ -z $FIND_LINKS || -d $FIND_LINKS ]] || die "--find-links: no such folder: $FIND_LINKS"
    [[ -z $STAGE || ! -e $STAGE ]] || die "--stage $STAGE already exists; name a new folder"
    # The endpoint reads GLOBUS_COMPUTE_USER_DIR instead of ~/.globus_compute;
    # the configure command writes under ~/.globus_compute only.
    if [[ -n ${GLOBUS_COMPUTE_USER_DIR:-} && $GLOBUS_COMPUTE_USER_DIR != "$HOME/.globus_compute" ]]; then
        die "GLOBUS_COMPUTE_USER_DIR is set to $GLOBUS_COMPUTE_USER_DIR; unset it (configuration goes to $HOME/.globus_compute)"
    fi
    ENDPOINT_DIR=$HOME/.globus_compute/$NAME
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
    if [[ -n $INDEX_URL ]]; then
        args+=(--index-url "$INDEX_URL")
    elif [[ -n $FIND_LINKS ]]; then
        args+=(--no-index)
    fi
    [[ -z $FIND_LINKS ]] || args+=(--find-links "$FIND_LINKS")
    say "installing $(requirement) into $ENV_DIR"
    run "$ENV_DIR/bin/python" -m pip "${args[@]}" "$(requirement)"
    run "$ENV_DIR/bin/python" -c 'import mhd, mhd.endpoint, mhd.functions.remote; print("mhd-focus", mhd.__version__)'
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
# environment does not have mhd-focus yet but --python does.
render_python() {
    if ((!DRY_RUN)); then
        printf '%s\n' "$ENV_DIR/bin/python"
    elif [[ -x $ENV_DIR/bin/python ]] && "$ENV_DIR/bin/python" -c 'import mhd.endpoint' 2>/dev/null; then
        printf '%s\n' "$ENV_DIR/bin/python"
    elif "$PYTHON" -c 'import mhd.endpoint' 2>/dev/null; then
        printf '%s\n' "$PYTHON"
    fi
}

endpoint_uuid() {
    if [[ -n $ENDPOINT_ID ]]; then
        printf '%s\n' "$ENDPOINT_ID"
    elif [[ -f $ENDPOINT_DIR/endpoint.json ]]; then
        "$1" -c 'import json, sys; print(json.load(open(sys.argv[1]))["endpoint_id"])' "$ENDPOINT_DIR/endpoint.json"
    fi
}

# Fill FUNCTION_IDS: --function-id, a new registration, or the stored one.
resolve_function() {
    local py=$1 endpoint out stored
    ((${#FUNCTION_IDS[@]} == 0)) || return 0
    if ((REGISTER)); then
        endpoint=$(endpoint_uuid "$py")
        [[ -n $endpoint ]] || die "--register needs the endpoint's UUID: start it once (globus-compute-endpoint start $NAME) or pass --endpoint UUID"
        say "registering score_tiles for endpoint $endpoint"
        run "$ENV_DIR/bin/client" register --endpoint "$endpoint"
        ((DRY_RUN)) && return 0
        out=$("$ENV_DIR/bin/client" config --json)
        stored=$(printf '%s' "$out" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["function"]["value"] or "")')
        [[ $stored =~ $UUID_RE ]] || die "client register stored no function UUID"
        FUNCTION_IDS=("$stored")
    elif [[ -x $ENV_DIR/bin/client ]]; then
        out=$("$ENV_DIR/bin/client" config --json) || die "client config failed"
        stored=$(printf '%s' "$out" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["function"]["value"] or "")')
        [[ -z $stored ]] || FUNCTION_IDS=("$stored")
    fi
}

configure_args() {
    CONF_ARGS=(--gpus "$GPUS" --env "$ENV_DIR" --name "$NAME")
    [[ -z $DATA_ROOT ]] || CONF_ARGS+=(--data-root "$DATA_ROOT")
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
    local py=$1 staged status
    configure_args
    if [[ -z $STAGE ]]; then
        STAGE=$(mktemp -d "${TMPDIR:-/tmp}/mhd-endpoint-stage.XXXXXX")
        ((DRY_RUN)) || trap 'rm -rf -- "$STAGE"' EXIT
    fi
    say "rendering and checking the configuration in $STAGE/.globus_compute/$NAME"
    printf '+ %q -m mhd.endpoint configure --home %q' "$py" "$STAGE"
    printf ' %q' "${CONF_ARGS[@]}"
    printf '\n'
    "$py" -m mhd.endpoint configure --home "$STAGE" "${CONF_ARGS[@]}" >/dev/null
    staged=$STAGE/.globus_compute/$NAME
    status=$(compare_staged "$staged")
    case $status in
        same) say "configuration in $ENDPOINT_DIR is up to date" ;;
        new)
            say "installing the configuration into $ENDPOINT_DIR"
            run "$ENV_DIR/bin/python" -m mhd.endpoint configure "${CONF_ARGS[@]}"
            ;;
        differs)
            if ((FORCE)); then
                say "replacing the configuration in $ENDPOINT_DIR"
                run "$ENV_DIR/bin/python" -m mhd.endpoint configure --force "${CONF_ARGS[@]}"
            elif ((DRY_RUN)); then
                say "$ENDPOINT_DIR differs (diff above): a real run stops here unless --force"
            else
                die "$ENDPOINT_DIR differs from the rendered configuration (diff above); rerun with --force to replace it"
            fi
            ;;
    esac
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
    make_env
    install_package
    check_gpus
    local py
    py=$(render_python)
    [[ -n $py ]] || die "cannot render the configuration in a dry run: neither $ENV_DIR/bin/python nor $PYTHON can import mhd-focus"
    resolve_function "$py"
    configure_endpoint "$py"
    summary
}

main "$@"
