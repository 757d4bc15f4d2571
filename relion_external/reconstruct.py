"""``cryogan-reconstruct``: CryoGAN reconstruction as a RELION External job.

RELION runs (protocol §1.2)::

    cryogan-reconstruct --o External/jobNNN/ --in_parts particles.star [--in_3dref ref.mrc]
        [--in_mask mask.mrc] [--in_mics micrographs.star] [--<option> <value>]... --j N

Every option of ``cryogan reconstruct`` (:class:`~cryogan_core.commands.reconstruct_options.ReconstructOptions`,
e.g. ``--box_train 32``, ``--max_minutes 60``, ``--symmetry D2``) is given as a Params-tab
label and value (or in "Additional arguments"). The science is
:func:`~cryogan_core.commands.reconstruct.run_reconstruct`; this file only translates the
command line, polls ``RELION_JOB_ABORT_NOW`` between training steps (a checkpoint is saved
before the job ends as aborted), continues from ``checkpoint.pt`` when RELION's "Continue!"
is used or a checkpoint exists in ``--o``, and declares the output nodes: the map
``run_class001.mrc`` (``DensityMap.mrc``), the half maps (``DensityMap.mrc.halfmap``) and
``logfile.pdf`` (``LogFile.pdf.relion``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from loguru import logger

from cryogan_core.commands.reconstruct_options import ReconstructOptions
from relion_external._args import input_file
from relion_external._job import Node, RelionJob, configure_logging, parse_relion_args_or_exit

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the job on ``argv`` (default ``sys.argv[1:]``) from the RELION project directory.

    Raises:
        SystemExit: 0 on success, 1 on bad input or a bug, 2 when aborted (RELION reads the
            exit files, not the status).
    """
    configure_logging()
    args = parse_relion_args_or_exit(list(sys.argv[1:] if argv is None else argv))
    with RelionJob(args.o, project_dir=Path.cwd(), name="cryogan-reconstruct") as job:
        star = input_file(args.in_parts, "in_parts", "the particles", "fill 'Input particles' in the GUI, e.g. Extract/job009/particles.star")
        ref = input_file(args.in_3dref, "in_3dref", "the reference map")
        mask = input_file(args.in_mask, "in_mask", "the mask")
        mics = input_file(args.in_mics, "in_mics", "the micrographs")
        opts = args.options(ReconstructOptions)  # after the files: its checks import torch
        from cryogan_core.commands._common import set_threads  # torch and the science: after the quick checks
        from cryogan_core.commands.reconstruct import CHECKPOINT, run_reconstruct

        set_threads(args.j)
        has_checkpoint = job.path(CHECKPOINT).exists()
        if job.is_continue and not has_checkpoint:
            logger.warning(f"Continue asked, but {job.job_dir_name}{CHECKPOINT} does not exist: starting from the beginning")
        run_reconstruct(
            star, job.job_dir, opts, ref_path=ref, mask_path=mask, mics_path=mics,
            project_dir=job.project_dir, should_stop=job.check_abort, resume=True,
        )
        job.set_output_nodes(
            [
                Node(job.node_name("run_class001.mrc"), "map"),
                Node(job.node_name("run_half1_class001_unfil.mrc"), "halfmap"),
                Node(job.node_name("run_half2_class001_unfil.mrc"), "halfmap"),
                Node(job.node_name("logfile.pdf"), "logfile"),
            ]
        )


if __name__ == "__main__":
    main()
