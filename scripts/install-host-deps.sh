#!/usr/bin/env bash
# Install the Debian packages coco-warden builds and tests with. Idempotent: it
# does nothing when every package is already installed, so a warm `make` is fast.
set -euo pipefail

PACKAGES=(
  clang llvm libbpf-dev bpftool            # CO-RE BPF build
  qemu-system-x86 linux-image-amd64        # the guest VM and its 6.1 kernel
  busybox-static cpio xz-utils kmod        # the guest initramfs
  swtpm swtpm-tools tpm2-tools             # a real TPM 2.0 for the guest
  crun                                     # a real OCI runtime for hook tests
  systemd                                  # PID 1 inside the guest
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "install-host-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
