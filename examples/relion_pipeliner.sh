#!/usr/bin/env bash
# relion_pipeliner.sh -- add and run the cryogan jobs in a RELION project without the GUI.
#
# Run it FROM YOUR RELION PROJECT DIRECTORY (the folder with default_pipeline.star), with
# RELION's programs and the cryogan console scripts (cryogan-denoise, cryogan-reconstruct)
# on the PATH:
#
#     cd /data/my_relion_project
#     PARTICLES=Refine3D/job025/run_data.star REFERENCE=Refine3D/job025/run_class001.mrc \
#         THREADS=8 bash /path/to/cryogan-relion/examples/relion_pipeliner.sh
#
#     JOBS=denoise bash relion_pipeliner.sh      # only the denoiser
#     RUN=no bash relion_pipeliner.sh            # only add the jobs (Scheduled); run them from the GUI
#
# Every setting below can be given in the environment like that. For each job it does what
# you would do by hand (RELION's own relion_it.py does the same):
#   1. relion_pipeliner --addJob <type> --addJobOptions <options: key == value;...>
#      creates External/jobNNN/ with its job.star and adds it to default_pipeline.star as a
#      Scheduled job; nothing runs yet;
#   2. reads the new job's name from the last row of the table data_pipeline_processes of
#      default_pipeline.star (last_process_name below);
#   3. relion_pipeliner --RunJobs "External/jobNNN/"
#      runs the job from this directory as the GUI's Run! button does and WAITS until the job
#      writes External/jobNNN/RELION_JOB_EXIT_SUCCESS (or _FAILURE / _ABORTED);
#   4. checks which of the three it was.
# The jobs then show up in the GUI like any other job (Display: out: particles.star,
# out: logfile.pdf, ...); select one and press "Continue!" to resume an aborted run.
#
# The --addJobOptions syntax is strict (RELION's RelionJob::setOption): "key == value;" with
# EXACTLY one space on each side of "==" and NO space after ";"; an empty value is written
# "key == ;" (with the space), and a param (paramN_label/paramN_value) with an empty value is
# a flag (--label); at most 10 params; values cannot contain ";" or '"'. The job type is
# "relion.external" on RELION 4.0/5.0 and "External" on RELION 3.1. Written out in full:
#
# RELION 5.0 / 4.0:
#   relion_pipeliner --addJob relion.external --addJobOptions "fn_exe == cryogan-denoise;in_part == Refine3D/job025/run_data.star;in_3dref == Refine3D/job025/run_class001.mrc;in_mask == ;param1_label == n_steps;param1_value == 3000;param2_label == batch_size;param2_value == 16;param3_label == no_bias_controls;param3_value == ;nr_threads == 8;"
#   relion_pipeliner --RunJobs "External/job026/"
# RELION 3.1:
#   relion_pipeliner --addJob External --addJobOptions "fn_exe == cryogan-denoise;in_part == Refine3D/job025/run_data.star;in_3dref == Refine3D/job025/run_class001.mrc;in_mask == MaskCreate/job020/mask.mrc;param1_label == n_steps;param1_value == 3000;nr_threads == 8;"
#   relion_pipeliner --RunJobs "External/job026/"
# From a job.star template of examples/job_templates/ (RELION 4.0/5.0), overriding fields:
#   relion_pipeliner --addJobFromStar job_templates/cryogan_denoise_job.star --addJobOptions "in_part == Refine3D/job031/run_data.star;in_3dref == Refine3D/job031/run_class001.mrc;"

