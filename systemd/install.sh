#!/usr/bin/env bash
# Installs edge-proxy as a systemd service on Raspberry Pi OS (Debian, arm64) or Ubuntu on Jetson.
# Idempotent: run it again after an update. Needs root, Node.js 20 or newer (24 recommended; neither
# distribution's own nodejs package is recent enough: README, "Runs on"), npm and openssl; and make, g++
# and python3 (build-essential) where no prebuilt better-sqlite3 can be downloaded, which is then built here.
#   sudo systemd/install.sh            install or update from this checkout
# What exists is kept: the configuration, the device registry, the TLS files and the rules are
# written only when they are missing.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/edge-proxy
confdir=/etc/edge-proxy
config=$confdir/edge-proxy.yaml
statedir=/var/lib/edge-proxy     # StateDirectory= and WorkingDirectory= of the unit
unit=/etc/systemd/system/edge-proxy.service
bin=/usr/local/bin/edge-proxy
user=edge-proxy                  # User= and Group= of the unit
group=edge-proxy

# What the configuration says, filled by read_config (empty when it cannot be read).
auth_mode='' devices_file='' mqtt_port='' tls_port='' tls_cert='' tls_key='' tls_ca=''
uplink_ca='' uplink_cert='' uplink_key='' admin_token_file='' uplink_url=''
# The broker URL of config/edge-proxy.production.yaml: a fresh install is not started while it is there.
placeholder_broker=broker.example.com

# Reads the keys this script acts on through the proxy's own loader, so defaults, relative paths
# (against the service's working directory) and every check are the proxy's. Fails when the
# configuration has problems; check-config lists them.
read_config() {
  local js out
  js='
    const { pathToFileURL } = await import("node:url");
    const [loader, file, cwd] = process.argv.slice(1);
    const { checkConfig } = await import(pathToFileURL(loader).href);
    const { loaded } = checkConfig({ file, cwd, env: {} });
    if (!loaded) process.exit(3);
    const c = loaded.config;
    const keys = [c.auth.mode, c.devicesFile, c.mqtt.port, c.mqtt.tls.port, c.mqtt.tls.cert, c.mqtt.tls.key,
      c.mqtt.tls.ca, c.uplink.tls.ca, c.uplink.tls.cert, c.uplink.tls.key, c.admin.tokenFile, c.uplink.url];
    // One line each; the last line "." keeps the command substitution from eating the newlines of empty values at the end.
    process.stdout.write(keys.map((v) => String(v ?? "") + "\n").join("") + ".\n");'
  out=$(node --input-type=module -e "$js" "$prefix/dist/src/config/load.js" "$config" "$statedir" 2>/dev/null) || return 1
  { IFS= read -r auth_mode; IFS= read -r devices_file; IFS= read -r mqtt_port; IFS= read -r tls_port
    IFS= read -r tls_cert; IFS= read -r tls_key; IFS= read -r tls_ca; IFS= read -r uplink_ca
    IFS= read -r uplink_cert; IFS= read -r uplink_key; IFS= read -r admin_token_file; IFS= read -r uplink_url; } <<<"$out"
}

# An empty registry, readable by the service (group) and written by root (the CLI under sudo).
make_registry() {
  local file=$1 tmp
  mkdir -p "$(dirname "$file")"
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp" <<EOF
# edge-proxy device registry: the devices allowed to connect when auth.mode is token
# (devicesFile in $config). No device is registered yet, so none can connect.
#
# Add a device with the command line; it prints the device's token once and stores only its hash:
#   sudo edge-proxy devices add <id> [--attr location=hall-2] --config $config
# and list, remove or rotate with: sudo edge-proxy devices list|remove <id>|rotate <id> --config ...
# The running proxy picks changes up without a restart. The device connects with MQTT
# username = <id> and password = <token>, on the TLS port from the site network.
#
# Each entry: id, tokenSha256 (SHA-256 of the token, hex), and optionally publish and subscribe
# (topic filters; default devices/<id>/#, plus broadcast/# to subscribe) and attrs (read by rules).
# Owner root, group $group, mode 0640: the service reads this file, root writes it.
EOF
  chown "root:$group" "$tmp"
  chmod 0640 "$tmp"
  mv "$tmp" "$file"
}

