#!/usr/bin/env bash
# The proxy on an ARM64 board, emulated: prepares the board (qemu-user 10 and binfmt_misc, the arm64 C
# and C++ runtime), installs the project for arm64 with npm itself running on an arm64 Node 24 (so
# install scripts and native addons behave as on a Raspberry Pi), then runs the end-to-end smoke
# (scripts/e2e-smoke.mjs) on that Node: MQTT, /ws and CoAP devices in token mode, the example rules,
# the shipped model compared with x64, a kill -9, a cloud Mosquitto. Idempotent: what is there is kept.
#
#   scripts/arm64-check.sh             the arm64 board, emulated (needs root on a fresh machine: apt-get, binfmt)
#   scripts/arm64-check.sh --arch x64  the same install and smoke on x64 Node 24, natively
#   --node 26                          another major version of Node.js (npm package node-linux-<arch>@26); default 24
#   --fresh                            install the board again even when nothing it depends on changed
#
# Needs this checkout installed and built (npm ci; npm run build runs when dist/ is stale), mosquitto
# and libcoap3-bin (coap-client-notls) on the host, and the npm registry. Downloads are kept in
# ./.board-check/; the installed board in $EDGE_PROXY_BOARD_DIR (default /var/tmp/edge-proxy-board),
# outside the checkout, where npm would otherwise find this checkout's node_modules/.bin (a board has
# none of it). Every figure printed for arm64 is measured under emulation: not a board's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch=arm64
node_major=24
fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:-}; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    --node) node_major=${2:-}; shift 2 ;;
    --node=*) node_major=${1#--node=}; shift ;;
    --fresh) fresh=1; shift ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "arm64-check: unknown option $1 (--arch arm64|x64, --node N, --fresh)" >&2; exit 2 ;;
  esac
done
case "$arch" in arm64 | x64) ;; *) echo "arm64-check: --arch is arm64 or x64, not $arch" >&2; exit 2 ;; esac
case "$node_major" in [0-9] | [0-9][0-9]) ;; *) echo "arm64-check: --node is a major version (24), not $node_major" >&2; exit 2 ;; esac
cache="$root/.board-check"
board="${EDGE_PROXY_BOARD_DIR:-/var/tmp/edge-proxy-board}/$arch-node$node_major"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

step_started=0
timings=()
step() {
  step_started=$(date +%s.%N)
  echo "-- $1"
}
step_done() {
  local s
  s=$(awk -v a="$step_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  timings+=("$1 ${s} s")
  echo "   ($1: ${s} s)"
}

# The emulator that binfmt_misc runs arm64 programs with, and its major version (0 when none).
qemu_registered() { readlink -f "$(sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null)"; }
qemu_major() {
  local bin=${1:-}
  [ -n "$bin" ] && [ -x "$bin" ] || { echo 0; return; }
  "$bin" --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p' | head -n 1 | grep . || echo 0
}

# The mirror this machine gets Debian 12 from (deb822 .sources, else one-line .list): backports come from it too.
bookworm_mirror() {
  {
    awk 'BEGIN { RS = "" }
      /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ && /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ {
        if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u }
      }' /etc/apt/sources.list.d/*.sources 2>/dev/null
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $3 == "bookworm" { print $2 }'
  } | awk 'NR == 1'
}

