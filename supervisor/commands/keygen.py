"""`warden keygen`: a new bundle-signing key pair (PKCS#8 private PEM 0600, public PEM).

The public half goes into the guest image's trust directory (/etc/warden/trust/*.pem) or into
initdata `warden.trust`; the private half stays with the policy owner.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from initdata.keys import KeyAlgorithm, generate_signing_key, load_public_key_pem
from supervisor.cli_support import guarded, write_output
from supervisor.exit_codes import EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="generate a bundle-signing key pair",
        description="Write PREFIX.key (private PEM, mode 0600) and PREFIX.pem (public PEM, for a trust directory).",
    )
    parser.add_argument("prefix", type=Path, metavar="PREFIX", help="output path prefix, e.g. keys/owner")
    parser.add_argument(
        "--algorithm",
        choices=[a.value for a in KeyAlgorithm],
        default=KeyAlgorithm.ED25519.value,
        help="key type (default: ed25519)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")
    parser.set_defaults(handler=run_keygen)


@guarded
def run_keygen(args: argparse.Namespace) -> int:
    private_pem, public_pem = generate_signing_key(KeyAlgorithm(args.algorithm))
    prefix: Path = args.prefix
    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pem")  # trust dirs take *.pem
    write_output(private_path, private_pem, private=True, exclusive=not args.force)
    write_output(public_path, public_pem, exclusive=not args.force)
    keyid = load_public_key_pem(public_pem, origin=str(public_path)).keyid
    print(f"{args.algorithm} key {keyid}: private {private_path}, public {public_path}")
    return EXIT_OK