# A self-signed server certificate for the TLS endpoint, named for this host and its addresses.
make_self_signed_cert() {
  local cert=$1 key=$2 host san ip
  host=$(hostname -s)
  san="DNS:$host,DNS:$host.local,DNS:localhost,IP:127.0.0.1,IP:::1"
  for ip in $(hostname -I 2>/dev/null || true); do
    case ",$san," in *",IP:$ip,"*) ;; *) san="$san,IP:$ip" ;; esac
  done
  mkdir -p "$(dirname "$cert")" "$(dirname "$key")"
  ( umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=$host" \
      -addext "subjectAltName=$san" -keyout "$key.new" -out "$cert.new" 2>/dev/null )
  chown "root:$group" "$key.new" "$cert.new"
  chmod 0640 "$key.new"
  chmod 0644 "$cert.new"
  mv "$key.new" "$key"
  mv "$cert.new" "$cert"
}

# Every file the configuration names must exist and be readable by the service's user, inside its
# sandbox; otherwise the service would start only to fail. Prints each problem, fails if any.
check_files() {
  local problems=0 entry what file
  local entries=("mqtt.tls.cert=$tls_cert" "mqtt.tls.key=$tls_key" "mqtt.tls.ca=$tls_ca" "uplink.tls.ca=$uplink_ca"
    "uplink.tls.cert=$uplink_cert" "uplink.tls.key=$uplink_key" "admin.tokenFile=$admin_token_file")
  [ "$auth_mode" = token ] && entries=("devicesFile=$devices_file" "${entries[@]}")
  for entry in "${entries[@]}"; do
    what=${entry%%=*} file=${entry#*=}
    [ -n "$file" ] || continue
    case "$file" in
      /home/* | /root/* | /run/user/* | /tmp/* | /var/tmp/*)
        echo "   $what: $file is hidden from the service (ProtectHome=, PrivateTmp=): put it under $confdir"
        problems=1; continue ;;
    esac
    if [ ! -e "$file" ]; then
      echo "   $what: $file does not exist"
      problems=1
    elif command -v runuser >/dev/null && ! runuser -u "$user" -- test -r "$file"; then
      echo "   $what: $file is not readable by the user $user (chgrp $group, chmod g+r)"
      problems=1
    fi
  done
  return $problems
}

# The registry (token mode) and the TLS endpoint's certificate, each made only when missing.
ensure_registry_and_tls() {
  echo "== device registry"
  if [ "$auth_mode" != token ]; then
    echo "   auth.mode is $auth_mode: devices connect without credentials, no registry is read"
  elif [ -e "$devices_file" ]; then
    echo "   kept the existing $devices_file"
  else
    make_registry "$devices_file"
    echo "   wrote $devices_file, with no device yet (root:$group, 0640)"
  fi

  if [ -n "$tls_cert" ]; then
    echo "== TLS endpoint (port $tls_port)"
    if [ -e "$tls_cert" ] && [ -e "$tls_key" ]; then
      echo "   kept the existing $tls_cert and $tls_key"
    elif [ -e "$tls_cert" ] || [ -e "$tls_key" ]; then
      echo "   only one of $tls_cert and $tls_key exists: no certificate is made over it"
    elif [ "$(dirname "$tls_cert")" != "$confdir/tls" ] || [ "$(dirname "$tls_key")" != "$confdir/tls" ]; then
      echo "   $tls_cert and $tls_key do not exist; a self-signed certificate is made only in $confdir/tls/"
    elif ! command -v openssl >/dev/null; then
      echo "   openssl is missing (apt-get install openssl): no self-signed certificate made"
    else
      mkdir -p "$confdir/tls"
      chown "root:$group" "$confdir/tls"
      chmod 0750 "$confdir/tls"
      make_self_signed_cert "$tls_cert" "$tls_key"
      echo "   made a SELF-SIGNED certificate for $(hostname -s): $tls_cert, key $tls_key (root:$group, 0640)"
      echo "   $(openssl x509 -noout -fingerprint -sha256 -in "$tls_cert")"
      echo "   Replace both files by a certificate from the site's CA, and give devices that CA; until then"
      echo "   devices must trust this certificate itself (copy $tls_cert to them)."
    fi
  fi
}

# The shipped placeholder broker URL, still in the configuration.
placeholder_uplink() {
  case "$uplink_url" in
    *"://$placeholder_broker" | *"://$placeholder_broker":* | *"://$placeholder_broker"/* | *"@$placeholder_broker"*) return 0 ;;
    *) return 1 ;;
  esac
}

# What the operator fills in before the service is started, and how to go on.
fill_in() {
  echo
  echo "edge-proxy is installed but not (re)started: its configuration is not complete. In $config:"
  if [ "$1" = 0 ]; then
    echo "  fix the problems listed above (check-config names each file:line:col and key)"
  fi
  if placeholder_uplink; then
    echo "  uplink.url      $uplink_url is the shipped placeholder: set your cloud broker's URL"
    echo "                  (or delete uplink.url, and uplink.tls, to run offline: what would go up stays in the cache)"
    echo "                  and, if the broker asks for them, uplink.username and uplink.password, or uplink.tls.cert and key (mTLS)"
  fi
  if [ -n "$uplink_ca" ] && [ ! -e "$uplink_ca" ]; then
    echo "  uplink.tls.ca   put the CA that signed the broker's certificate at $uplink_ca, readable by the service:"
    echo "                  sudo chown root:$group $uplink_ca && sudo chmod 0640 $uplink_ca"
    echo "                  (or delete uplink.tls.ca if the broker's certificate comes from a public CA)"
  fi
  echo "Check it:      sudo edge-proxy check-config $config"
  echo "Then start it: sudo $src/systemd/install.sh   (again: it enables and starts the service once the check passes)"
}

# How to add the first device and how it connects.
next_steps() {
  [ "$auth_mode" = token ] || return 0
  local host
  host=$(hostname -s)
  echo
  echo "Add the first device (its token is printed once; the running proxy picks it up without a restart):"
  echo "  sudo edge-proxy devices add <id> --config $config"
  echo "The device connects with MQTT username = <id>, password = <token>:"
  if [ -n "$tls_cert" ]; then
    local trust="the CA that signed $tls_cert"
    if [ -r "$tls_cert" ] && command -v openssl >/dev/null &&
      [ "$(openssl x509 -noout -subject -in "$tls_cert" 2>/dev/null | cut -d= -f2-)" = "$(openssl x509 -noout -issuer -in "$tls_cert" 2>/dev/null | cut -d= -f2-)" ]; then
      trust="$tls_cert itself, self-signed (copy it to the device as server.pem)"
    fi
    echo "  on port $tls_port (TLS), trusting $trust, e.g."
    echo "  mosquitto_pub -h $host -p $tls_port --cafile server.pem -i <id> -u <id> -P '<token>' -q 1 -t devices/<id>/telemetry -m '{\"temp\":21.5}'"
    echo "  Port $mqtt_port sends the token in clear: only for devices on this machine or a network you control."
  else
    echo "  mosquitto_pub -h $host -p $mqtt_port -i <id> -u <id> -P '<token>' -q 1 -t devices/<id>/telemetry -m '{\"temp\":21.5}'"
    echo "  Without mqtt.tls the token crosses the network in clear: set mqtt.tls.cert and key for devices on a site network."
  fi
}

main() {
  [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo $0)" >&2; exit 1; }
  command -v node >/dev/null || { echo "install.sh: Node.js 20 or newer is needed, 24 recommended (README, \"Runs on\")" >&2; exit 1; }
  local major node_bin
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || { echo "install.sh: Node.js $major found, 20 or newer is needed, 24 recommended (README, \"Runs on\")" >&2; exit 1; }
  # The unit runs this node: /usr/bin/node from NodeSource's packages, /usr/local/bin/node from nodejs.org's tarball.
  node_bin=$(command -v node)
  case "$node_bin" in
    /home/* | /root/* | /run/user/* | /tmp/*)
      echo "install.sh: warning: the service cannot run $node_bin (ProtectHome=, PrivateTmp= hide it): install Node.js system-wide" ;;
  esac

  echo "== user $user"
  id "$user" >/dev/null 2>&1 || useradd --system --home-dir "$statedir" --no-create-home --shell /usr/sbin/nologin "$user"

  echo "== building in $src"
  (cd "$src" && npm ci --no-audit --no-fund && npm run build)

  echo "== installing to $prefix, the command $bin"
  mkdir -p "$prefix"
  rm -rf "$prefix/dist"
  cp -a "$src/dist" "$src/package.json" "$src/package-lock.json" "$src/README.md" "$prefix/"
  [ -d "$src/rules" ] && cp -a "$src/rules" "$prefix/"
  (cd "$prefix" && npm ci --omit=dev --no-audit --no-fund)
  # A wrapper rather than a link: it runs with this node also under sudo, whose PATH may not have it.
  printf '#!/bin/sh\n# edge-proxy command line, installed by systemd/install.sh\nexec '\''%s'\'' '\''%s'\'' "$@"\n' \
    "$(command -v node)" "$prefix/dist/src/cli.js" >"$bin.new"
  chmod 0755 "$bin.new"
  mv "$bin.new" "$bin"

  echo "== configuration in $confdir"
  local fresh=0
  mkdir -p "$confdir"
  if [ ! -f "$config" ]; then
    sed "s/^  id: pi-hall-2 .*/  id: $(hostname -s)/" "$src/config/edge-proxy.production.yaml" >"$config"
    fresh=1
    echo "   wrote $config: set uplink.url and its TLS files"
  else
    echo "   kept the existing $config"
  fi
  # Only what this script owns: an operator's files in here (the registry, certificates) keep theirs.
  chown "root:$group" "$confdir" "$config"
  chmod 0750 "$confdir"
  chmod 0640 "$config"

  local readable=0
  if read_config; then
    readable=1
  else
    echo "   $config has problems (listed below): the registry and TLS files are left alone"
  fi

  if [ $readable = 1 ]; then
    ensure_registry_and_tls
  fi

  echo "== rules in $statedir/rules"
  # The service may write only its StateDirectory, and pushes replace the rules files: they live there.
  if [ ! -d "$statedir/rules" ]; then
    mkdir -p "$statedir/rules"
    if [ -d "$src/rules" ]; then cp "$src"/rules/*.rules "$statedir/rules/" 2>/dev/null || true; fi
    chown -R "$user:$user" "$statedir"
    chmod 0750 "$statedir"
    echo "   copied the example rules; edit them there, or push: edge-proxy rules push FILE..."
  else
    echo "   kept the existing rules"
  fi

  echo "== models in $statedir/models"
  # The shipped models are replaced by this version's; models of the site's own, dropped beside them, are kept.
  mkdir -p "$statedir/models"
  if [ -d "$src/models" ]; then
    for f in "$src"/models/*.onnx "$src"/models/*.yaml; do
      [ -e "$f" ] && cp "$f" "$statedir/models/.$(basename "$f").new" && mv "$statedir/models/.$(basename "$f").new" "$statedir/models/$(basename "$f")"
    done
  fi
  chown -R "$user:$user" "$statedir/models"
  echo "   $(ls "$statedir"/models/*.onnx 2>/dev/null | wc -l) model(s); the proxy reloads a model when its files change"

  echo "== checking the configuration"
  # ok: check-config and the files pass; complete: besides, the placeholder broker URL was replaced.
  local ok=1 complete=1
  node "$prefix/dist/src/cli.js" check-config "$config" || ok=0
  if [ $readable = 1 ] && ! check_files; then ok=0; fi
  if [ $readable = 1 ] && placeholder_uplink; then
    echo "   uplink.url: $uplink_url is the placeholder of the shipped configuration"
    complete=0
  fi
  [ $ok = 1 ] || complete=0

  echo "== systemd unit"
  sed "s|^ExecStart=/usr/bin/node |ExecStart=$node_bin |" "$src/systemd/edge-proxy.service" >"$unit.new"
  chmod 0644 "$unit.new"
  mv "$unit.new" "$unit"
  systemctl daemon-reload
  if [ $complete = 1 ]; then
    # Enabled and (re)started only on a configuration that passes: never started on placeholders.
    systemctl enable edge-proxy.service
    systemctl restart edge-proxy.service || echo "   edge-proxy did not start: journalctl -u edge-proxy -n 50"
  elif systemctl is-active --quiet edge-proxy.service; then
    echo "   the running edge-proxy is left as it is, not restarted: it would fail on this configuration"
  else
    echo "   not started$(systemctl is-enabled --quiet edge-proxy.service || echo ' nor enabled'): it would fail, or talk to a placeholder broker"
  fi

  if [ $complete = 1 ]; then
    echo
    echo "done: systemctl status edge-proxy; journalctl -u edge-proxy -f; sudo edge-proxy status --config $config"
  else
    fill_in "$ok"
  fi
  [ $fresh = 0 ] || echo "($config was written by this install from config/edge-proxy.production.yaml; it is kept from now on)"
  next_steps
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
