"""`warden initdata build|digest|annotation|decode|image`: author and inspect CoCo initdata.

build:      TOML with `warden.bundle` (+ aa.toml, cdh.toml, policy.rego, warden.trust if given)
digest:     hex digest, or with --tee the reference value Trustee compares (TDX MRCONFIGID 48 B,
            SNP HOSTDATA 32 B, CCA 64 B, vTPM PCR8)
annotation: the Kata pod annotation value (base64 of gzip)
decode:     annotation value -> TOML
image:      the Kata initdata block-device image
FILE arguments may hold TOML, an annotation value, or a block-device image.
Exit codes: 0 ok; 1 refused (one line on stderr naming the file and field); 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from attest.tee import Tee, expected_measurement
from initdata.bounded import read_bounded
from initdata.document import (
    BUNDLE_KEY,
    MAX_INITDATA_BYTES,
    TRUST_KEY,
    HashAlgorithm,
    build_initdata_toml,
    parse_initdata,
)
from initdata.dsse import MAX_ENVELOPE_BYTES, parse_envelope
from initdata.encoding import (
    ANNOTATION_KEY,
    MAX_ANNOTATION_CHARS,
    decode_annotation,
    encode_annotation,
    encode_image,
)
from initdata.errors import InitdataNotFound, MalformedBundle, MalformedInitdata
from initdata.keys import MAX_PEM_BYTES, load_public_keys_pem
from initdata.locate import load_initdata_file
from supervisor.cli_support import guarded, write_output
from supervisor.exit_codes import EXIT_OK, EXIT_USAGE

MAX_DATA_FILE_BYTES = 256 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "initdata", help="build and inspect CoCo initdata", description="Build and inspect CoCo initdata."
    )
    actions = parser.add_subparsers(dest="initdata_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: _usage(parser))

    build = actions.add_parser(
        "build",
        help="write an initdata TOML carrying a signed bundle",
        description="Write initdata TOML with the bundle under data.warden.bundle.",
    )
    build.add_argument("--bundle", required=True, type=Path, metavar="B", help="bundle envelope JSON")
    build.add_argument("--aa-toml", type=Path, metavar="F", help="attestation-agent config (data.aa.toml)")
    build.add_argument("--cdh-toml", type=Path, metavar="F", help="CDH config (data.cdh.toml)")
    build.add_argument("--policy-rego", type=Path, metavar="F", help="kata agent policy (data.policy.rego)")
    build.add_argument(
        "--trust-key",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="carry this public key in data.warden.trust (trust mode 'initdata')",
    )
    build.add_argument(
        "--algorithm",
        required=True,
        choices=[a.value for a in HashAlgorithm],
        help="digest algorithm (sha256 for vTPM platforms)",
    )
    build.add_argument(
        "--format",
        choices=("toml", "annotation", "image"),
        default="toml",
        help="write the TOML (default), the pod annotation value, or the block image",
    )
    build.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here instead of stdout")
    build.set_defaults(handler=run_build)

    digest = actions.add_parser(
        "digest",
        help="print the digest or a TEE reference value",
        description="Print the initdata digest (hex), or with --tee the value the TEE register must hold.",
    )
    digest.add_argument("file", type=Path, metavar="FILE")
    digest.add_argument("--tee", choices=[t.value for t in Tee], help="print this TEE's field instead")
    digest.add_argument("--base64", action="store_true", help="standard base64 instead of hex")
    digest.set_defaults(handler=run_digest)

    annotation = actions.add_parser(
        "annotation",
        help=f"print the {ANNOTATION_KEY} value",
        description="Print the Kata annotation value (base64 of gzip).",
    )
    annotation.add_argument("file", type=Path, metavar="FILE")
    annotation.set_defaults(handler=run_annotation)

    decode = actions.add_parser(
        "decode",
        help="decode an annotation value to TOML",
        description="Decode an annotation value ('-' reads stdin, @FILE a file).",
    )
    decode.add_argument("annotation", metavar="ANNOTATION")
    decode.add_argument("--output", "-o", type=Path, metavar="FILE")
    decode.set_defaults(handler=run_decode)

    image = actions.add_parser(
        "image",
        help="write the Kata initdata block-device image",
        description="Write FILE as a Kata initdata block-device image.",
    )
    image.add_argument("file", type=Path, metavar="FILE")
    image.add_argument("--output", "-o", type=Path, required=True, metavar="IMAGE")
    image.set_defaults(handler=run_image)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _read_text(path: Path, field: str) -> str:
    raw = read_bounded(path, MAX_DATA_FILE_BYTES, field=field, error=MalformedInitdata)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInitdata(str(path), field, "is not UTF-8") from None


@guarded
def run_build(args: argparse.Namespace) -> int:
    envelope = read_bounded(args.bundle, MAX_ENVELOPE_BYTES, field="bundle", error=MalformedBundle)
    parse_envelope(envelope, origin=str(args.bundle))  # refuse to embed something that is not an envelope
    data: dict[str, str] = {}
    for key, path in (("aa.toml", args.aa_toml), ("cdh.toml", args.cdh_toml), ("policy.rego", args.policy_rego)):
        if path is not None:
            data[key] = _read_text(path, key)
    if args.trust_key:
        pems = []
        for path in args.trust_key:
            pem = read_bounded(path, MAX_PEM_BYTES, field=TRUST_KEY)
            load_public_keys_pem(pem, origin=str(path))
            pems.append(pem.decode("ascii").strip() + "\n")
        data[TRUST_KEY] = "".join(pems)
    try:
        data[BUNDLE_KEY] = envelope.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBundle(str(args.bundle), "envelope", "is not UTF-8") from None
    toml = build_initdata_toml(data, algorithm=HashAlgorithm(args.algorithm), origin=str(args.bundle))
    if len(toml) > MAX_INITDATA_BYTES:
        raise MalformedInitdata(str(args.bundle), "document", "the initdata would exceed the size limit")
    if args.format == "annotation":
        output = (encode_annotation(toml) + "\n").encode()
    elif args.format == "image":
        output = encode_image(toml)
    else:
        output = toml
    write_output(args.output, output)
    if args.output is not None:
        document = parse_initdata(toml, origin=str(args.output))
        print(f"initdata ({args.format}, {document.algorithm} {document.digest_hex}) written to {args.output}")
    return EXIT_OK


@guarded
def run_digest(args: argparse.Namespace) -> int:
    document = load_initdata_file(args.file)
    value = document.digest
    if args.tee is not None:
        value = expected_measurement(value, document.algorithm, Tee(args.tee), origin=str(args.file))
    print(base64.b64encode(value).decode() if args.base64 else value.hex())
    return EXIT_OK


@guarded
def run_annotation(args: argparse.Namespace) -> int:
    document = load_initdata_file(args.file)
    print(encode_annotation(document.raw))
    return EXIT_OK


@guarded
def run_decode(args: argparse.Namespace) -> int:
    value: str | bytes = args.annotation
    origin = "annotation"
    if args.annotation == "-":
        value = sys.stdin.buffer.read(MAX_ANNOTATION_CHARS + 1)
        origin = "stdin"
    elif args.annotation.startswith("@"):
        path = Path(args.annotation[1:])
        value = read_bounded(path, MAX_ANNOTATION_CHARS, field="annotation", error=InitdataNotFound)
        origin = str(path)
    toml = decode_annotation(value, origin=origin)
    parse_initdata(toml, origin=origin)  # decode only what is a valid initdata document
    write_output(args.output, toml)
    return EXIT_OK


@guarded
def run_image(args: argparse.Namespace) -> int:
    document = load_initdata_file(args.file)
    write_output(args.output, encode_image(document.raw))
    print(f"initdata image ({document.algorithm} {document.digest_hex}) written to {args.output}")
    return EXIT_OK
