"""relion_external: thin RELION External-job executables (protocol only, no science)."""
