"""A tiny RELION External job built on relion_external._job, used only by the tests.

It copies ``--in_parts`` to ``--o/particles.star``, ``--in_3dref`` to ``run_class001.mrc`` and
``run_half1_class001_unfil.mrc``, ``--in_mask`` to ``mask.mrc``, writes a placeholder
``logfile.pdf``, records what it parsed in ``--o/args.json`` and declares the output nodes.

Params (RELION Params tab):
    --sleep_steps N          N steps of 0.2 s, printing ``step i`` and checking abort each step
    --fail_with_input_error  raise InputError (one-line ERROR expected in run.err)
    --fail_with_bug          raise RuntimeError (traceback expected in run.err)
    --forget_output          declare logfile.pdf as a node but do not write it
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryogan_core.errors import InputError  # noqa: E402
from relion_external._job import (  # noqa: E402
    Node,
    RelionJob,
    configure_logging,
    parse_relion_args_or_exit,
)
from loguru import logger  # noqa: E402

_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def _copy_input(src: str, dst: Path, flag: str) -> None:
    """Copy a project-relative input file; InputError naming the flag if it is missing."""
    if not Path(src).is_file():
        raise InputError(f"--{flag} {src}: file not found (paths are relative to the project directory)")
    shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> None:
    """Run the fake job on ``argv`` (default ``sys.argv[1:]``) from the project directory."""
    configure_logging()
    args = parse_relion_args_or_exit(sys.argv[1:] if argv is None else argv)
    with RelionJob(args.o, project_dir=Path.cwd(), name="fake-external") as job:
        record = {
            "o": str(args.o),
            "job_dir_name": job.job_dir_name,
            "in_parts": args.in_parts,
            "in_3dref": args.in_3dref,
            "in_mask": args.in_mask,
            "j": args.j,
            "params": args.params,
            "pipeline_control": args.pipeline_control,
            "version": job.version,
            "is_continue": job.is_continue,
        }
        job.path("args.json").write_text(json.dumps(record, indent=1))
        logger.info(f"parsed {record}")
        if args.param_bool("fail_with_input_error"):
            raise InputError(
                f"{args.in_parts}: row 12: rlnImageName 000099@Movies/a.mrcs: "
                f"index 99 is out of range (stack has 40 images)"
            )
        if args.param_bool("fail_with_bug"):
            raise RuntimeError("deliberate bug in fake_external_job")
        for step in range(args.param_int("sleep_steps", 0)):
            job.check_abort()
            print(f"step {step}", flush=True)
            time.sleep(0.2)
        job.check_abort()
        if args.in_parts is None:
            raise InputError("--in_parts is required (RELION: Input particles)")
        _copy_input(args.in_parts, job.path("particles.star"), "in_parts")
        nodes = [Node(job.node_name("particles.star"), "particles")]
        if args.in_3dref:
            _copy_input(args.in_3dref, job.path("run_class001.mrc"), "in_3dref")
            _copy_input(args.in_3dref, job.path("run_half1_class001_unfil.mrc"), "in_3dref")
            nodes += [
                Node(job.node_name("run_class001.mrc"), "map"),
                Node(job.node_name("run_half1_class001_unfil.mrc"), "halfmap"),
            ]
        if args.in_mask:
            _copy_input(args.in_mask, job.path("mask.mrc"), "in_mask")
            nodes.append(Node(job.node_name("mask.mrc"), "mask"))
        if not args.param_bool("forget_output"):
            job.path("logfile.pdf").write_bytes(_PDF)
        nodes.append(Node(job.node_name("logfile.pdf"), "logfile"))
        job.set_output_nodes(nodes)


if __name__ == "__main__":
    main()
