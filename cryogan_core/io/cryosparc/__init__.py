"""cryoSPARC particle datasets (``.cs``) and result groups (``.csg``): read and write.

A ``.cs`` file is one numpy structured array saved with ``np.save`` (magic ``\\x93NUMPY``),
one row per particle, fields named ``<slot>/<field>`` (``blob/path``, ``ctf/df1_A``,
``alignments3D/pose`` ...) plus ``uid`` (``<u8``). cryosparc-tools ≥ 4.4 can also write a
compressed "CSDAT" container (magic ``\\x95CSDAT``); it is read through the optional
``cryosparc-tools`` package when installed. A ``.csg`` is a small YAML file that lists, per
slot, the ``.cs`` metafile holding it (``'>x.cs'`` = next to the ``.csg``).

Conversion to RELION (the conventions of pyem ``pyem/metadata/cryosparc2.py``, checked
against cryodrgn ``parse_pose_csparc``/``parse_pose_star``; see
``docs/cryosparc_interop.md`` §5 for the sources):

============================  =================================================================
cryoSPARC                     RELION (canonical columns of :func:`cryogan_core.io.star.read_particles`)
============================  =================================================================
``blob/path``, ``blob/idx``   ``rlnImageName`` = ``%06d@path`` with index ``idx + 1``
``blob/psize_A``              ``rlnImagePixelSize`` (Å)
``blob/shape`` ``[ny, nx]``   ``rlnImageSize`` (px; must be square)
``ctf/accel_kv``              ``rlnVoltage`` (kV)
``ctf/cs_mm``                 ``rlnSphericalAberration`` (mm)
``ctf/amp_contrast``          ``rlnAmplitudeContrast``
``ctf/df1_A``, ``df2_A``      ``rlnDefocusU``, ``rlnDefocusV`` (Å)
``ctf/df_angle_rad``          ``rlnDefocusAngle`` = deg(df_angle_rad)
``ctf/phase_shift_rad``       ``rlnPhaseShift`` = deg(phase_shift_rad)
``ctf/bfactor``               ``rlnCtfBfactor`` (Å²)
``ctf/scale``                 ``rlnCtfScalefactor``
``ctf/exp_group_id``          ``rlnOpticsGroup`` (0-based → 1-based; groups renumbered 1..K)
``alignments3D/pose``         ``rlnAngleRot/Tilt/Psi``: RELION's matrix ``A(rot, tilt, psi)`` is
                              ``R(pose)ᵀ``, ``R`` the rotation of the rotation vector ``pose``
                              (rad) (pyem ``expmap`` returns ``R(pose)ᵀ``, then ``rot2euler``)
``alignments3D/shift`` [x,y]  ``rlnOriginX/YAngst`` = shift (px) × ``alignments3D/psize_A``,
                              same sign (pyem ``shift[:,0] → rlnOriginX``)
``alignments3D/split``        ``rlnRandomSubset`` = split + 1
``alignments3D/class``        ``rlnClassNumber`` = class + 1
============================  =================================================================

Without 3D alignments, ``alignments2D/pose`` (a scalar angle in rad) gives ``rlnAnglePsi``
and ``alignments2D/shift`` the origins (pyem's 2D branch).

Paths: a ``blob/path`` that starts with ``>`` is relative to the folder of the ``.cs``/``.csg``
(cryoSPARC exports); any other relative path is relative to the cryoSPARC project directory
(searched in the ``.cs`` file's folder and its parents unless given). The resulting
``rlnImageName`` is relative to the RELION project directory when the stack lies inside it,
else absolute.
"""

from cryogan_core.io.cryosparc.format import (
    CS_VERSION,
    SLOT_FIELDS,
    euler_deg_to_rotvec,
    import_signature,
    read_cs,
    rotvec_to_euler_deg,
)
from cryogan_core.io.cryosparc.read import (
    find_passthrough_files,
    read_cryosparc_particles,
)
from cryogan_core.io.cryosparc.write import CryosparcExport, write_cryosparc_particles

__all__ = [
    "SLOT_FIELDS",
    "CS_VERSION",
    "CryosparcExport",
    "read_cs",
    "find_passthrough_files",
    "read_cryosparc_particles",
    "write_cryosparc_particles",
    "rotvec_to_euler_deg",
    "euler_deg_to_rotvec",
    "import_signature",
]
