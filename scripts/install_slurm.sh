#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge so the SLURM tests can start a real two-node cluster on this machine
# (tests/slurm_cluster.py writes its own slurm.conf and starts munged, slurmctld and two slurmd daemons).
# Idempotent; needs root and Debian/Ubuntu apt. Run: `sudo bash scripts/install_slurm.sh`.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install_slurm.sh: must run as root (apt-get install and the munge key need it)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # slurm-wlm pulls slurmctld + slurmd + the client commands; no slurmdbd (tests read scontrol, not sacct).
    apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

# munge needs a key readable only by its owner; the tests run munged as root with this key.
install -d -m 0700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chmod 0400 /etc/munge/munge.key
install -d -m 0755 /var/log/munge /run/munge /var/lib/munge

echo "slurm: $(slurmctld -V 2>/dev/null || echo '?'), munge: $(munged --version 2>&1 | head -n1)"
