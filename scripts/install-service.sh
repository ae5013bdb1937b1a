#!/usr/bin/env bash
# Installs emotion-edge as a systemd service from a checkout at /opt/emotion-edge (run as root, again to upgrade).
#   sudo git clone <repo> /opt/emotion-edge && sudo /opt/emotion-edge/scripts/install-service.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install-service: run as root (sudo)" >&2; exit 2; }
[ "$PWD" = /opt/emotion-edge ] || { echo "install-service: the unit expects the checkout at /opt/emotion-edge (it is at $PWD)" >&2; exit 2; }

scripts/bootstrap.sh ""   # the runtime alone: no training or test packages on the device
id emotion-edge >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/emotion-edge --shell /usr/sbin/nologin emotion-edge
usermod -a -G video,audio emotion-edge
install -d -m 0755 /etc/emotion-edge
if [ ! -f /etc/emotion-edge/config.yaml ]; then
  # The shipped defaults, pointed at the installed models and the service's state directory.
  sed -e 's#^state_dir: .state #state_dir: /var/lib/emotion-edge #' \
      -e 's#^  dir: models_tflite #  dir: /opt/emotion-edge/models_tflite #' config.yaml > /etc/emotion-edge/config.yaml
fi
# LoadCredential needs the file to exist; an empty one means "no password".
[ -f /etc/emotion-edge/mqtt_password ] || install -m 0600 /dev/null /etc/emotion-edge/mqtt_password
# Empty: the daemon generates the device page's password on its first start and logs it once (journalctl -u emotion-edge).
[ -f /etc/emotion-edge/web_password ] || install -m 0600 /dev/null /etc/emotion-edge/web_password
install -m 0644 systemd/emotion-edge.service /etc/systemd/system/emotion-edge.service
systemctl daemon-reload
echo "installed. Edit /etc/emotion-edge/config.yaml (mqtt.host, device_id), then: systemctl enable --now emotion-edge" >&2
