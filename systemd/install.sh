#!/usr/bin/env bash
# Installs edge-proxy as a systemd service on Raspberry Pi OS (Debian, arm64) or Ubuntu on Jetson.
# Idempotent: run it again after an update. Needs root, Node.js 20 or newer, and npm.
#   sudo systemd/install.sh            install or update from this checkout
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-proxy
confdir=/etc/edge-proxy
unit=/etc/systemd/system/edge-proxy.service

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo $0)" >&2; exit 1; }
command -v node >/dev/null || { echo "install.sh: Node.js 20 or newer is needed (apt-get install nodejs)" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "install.sh: Node.js $major found, 20 or newer is needed" >&2; exit 1; }

echo "== user edge-proxy"
id edge-proxy >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-proxy --no-create-home --shell /usr/sbin/nologin edge-proxy

echo "== building in $src"
(cd "$src" && npm ci --no-audit --no-fund && npm run build)

echo "== installing to $prefix"
mkdir -p "$prefix"
rm -rf "$prefix/dist"
cp -a "$src/dist" "$src/package.json" "$src/package-lock.json" "$src/README.md" "$prefix/"
[ -d "$src/rules" ] && cp -a "$src/rules" "$prefix/"
(cd "$prefix" && npm ci --omit=dev --no-audit --no-fund)

echo "== configuration in $confdir"
mkdir -p "$confdir"
if [ ! -f "$confdir/edge-proxy.yaml" ]; then
  sed "s/^  id: pi-hall-2 .*/  id: $(hostname -s)/" "$src/config/edge-proxy.production.yaml" > "$confdir/edge-proxy.yaml"
  echo "   wrote $confdir/edge-proxy.yaml: set uplink.url (and TLS files) before starting"
else
  echo "   kept the existing $confdir/edge-proxy.yaml"
fi
chown -R root:edge-proxy "$confdir"
chmod 0750 "$confdir"; chmod 0640 "$confdir/edge-proxy.yaml"

echo "== rules in /var/lib/edge-proxy/rules"
# The service may write only its StateDirectory, and pushes replace the rules files: they live there.
if [ ! -d /var/lib/edge-proxy/rules ]; then
  mkdir -p /var/lib/edge-proxy/rules
  [ -d "$src/rules" ] && cp "$src"/rules/*.rules /var/lib/edge-proxy/rules/ 2>/dev/null || true
  chown -R edge-proxy:edge-proxy /var/lib/edge-proxy
  chmod 0750 /var/lib/edge-proxy
  echo "   copied the example rules; edit them there, or push: edge-proxy rules push FILE..."
else
  echo "   kept the existing rules"
fi

echo "== checking the configuration"
node "$prefix/dist/src/cli.js" check-config "$confdir/edge-proxy.yaml" || echo "   fix the problems above, then: systemctl restart edge-proxy"

echo "== systemd unit"
install -m 0644 "$src/systemd/edge-proxy.service" "$unit"
systemctl daemon-reload
systemctl enable edge-proxy.service
systemctl restart edge-proxy.service || true
echo "done: systemctl status edge-proxy; journalctl -u edge-proxy -f; node $prefix/dist/src/cli.js status --config $confdir/edge-proxy.yaml"
