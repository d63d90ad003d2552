"""Localize photos against a map bundle (written by ``evaluate.py --export_bundle PATH``), or serve the bundle.

    python localize.py --bundle PATH photo.jpg more_photos/            # intrinsics from EXIF
    python localize.py --bundle PATH --camera "PINHOLE 1024 768 800 800 512 384" photo.jpg
    python localize.py --bundle PATH --queries queries_with_intrinsics.txt --image_root images/ --visualize
    python localize.py serve --bundle PATH --port 8000                 # POST /localize, GET /health

Prints ``name qw qx qy qz tx ty tz inliers status`` per photo (world-to-camera) and writes to ``--output``:
``poses.txt`` (``name qw qx qy qz tx ty tz``, the visuallocalization.net format), ``results.jsonl`` (one JSON
record per photo: pose, matches, inliers, status, failure reason, timings, camera) and with ``--visualize``
``visualize/<name>.jpg`` (inlier matches green, outliers red). Intrinsics come from ``--camera``, else the
query list, else the photo's EXIF data (focal length and sensor, as ``pycolmap.infer_camera_from_image``).
Pixels are used as stored (EXIF orientation not applied, as COLMAP and hloc), and intrinsics for another image
size are an error, never a silent wrong pose. A failed photo gets the nearest database image's pose and status
``failed``; a photo that cannot be read or whose intrinsics do not fit is reported (status ``error``) and
skipped; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("fuseloc.localize_cli")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--bundle", type=Path, required=True, help="map bundle folder (evaluate.py --export_bundle)")
    parser.add_argument("images", nargs="*", type=Path, help="image files and folders (searched recursively)")
    parser.add_argument("--queries", type=Path, help="hloc query list: 'name MODEL W H params...' per line")
    parser.add_argument("--image_root", type=Path, help="folder the --queries names are relative to (default: the list's folder)")
    parser.add_argument("--camera", help="intrinsics of every photo: 'MODEL W H params...' (COLMAP model and order)")
    parser.add_argument("--guess_focal", action="store_true",
                        help="photos without intrinsics or EXIF focal length: use COLMAP's guess (1.2 x the longest side)")
    parser.add_argument("--output", type=Path, default=Path("outputs/localize"), help="folder for poses.txt, results.jsonl, visualize/")
    parser.add_argument("--visualize", action="store_true", help="draw inlier and outlier matches per photo")
    parser.add_argument("--device", default="cpu", help="where network extractors run: cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="print no per-photo lines")
    parser.add_argument("--log_level", default="WARNING", help="logging level")
    return parser


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localize.py serve", description="Serve a map bundle over HTTP: POST /localize "
                                     "(the image file's bytes as the body; ?camera=MODEL+W+H+params optional), GET /health.",
                                     allow_abbrev=False)
    parser.add_argument("--bundle", type=Path, required=True, help="map bundle folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_concurrency", type=int, default=2,
                        help="requests localized at once; more wait their turn (default 2: one per two CPU cores is a good start)")
    parser.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond which new ones get 503")
    parser.add_argument("--max_image_mb", type=float, default=50.0, help="largest accepted request body (413 above)")
    parser.add_argument("--device", default="cpu", help="where network extractors run")
    parser.add_argument("--log_level", default="INFO", help="logging level")
    return parser


def collect_images(paths: list[Path]) -> list[tuple[str, Path]]:
    """(name, file) per photo: a file's name is its file name, a folder's photos are named relative to it."""
    from fuseloc.errors import InputError

    found: list[tuple[str, Path]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError("no images in this folder", path)
            found += [(f.relative_to(path).as_posix(), f) for f in files]
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise InputError("image or folder not found", path)
    names = [n for n, _ in found]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InputError(f"two photos are named {duplicate!r}; give their folder instead so names stay distinct")
    return found


def localize_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fuseloc.errors import InputError

    try:
        return run_localize(args)
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def run_localize(args: argparse.Namespace) -> int:
    from fuseloc.data.extract import read_image
    from fuseloc.data.intrinsics import parse_camera
    from fuseloc.errors import InputError
    from fuseloc.io import write_text_atomic
    from fuseloc.localize.bundle import draw_matches, load_bundle

    camera = parse_camera(args.camera, "--camera") if args.camera else None
    jobs: list[tuple[str, Path, object, str]] = []  # name, file, camera or None, camera source
    if args.queries is not None:
        from fuseloc.data.readers.generic import read_query_list

        root = args.image_root if args.image_root is not None else args.queries.parent
        for entry in read_query_list(args.queries):
            jobs.append((entry.name, root / entry.name, camera or entry.camera, "given" if camera else "list"))
    elif args.image_root is not None:
        raise InputError("--image_root needs --queries")
    for name, path in collect_images(args.images):
        jobs.append((name, path, camera, "given" if camera else "exif"))
    if not jobs:
        raise InputError("nothing to localize: give image files or folders, or --queries LIST")
    bundle = load_bundle(args.bundle, device=args.device)
    output: Path = args.output
    lines, records, errors = [], [], 0
    for name, path, cam, source in jobs:
        try:
            result = bundle.localize(path, cam, name=name, allow_guessed_focal=args.guess_focal)
        except InputError as exc:
            errors += 1
            message = " ".join(str(exc).split())
            print(f"error: {message}", file=sys.stderr)
            records.append({"name": name, "status": "error", "success": False, "reason": message})
            continue
        result.camera_source = source
        lines.append(result.to_line())
        records.append(result.to_record())
        if not args.quiet:
            print(f"{result.to_line()} {result.num_inliers} {'localized' if result.success else 'failed'}")
        if args.visualize:
            import cv2

            target = output / "visualize" / Path(name).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            canvas = cv2.cvtColor(draw_matches(read_image(path), result), cv2.COLOR_RGB2BGR)
            ok, encoded = cv2.imencode(".jpg", canvas)
            if ok:
                from fuseloc.io import atomic_path

                with atomic_path(target) as tmp:
                    tmp.write_bytes(encoded.tobytes())
    write_text_atomic(output / "poses.txt", "".join(line + "\n" for line in lines))
    write_text_atomic(output / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    localized = sum(1 for r in records if r.get("success"))
    print(f"{localized} of {len(jobs)} photos localized ({errors} unreadable or with wrong intrinsics); "
          f"poses: {output / 'poses.txt'}", file=sys.stderr)
    return 2 if errors else 0


def serve_main(argv: list[str]) -> int:
    args = build_serve_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fuseloc.errors import InputError

    try:
        from fuseloc.service import ServiceConfig, serve

        serve(args.bundle, ServiceConfig(host=args.host, port=args.port, max_concurrency=args.max_concurrency,
                                         max_queue=args.max_queue, max_image_bytes=int(args.max_image_mb * 2**20),
                                         device=args.device))
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return serve_main(argv[1:])
    return localize_main(argv)


if __name__ == "__main__":
    sys.exit(main())