# qemu 10 or newer (7.2, Debian 12's own, hands onnxruntime the host's x86 /proc/cpuinfo and it
# crashes on load), binfmt_misc (every process an arm64 Node starts is an arm64 program too), and
# the arm64 C and C++ runtime and cross compilers (QEMU_LD_PREFIX, native addons).
prepare_board() {
  step "the emulated board: qemu-user, binfmt_misc, the arm64 runtime"
  local packages=() toolchain=() codename=""
  [ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  local emulator
  emulator=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
  [ "$(qemu_major "$emulator")" -ge 10 ] || packages+=(qemu-user-static binfmt-support)
  command -v aarch64-linux-gnu-g++ >/dev/null && [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ] || toolchain+=(g++-aarch64-linux-gnu)
  if [ ${#packages[@]} -gt 0 ] || [ ${#toolchain[@]} -gt 0 ]; then
    local target=()
    if [ "$codename" = bookworm ]; then
      # qemu 10 is in bookworm-backports; Debian 13 and later have it in main.
      if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror
        mirror=$(bookworm_mirror)
        [ -n "$mirror" ] || { echo "arm64-check: no Debian bookworm source in /etc/apt to add bookworm-backports beside: add it, then run again" >&2; exit 1; }
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" |
          $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
        echo "   added bookworm-backports from $mirror"
      fi
      target=(-t bookworm-backports)
    fi
    echo "   apt-get install ${packages[*]} ${toolchain[*]}"
    $sudo apt-get update -qq
    [ ${#packages[@]} -eq 0 ] || $sudo apt-get install -y -qq "${target[@]}" "${packages[@]}" >/dev/null
    [ ${#toolchain[@]} -eq 0 ] || $sudo apt-get install -y -qq "${toolchain[@]}" >/dev/null
  else
    echo "   kept qemu-user $(qemu_major "$emulator").x and the aarch64 toolchain"
  fi

  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64 conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -e /proc/sys/fs/binfmt_misc/register ] || $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ -e "$entry" ] && [ "$(qemu_major "$(qemu_registered)")" -lt 10 ]; then
    # An older qemu registered with the F flag stays in use after an upgrade: register the new one.
    echo "   the registered $(qemu_registered) is older than qemu 10: registering again"
    echo -1 | $sudo tee "$entry" >/dev/null
  fi
  if [ ! -e "$entry" ]; then
    # Debian's qemu 10 ships systemd binfmt.d files: update-binfmts may not know the format.
    if ! $sudo update-binfmts --enable qemu-aarch64 2>/dev/null || [ ! -e "$entry" ]; then
      [ -r "$conf" ] || { echo "arm64-check: $conf is missing: cannot register qemu-aarch64 with binfmt_misc" >&2; exit 1; }
      $sudo sh -c "cat '$conf' > /proc/sys/fs/binfmt_misc/register"
    fi
    echo "   registered qemu-aarch64 with binfmt_misc"
  else
    echo "   kept the binfmt_misc registration"
  fi
  grep -qx enabled "$entry" || echo 1 | $sudo tee "$entry" >/dev/null
  emulator=$(qemu_registered)
  qemu_version=$("$emulator" --version | sed -n 's/^qemu-aarch64 version \([^ ]*\).*/\1/p')
  [ "$(qemu_major "$emulator")" -ge 10 ] || { echo "arm64-check: $emulator is qemu $qemu_version; 10 or newer is needed" >&2; exit 1; }
  step_done prepare
}

# node-linux-<arch>@24 from the npm registry: the binary, and the headers node-gyp builds addons against.
fetch_node() {
  step "Node.js $node_major for $arch (npm package node-linux-$arch@$node_major)"
  nodedir="$cache/node-$arch-$node_major"
  if [ -x "$nodedir/bin/node" ] && [ -d "$nodedir/include/node" ]; then
    echo "   kept $nodedir"
  else
    mkdir -p "$cache/downloads"
    rm -f "$cache"/downloads/node-linux-"$arch"-"$node_major".*.tgz
    (cd "$cache/downloads" && npm pack --silent "node-linux-$arch@$node_major" >/dev/null)
    rm -rf "$nodedir.tmp"
    mkdir -p "$nodedir.tmp"
    tar xzf "$cache"/downloads/node-linux-"$arch"-"$node_major".*.tgz -C "$nodedir.tmp" --strip-components=1
    rm -rf "$nodedir"
    mv "$nodedir.tmp" "$nodedir"
    rm -f "$cache"/downloads/node-linux-"$arch"-"$node_major".*.tgz
  fi
  node_bin="$nodedir/bin/node"
  node_version=$("$node_bin" -p 'process.arch + " " + process.version')
  echo "   $node_version"
  [ "${node_version%% *}" = "$arch" ] || { echo "arm64-check: $node_bin runs as ${node_version%% *}, not $arch" >&2; exit 1; }
  step_done node
}

# The project installed as on a board: what systemd/install.sh copies, then npm ci --omit=dev run by the
# board's Node, which builds better-sqlite3 (no prebuilt binary is reachable) and keeps onnxruntime-node's
# own linux/arm64 binary (its install script, which would download a CUDA provider, stays off).
install_board() {
  step "installing the project for $arch: npm ci --omit=dev on the $arch Node"
  (cd "$root" && node scripts/build-if-needed.mjs)
  app="$board/app"
  mkdir -p "$app"
  rm -rf "$app/dist" "$app/models" "$app/rules"
  cp -a "$root/dist" "$root/package.json" "$root/package-lock.json" "$root/models" "$root/rules" "$app/"
  local stamp
  stamp=$(cat "$root/package.json" "$root/package-lock.json" <(echo "$node_version") | sha256sum | cut -c1-16)
  if [ $fresh = 0 ] && [ -d "$app/node_modules" ] && [ "$(cat "$app/.installed" 2>/dev/null)" = "$stamp" ]; then
    echo "   kept node_modules: package.json, package-lock.json and Node are unchanged (--fresh installs again)"
  else
    rm -rf "$app/node_modules" "$app/.installed"
    local npm_cli
    npm_cli=$(readlink -f "$(command -v npm)")
    case "$npm_cli" in *npm-cli.js) ;; *) npm_cli="$(npm root -g)/npm/bin/npm-cli.js" ;; esac
    local env=(PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir" npm_config_build_from_source=true
      npm_config_jobs=2 ONNXRUNTIME_NODE_INSTALL=skip)
    [ "$arch" = arm64 ] && env+=(CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++)
    # npm itself runs on the board's Node: PATH puts that node first for the install scripts too.
    if ! (cd "$app" && env "${env[@]}" "$node_bin" "$npm_cli" ci --omit=dev --no-audit --no-fund --prefer-offline \
      --foreground-scripts >"$board/npm-ci.log" 2>&1); then
      tail -n 40 "$board/npm-ci.log"
      echo "arm64-check: npm ci failed on $arch (all of it: $board/npm-ci.log)" >&2
      exit 1
    fi
    echo "   $(grep -E '^added [0-9]+ packages' "$board/npm-ci.log" | tail -n 1)"
    echo "$stamp" >"$app/.installed"
  fi
  # The native parts the proxy loads, and the machine each is built for (ELF e_machine: b7 aarch64, 3e x86-64).
  local addon machine want
  want=$([ "$arch" = arm64 ] && echo b7 || echo 3e)
  for addon in "$app/node_modules/better-sqlite3/build/Release/better_sqlite3.node" \
    "$app"/node_modules/onnxruntime-node/bin/napi-v*/linux/"$arch"/onnxruntime_binding.node; do
    [ -e "$addon" ] || { echo "arm64-check: $addon is missing" >&2; exit 1; }
    machine=$(od -An -tx1 -j18 -N1 "$addon" | tr -d ' ')
    [ "$machine" = "$want" ] || { echo "arm64-check: $addon is not built for $arch (ELF machine $machine)" >&2; exit 1; }
    echo "   ${addon#"$app/node_modules/"}: ELF for $arch"
  done
  step_done install
}

run_smoke() {
  step "end-to-end smoke on $node_version"
  local emulated=() status=0
  if [ "$arch" = arm64 ]; then
    emulated=(--emulated "qemu-user $qemu_version, -cpu $QEMU_CPU")
  fi
  (cd "$root" && node scripts/e2e-smoke.mjs --node "$node_bin" --app "$app" --label "$arch Node ${node_version#* }" "${emulated[@]}") || status=$?
  step_done smoke
  return $status
}

started=$(date +%s)
if [ "$arch" = arm64 ]; then
  # A Raspberry Pi 4's CPU; the loader and C/C++ runtime of the cross toolchain stand for the board's /lib.
  export QEMU_CPU=${QEMU_CPU:-cortex-a72} QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
  prepare_board
fi
fetch_node
install_board
status=0
run_smoke || status=$?
joined=$(printf '%s, ' "${timings[@]}")
echo "== $arch check: $([ $status = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - started)) s (${joined%, })"
exit $status
