"""``cryogan-denoise``: the cGAN denoiser as a RELION External job.

RELION runs, from the project directory::

    cryogan-denoise --o External/job012/ --in_parts Refine3D/job025/run_data.star \\
        --in_3dref Refine3D/job025/run_class001.mrc [--in_mask MaskCreate/job020/mask.mrc] \\
        [--<param> <value> | --<flag>]... --j 8 [--pipeline_control External/job012/]

Params (the GUI's Params tab) are the options of ``cryogan denoise`` with underscores
(``--train_box 48``, ``--n_steps 3000``, ``--ctf_free``; see
``cryogan_core.commands.denoise_options.DenoiseOptions``). Running the same command again on the same
``--o`` (RELION's "Continue!") resumes from the last checkpoint and keeps finished stacks.
Output nodes: ``particles.star`` (particles) and ``logfile.pdf`` (PDF log).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from cryogan_core.commands.denoise_options import DenoiseOptions
from relion_external._args import input_file
from relion_external._job import Node, RelionJob, configure_logging, parse_relion_args_or_exit


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``cryogan-denoise`` console script (RELION External job)."""
    args = parse_relion_args_or_exit(list(sys.argv[1:] if argv is None else argv))
    configure_logging()
    with RelionJob(args.o, project_dir=Path.cwd(), name="cryogan-denoise") as job:
        input_file(args.in_parts, "in_parts", "the particles", "fill 'Input particles' in the GUI, e.g. Refine3D/job025/run_data.star")
        input_file(args.in_3dref, "in_3dref", "the reference map")
        input_file(args.in_mask, "in_mask", "the mask")
        options = args.options(DenoiseOptions)  # after the files: its checks import torch
        from cryogan_core.commands._common import set_threads  # torch and the science: after the quick checks
        from cryogan_core.commands.denoise import DenoiseInputs, run_denoise

        set_threads(args.j)
        inputs = DenoiseInputs(
            star_path=Path(args.in_parts),
            output_dir=job.job_dir,
            map_path=Path(args.in_3dref) if args.in_3dref else None,
            mask_path=Path(args.in_mask) if args.in_mask else None,
            project_dir=job.project_dir,
        )
        run_denoise(inputs, options, should_stop=job.check_abort, resume=True)
        job.set_output_nodes([Node(job.node_name("particles.star"), "particles"), Node(job.node_name("logfile.pdf"), "logfile")])


if __name__ == "__main__":  # pragma: no cover
    main()