# ------------------------------------------------------------------------------ settings
: "${PARTICLES:=Refine3D/job025/run_data.star}"      # refined particles (poses, origins, CTF)
: "${REFERENCE:=Refine3D/job025/run_class001.mrc}"   # the refined map those poses refer to
: "${MASK:=}"                                        # optional 3D mask, e.g. MaskCreate/job020/mask.mrc
: "${RECONSTRUCT_PARTICLES:=${PARTICLES}}"           # particles with CTF for CryoGAN (poses not needed)
: "${THREADS:=8}"                                    # "Number of threads" (--j)
: "${JOBS:=denoise reconstruct}"                     # the jobs to add, in this order
: "${RUN:=yes}"                                      # no: only add the jobs (Scheduled)
: "${RELION_VERSION:=}"                              # 3.1, 4.0 or 5.0; empty: read from default_pipeline.star
: "${DENOISE_EXE:=cryogan-denoise}"                  # "External executable"; give the full path
: "${RECONSTRUCT_EXE:=cryogan-reconstruct}"          #   (`which cryogan-denoise`) if RELION's PATH lacks it
: "${DENOISE_EXTRA_ARGS:=}"                          # "Additional arguments" of each job (for more
: "${RECONSTRUCT_EXTRA_ARGS:=}"                      #   than 10 params), e.g. "--lr 1e-4 --l1_weight 50"
# Queue submission (leave QUEUE_SCRIPT empty to run on this machine).
: "${QUEUE_SCRIPT:=}"                                # your RELION submission-script template
: "${QUEUE_NAME:=openmpi}"
: "${QSUB_COMMAND:=sbatch}"
: "${MIN_DEDICATED:=1}"

# Denoiser params (all of them: `cryogan denoise --help` or README "Use it from RELION").
: "${DENOISE_N_STEPS:=3000}"              # training steps (batches)
: "${DENOISE_BATCH_SIZE:=16}"             # particles per training step
: "${DENOISE_TRAIN_BOX:=0}"               # box (px) to train/denoise at, Fourier-cropped; 0 = particles' box
: "${DENOISE_BASE_CHANNELS:=16}"          # U-Net channels at full resolution
: "${DENOISE_DEPTH:=3}"                   # U-Net down-sampling levels
: "${DENOISE_MAX_TRAIN_PARTICLES:=20000}" # train on at most this many particles of half set 1
: "${DENOISE_N_REPORT:=500}"              # held-out particles (half set 2) for the report
: "${DENOISE_STACK_SIZE:=10000}"          # particles per denoised output stack
: "${DENOISE_DEVICE:=auto}"               # auto (CUDA if present), cpu, cuda, cuda:1 ...
: "${DENOISE_FLAG:=}"                     # one on/off param as param10, e.g. ctf_free,
                                          #   train_both_halves, float16, no_bias_controls

# CryoGAN inputs and params (all params: `cryogan reconstruct --help` or README "Use it from RELION").
: "${RECONSTRUCT_REFERENCE:=}"            # optional map: outputs are aligned to it and compared (never trained on)
: "${RECONSTRUCT_MICROGRAPHS:=}"          # optional micrographs STAR: noise drawn from micrograph windows
: "${RECONSTRUCT_BOX_TRAIN:=0}"           # training box (px), Fourier-cropped; 0 = auto (Nyquist ~14 Å)
: "${RECONSTRUCT_PARTICLE_DIAMETER_A:=0}" # particle diameter (A); 0 = 0.8 x box x pixel size
: "${RECONSTRUCT_SYMMETRY:=C1}"           # point group (C1, Cn, Dn, T, O, I)
: "${RECONSTRUCT_N_EPOCHS:=200}"          # epochs; training ends at n_epochs or max_minutes
: "${RECONSTRUCT_MAX_MINUTES:=60}"        # training-time budget (minutes; 0 = no limit)
: "${RECONSTRUCT_BATCH_SIZE:=8}"          # particles per critic / volume step
: "${RECONSTRUCT_SHIFT_PX:=2}"            # half-width (px) of the uniform shift prior
: "${RECONSTRUCT_NOISE:=auto}"            # auto, patches, white or micrographs
: "${RECONSTRUCT_DEVICE:=auto}"           # auto (CUDA if present), cpu, cuda, cuda:1 ...

# ------------------------------------------------------------------------------ options

# The Running-tab options: threads, "Additional arguments" ($1) and the queue fields (only
# when QUEUE_SCRIPT is set).
running_options() {
  local o="nr_threads == ${THREADS};"
  if [[ -n "$1" ]]; then
    o+="other_args == $1;"
  fi
  if [[ -n "${QUEUE_SCRIPT}" ]]; then
    o+="do_queue == Yes;queuename == ${QUEUE_NAME};qsub == ${QSUB_COMMAND};qsubscript == ${QUEUE_SCRIPT};min_dedicated == ${MIN_DEDICATED};"
  fi
  printf '%s' "$o"
}

