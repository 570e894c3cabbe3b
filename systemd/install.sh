#!/usr/bin/env bash
# Install DynLLM as a systemd service. Safe to run again: it updates the code,
# keeps an existing config, and leaves an existing user alone.
#
#   sudo bash systemd/install.sh [--root DIR] [--prefix PATH] [--no-enable]
#
#   --root DIR     install into the filesystem tree under DIR instead of / (for
#                  tests): files, user and unit all go there, and nothing on the
#                  running system is touched. The virtual environment is tied to
#                  the path it was made at, so a tree for another machine must be
#                  installed at its final path instead
#   --prefix PATH  where DynLLM lives as seen at run time (default /opt/dynllm)
#   --no-enable    install the unit without enabling it
set -euo pipefail

ROOT=""
PREFIX="/opt/dynllm"
ENABLE=1
SERVICE_USER="dynllm"
STATE_DIR="/var/lib/dynllm"

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="${2%/}"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; ROOT="${ROOT%/}"; shift ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a path"; PREFIX="${2%/}"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; PREFIX="${PREFIX%/}"; shift ;;
        --no-enable) ENABLE=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    die "must be run as root (try: sudo bash $0)"
fi
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, not '$PREFIX'" ;; esac
case "$PREFIX" in *[!A-Za-z0-9/._-]*) die "--prefix may only hold letters, digits and / . _ -" ;; esac
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
fi

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT$PREFIX"
UNIT_DIR="$ROOT/etc/systemd/system"
echo "install.sh: installing DynLLM from $SRC into ${ROOT:-/} (prefix $PREFIX)"

# --- the service user ------------------------------------------------------
user_tool_args=()
if [ -n "$ROOT" ]; then
    # Edit the account files of the tree under ROOT (no chroot needed).
    mkdir -p "$ROOT/etc"
    for f in passwd group shadow gshadow; do [ -e "$ROOT/etc/$f" ] || : > "$ROOT/etc/$f"; done
    user_tool_args=(--prefix "$ROOT")
fi
if grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null; then
    echo "install.sh: user $SERVICE_USER exists"
else
    nologin="/usr/sbin/nologin"; [ -x "$nologin" ] || nologin="/bin/false"
    useradd "${user_tool_args[@]}" --system --user-group --home-dir "$STATE_DIR" \
        --no-create-home --shell "$nologin" --comment "DynLLM service" "$SERVICE_USER"
    echo "install.sh: created system user $SERVICE_USER"
fi
for group in render video; do  # GPU device nodes (Intel/AMD)
    if grep -q "^$group:" "$ROOT/etc/group" 2>/dev/null \
        && ! grep -Eq "^$group:[^:]*:[^:]*:(.*,)?$SERVICE_USER(,|\$)" "$ROOT/etc/group"; then
        usermod "${user_tool_args[@]}" -a -G "$group" "$SERVICE_USER"
        echo "install.sh: added $SERVICE_USER to group $group"
    fi
done

# --- the code ----------------------------------------------------------------
mkdir -p "$DEST"
if [ "$(cd "$DEST" && pwd -P)" = "$(cd "$SRC" && pwd -P)" ]; then
    echo "install.sh: running from $PREFIX itself; nothing to copy"
else
# Everything but local state, caches, build output and the config (never overwritten).
tar -C "$SRC" \
    --exclude=./.git --exclude=./.venv --exclude=./config.yaml --exclude='*.db' \
    --exclude='*.db-*' --exclude=./logs --exclude=./run --exclude=./bench/results \
    --exclude='__pycache__' --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude='*.egg-info' --exclude=./build --exclude=./dist \
    -cf - . | tar -C "$DEST" --no-same-owner --no-same-permissions -xf -
# Readable by the service whatever the umask of the checkout was.
chmod -R u+rwX,go+rX,go-w "$DEST"
echo "install.sh: copied the project to $DEST"
fi

# --- its Python environment ---------------------------------------------------
if command -v uv >/dev/null 2>&1; then
    UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
    UV=(python3 -m uv)
else
    echo "install.sh: installing uv with pip"
    python3 -m pip install --quiet uv
    UV=(python3 -m uv)
fi
(cd "$DEST" && "${UV[@]}" sync --frozen --no-dev --quiet)
[ -x "$DEST/.venv/bin/dynllm" ] || die "uv sync did not produce $DEST/.venv/bin/dynllm"
if [ -z "$ROOT" ] && ! runuser -u "$SERVICE_USER" -- "$DEST/.venv/bin/python" -c "" 2>/dev/null; then
    die "the $SERVICE_USER user cannot run $DEST/.venv/bin/python (it points at $(readlink -f "$DEST/.venv/bin/python")); install a system Python 3.11+ readable by every user and run this again"
fi
echo "install.sh: environment ready ($("$DEST/.venv/bin/dynllm" --version))"

# --- the configuration ------------------------------------------------------
if [ -e "$DEST/config.yaml" ]; then
    echo "install.sh: keeping the existing $PREFIX/config.yaml"
else
    cat > "$DEST/config.yaml" <<EOF
# DynLLM configuration, written by install.sh (it never overwrites this file).
# Every key is described in $PREFIX/README.md and $PREFIX/config.example.yaml.
# Check it with: sudo -u $SERVICE_USER $PREFIX/.venv/bin/dynllm --config $PREFIX/config.yaml --check
server:
  host: 127.0.0.1          # nginx (or another proxy) on this host talks to DynLLM
  port: 8000
  trusted_proxy: 127.0.0.1 # believe that proxy's X-Forwarded-* headers
total_vram_mb: 8192
db_path: $STATE_DIR/dynllm_state.db     # also holds logs/ and run/ next to it
enabled_backends: [llamacpp, openvino, transformers]
backend:
  llamacpp_binary: llama-server
models: []
EOF
    chmod 0640 "$DEST/config.yaml"
    gid="$(grep "^$SERVICE_USER:" "$ROOT/etc/group" | cut -d: -f3)"
    [ -n "$gid" ] || die "no group $SERVICE_USER in $ROOT/etc/group"
    chgrp "$gid" "$DEST/config.yaml"
    echo "install.sh: wrote a default $PREFIX/config.yaml (no models yet)"
fi

# --- the unit -----------------------------------------------------------------
mkdir -p "$UNIT_DIR"
sed -e "s#/opt/dynllm#$PREFIX#g" -e "s#/var/lib/dynllm#$STATE_DIR#g" \
    "$SRC/systemd/dynllm.service" > "$UNIT_DIR/dynllm.service.tmp"
chmod 0644 "$UNIT_DIR/dynllm.service.tmp"
mv "$UNIT_DIR/dynllm.service.tmp" "$UNIT_DIR/dynllm.service"
echo "install.sh: installed $UNIT_DIR/dynllm.service"

if [ -n "$ROOT" ]; then
    if [ "$ENABLE" = 1 ]; then systemctl --root="$ROOT" enable dynllm.service; fi
else
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    if [ "$ENABLE" = 1 ]; then systemctl enable dynllm.service; fi
    if [ -d /run/systemd/system ] && systemctl is-active --quiet dynllm.service; then
        systemctl restart dynllm.service  # an update takes effect now
        echo "install.sh: restarted the running dynllm.service"
    fi
fi
echo "install.sh: done. Start it with: systemctl start dynllm; logs: journalctl -u dynllm -f"
