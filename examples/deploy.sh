#!/bin/sh
# A rolling deploy that loses no session: each backend in turn is drained
# (it keeps the clients pinned to it and takes no new one), restarted once
# it has had no request for IDLE, and put back in service.
#
#   examples/deploy.sh web 'systemctl restart "app@$1"' app-1 app-2 app-3
#
# The restart command runs with the backend's name as $1. It should return
# once the new version serves (systemd's Type=notify, or a loop on its health
# endpoint); with health_check configured the proxy also waits for its checks.
# CTL is how to reach the proxy (default: the admin listener and token of
# /etc/affinity/affinity.yaml); IDLE and TIMEOUT are ctl drain's --idle and
# --timeout. A backend not drained in TIMEOUT stops the deploy (exit 1),
# leaving it draining: look at `affinity ctl status`, then finish it by hand.
#
# For one backend this is the one-liner:
#   affinity ctl drain web app-2 --wait && restart app-2 && affinity ctl ready web app-2
set -eu

if [ $# -lt 3 ]; then
	echo "usage: $0 POOL RESTART-COMMAND BACKEND..." >&2
	exit 2
fi
pool=$1
restart=$2
shift 2
ctl=${CTL:-affinity ctl -c /etc/affinity/affinity.yaml}

for backend in "$@"; do
	$ctl drain "$pool" "$backend" --wait --idle "${IDLE:-10s}" --timeout "${TIMEOUT:-5m}"
	sh -c "$restart" restart "$backend"
	$ctl ready "$pool" "$backend"
done