# The --addJobOptions string of cryogan-denoise. An empty in_mask is simply not passed; a
# param with an empty label (DENOISE_FLAG unset) is skipped by RELION.
denoise_options() {
  local o=""
  o+="fn_exe == ${DENOISE_EXE};"
  o+="in_part == ${PARTICLES};"
  o+="in_3dref == ${REFERENCE};"
  o+="in_mask == ${MASK};"
  o+="param1_label == n_steps;param1_value == ${DENOISE_N_STEPS};"
  o+="param2_label == batch_size;param2_value == ${DENOISE_BATCH_SIZE};"
  o+="param3_label == train_box;param3_value == ${DENOISE_TRAIN_BOX};"
  o+="param4_label == base_channels;param4_value == ${DENOISE_BASE_CHANNELS};"
  o+="param5_label == depth;param5_value == ${DENOISE_DEPTH};"
  o+="param6_label == max_train_particles;param6_value == ${DENOISE_MAX_TRAIN_PARTICLES};"
  o+="param7_label == n_report;param7_value == ${DENOISE_N_REPORT};"
  o+="param8_label == stack_size;param8_value == ${DENOISE_STACK_SIZE};"
  o+="param9_label == device;param9_value == ${DENOISE_DEVICE};"
  o+="param10_label == ${DENOISE_FLAG};param10_value == ;"
  o+="$(running_options "${DENOISE_EXTRA_ARGS}")"
  printf '%s' "$o"
}

# The --addJobOptions string of cryogan-reconstruct (empty inputs are not passed).
reconstruct_options() {
  local o=""
  o+="fn_exe == ${RECONSTRUCT_EXE};"
  o+="in_part == ${RECONSTRUCT_PARTICLES};"
  o+="in_3dref == ${RECONSTRUCT_REFERENCE};"
  o+="in_mask == ${MASK};"
  o+="in_mic == ${RECONSTRUCT_MICROGRAPHS};"
  o+="param1_label == box_train;param1_value == ${RECONSTRUCT_BOX_TRAIN};"
  o+="param2_label == particle_diameter_A;param2_value == ${RECONSTRUCT_PARTICLE_DIAMETER_A};"
  o+="param3_label == symmetry;param3_value == ${RECONSTRUCT_SYMMETRY};"
  o+="param4_label == n_epochs;param4_value == ${RECONSTRUCT_N_EPOCHS};"
  o+="param5_label == max_minutes;param5_value == ${RECONSTRUCT_MAX_MINUTES};"
  o+="param6_label == batch_size;param6_value == ${RECONSTRUCT_BATCH_SIZE};"
  o+="param7_label == shift_px;param7_value == ${RECONSTRUCT_SHIFT_PX};"
  o+="param8_label == noise;param8_value == ${RECONSTRUCT_NOISE};"
  o+="param9_label == device;param9_value == ${RECONSTRUCT_DEVICE};"
  o+="$(running_options "${RECONSTRUCT_EXTRA_ARGS}")"
  printf '%s' "$o"
}

# ------------------------------------------------------------------------------ helpers

die() { echo "ERROR: $*" >&2; exit 1; }

# Print the name of the last process of a pipeline STAR file (default default_pipeline.star),
# e.g. "External/job026/": the last row of data_pipeline_processes, column
# _rlnPipeLineProcessName found by its label (RELION 3.1, 4.0 and 5.0 files). Fails if none.
last_process_name() {
  awk '
    /^data_/ { inblock = ($1 == "data_pipeline_processes"); inloop = 0; ncol = 0; col = 0; next }
    !inblock { next }
    /^loop_/ { inloop = 1; next }
    inloop && /^_/ { ncol++; if ($1 == "_rlnPipeLineProcessName") col = ncol; next }
    inloop && col > 0 && NF >= col && $1 !~ /^#/ { last = $col }
    END { if (last == "") exit 1; print last }
  ' "${1:-default_pipeline.star}"
}

# The RELION version of the project, from default_pipeline.star: "# version 50001" is 5.0;
# integer process types (_rlnPipeLineProcessType) are 3.1; anything else 4.0.
detect_relion_version() {
  if grep -q '^# version 50001' default_pipeline.star; then
    echo 5.0
  elif grep -q '^_rlnPipeLineProcessType ' default_pipeline.star; then
    echo 3.1
  else
    echo 4.0
  fi
}

