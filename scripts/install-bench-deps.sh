#!/usr/bin/env bash
# Packages only `make bench` needs: AppArmor's parser (the side-by-side comparison) and bcc with
# the guest kernel's headers (the runtime-compilation comparison). Idempotent, like install-host-deps.
set -euo pipefail

kver=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
PACKAGES=(apparmor python3-bpfcc "linux-headers-${kver}")

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$pkg")
  fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "install-bench-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's apparmor postinst tries to load profiles; this host's kernel may refuse, which is fine:
# the profiles that matter are loaded inside the guest by the benchmark itself.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