# The --addJob type of an External job: External on 3.1, relion.external on 4.0/5.0.
external_job_type() {
  case "$1" in
    3.1) echo External ;;
    4.0 | 4 | 5.0 | 5) echo relion.external ;;
    *) die "RELION_VERSION=$1: use 3.1, 4.0 or 5.0" ;;
  esac
}

# Refuse values that --addJobOptions cannot carry.
check_value() {
  case "$2" in
    *\;* | *\"*) die "$1 = '$2': a value in --addJobOptions cannot contain ';' or '\"'" ;;
  esac
}

# relion_pipeliner --RunJobs waits for ever for a missing input file, so check them first.
check_input() {
  [[ -z "$2" || -f "$2" ]] || die "$1=$2: no such file (give it relative to the project directory)"
}

# Print the name of the job that the last --addJob created, failing if the pipeline's last
# process is still "$1" (the one before the --addJob).
new_job_name() {
  local name
  name=$(last_process_name default_pipeline.star || true)
  [[ -n "$name" && "$name" != "$1" ]] || die "relion_pipeliner --addJob added no job to default_pipeline.star (messages above)"
  printf '%s\n' "$name"
}

# Run a Scheduled job and wait for it; fail unless it succeeded.
run_job() {
  local name=$1
  echo "Running ${name} (log: ${name}run.out, errors: ${name}run.err)"
  relion_pipeliner --RunJobs "$name" || die "relion_pipeliner --RunJobs \"$name\" failed"
  if [[ -e "${name}RELION_JOB_EXIT_SUCCESS" ]]; then
    echo "${name}: finished successfully; its outputs are listed in ${name}RELION_OUTPUT_NODES.star"
  elif [[ -e "${name}RELION_JOB_EXIT_ABORTED" ]]; then
    die "${name} was aborted (select it in the GUI and press Continue! to resume)"
  else
    die "${name} did not succeed; see ${name}run.err"
  fi
}

# ------------------------------------------------------------------------------ main

main() {
  set -euo pipefail
  [[ -f default_pipeline.star ]] || die "no default_pipeline.star in $(pwd): run this script from your RELION project directory"
  local version job_type job before name var
  version=${RELION_VERSION:-$(detect_relion_version)}
  job_type=$(external_job_type "$version")
  for var in PARTICLES REFERENCE MASK RECONSTRUCT_PARTICLES THREADS DENOISE_EXE RECONSTRUCT_EXE \
      QUEUE_SCRIPT QUEUE_NAME QSUB_COMMAND MIN_DEDICATED ${!DENOISE_*} ${!RECONSTRUCT_*}; do
    check_value "$var" "${!var}"
  done
  echo "RELION ${version} project $(pwd): adding External jobs (--addJob ${job_type})"
  for job in ${JOBS}; do
    before=$(last_process_name default_pipeline.star || true)
    case "$job" in
      denoise)
        check_input PARTICLES "$PARTICLES"; check_input REFERENCE "$REFERENCE"; check_input MASK "$MASK"
        relion_pipeliner --addJob "$job_type" --addJobOptions "$(denoise_options)" ;;
      reconstruct)
        check_input RECONSTRUCT_PARTICLES "$RECONSTRUCT_PARTICLES"; check_input MASK "$MASK"
        check_input RECONSTRUCT_REFERENCE "$RECONSTRUCT_REFERENCE"; check_input RECONSTRUCT_MICROGRAPHS "$RECONSTRUCT_MICROGRAPHS"
        relion_pipeliner --addJob "$job_type" --addJobOptions "$(reconstruct_options)" ;;
      *)
        die "JOBS: unknown job '$job' (use denoise and/or reconstruct)" ;;
    esac
    name=$(new_job_name "$before")
    echo "${job}: added ${name}"
    if [[ "$RUN" == yes ]]; then
      run_job "$name"
    else
      echo "${job}: not run (RUN=${RUN}); run it with  relion_pipeliner --RunJobs \"${name}\""
    fi
  done
}

# `source relion_pipeliner.sh` only defines the settings and functions (used by the tests).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
